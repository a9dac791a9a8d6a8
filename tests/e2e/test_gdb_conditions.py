"""Conditional breakpoints and dprintf evaluated in the stub, end to end with gdb-multiarch
(ConditionalBreakpoints+, BreakpointCommands+), and the agent-expression interpreter against
gdb's own compiler.

- `break bump if $x0 == 77` in guests/condloop stops exactly once, at bump(77), and the stub
  evaluated the condition (its counters in `monitor info slots`; gdb saw one stop);
- `dprintf bump,"...",$x0,...` with `set dprintf-style agent` prints every call through the
  stub (O packets) with no stop;
- a condition that reads guest memory;
- bad bytecode from a raw client counts as true;
- gdb-multiarch compiles random C expressions (`maint agent-eval`); the interpreter's value on
  random register and memory states (hypothesis) is the expression's C value.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestdbg.debug.agent_expr import OPCODES, AgentExprError, evaluate
from guestdbg.gdb.client import RspClient
from tests.helpers.gdb_harness import Stub, require_gdb, run_gdb
from tests.helpers.qemu_runner import elf_symbols

pytestmark = pytest.mark.gdb


@pytest.fixture(autouse=True)
def _need_gdb():
    require_gdb()


def slots_counts(text: str) -> tuple[int, int, int, int]:
    m = re.search(r"hits (\d+), evaluated (\d+), true (\d+), errors (\d+)", text)
    assert m, text
    return tuple(int(g) for g in m.groups())  # type: ignore[return-value]


def test_break_if_x0_stops_once_at_the_77th_call(guest_dir, tmp_path):
    elf = guest_dir / "condloop.elf"
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            ex("set var bump_calls = 500")
            check("break", ex("break bump if $x0 == 77"))
            check("cont", ex("continue"))
            check("x0", val("$x0"))
            check("n", val("n"))
            check("total", val("bump_total"))
            check("slots", ex("monitor info slots"))
            check("cont2", ex("continue"))
        """)
        status = stub.wait()
    r.assert_ok()
    assert r["x0"] == 77 and r["n"] == 77 and r["total"] == sum(range(77))
    assert "Breakpoint 1, bump (n=n@entry=77)" in r["cont"]
    # one stop in gdb; 78 evaluations in the stub, 1 true
    assert sum(1 for s in r.stops if s["type"] == "BreakpointEvent") == 1, r.stops
    assert slots_counts(r["slots"]) == (78, 78, 1, 0)
    assert "reg 0; ext 64; const8 77; equal; end" in r["slots"]
    assert status == 0 and stub.stdout == f"condloop: calls=500 total={sum(range(500))}\n"


def test_changed_condition_replaces_the_old_one(guest_dir, tmp_path):
    """gdb sends Z0 again at the same address when a condition changes (with breakpoints
    always inserted, while it is still inserted): the stub replaces the condition, and there
    is still one breakpoint; `condition 1` with no expression makes it unconditional."""
    elf = guest_dir / "condloop.elf"
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            ex("set var bump_calls = 200")
            ex("set breakpoint always-inserted on")
            ex("break bump if $x0 == 10")
            ex("continue")
            check("x0_a", val("$x0"))
            ex("condition 1 $x0 == 20")
            check("slots", ex("monitor info slots"))
            ex("continue")
            check("x0_b", val("$x0"))
            ex("condition 1")
            ex("continue")
            check("x0_c", val("$x0"))
            ex("delete")
            ex("continue")
        """)
        status = stub.wait()
    r.assert_ok()
    assert (r["x0_a"], r["x0_b"], r["x0_c"]) == (10, 20, 21)
    slots = r["slots"]
    # One breakpoint, decided in the run (no BRK patched: policy 18 of the manager).
    assert slots.count("software (") == 1 and slots.count("software (decided in the run") == 1
    assert "const8 20" in slots and "const8 10" not in slots, slots
    assert status == 0


@pytest.mark.qemu
def test_condloop_output_matches_qemu(guest_dir):
    from tests.helpers.qemu_runner import run_under_qemu
    from tests.helpers.support import Guest
    out, status = run_under_qemu(guest_dir / "condloop.elf")
    g = Guest(guest_dir / "condloop.elf")
    assert g.run_to_exit() == status == 0
    assert g.text == out == f"condloop: calls=10000 total={sum(range(10000))}\n"


def test_condition_reading_guest_memory(guest_dir, tmp_path):
    elf = guest_dir / "condloop.elf"
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            ex("set var bump_calls = 300")
            ex("break bump if bump_total == 2926 && bump_last == 76")
            check("cont", ex("continue"))
            check("x0", val("$x0"))
            check("slots", ex("monitor info slots"))
            ex("delete")
            check("cont2", ex("continue"))
        """)
        status = stub.wait()
    r.assert_ok()
    assert r["x0"] == 77
    assert slots_counts(r["slots"])[:3] == (78, 78, 1)
    assert "ref64" in r["slots"]
    assert status == 0


def test_dprintf_agent_prints_every_call_without_stopping(guest_dir, tmp_path):
    elf = guest_dir / "condloop.elf"
    with Stub(tmp_path, elf) as stub:
        r = run_gdb(stub, elf, """
            connect()
            ex("set var bump_calls = 50")
            ex("set dprintf-style agent")
            check("dprintf", ex('dprintf bump,"x0=%d total=%lu\\\\n",$x0,bump_total'))
            ex("break condloop.c:26")
            check("cont", ex("continue"))
            check("slots", ex("monitor info slots"))
            ex("delete")
            check("cont2", ex("continue"))
        """)
        status = stub.wait()
    r.assert_ok()
    lines = [f"x0={n} total={sum(range(n))}" for n in range(50)]
    assert [ln for ln in r["cont"].splitlines() if ln.startswith("x0=")] == lines, r["cont"]
    assert sum(1 for s in r.stops if s["type"] == "BreakpointEvent") == 1  # only the final break
    assert "commands run 50" in r["slots"] and "printf" in r["slots"]
    assert status == 0 and stub.stdout == f"condloop: calls=50 total={sum(range(50))}\n"


def test_bad_bytecode_from_a_raw_client_counts_as_true(guest_dir, tmp_path):
    elf = guest_dir / "condloop.elf"
    bump = elf_symbols(elf)["bump"]
    with Stub(tmp_path, elf) as stub:
        c = RspClient.connect(str(stub.sock_path))
        try:
            features = c.request(b"qSupported:swbreak+").split(b";")
            assert b"ConditionalBreakpoints+" in features and b"BreakpointCommands+" in features
            # unknown opcode, stack underflow, a jump out of the bytecode: each stops at the next call
            for n, bad in enumerate((b"fe", b"02", b"21010027")):
                # a Z0 again at the same address replaces the condition
                assert c.request(b"Z0,%x,4;X%x,%s" % (bump, len(bad) // 2, bad)) == b"OK"
                stop = c.request(b"vCont;c")
                assert stop.startswith(b"T05") and b"swbreak:" in stop, stop
                assert int.from_bytes(bytes.fromhex(c.request(b"p0").decode()), "little") == n
            c.send(b"qRcmd," + b"info slots".hex().encode())
            text = bytes.fromhex(c.receive()[1:].decode()).decode()
            assert c.receive() == b"OK"
            assert "hits 1, evaluated 1, true 1, errors 1" in text and "outside the bytecode" in text, text
            # options that do not parse are ignored (gdbserver's way): the breakpoint always stops
            assert c.request(b"Z0,%x,4;X2,26" % bump) == b"OK"
            assert c.request(b"vCont;c").startswith(b"T05")
            assert int.from_bytes(bytes.fromhex(c.request(b"p0").decode()), "little") == 3
            c.request(b"D")
        finally:
            c.close()
        assert stub.wait() == 0


# ---------------------------------------------------------------------------------------------
# the interpreter against gdb's compiler


TYPES: dict[str, tuple[bool, int]] = {  # name: (signed, bits)
    "long": (True, 64), "unsigned long": (False, 64), "int": (True, 32), "unsigned int": (False, 32),
    "short": (True, 16), "unsigned short": (False, 16), "signed char": (True, 8), "unsigned char": (False, 8),
}
MEM_BASE = 0x4020_0000
MEM_SIZE = 64
NREGS = 6


def wrap(v: int, t: tuple[bool, int]) -> int:
    signed, bits = t
    v &= (1 << bits) - 1
    return v - (1 << bits) if signed and v >> (bits - 1) else v


def promote(t):
    return t if t[1] >= 32 else (True, 32)


def common(a, b):
    a, b = promote(a), promote(b)
    if a == b:
        return a
    if a[1] != b[1]:  # the wider type holds every value of the narrower (LP64)
        return a if a[1] > b[1] else b
    return (False, a[1])  # same width, one unsigned


class DivZero(Exception):
    pass


@dataclass
class Expr:
    text: str
    type: tuple[bool, int]
    value: Callable[[list[int], bytes], int]  # (regs as signed, memory) -> C value


def gen(rng: random.Random, depth: int) -> Expr:
    if depth <= 0 or rng.random() < 0.25:
        kind = rng.choice(["reg", "reg", "const", "mem"])
        if kind == "reg":
            n = rng.randrange(NREGS)
            return Expr(f"$x{n}", (True, 64), lambda r, m, n=n: r[n])
        if kind == "const":
            c = rng.choice([0, 1, 2, 7, 77, 255, 1000, 65535, 70000, 2 ** 31 - 1, 5_000_000_000])
            return Expr(str(c), (True, 32) if c < 2 ** 31 else (True, 64), lambda r, m, c=c: c)
        tname = rng.choice(sorted(TYPES))
        t = TYPES[tname]
        off = rng.randrange(0, MEM_SIZE - t[1] // 8 + 1)
        return Expr(f"*({tname} *){MEM_BASE + off:#x}", t,
                    lambda r, m, off=off, t=t: wrap(int.from_bytes(m[off:off + t[1] // 8], "little"), t))
    kind = rng.choice(["bin", "bin", "bin", "cmp", "logic", "unary", "cast", "shift", "cond"])
    a = gen(rng, depth - 1)
    if kind == "unary":
        op = rng.choice(["-", "~", "!"])
        t = promote(a.type) if op != "!" else (True, 32)
        f = {"-": lambda v: wrap(-v, t), "~": lambda v: wrap(~v, t), "!": lambda v: int(v == 0)}[op]
        return Expr(f"{op}({a.text})", t, lambda r, m: f(a.value(r, m)))
    if kind == "cast":
        tname = rng.choice(sorted(TYPES))
        t = TYPES[tname]
        return Expr(f"(({tname})({a.text}))", t, lambda r, m: wrap(a.value(r, m), t))
    if kind == "shift":
        t = promote(a.type)
        k = rng.randrange(0, t[1])
        op = rng.choice(["<<", ">>"])
        return Expr(f"(({a.text}) {op} {k})", t,
                    lambda r, m: wrap(a.value(r, m) << k, t) if op == "<<" else wrap(wrap(a.value(r, m), t) >> k, t))
    b = gen(rng, depth - 1)
    if kind == "cond":
        # Both branches of one type: gdb's compiler gives `c ? int : long` the first branch's
        # type (C would convert to long), which is gdb's business, not the interpreter's.
        c = gen(rng, depth - 1)
        t = (True, 64)
        return Expr(f"(({a.text}) ? ((long)({b.text})) : ((long)({c.text})))", t,
                    lambda r, m: wrap(b.value(r, m), t) if a.value(r, m) else wrap(c.value(r, m), t))
    if kind == "logic":
        op = rng.choice(["&&", "||"])
        if op == "&&":
            return Expr(f"(({a.text}) && ({b.text}))", (True, 32), lambda r, m: int(bool(a.value(r, m)) and bool(b.value(r, m))))
        return Expr(f"(({a.text}) || ({b.text}))", (True, 32), lambda r, m: int(bool(a.value(r, m)) or bool(b.value(r, m))))
    t = common(a.type, b.type)
    if kind == "cmp":
        op = rng.choice(["==", "!=", "<", "<=", ">", ">="])
        cmp = {"==": lambda x, y: x == y, "!=": lambda x, y: x != y, "<": lambda x, y: x < y,
               "<=": lambda x, y: x <= y, ">": lambda x, y: x > y, ">=": lambda x, y: x >= y}[op]
        return Expr(f"(({a.text}) {op} ({b.text}))", (True, 32),
                    lambda r, m: int(cmp(wrap(a.value(r, m), t), wrap(b.value(r, m), t))))
    op = rng.choice(["+", "-", "*", "&", "|", "^", "/", "%"])

    def arith(r, m, op=op):
        x, y = wrap(a.value(r, m), t), wrap(b.value(r, m), t)
        if op in "/%":
            if y == 0:
                raise DivZero
            q = abs(x) // abs(y) * (1 if (x < 0) == (y < 0) else -1)
            return wrap(q if op == "/" else x - q * y, t)
        return wrap({"+": x + y, "-": x - y, "*": x * y, "&": x & y, "|": x | y, "^": x ^ y}[op], t)
    return Expr(f"(({a.text}) {op} ({b.text}))", t, arith)


def parse_listing(listing: str) -> bytes:
    """gdb's `maint agent` listing ("  5  const8 77") back to bytecode, offsets checked."""
    out = bytearray()
    for line in listing.splitlines():
        m = re.match(r"\s*(\d+)\s+(\w+)(?:\s+(-?\d+))?\s*$", line)
        if not m:
            continue
        offset, name, arg = int(m.group(1)), m.group(2), m.group(3)
        assert offset == len(out), (offset, len(out), listing)
        op, size = OPCODES[name]
        out.append(op)
        if size:
            out += (int(arg) & ((1 << (8 * size)) - 1)).to_bytes(size, "big")
    return bytes(out)


@pytest.fixture(scope="module")
def compiled(guest_dir, tmp_path_factory) -> list[tuple[Expr, bytes]]:
    """150 random expressions, compiled by gdb-multiarch against a live stub (gdb needs a
    frame to compile register reads)."""
    rng = random.Random(1311)
    exprs = [gen(rng, rng.randint(1, 4)) for _ in range(150)]
    elf = guest_dir / "condloop.elf"
    tmp = tmp_path_factory.mktemp("agent_compile")
    with Stub(tmp, elf) as stub:
        body = "connect()\nout = []\n"
        for i, e in enumerate(exprs):
            body += f"out.append(exs({('maint agent-eval ' + e.text)!r}))\n"
        body += "check('listings', out)\nex('kill')\n"
        r = run_gdb(stub, elf, body, timeout=120)
    r.assert_ok()
    listings = r["listings"]
    assert len(listings) == len(exprs)
    return [(e, parse_listing(text)) for e, text in zip(exprs, listings)]


REGS = st.lists(st.one_of(st.integers(-(2 ** 63), 2 ** 63 - 1), st.integers(-300, 300)),
                min_size=NREGS, max_size=NREGS)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(regs=REGS, mem=st.binary(min_size=MEM_SIZE, max_size=MEM_SIZE))
def test_interpreter_agrees_with_gdbs_compiler(compiled, regs, mem):
    def read_register(n: int) -> int:
        return regs[n] & (2 ** 64 - 1)

    def read_memory(addr: int, n: int) -> bytes:
        assert MEM_BASE <= addr and addr + n <= MEM_BASE + MEM_SIZE, hex(addr)
        return mem[addr - MEM_BASE:addr - MEM_BASE + n]

    for expr, code in compiled:
        try:
            want = expr.value(regs, mem)
        except DivZero:
            with pytest.raises(AgentExprError, match="division by zero"):
                evaluate(code, read_register, read_memory)
            continue
        got = evaluate(code, read_register, read_memory)
        assert wrap(got, expr.type) == want, (expr.text, code.hex(), regs)


# ---------------------------------------------------------------------------------------------
# x86-64 on KVM: the same interpreter, gdb's amd64 register numbers


@pytest.mark.kvm
def test_x86_kvm_condition_through_gdb(tmp_path_factory, tmp_path):
    import subprocess
    from pathlib import Path

    from tests.helpers.support import kvm_unavailable_reason
    reason = kvm_unavailable_reason()
    if reason:
        pytest.skip(f"/dev/kvm cannot be used: {reason}")
    out = tmp_path_factory.mktemp("x86_cond")
    x86 = Path(__file__).resolve().parents[2] / "guests" / "x86"
    proc = subprocess.run(["make", "-C", str(x86), f"O={out}", "-j2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    elf = out / "bp_targets.elf"
    bp_b = elf_symbols(elf)["bp_b"]
    with Stub(tmp_path, elf, extra_args=("--arch", "x86_64")) as stub:
        # (gdb 13 compiles `(long)&bp_b` to the constant 0: the address is given as a number)
        r = run_gdb(stub, elf, """
            connect()
            ex("break bp_b if bp_b_count == 2 && $rip == BP_B && $rsp != 0")
            check("cont", ex("continue"))
            check("count", val("bp_b_count"))
            check("slots", ex("monitor info slots"))
            ex("delete")
            ex("continue")
        """.replace("BP_B", hex(bp_b)))
        status = stub.wait()
    r.assert_ok()
    assert r["count"] == 2
    assert slots_counts(r["slots"])[:3] == (3, 3, 1), r["slots"]
    assert "reg 16" in r["slots"] and "reg 7" in r["slots"]  # rip, rsp in gdb's amd64 order
    assert status == 0 and stub.stdout == "bp_targets: a=3 b=3 c=3\n"
