"""Only the native part of the build; everything else is in pyproject.toml.

unicorn_arm64._runctl and _dirtylog are plain shared libraries loaded with ctypes (no Python C
API, no link against libunicorn): Unicorn hook callbacks that must not cost a Python call, and
the dirty-page log's SIGSEGV handler (see their header comments).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("guestdbg.backends.unicorn_arm64._runctl",
                             sources=["src/guestdbg/backends/unicorn_arm64/_runctl.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra"]),
                   Extension("guestdbg.backends.unicorn_arm64._dirtylog",
                             sources=["src/guestdbg/backends/unicorn_arm64/_dirtylog.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra"])])
