"""The gdb register catalogue, target.xml, memory map and g/G/p/P payloads.

The gdb checks run the real gdb-multiarch: once on target.xml alone (`set tdesc filename`), and
once connected to a minimal RSP responder in this file that serves target.xml, the memory map and
g/p replies from a real vCPU, so gdb itself parses every document and payload we produce.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import xml.etree.ElementTree as ET

import pytest

from guestdbg.arm import kvm_regs as kr
from guestdbg.arm import registers as areg
from guestdbg.backends.unicorn_arm64 import PSTATE_DAIF, PSTATE_MODE_EL1H
from guestdbg.board.virt import FLASH0_BASE, FLASH1_BASE, FLASH_BANK_SIZE, RAM_BASE, VirtMachine
from guestdbg.debug.regions import physical_layout
from guestdbg.gdb import aarch64_regs as ar
from guestdbg.gdb import memory_map as mm

GDB = shutil.which("gdb-multiarch")
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb-multiarch is not installed (apt-get install gdb-multiarch)")

PSTATE_MODE_EL1T = 0b0100


@pytest.fixture
def vcpu():
    return VirtMachine(console=lambda b: None).vcpu


def all_one_regs(vcpu) -> dict[int, int]:
    return {i: vcpu.get_one_reg(i) for i in vcpu.get_reg_list()}


def h(value: int, bits: int) -> bytes:
    return value.to_bytes(bits // 8, "little").hex().encode()


# The packets over a vCPU: the integer catalogue (arm.registers) reads and writes, the codec
# (gdb.aarch64_regs) turns the values into packet hex and back, as the session does through
# the manager.
def encode_g(vcpu) -> bytes:
    return ar.encode_g(areg.read_all(vcpu))


def decode_G(vcpu, hexdata: bytes) -> None:  # noqa: N802 (packet letter)
    areg.write_all(vcpu, ar.decode_G(hexdata))


def read_register(vcpu, regnum: int) -> bytes:
    return ar.encode_register(regnum, areg.read(vcpu, [regnum])[0])


def write_register(vcpu, regnum: int, hexvalue: bytes) -> None:
    areg.write(vcpu, regnum, ar.decode_register(regnum, hexvalue))


def expedited(vcpu) -> dict[int, bytes]:
    return ar.encode_expedited(areg.read(vcpu, ar.EXPEDITED_REGNUMS))


# --------------------------------------------------------------------------------------------
# The catalogue


def test_catalogue_numbering_and_sizes():
    regs = ar.REGISTERS
    assert [r.gdb_regnum for r in regs] == list(range(len(regs)))
    assert len({r.name for r in regs}) == len(regs)
    names = [r.name for r in regs]
    assert names[:34] == [f"x{n}" for n in range(31)] + ["sp", "pc", "cpsr"]
    assert names[34:68] == [f"v{n}" for n in range(32)] + ["fpsr", "fpcr"]
    assert names[68:] == [n.lower() for n in (
        "SCTLR_EL1", "TCR_EL1", "TTBR0_EL1", "TTBR1_EL1", "MAIR_EL1", "VBAR_EL1", "ESR_EL1", "FAR_EL1",
        "ELR_EL1", "SPSR_EL1", "SP_EL0", "SP_EL1", "CONTEXTIDR_EL1", "TPIDR_EL0", "TPIDR_EL1",
        "CPACR_EL1", "MDSCR_EL1", "ID_AA64DFR0_EL1", "MIDR_EL1", "MPIDR_EL1")]
    sizes = {r.name: r.bitsize for r in regs}
    assert {sizes[n] for n in names[:33]} == {64}
    assert sizes["cpsr"] == sizes["fpsr"] == sizes["fpcr"] == 32
    assert {sizes[f"v{n}"] for n in range(32)} == {128}
    assert {sizes[n] for n in names[68:]} == {64}
    assert {r.xml_group for r in regs[68:]} == {"system"}
    assert [(r.name, r.bitsize, r.gdb_regnum, r.readonly) for r in regs] == [
        (r.name, r.bitsize, r.gdb_regnum, r.readonly) for r in areg.REGISTERS]  # gdb's view of the catalogue
    assert ar.G_PACKET_HEX_LEN == sum(r.bitsize for r in regs) // 4 == 1896


def test_catalogue_one_reg_ids_are_the_vcpus(vcpu):
    ids = set(vcpu.get_reg_list())
    with_id = [r for r in areg.REGISTERS if r.one_reg_id is not None]
    assert [r.name for r in areg.REGISTERS if r.one_reg_id is None] == ["sp"]
    assert len({r.one_reg_id for r in with_id}) == len(with_id)
    for r in with_id:
        assert r.one_reg_id in ids, r.name
        assert r.bitsize <= 8 * kr.reg_size_bytes(r.one_reg_id), r.name
    by = areg.BY_NAME
    assert by["x0"].one_reg_id == 0x6030000000100000 and by["x30"].one_reg_id == 0x603000000010003C
    assert by["pc"].one_reg_id == 0x6030000000100040 and by["cpsr"].one_reg_id == 0x6030000000100042
    assert by["v0"].one_reg_id == 0x6040000000100054
    assert by["fpsr"].one_reg_id == 0x60200000001000D4 and by["fpcr"].one_reg_id == 0x60200000001000D5
    assert by["sp_el0"].one_reg_id == kr.KVM_REG_ARM_CORE_SP == 0x603000000010003E
    assert by["sp_el1"].one_reg_id == 0x6030000000100044
    assert by["elr_el1"].one_reg_id == 0x6030000000100046
    assert by["spsr_el1"].one_reg_id == 0x6030000000100048
    assert by["sctlr_el1"].one_reg_id == 0x603000000013C080
    assert by["mdscr_el1"].one_reg_id == 0x6030000000138012
    assert {r.name for r in areg.REGISTERS if r.readonly} == {"id_aa64dfr0_el1", "midr_el1", "mpidr_el1"}


# --------------------------------------------------------------------------------------------
# target.xml and the memory map as documents


def test_target_xml_well_formed_and_complete():
    text = ar.target_xml()
    assert text.startswith('<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">')
    root = ET.fromstring(text)
    assert root.tag == "target" and root.findtext("architecture") == "aarch64"
    features = {f.get("name"): f for f in root.findall("feature")}
    assert list(features) == ["org.gnu.gdb.aarch64.core", "org.gnu.gdb.aarch64.fpu", "org.guestdbg.aarch64.sysregs"]
    regs = [(f.get("name"), r.attrib) for f in root.findall("feature") for r in f.findall("reg")]
    assert len(regs) == len(ar.REGISTERS)
    for (feature, attrs), rd in zip(regs, ar.REGISTERS):
        assert feature == rd.feature
        assert attrs["name"] == rd.name and int(attrs["regnum"]) == rd.gdb_regnum
        assert int(attrs["bitsize"]) == rd.bitsize and attrs["type"] == rd.type
        assert attrs.get("group") == rd.xml_group
    core = {r.get("name"): r.get("type") for r in features["org.gnu.gdb.aarch64.core"].findall("reg")}
    assert core["sp"] == "data_ptr" and core["pc"] == "code_ptr"
    fpu = features["org.gnu.gdb.aarch64.fpu"]
    defined = {e.get("id") for e in fpu if e.tag in ("vector", "union", "flags")}
    assert {"aarch64v", "vnd", "vns", "vnh", "vnb", "vnq", "v2d", "v1u", "fpsr_flags", "fpcr_flags"} <= defined
    aarch64v = fpu.find("union[@id='aarch64v']")
    assert [(f.get("name"), f.get("type")) for f in aarch64v] == [
        ("d", "vnd"), ("s", "vns"), ("h", "vnh"), ("b", "vnb"), ("q", "vnq")]
    # every non-predefined type a register uses is defined in the document
    for f in root.findall("feature"):
        ids = {e.get("id") for e in f if e.tag in ("vector", "union", "flags")}
        for r in f.findall("reg"):
            assert r.get("type") in ids | {"int", "uint64", "data_ptr", "code_ptr"}, r.get("name")


def test_memory_map_document():
    m = VirtMachine(console=lambda b: None)
    regions = mm.regions_for(physical_layout(m.vm))
    # the two CFI flash banks are read-only memory slots to the guest (writes are commands)
    assert regions == [(FLASH0_BASE, FLASH_BANK_SIZE, "rom"), (FLASH1_BASE, FLASH_BANK_SIZE, "rom"),
                       (RAM_BASE, m.config.ram_size, "ram")]
    text = mm.memory_map_xml([(0x1000_0000, 0x2000, "flash")] + regions[::-1])  # any order in
    assert '<!DOCTYPE memory-map PUBLIC "+//IDN gnu.org//DTD GDB Memory Map V1.0//EN"' in text
    root = ET.fromstring(text)
    assert root.tag == "memory-map"
    mems = [(e.get("type"), int(e.get("start"), 16), int(e.get("length"), 16)) for e in root]
    assert mems == [("rom", FLASH0_BASE, FLASH_BANK_SIZE), ("rom", FLASH1_BASE, FLASH_BANK_SIZE),
                    ("flash", 0x1000_0000, 0x2000), ("ram", RAM_BASE, m.config.ram_size)]
    flash = root.find("memory[@type='flash']")
    assert flash.find("property[@name='blocksize']").text == "0x40000"
    assert root.find("memory[@type='ram']").find("property") is None


def test_memory_map_rejects_bad_regions():
    for bad in ([(0, 0x1000, "disk")], [(0, 0, "ram")], [(0, 0x2000, "ram"), (0x1000, 0x1000, "rom")]):
        with pytest.raises(ValueError):
            mm.memory_map_xml(bad)


# --------------------------------------------------------------------------------------------
# g/G/p/P on a real vCPU


def test_g_reflects_one_regs(vcpu):
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_X(0), 0x1122334455667788)
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_PC, RAM_BASE + 0x40)
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_V(31), (1 << 127) | 0xABCD)
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_FPCR, 0x03000000)
    vcpu.set_one_reg(kr.sysreg_id("TPIDR_EL1"), 0xFEEDFACE)
    g = encode_g(vcpu)
    assert len(g) == ar.G_PACKET_HEX_LEN and re.fullmatch(rb"[0-9a-f]+", g)
    assert g[:16] == b"8877665544332211"
    off = {}
    pos = 0
    for r in ar.REGISTERS:
        off[r.name] = g[pos:pos + r.hex_len]
        pos += r.hex_len
    assert off["pc"] == h(RAM_BASE + 0x40, 64)
    assert off["v31"] == h((1 << 127) | 0xABCD, 128)
    assert off["fpcr"] == b"00000003"
    assert off["tpidr_el1"] == h(0xFEEDFACE, 64)
    assert off["midr_el1"] == h(vcpu.get_one_reg(kr.sysreg_id("MIDR_EL1")), 64) != h(0, 64)
    for r in ar.REGISTERS:
        assert read_register(vcpu, r.gdb_regnum) == off[r.name]


def test_G_round_trip(vcpu):
    g = bytearray(encode_g(vcpu))
    edits = {"x0": 0xDEADBEEF, "x30": 0x4000_1234, "pc": RAM_BASE + 0x100, "sp": RAM_BASE + 0x8000,
             "v0": 0x0123456789ABCDEF_FEDCBA9876543210, "fpsr": 0x08000000, "fpcr": 0x00C00000,
             "vbar_el1": RAM_BASE + 0x800, "tpidr_el0": 7, "elr_el1": RAM_BASE + 4, "sp_el0": RAM_BASE + 0x4000,
             "mdscr_el1": 1 << 15}
    pos = {}
    p = 0
    for r in ar.REGISTERS:
        pos[r.name] = p
        p += r.hex_len
    for name, value in edits.items():
        r = ar.BY_NAME[name]
        g[pos[name]:pos[name] + r.hex_len] = h(value, r.bitsize)
    decode_G(vcpu, bytes(g))
    # sp is an alias of sp_el1 at EL1h: the edited sp wins over the unchanged sp_el1 in the packet
    g[pos["sp_el1"]:pos["sp_el1"] + 16] = h(edits["sp"], 64)
    assert encode_g(vcpu) == bytes(g)
    assert vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_X(0)) == 0xDEADBEEF
    assert vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_SP_EL1) == RAM_BASE + 0x8000  # EL1h: sp is SP_EL1
    assert vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_SP) == RAM_BASE + 0x4000
    assert vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_V(0)) == 0x0123456789ABCDEF_FEDCBA9876543210
    assert vcpu.get_one_reg(kr.sysreg_id("MDSCR_EL1")) == 1 << 15


@pytest.mark.parametrize("mutate", [
    lambda g: g[:-2],                 # one byte short
    lambda g: g + b"00",              # one byte long
    lambda g: g[:-1],                 # odd length
    lambda g: b"zz" + g[2:],          # not hex
    lambda g: b" 0" + g[2:],          # bytes.fromhex would accept the space
    lambda g: b"",                    # empty
])
def test_G_rejects_bad_payload_and_writes_nothing(vcpu, mutate):
    g = bytearray(encode_g(vcpu))
    g[-16:] = b"11" * 8  # would change mpidr_el1... and x0 below: none of it may land
    g[:16] = h(0x5555, 64)
    bad = mutate(bytes(g))
    before = all_one_regs(vcpu)
    with pytest.raises(ValueError):
        decode_G(vcpu, bad)
    assert all_one_regs(vcpu) == before


def test_G_rejects_change_to_read_only_register_before_writing(vcpu):
    g = bytearray(encode_g(vcpu))
    g[:16] = h(0x5555, 64)  # x0, written first if the check came late
    r = ar.BY_NAME["midr_el1"]
    start = sum(x.hex_len for x in ar.REGISTERS[:r.gdb_regnum])
    g[start:start + 16] = h(0x41000000, 64)
    before = all_one_regs(vcpu)
    with pytest.raises(ValueError, match="midr_el1"):
        decode_G(vcpu, bytes(g))
    assert all_one_regs(vcpu) == before
    write_register(vcpu, r.gdb_regnum, read_register(vcpu, r.gdb_regnum))  # unchanged: fine


def test_P_and_errors(vcpu):
    x5 = ar.BY_NAME["x5"].gdb_regnum
    write_register(vcpu, x5, b"efbeadde00000000")
    assert vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_X(5)) == 0xDEADBEEF
    write_register(vcpu, 66, b"00000018")  # fpsr QC|V
    assert vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_FPSR) == 0x18000000
    write_register(vcpu, 0, b"0000000000A0B0C0")  # upper-case hex accepted
    assert vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_X(0)) == 0xC0B0A0 << 40
    before = all_one_regs(vcpu)
    for regnum, value, exc in ((x5, b"efbeadde", ValueError), (x5, b"efbeadde0000000g", ValueError),
                               (x5, b"efbeadde000000000", ValueError), (66, b"00000000 ", ValueError),
                               (66, b"00 00 00", ValueError),  # right length, bytes.fromhex would take it
                               (88, b"0000000000000000", KeyError), (-1, b"00", KeyError),
                               (ar.BY_NAME["mpidr_el1"].gdb_regnum, b"0100000000000000", ValueError)):
        with pytest.raises(exc):
            write_register(vcpu, regnum, value)
    assert all_one_regs(vcpu) == before
    with pytest.raises(KeyError):
        read_register(vcpu, 88)


def test_sp_follows_pstate(vcpu):
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_SP, 0x1000)
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_SP_EL1, 0x2000)
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_PSTATE, PSTATE_DAIF | PSTATE_MODE_EL1H)
    assert read_register(vcpu, ar.REG_SP) == h(0x2000, 64)
    assert expedited(vcpu)[ar.REG_SP] == h(0x2000, 64)
    write_register(vcpu, ar.REG_SP, h(0x2100, 64))
    assert (vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_SP), vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_SP_EL1)) == (0x1000, 0x2100)

    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_PSTATE, PSTATE_DAIF | PSTATE_MODE_EL1T)
    assert read_register(vcpu, ar.REG_SP) == h(0x1000, 64)
    write_register(vcpu, ar.REG_SP, h(0x1100, 64))
    assert (vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_SP), vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_SP_EL1)) == (0x1100, 0x2100)

    # A G packet that switches EL1t -> EL1h and sets sp: cpsr goes first, so sp lands in SP_EL1.
    g = bytearray(encode_g(vcpu))
    sp_at = 31 * 16
    g[sp_at:sp_at + 16] = h(0x3000, 64)
    g[sp_at + 32:sp_at + 40] = h(PSTATE_DAIF | PSTATE_MODE_EL1H, 32)
    decode_G(vcpu, bytes(g))
    assert (vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_SP), vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_SP_EL1)) == (0x1100, 0x3000)


def test_cpsr_is_low_32_bits_of_pstate(vcpu):
    pstate = PSTATE_DAIF | PSTATE_MODE_EL1H | (1 << 29)  # C flag
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_PSTATE, pstate)
    assert read_register(vcpu, ar.REG_CPSR) == h(pstate, 32)
    write_register(vcpu, ar.REG_CPSR, h(PSTATE_DAIF | PSTATE_MODE_EL1H | (1 << 30), 32))
    assert vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_PSTATE) == PSTATE_DAIF | PSTATE_MODE_EL1H | (1 << 30)
    with pytest.raises(ValueError):
        write_register(vcpu, ar.REG_CPSR, h(0, 64))


class DictVcpu:
    """A ONE_REG vCPU that keeps 64-bit PSTATE intact, as KVM does (Unicorn keeps 32 bits)."""

    def __init__(self):
        self.regs = {r.one_reg_id: 0 for r in areg.REGISTERS if r.one_reg_id is not None}

    def get_one_reg(self, reg_id):
        return self.regs[reg_id]

    def set_one_reg(self, reg_id, value):
        assert 0 <= value < 1 << (8 * kr.reg_size_bytes(reg_id))
        self.regs[reg_id] = value


def test_cpsr_write_keeps_pstate_upper_half():
    v = DictVcpu()
    v.regs[kr.KVM_REG_ARM_CORE_PSTATE] = (0xA5 << 32) | 0x3C5
    assert read_register(v, ar.REG_CPSR) == h(0x3C5, 32)
    write_register(v, ar.REG_CPSR, h(0x3C4, 32))
    assert v.regs[kr.KVM_REG_ARM_CORE_PSTATE] == (0xA5 << 32) | 0x3C4
    v.regs[kr.KVM_REG_ARM_CORE_SP_EL1] = 0x77
    assert read_register(v, ar.REG_SP) == h(0, 64)  # EL1t: SP_EL0
    write_register(v, ar.REG_CPSR, h(0x3C5, 32))
    assert read_register(v, ar.REG_SP) == h(0x77, 64)  # EL1h: SP_EL1


def test_expedited(vcpu):
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_X(29), 0x4000_7000)
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_PC, 0x4000_0010)
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_SP_EL1, 0x4000_7ff0)
    assert expedited(vcpu) == {29: h(0x4000_7000, 64), 31: h(0x4000_7FF0, 64), 32: h(0x4000_0010, 64)}


# --------------------------------------------------------------------------------------------
# Real gdb


def run_gdb(*commands: str, timeout: float = 60) -> str:
    args = [GDB, "-nx", "-batch"]
    for c in commands:
        args += ["-ex", c]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def parse_register_table(out: str) -> dict[str, tuple[int, int, str]]:
    """`maint print registers` rows: name -> (number, size in bytes, type)."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"\s(\w+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+)", line)
        if m:
            rows[m[1]] = (int(m[2]), int(m[5]), m[6])
    return rows


@needs_gdb
def test_gdb_accepts_target_xml(tmp_path):
    path = tmp_path / "target.xml"
    path.write_text(ar.target_xml())
    out = run_gdb("set architecture aarch64", f"set tdesc filename {path}", "maint print registers",
                  "ptype $v0", "ptype $cpsr")
    assert "Could not load XML" not in out and "warning" not in out.lower(), out
    rows = parse_register_table(out)
    for r in ar.REGISTERS:
        assert r.name in rows, f"gdb did not list {r.name}\n{out}"
        assert rows[r.name][:2] == (r.gdb_regnum, r.bitsize // 8), r.name
    assert rows["v0"][2] == "aarch64v" and rows["cpsr"][2] == "cpsr_flags"
    # gdb's aarch64 port recognised the fpu feature: it derived the q/d/s pseudo registers
    assert {"q0", "d0", "s0", "w0"} <= set(rows)
    assert min(rows[n][0] for n in ("q0", "d0", "s0", "w0")) >= len(ar.REGISTERS)
    assert "union vnd d;" in out and "bool SP @0;" in out and "uint32_t EL @2-3;" in out


class MiniRsp:
    """Just enough of the GDB remote protocol for gdb to attach, fetch target.xml and the memory
    map with qXfer, and read registers with g and p. A test fixture, not the stub."""

    def __init__(self, vcpu, memory_map: str):
        self.vcpu = vcpu
        self.docs = {b"features": {b"target.xml": ar.target_xml().encode()},
                     b"memory-map": {b"": memory_map.encode()}}
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.packets: list[bytes] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.listener.accept()
            with conn:
                self._loop(conn)
        except BaseException as e:  # surfaced by the test
            self.error = e

    def _loop(self, conn):
        buf = b""
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            while True:
                buf = buf.lstrip(b"+")
                start = buf.find(b"$")
                end = buf.find(b"#", start)
                if start < 0 or end < 0 or len(buf) < end + 3:
                    break
                payload, buf = buf[start + 1:end], buf[end + 3:]
                conn.sendall(b"+")
                self.packets.append(payload)
                reply = self.handle(payload)
                if reply is None:
                    return
                conn.sendall(b"$" + reply + b"#" + b"%02x" % (sum(reply) & 0xFF))

    def handle(self, p: bytes) -> bytes | None:
        if p.startswith(b"qSupported"):
            return b"PacketSize=4000;qXfer:features:read+;qXfer:memory-map:read+"
        if p.startswith(b"qXfer:"):
            _, obj, _, annex, span = p.split(b":")
            offset, length = (int(x, 16) for x in span.split(b","))
            doc = self.docs[obj][annex]
            chunk = doc[offset:offset + length]
            for c in b"}$#*":
                chunk = chunk.replace(bytes([c]), bytes([0x7D, c ^ 0x20]))
            return (b"l" if offset + length >= len(doc) else b"m") + chunk
        if p == b"?":
            return b"S05"
        if p == b"g":
            return encode_g(self.vcpu)
        if p.startswith(b"p"):
            return read_register(self.vcpu, int(p[1:], 16))
        if p.startswith(b"H"):
            return b"OK"
        if p == b"qAttached":
            return b"1"
        if p in (b"D", b"k"):
            return None if p == b"k" else b"OK"
        if p.startswith(b"m"):
            return b"E01"
        return b""


@needs_gdb
def test_gdb_reads_target_xml_memory_map_and_registers_over_rsp():
    m = VirtMachine(console=lambda b: None)
    vcpu = m.vcpu
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_PC, RAM_BASE + 0x24)
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_X(7), 0x0123456789ABCDEF)
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_SP_EL1, RAM_BASE + 0x1230)
    vcpu.set_one_reg(kr.KVM_REG_ARM_CORE_V(2), 0x3FF0000000000000)  # 1.0 as the low double
    vcpu.set_one_reg(kr.sysreg_id("VBAR_EL1"), RAM_BASE + 0x800)
    server = MiniRsp(vcpu, mm.memory_map_xml(mm.regions_for(physical_layout(m.vm))))
    out = run_gdb("set architecture aarch64", f"target remote 127.0.0.1:{server.port}",
                  "info mem", "maint print remote-registers",
                  "p/x $x7", "p/x $sp", "p/x $pc", "p $v2.d.f[0]", "p/x $vbar_el1", "p/x $cpsr",
                  "p/x $midr_el1", "p $cpsr", "break *0x100", "disconnect")
    assert server.error is None, server.error
    assert any(p.startswith(b"qXfer:features:read:target.xml:") for p in server.packets), server.packets
    assert any(p.startswith(b"qXfer:memory-map:read::") for p in server.packets), server.packets
    # info mem: gdb parsed our memory map
    assert re.search(r"\d+\s+y\s+0x0+\s+0x0*4000000\s+ro\s+nocache", out), out
    assert re.search(r"\d+\s+y\s+0x0*4000000\s+0x0*8000000\s+ro\s+nocache", out), out
    assert re.search(r"\d+\s+y\s+0x0*40000000\s+0x0*48000000\s+rw\s+nocache", out), out
    # ... and so turns a breakpoint in ROM into a hardware one
    assert "automatically using hardware breakpoints for read-only addresses" in out, out
    # maint print remote-registers: gdb's regnum == remote regnum == catalogue, offsets in g
    rows = {}
    for line in out.splitlines():
        mt = re.match(r"\s(\w+)\s+(\d+)\s+\d+\s+\d+\s+(\d+)\s+\S+\s+(\d+)\s+(\d+)", line)
        if mt:
            rows[mt[1]] = (int(mt[2]), int(mt[3]), int(mt[4]), int(mt[5]))
    offset = 0
    for r in ar.REGISTERS:
        assert rows.get(r.name) == (r.gdb_regnum, r.bitsize // 8, r.gdb_regnum, offset), (r.name, out)
        offset += r.bitsize // 8
    assert "= 0x123456789abcdef" in out
    assert f"= {RAM_BASE + 0x1230:#x}" in out
    assert f"= {RAM_BASE + 0x24:#x}" in out
    assert "= 1\n" in out
    assert f"= {RAM_BASE + 0x800:#x}" in out
    assert f"= {vcpu.get_one_reg(kr.KVM_REG_ARM_CORE_PSTATE):#x}" in out
    assert f"= {vcpu.get_one_reg(kr.sysreg_id('MIDR_EL1')):#x}" in out
    assert "[ SP EL=1 F I A D" in out  # cpsr_flags decoded EL1h with DAIF masked
