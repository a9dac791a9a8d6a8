"""Only the native part of the build; everything else is in pyproject.toml.

_unicorn_runctl is a plain shared library loaded with ctypes (no Python C API, no link against
libunicorn): Unicorn hook callbacks that must not cost a Python call (see its header comment).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("guestdbg.backends._unicorn_runctl",
                             sources=["src/guestdbg/backends/_unicorn_runctl.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra"])])
