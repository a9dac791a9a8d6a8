"""Only the native part of the build; everything else is in pyproject.toml.

unicorn_arm64._runctl is a plain shared library loaded with ctypes (no Python C API, no link
against libunicorn): Unicorn hook callbacks that must not cost a Python call (see its header
comment).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("guestdbg.backends.unicorn_arm64._runctl",
                             sources=["src/guestdbg/backends/unicorn_arm64/_runctl.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra"])])
