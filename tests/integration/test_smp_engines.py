"""Several vCPUs on the emulated VM, each its own Unicorn engine over the same guest memory:
what one vCPU does to translations and code must reach the others' engines (TLBI and IC
maintenance is Inner Shareable on Linux), and all of them read one virtual clock.

The guest below runs on two vCPUs (it branches on MPIDR_EL1.Aff0) in phases; each phase ends
in WFI, which ends run() with KVM_EXIT_HLT (halt_exits, as a board with several vCPUs sets it),
so the test decides the interleaving:

  vCPU 1: load through WATCH_VA (its TLB now maps it to BLOCK_A); call `patchme` (x0 = 1)
  vCPU 0: move WATCH_VA to BLOCK_B (descriptor edit, TLBI VAE1IS); rewrite `patchme` to return
          2 (store, DC CVAU, IC IVAU)
  vCPU 1: load through WATCH_VA again (x2: BLOCK_B's value, not the stale TLB's); call
          `patchme` again (x3 = 2, not the stale translation's 1)
"""

from __future__ import annotations

import pytest
from unicorn import arm64_const as uca

from guestdbg import kvm
from guestdbg.backends.unicorn_arm64 import Arm64Vm
from tests.helpers.mmu_guest import BLOCK_2M as BLOCK, HIGH_BASE, MMU_ASM_HEADER, RAM, assemble, level2_table

ENTRY = 8
VA = HIGH_BASE + ENTRY * BLOCK + 0x40
BLOCK_A, BLOCK_B = RAM + ENTRY * BLOCK, RAM + (ENTRY + 1) * BLOCK


GUEST_S = MMU_ASM_HEADER + rf"""
    .text
    .global _start, patchme
_start:
    enable_mmu ttbr0_l1, ttbr1_l1, 1<<12  // and the I cache
    ldr     x9, ={VA:#x}
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff
    cbnz    x0, cpu1
cpu0:
    wfi                                 // phase 1 is vCPU 1's
    ldr     x10, =l2 + 8 * {ENTRY}
    ldr     x0, ={BLOCK_B:#x} | 0x705
    str     x0, [x10]
    dsb     ishst
    ldr     x0, ={VA >> 12 & 0xFFF_FFFF_FFFF:#x}
    tlbi    vae1is, x0
    dsb     ish
    isb
    adr     x11, patchme
    ldr     w0, =0xD2800040             // mov x0, #2
    str     w0, [x11]
    dc      cvau, x11
    dsb     ish
    ic      ivau, x11
    dsb     ish
    isb
1:  wfi
    b       1b
cpu1:
    ldr     x1, [x9]
    bl      patchme
    mov     x4, x0
    wfi
    ldr     x2, [x9]
    bl      patchme
    mov     x3, x0
1:  wfi
    b       1b

    .balign 4096
patchme:
    mov     x0, #1
    ret

    .data
    .balign 4096
ttbr0_l1:
    .quad   0x00000000 | BLOCK_DEVICE
    .quad   RAM | BLOCK_NORMAL
    .fill   510, 8, 0
ttbr1_l1:
    .quad   l2 + 3
    .fill   511, 8, 0
""" + level2_table("l2", lambda n: RAM + n * BLOCK)


@pytest.fixture(scope="module")
def smp_guest(tmp_path_factory):
    return assemble(tmp_path_factory.mktemp("smp"), "smp", GUEST_S)



def test_tlbi_and_ic_on_one_vcpu_reach_the_other(smp_guest):
    from elftools.elf.elffile import ELFFile
    vm = Arm64Vm(console=lambda b: None)
    vm.set_user_memory_region(0, RAM, 64 << 20)
    with open(smp_guest, "rb") as f:
        elf = ELFFile(f)
        entry = elf.header.e_entry
        for seg in elf.iter_segments():
            if seg.header.p_type == "PT_LOAD":
                vm.write_phys(seg.header.p_paddr, seg.data())
    vm.write_phys(BLOCK_A + 0x40, (0xAAAA).to_bytes(8, "little"))
    vm.write_phys(BLOCK_B + 0x40, (0xBBBB).to_bytes(8, "little"))
    cpus = [vm.create_vcpu(i) for i in range(2)]
    for cpu in cpus:
        cpu.halt_exits = True
        cpu.uc.reg_write(uca.UC_ARM64_REG_PC, entry)

    def phase(cpu) -> None:
        run = cpu.run(icount_limit=cpu.icount + 100_000)
        assert run.exit_reason == kvm.KVM_EXIT_HLT, run

    phase(cpus[0])  # MMU on, waits
    phase(cpus[1])  # fills its TLB and translates patchme
    assert [cpus[1].uc.reg_read(uca.UC_ARM64_REG_X1), cpus[1].uc.reg_read(uca.UC_ARM64_REG_X4)] == [0xAAAA, 1]
    phase(cpus[0])  # moves VA, rewrites patchme
    phase(cpus[1])
    assert [cpus[1].uc.reg_read(uca.UC_ARM64_REG_X2), cpus[1].uc.reg_read(uca.UC_ARM64_REG_X3)] == [0xBBBB, 2]


def test_vcpus_read_one_virtual_clock():
    """CNTVCT_EL0 read on two vCPUs whose time offsets put them at the same machine time."""
    vm = Arm64Vm()
    vm.set_user_memory_region(0, RAM, 0x10000)
    mrs_x0_cntvct = 0xD53BE040
    vm.write_phys(RAM, mrs_x0_cntvct.to_bytes(4, "little") + (0xD503201F).to_bytes(4, "little") * 64)
    a, b = vm.create_vcpu(0), vm.create_vcpu(1)
    for cpu in (a, b):
        cpu.uc.reg_write(uca.UC_ARM64_REG_PC, RAM + 4)
    a.run(icount_limit=48)                     # vCPU 0 ran 48 instructions, vCPU 1 none
    machine_time = 160
    for cpu in (a, b):
        cpu.time_offset = machine_time - cpu.icount
        cpu.uc.reg_write(uca.UC_ARM64_REG_PC, RAM)
        cpu.run(icount_limit=cpu.icount + 1)
    assert a.uc.reg_read(uca.UC_ARM64_REG_X0) == b.uc.reg_read(uca.UC_ARM64_REG_X0) == machine_time // 16
    assert a.counter() == b.counter() == (machine_time + 1) // 16


def test_wfi_with_nothing_pending_is_a_hlt_exit_when_asked():
    vm = Arm64Vm()
    vm.set_user_memory_region(0, RAM, 0x10000)
    wfi = 0xD503207F
    vm.write_phys(RAM, wfi.to_bytes(4, "little") * 2)
    cpu = vm.create_vcpu(0)
    cpu.halt_exits = True
    cpu.uc.reg_write(uca.UC_ARM64_REG_PC, RAM)
    run = cpu.run()
    assert run.exit_reason == kvm.KVM_EXIT_HLT
    assert cpu.pc == RAM + 4 and cpu.icount == 1


def test_turn_end_stops_at_a_block_boundary_short_of_it():
    """run(turn_end=N): EXIT_ICOUNT_LIMIT before the first block that would pass N (no exact
    split of the block); the same counts every time, and the next turn goes on from there."""
    # a loop of 7-instruction blocks: 6 adds and a branch back
    add_x0 = 0x91000400  # add x0, x0, #1
    loop = [add_x0] * 6 + [0x17FFFFFA]  # b .-24
    counts = []
    for _ in range(2):
        vm = Arm64Vm()
        vm.set_user_memory_region(0, RAM, 0x10000)
        vm.write_phys(RAM, b"".join(w.to_bytes(4, "little") for w in loop))
        cpu = vm.create_vcpu(0)
        cpu.uc.reg_write(uca.UC_ARM64_REG_PC, RAM)
        seen = []
        for turn in range(3):
            run = cpu.run(turn_end=cpu.icount + 1000)
            assert run.exit_reason == kvm.EXIT_ICOUNT_LIMIT
            seen.append(cpu.icount)
        counts.append(seen)
        assert cpu.uc.reg_read(uca.UC_ARM64_REG_X0) == cpu.icount // 7 * 6 + cpu.icount % 7
    assert counts[0] == counts[1]
    first = counts[0][0]
    assert first % 7 == 0 and 1000 - 7 < first <= 1000   # whole blocks, at most one short
    assert counts[0][1] - first > 1000 - 7
