#!/usr/bin/env bash
# Set up guestdbg on a Debian machine: a venv in .venv with the package and its Python
# dependencies (gcc compiles its one C file), and (with --test) the Debian tools the test suite
# drives: the aarch64 cross toolchain that builds the test guests (and gcc for the x86-64 ones),
# gdb-multiarch, lldb,
# qemu-system-aarch64 and qemu-system-x86_64.
set -euo pipefail
cd "$(dirname "$0")/.."

with_test_tools=0
[[ "${1:-}" == "--test" ]] && with_test_tools=1

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3 python3-venv python3-pip
fi
# `pip install -e .` compiles the vCPU's native run-loop hooks (src/guestdbg/backends/unicorn_arm64/_runctl.c).
if ! command -v gcc >/dev/null 2>&1; then
    apt_install gcc libc6-dev
fi
if ((with_test_tools)); then
    apt_install make gcc binutils-aarch64-linux-gnu gcc-aarch64-linux-gnu gdb-multiarch qemu-system-arm \
        qemu-system-x86 lldb
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
if ((with_test_tools)); then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
else
    .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi
