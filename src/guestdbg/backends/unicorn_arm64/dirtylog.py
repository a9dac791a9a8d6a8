"""The dirty-page log (_dirtylog.c) from Python: what backs KVM_MEM_LOG_DIRTY_PAGES and
KVM_GET_DIRTY_LOG on the emulated VM."""

from __future__ import annotations

import ctypes
import errno
import gc
import importlib.util
import os

PAGE_SIZE = 4096


def _load_library() -> ctypes.CDLL:
    spec = importlib.util.find_spec("guestdbg.backends.unicorn_arm64._dirtylog")
    if spec is None or spec.origin is None:
        raise ImportError("guestdbg's native dirty-log library is not built: "
                          "run ./scripts/setup.sh (pip install -e . compiles it with gcc)")
    lib = ctypes.CDLL(spec.origin)
    lib.dirtylog_start.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    lib.dirtylog_stop.argtypes = [ctypes.c_size_t]
    lib.dirtylog_collect.argtypes = [ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
    lib.dirtylog_collect.restype = ctypes.c_long
    return lib


_lib = _load_library()


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


def start(addr: int, size: int) -> None:
    """Log the pages written in [addr, addr + size) of this process's memory."""
    rc = _lib.dirtylog_start(addr, size)
    if rc == -errno.ENOSPC:
        # Every one of the library's slots is taken: some may be logs of VMs no longer reachable
        # whose mappings wait for the cycle collector (their finalizers end the logging).
        gc.collect()
        rc = _lib.dirtylog_start(addr, size)
    _check(rc, "dirty log start")


def stop(addr: int) -> None:
    _check(_lib.dirtylog_stop(addr), "dirty log stop")


def forget(addr: int) -> None:
    """stop(), for a mapping about to go away: nothing to report if it is not logged."""
    _lib.dirtylog_stop(addr)


def collect(addr: int, size: int) -> bytes:
    """The pages written since the last collect (one bit per page, KVM_GET_DIRTY_LOG's layout)."""
    out = ctypes.create_string_buffer((size // PAGE_SIZE + 7) // 8)
    _check(_lib.dirtylog_collect(addr, out, len(out)), "dirty log collect")
    return out.raw
