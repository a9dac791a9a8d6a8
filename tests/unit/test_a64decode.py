"""guestdbg.arm.a64decode on its own: it is pure (no Unicorn), and it sizes every AdvSIMD
structure load/store (LD1-LD4, ST1-ST4, LDnR; all addressing forms) by the bytes it moves.

The table's words come from GNU as, and its sizes are checked here against the accesses a bare
Unicorn makes running each instruction, so neither is taken from the decoder itself. The wider
decoder table (GPR, pairs, exclusives, atomics) is tests/unit/test_access_decoder.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from guestdbg.arm.a64decode import decode_access, simd_structure_size

X1, X2 = 0x0012_0000, 0x40  # the base; a post-index register (only written back)
PC = 0x2000

# (asm, word, bytes moved, is_write)
SIMD_STRUCTURES = [
    # multiple structures: every register whole (8 bytes for .8b/.4h/.2s, 16 for the Q forms)
    ("ld1 {v0.16b}, [x1]", 0x4C407020, 16, False),
    ("ld1 {v0.8b}, [x1]", 0x0C407020, 8, False),
    ("ld1 {v0.16b, v1.16b}, [x1]", 0x4C40A020, 32, False),
    ("ld1 {v0.4s, v1.4s, v2.4s}, [x1]", 0x4C406820, 48, False),
    ("ld1 {v0.2d, v1.2d, v2.2d, v3.2d}, [x1]", 0x4C402C20, 64, False),
    ("ld1 {v0.8b, v1.8b, v2.8b, v3.8b}, [x1]", 0x0C402020, 32, False),
    ("ld2 {v0.8b, v1.8b}, [x1]", 0x0C408020, 16, False),
    ("ld2 {v0.4s, v1.4s}, [x1]", 0x4C408820, 32, False),
    ("ld3 {v0.8b, v1.8b, v2.8b}, [x1]", 0x0C404020, 24, False),
    ("ld3 {v0.16b, v1.16b, v2.16b}, [x1]", 0x4C404020, 48, False),
    ("ld4 {v0.4h, v1.4h, v2.4h, v3.4h}, [x1]", 0x0C400420, 32, False),
    ("ld4 {v0.2d, v1.2d, v2.2d, v3.2d}, [x1]", 0x4C400C20, 64, False),
    ("st1 {v0.2d, v1.2d, v2.2d, v3.2d}, [x1]", 0x4C002C20, 64, True),
    ("st2 {v0.16b, v1.16b}, [x1], #32", 0x4C9F8020, 32, True),
    ("st3 {v0.8b, v1.8b, v2.8b}, [x1], x2", 0x0C824020, 24, True),
    ("st4 {v0.4s, v1.4s, v2.4s, v3.4s}, [x1]", 0x4C000820, 64, True),
    ("ld1 {v0.16b}, [x1], #16", 0x4CDF7020, 16, False),
    # single structure: one lane of each register
    ("ld1 {v0.b}[3], [x1]", 0x0D400C20, 1, False),
    ("ld1 {v0.h}[3], [x1]", 0x0D405820, 2, False),
    ("ld1 {v0.s}[3], [x1]", 0x4D409020, 4, False),
    ("ld1 {v0.d}[1], [x1]", 0x4D408420, 8, False),
    ("ld2 {v0.b, v1.b}[3], [x1]", 0x0D600C20, 2, False),
    ("ld2 {v0.h, v1.h}[3], [x1]", 0x0D605820, 4, False),
    ("ld2 {v0.s, v1.s}[1], [x1]", 0x0D609020, 8, False),
    ("ld2 {v0.d, v1.d}[1], [x1]", 0x4D608420, 16, False),
    ("ld3 {v0.b, v1.b, v2.b}[3], [x1]", 0x0D402C20, 3, False),
    ("ld3 {v0.h, v1.h, v2.h}[3], [x1]", 0x0D407820, 6, False),
    ("ld3 {v0.s, v1.s, v2.s}[1], [x1]", 0x0D40B020, 12, False),
    ("ld3 {v0.d, v1.d, v2.d}[1], [x1]", 0x4D40A420, 24, False),
    ("ld4 {v0.b, v1.b, v2.b, v3.b}[3], [x1]", 0x0D602C20, 4, False),
    ("ld4 {v0.h, v1.h, v2.h, v3.h}[3], [x1]", 0x0D607820, 8, False),
    ("ld4 {v0.s, v1.s, v2.s, v3.s}[1], [x1]", 0x0D60B020, 16, False),
    ("ld4 {v0.d, v1.d, v2.d, v3.d}[1], [x1]", 0x4D60A420, 32, False),
    ("st1 {v0.s}[1], [x1], x2", 0x0D829020, 4, True),
    ("st2 {v0.d, v1.d}[1], [x1], #16", 0x4DBF8420, 16, True),
    ("st4 {v0.b, v1.b, v2.b, v3.b}[15], [x1], #4", 0x4DBF3C20, 4, True),
    # load and replicate: one element per register, whatever the arrangement
    ("ld1r {v0.16b}, [x1]", 0x4D40C020, 1, False),
    ("ld1r {v0.4h}, [x1]", 0x0D40C420, 2, False),
    ("ld1r {v0.4s}, [x1]", 0x4D40C820, 4, False),
    ("ld1r {v0.2d}, [x1]", 0x4D40CC20, 8, False),
    ("ld2r {v0.16b, v1.16b}, [x1]", 0x4D60C020, 2, False),
    ("ld2r {v0.2d, v1.2d}, [x1]", 0x4D60CC20, 16, False),
    ("ld3r {v0.4s, v1.4s, v2.4s}, [x1]", 0x4D40E820, 12, False),
    ("ld4r {v0.8h, v1.8h, v2.8h, v3.8h}, [x1]", 0x4D60E420, 8, False),
    ("ld4r {v0.2d, v1.2d, v2.2d, v3.2d}, [x1], #32", 0x4DFFEC20, 32, False),
    ("ld3r {v0.8b, v1.8b, v2.8b}, [x1], x2", 0x0DC2E020, 3, False),
]
_IDS = [asm for asm, *_ in SIMD_STRUCTURES]


def read_gpr(name: str) -> int:
    return {"x1": X1, "x2": X2}.get(name, 0)


@pytest.mark.parametrize("asm, word, size, is_write", SIMD_STRUCTURES, ids=_IDS)
def test_simd_structure_sizes(asm, word, size, is_write):
    assert decode_access(word, PC, read_gpr) == (X1, size, is_write)
    assert simd_structure_size(word) == size


@pytest.mark.parametrize("word", [0xF9400020, 0x3DC00020, 0xA9400440, 0xD503201F],
                         ids=["ldr x0", "ldr q0", "ldp x0, x1", "nop"])
def test_simd_structure_size_is_none_for_other_classes(word):
    assert simd_structure_size(word) is None


@pytest.mark.parametrize("asm, word, size, is_write", SIMD_STRUCTURES, ids=_IDS)
def test_sizes_match_what_unicorn_touches(asm, word, size, is_write):
    from unicorn import UC_ARCH_ARM64, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE, UC_MODE_ARM, Uc
    from unicorn import arm64_const as uca

    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM, uca.UC_CPU_ARM64_A57)
    uc.mem_map(0x1000, 0x2000)
    uc.mem_map(0x10_0000, 0x4_0000)
    uc.mem_write(PC, word.to_bytes(4, "little"))
    uc.reg_write(uca.UC_ARM64_REG_CPACR_EL1, 3 << 20)  # FP/SIMD enabled
    uc.reg_write(uca.UC_ARM64_REG_X1, X1)
    uc.reg_write(uca.UC_ARM64_REG_X2, X2)
    seen: list[tuple[bool, int, int]] = []
    uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE,
                lambda _uc, access, address, n, _value, _user: seen.append((access == UC_MEM_WRITE, address, n)))
    uc.emu_start(PC, PC + 4, count=1)
    lo, hi = min(a for _, a, _ in seen), max(a + n for _, a, n in seen)
    assert (lo, hi - lo, any(w for w, _, _ in seen)) == (X1, size, is_write)


def test_table_words_match_the_assembler(tmp_path):
    import shutil
    tool, objcopy = shutil.which("aarch64-linux-gnu-as"), shutil.which("aarch64-linux-gnu-objcopy")
    if tool is None or objcopy is None:
        pytest.skip("binutils-aarch64-linux-gnu is missing (scripts/setup.sh --test installs it)")
    (tmp_path / "t.s").write_text(".text\n" + "\n".join(asm for asm, *_ in SIMD_STRUCTURES) + "\n")
    subprocess.run([tool, "-o", tmp_path / "t.o", tmp_path / "t.s"], check=True, capture_output=True)
    subprocess.run([objcopy, "-O", "binary", "-j", ".text", tmp_path / "t.o", tmp_path / "t.bin"], check=True)
    code = (tmp_path / "t.bin").read_bytes()
    assert [int.from_bytes(code[i:i + 4], "little") for i in range(0, len(code), 4)] == \
        [word for _, word, *_ in SIMD_STRUCTURES]


def test_decoder_is_pure():
    """Importing and using the decoder loads no Unicorn (it takes a register reader instead)."""
    code = ("import sys; from guestdbg.arm.a64decode import decode_access; "
            "assert decode_access(0xF9400020, 0, lambda name: 0x1000) == (0x1000, 8, False); "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'unicorn'], 'unicorn imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
