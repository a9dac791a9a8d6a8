"""The one way the x86 KVM back end talks to the kernel: ioctl(2) through ctypes.

Every module of the back end calls `ioctl()` here (tests spy on KVM_SET_USER_MEMORY_REGION by
replacing `memory.ioctl`). A failure is a `kvm.KvmError` carrying the errno, as the emulated
back end raises them; `KvmUnavailable` is for a /dev/kvm that cannot be opened or used at all.
"""

from __future__ import annotations

import ctypes
import os

from guestdbg import kvm

KVM_DEVICE = "/dev/kvm"
PAGE_SIZE = 4096

libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
libc.ioctl.restype = ctypes.c_int


class KvmUnavailable(RuntimeError):
    """/dev/kvm cannot be opened or used (the message says why)."""


def ioctl(fd: int, request: int, arg: ctypes.Array | ctypes.Structure | int | None = None, what: str = "") -> int:
    """One ioctl; `arg` is a ctypes object (passed by reference), an int, or None.
    Raises KvmError with the errno. The GIL is released for the call (KVM_RUN relies on it)."""
    ptr: int | None
    if arg is None:
        ptr = None
    elif isinstance(arg, int):
        ptr = arg
    else:
        ptr = ctypes.addressof(arg)
    ret: int = libc.ioctl(fd, request, ptr)
    if ret < 0:
        err = ctypes.get_errno()
        raise kvm.KvmError(err, f"{what or hex(request)} failed: {os.strerror(err)}")
    return ret
