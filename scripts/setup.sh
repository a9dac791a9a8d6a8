#!/usr/bin/env bash
# Set up guestdbg on a Debian machine: a venv in .venv with the package and its Python
# dependencies (gcc compiles its one C file), and (with --test) the Debian tools the test suite
# drives: the aarch64 cross toolchain that builds the test guests (and gcc for the x86-64 ones),
# gdb-multiarch, lldb,
# qemu-system-aarch64 and qemu-system-x86_64, u-boot-qemu, and Debian's arm64 kernel and
# busybox-static for the real-guest tests (see debian_guests below).
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

# Debian's arm64 packages that the real-guest tests boot (tests/helpers/linux_guest.py finds
# them): the kernel's boot/ (its vmlinuz is a raw arm64 Image) from the linux-image-6.1.0-NN-arm64
# package that linux-image-arm64 points at, and busybox-static. They go into a cache outside git,
# ${XDG_CACHE_HOME:-~/.cache}/guestdbg/debian/<package>/, once; re-runs find them and stay offline.
debian_guests() {
    local dir="${XDG_CACHE_HOME:-$HOME/.cache}/guestdbg/debian"
    local want_kernel=0 want_busybox=0
    compgen -G "$dir/linux-image-*/boot/vmlinuz-*" >/dev/null || want_kernel=1
    [[ -x "$dir/busybox-static/bin/busybox" ]] || want_busybox=1
    ((want_kernel || want_busybox)) || return 0
    local sudo="" sandbox=()
    [[ $(id -u) -eq 0 ]] && sandbox=(-o APT::Sandbox::User=root) || sudo="sudo"
    fail() { echo "setup: cannot get Debian's arm64 guest packages: $*" >&2; exit 1; }
    echo "setup: downloading Debian's arm64 kernel and busybox-static into $dir" >&2
    mkdir -p "$dir" || fail "cannot create $dir"
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        $sudo dpkg --add-architecture arm64 || fail "dpkg --add-architecture arm64 failed"
    fi
    $sudo apt-get update -qq >/dev/null || fail "apt-get update failed (with the arm64 architecture added)"
    local tmp
    tmp=$(mktemp -d "$dir/.download.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    local pkgs=()
    if ((want_kernel)); then
        local kernel
        kernel=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null \
            | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ {sub(/:arm64$/, "", $2); print $2; exit}')
        [[ -n "$kernel" ]] || fail "apt-cache depends linux-image-arm64:arm64 names no linux-image-* package"
        pkgs+=("$kernel")
    fi
    ((want_busybox)) && pkgs+=(busybox-static)
    local pkg log
    for pkg in "${pkgs[@]}"; do
        log=$(cd "$tmp" && apt-get download -q "${sandbox[@]}" "$pkg:arm64" 2>&1) \
            || fail "apt-get download $pkg:arm64 failed: $(tail -n1 <<<"$log")"
        local deb
        deb=$(compgen -G "$tmp/${pkg}_*_arm64.deb" | head -n1) || fail "apt-get download $pkg:arm64 left no .deb"
        rm -rf "$tmp/x" && mkdir "$tmp/x"
        if [[ $pkg == linux-image-* ]]; then
            # Only boot/ (the Image, config, System.map): the modules are not needed and are large.
            dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp/x" ./boot || fail "cannot extract $deb"
            local name=$pkg
        else
            dpkg-deb -x "$deb" "$tmp/x" || fail "cannot extract $deb"
            local name=busybox-static
        fi
        dpkg-deb -f "$deb" Package Version >"$tmp/x/PACKAGE"
        rm -rf "${dir:?}/$name" && mv "$tmp/x" "$dir/$name"
        rm -f "$deb"
    done
    rm -rf "$tmp"
    trap - EXIT
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
        qemu-system-x86 lldb u-boot-qemu device-tree-compiler
    debian_guests
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
if ((with_test_tools)); then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
else
    .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi
