"""gdb's agent-expression interpreter (debug/agent_expr.py) and the breakpoint condition table
(debug/conditions.py), pure: registers and memory are dicts.

The interpreter is also checked against gdb's own compiler (gdb-multiarch `maint agent-eval`)
in tests/e2e/test_gdb_conditions.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestdbg.debug.agent_expr import (
    MASK64, MAX_STACK, OPCODES, AgentExpr, AgentExprError, OptionsError, disassemble, evaluate,
    format_printf, parse_point_options, unescape,
)
from guestdbg.debug.conditions import ConditionTable, StopConditions, StopView

U64 = st.integers(0, MASK64)


def asm(*items) -> bytes:
    """("reg", 0), "add", ("const8", 5), ... -> bytecode; big-endian operands as gdb emits them."""
    out = bytearray()
    for item in items:
        name, *args = (item,) if isinstance(item, str) else item
        op, size = OPCODES[name]
        out.append(op)
        if name == "printf":
            nargs, fmt = args[0]
            raw = fmt.encode() + b"\0"
            out += bytes([nargs]) + len(raw).to_bytes(2, "big") + raw
        elif size:
            out += args[0].to_bytes(size, "big")
    return bytes(out)


class Target:
    def __init__(self, regs=None, mem=None):
        self.regs = regs or {}
        self.mem = mem or {}
        self.printed: list[str] = []
        self.reads: list[tuple[int, int]] = []

    def reg(self, n: int) -> int:
        return self.regs[n]

    def read(self, addr: int, n: int) -> bytes:
        self.reads.append((addr, n))
        if not all(addr + i in self.mem for i in range(n)):
            raise OSError(f"no memory at {addr:#x}")
        return bytes(self.mem[addr + i] for i in range(n))

    def run(self, code: bytes, **kw) -> int:
        return evaluate(code, self.reg, self.read, output=self.printed.append, **kw)


def s64(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


def c_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


# ---------------------------------------------------------------------------------------------
# the operations


def test_condition_gdb_compiles_for_x0_equal_77():
    """`break f if $x0 == 77` as gdb-multiarch 13 sends it: reg 0; ext 64; const8 77; equal; end."""
    code = bytes.fromhex("2600001640224d1327")
    assert disassemble(code) == "reg 0; ext 64; const8 77; equal; end"
    assert Target({0: 77}).run(code) == 1
    assert Target({0: 78}).run(code) == 0


BINARY = {
    "add": lambda a, b: (a + b) & MASK64,
    "sub": lambda a, b: (a - b) & MASK64,
    "mul": lambda a, b: (a * b) & MASK64,
    "div_unsigned": lambda a, b: a // b,
    "rem_unsigned": lambda a, b: a % b,
    "div_signed": lambda a, b: c_div(s64(a), s64(b)) & MASK64,
    "rem_signed": lambda a, b: (s64(a) - c_div(s64(a), s64(b)) * s64(b)) & MASK64,
    "lsh": lambda a, b: (a << b) & MASK64 if b < 64 else 0,
    "rsh_unsigned": lambda a, b: a >> b if b < 64 else 0,
    "rsh_signed": lambda a, b: (s64(a) >> min(b, 63)) & MASK64,
    "bit_and": lambda a, b: a & b,
    "bit_or": lambda a, b: a | b,
    "bit_xor": lambda a, b: a ^ b,
    "equal": lambda a, b: int(a == b),
    "less_signed": lambda a, b: int(s64(a) < s64(b)),
    "less_unsigned": lambda a, b: int(a < b),
}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(BINARY)), U64, st.one_of(U64, st.integers(0, 70)))
def test_binary_operations_are_c_on_64_bits(name, a, b):
    """a OP b with a pushed first (from registers), as gdb orders operands; C semantics on
    64-bit values: wrap-around, truncating signed division, the remainder's sign the dividend's."""
    code = asm(("reg", 0), ("reg", 1), name, "end")
    t = Target({0: a, 1: b})
    if name.startswith(("div", "rem")) and b == 0:
        with pytest.raises(AgentExprError, match="division by zero"):
            t.run(code)
        return
    assert t.run(code) == BINARY[name](a, b)


@settings(max_examples=200, deadline=None)
@given(U64, st.integers(1, 80))
def test_ext_and_zero_ext(v, bits):
    t = Target({0: v})
    got_sign = t.run(asm(("reg", 0), ("ext", bits), "end"))
    got_zero = t.run(asm(("reg", 0), ("zero_ext", bits), "end"))
    if bits >= 64:
        assert got_sign == got_zero == v
    else:
        low = v & ((1 << bits) - 1)
        assert got_zero == low
        assert got_sign == (low - (1 << bits) if low >> (bits - 1) else low) & MASK64


@given(U64)
def test_unary_and_constants(v):
    t = Target({0: v})
    assert t.run(asm(("reg", 0), "log_not", "end")) == int(v == 0)
    assert t.run(asm(("reg", 0), "bit_not", "end")) == ~v & MASK64
    assert t.run(asm(("const64", v), "end")) == v
    assert t.run(asm(("const32", v & 0xFFFFFFFF), "end")) == v & 0xFFFFFFFF
    assert t.run(asm(("const16", v & 0xFFFF), "end")) == v & 0xFFFF
    assert t.run(asm(("const8", v & 0xFF), "end")) == v & 0xFF


def test_memory_references_are_little_endian():
    mem = {0x1000 + i: b for i, b in enumerate(bytes(range(1, 9)))}
    t = Target(mem=mem)
    for name, size in (("ref8", 1), ("ref16", 2), ("ref32", 4), ("ref64", 8)):
        assert t.run(asm(("const16", 0x1000), name, "end")) == int.from_bytes(bytes(range(1, 1 + size)), "little")
    with pytest.raises(AgentExprError, match="cannot read 4 bytes at 0x1006"):
        t.run(asm(("const16", 0x1006), "ref32", "end"))


def test_stack_operations():
    t = Target()
    c = lambda v: ("const8", v)  # noqa: E731
    assert t.run(asm(c(1), c(2), "swap", "sub", "end")) == 1            # 2 - 1
    assert t.run(asm(c(7), "dup", "add", "end")) == 14
    assert t.run(asm(c(7), c(9), "pop", "end")) == 7
    assert t.run(asm(c(1), c(2), c(3), ("pick", 2), "end")) == 1
    assert t.run(asm(c(1), c(2), c(3), ("pick", 0), "end")) == 3
    # rot: a b c => c a b
    assert [t.run(asm(c(1), c(2), c(3), "rot", *(["pop"] * k), "end")) for k in range(3)] == [2, 1, 3]


def test_jumps():
    t = Target({0: 0, 1: 5})
    # if x0 { 10 } else { 20 }
    code = asm(("reg", 0), ("if_goto", 11), ("const8", 20), ("goto", 13), ("const8", 10), "end")
    assert disassemble(code) == "reg 0; if_goto 11; const8 20; goto 13; const8 10; end"
    assert t.run(code) == 20
    t.regs[0] = 3
    assert t.run(code) == 10


def test_trace_state_variables_and_trace_ops():
    t = Target({0: 5})
    assert t.run(asm(("getv", 3), "end")) == 0
    variables: dict[int, int] = {}
    assert t.run(asm(("const8", 9), ("setv", 3), "pop", ("getv", 3), "end"), variables=variables) == 9
    assert variables == {3: 9}
    # trace ops collect nothing here and only take their operands
    assert t.run(asm(("const8", 1), ("const8", 2), ("const8", 4), "trace", "end")) == 1
    assert t.run(asm(("const8", 1), ("trace_quick", 4), ("trace16", 8), ("tracev", 1), "end")) == 1


@pytest.mark.parametrize("code, message", [
    (asm("add", "end"), "underflow"),
    (asm(("const8", 1), "add", "end"), "underflow"),
    (asm("end"), "empty stack"),
    (asm("pop", "end"), "underflow"),
    (asm(("const8", 1)), "ran off the end"),
    (bytes([0x24, 1, 2]), "runs past the end"),
    (asm(("const8", 1), ("if_goto", 200), "end"), "outside the bytecode"),
    (asm(("goto", 0x7000)), "outside the bytecode"),
    (asm(("goto", 0)), "more than"),
    (bytes([0xFE]), "unknown opcode 0xfe"),
    (bytes([0x31]), "unknown opcode 0x31"),
    (asm("float"), "floating-point"),
    (asm(("const8", 1), "l_to_d", "end"), "floating-point"),
    (asm(("reg", 99), "end"), "register 99"),
    (asm(("const8", 1), ("pick", 5), "end"), "pick 5"),
    (asm(*[("const8", 1)] * (MAX_STACK + 1), "end"), "stack overflow"),
    (asm(("const8", 0), ("ext", 0), "end"), "ext 0"),
    (asm(("const8", 1), ("const8", 0), "div_signed", "end"), "division by zero"),
    (asm(("const8", 1), ("const8", 0), "rem_unsigned", "end"), "division by zero"),
    (asm(("const8", 0), ("const8", 0), ("printf", (0, "x\\q")), "end"), "escape"),
    (asm(("const8", 0), ("const8", 0), ("printf", (0, "%d")), "end"), "fewer arguments"),
    (asm(("const8", 1), ("const8", 0), ("const8", 0), ("printf", (1, "none")), "end"), "1 arguments for 0"),
    (asm(("const8", 1), ("const8", 0), ("const8", 0), ("printf", (1, "%f")), "end"), "not supported"),
])
def test_bad_bytecode_is_an_error(code, message):
    with pytest.raises(AgentExprError, match=message):
        Target({0: 1}).run(code, need_value=True)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64), st.dictionaries(st.integers(0, 40), U64), st.integers(0, 2 ** 16))
def test_any_bytes_give_a_value_or_an_agent_error(code, regs, base):
    """Whatever the bytes: a value, or AgentExprError; nothing else escapes, nothing but the
    read callables is called, and the step limit ends loops."""
    t = Target(regs, {base + i: i & 0xFF for i in range(64)})
    try:
        value = t.run(code, max_steps=2000)
    except AgentExprError:
        return
    assert 0 <= value <= MASK64


# ---------------------------------------------------------------------------------------------
# printf (dprintf with `set dprintf-style agent`)


def test_printf_as_gdb_compiles_dprintf():
    """dprintf bump,"n=%d last=%lu\\n",$x0,bump_last, as gdb-multiarch 13 sends it in ;cmds:
    the arguments pushed last first, then channel and function (0, 0), then printf; the
    format's escapes are the user's text, for the agent to interpret (gdbserver does)."""
    code = bytes.fromhex("24401010901a260000164022002200340200106e3d2564206c6173743d256c755c6e0027")
    assert disassemble(code).startswith("const32 1074794640; ref64; reg 0; ext 64; const8 0; const8 0; printf")
    mem = {0x40101090 + i: b for i, b in enumerate((2 ** 64 - 2).to_bytes(8, "little"))}
    t = Target({0: 2 ** 64 - 3}, mem)
    assert t.run(code, need_value=False) == 0
    assert t.printed == ["n=-3 last=18446744073709551614\n"]


def test_printf_conversions():
    mem = {0x2000 + i: b for i, b in enumerate(b"guest\0")}
    read = Target(mem=mem).read
    assert format_printf("%s|%8s|%-3s|%s", [0x2000, 0x2000, 0x2000, 0], read) == "guest|   guest|guest|(null)"
    assert format_printf("%d %u %x %X %o %#x %#o %c %%", [-1 & MASK64, 2 ** 32 - 1, 255, 255, 8, 255, 8, 65],
                         read) == "-1 4294967295 ff FF 10 0xff 010 A %"
    assert format_printf("%ld %lu %lld %zx %hd %hhu %08lx %-5d| %+d %.3d", [
        -1 & MASK64, MASK64, 2 ** 40, 2 ** 40, 0x18000, 0x1FF, 0xABC, 7, 7, 7], read) == \
        "-1 18446744073709551615 1099511627776 10000000000 -32768 255 00000abc 7    | +7 007"
    assert format_printf("%p", [0x1234], read) == "0x1234"
    assert unescape(r"a\tb\n\\\"") == 'a\tb\n\\"'
    with pytest.raises(AgentExprError, match="cannot read the string"):
        format_printf("%s", [0x9999], read)


# ---------------------------------------------------------------------------------------------
# Z packet options


def test_point_options():
    assert parse_point_options("") .conditions == []
    o = parse_point_options("X9,2600001640224d1327")
    assert [c.code.hex() for c in o.conditions] == ["2600001640224d1327"] and not o.commands
    # several conditions, back to back as gdb sends them (OR-ed), then commands
    o = parse_point_options("X2,2227X3,22012;cmds:1,X2,2227X2,2300".replace("22012", "220127"))
    assert [c.code for c in o.conditions] == [bytes.fromhex("2227"), bytes.fromhex("220127")]
    assert [c.code for c in o.commands] == [bytes.fromhex("2227"), bytes.fromhex("2300")] and o.persist
    o = parse_point_options("cmds:0,X1,27")
    assert not o.conditions and [c.code for c in o.commands] == [b"\x27"] and not o.persist


@pytest.mark.parametrize("text", ["Y1,27", "X1,2", "X2,27", "X,27", "Xzz,27", "X1,2g", "X0,", "cmds:2,X1,27",
                                  "cmds:X1,27", "X1,27;cmds:1;X1", "X10000,27"])
def test_bad_point_options_are_refused(text):
    with pytest.raises(OptionsError):
        parse_point_options(text)


# ---------------------------------------------------------------------------------------------
# the condition table


def view(regs: dict[int, int], out: list[str], pc: int = 0x100) -> StopView:
    names = {"x0": 0, "x1": 1}
    return StopView(pc, 0, lambda n: regs[n], Target(mem={}).read, lambda name: names[name], out.append)


X0_IS_3 = AgentExpr(asm(("reg", 0), ("const8", 3), "equal", "end"))
X1_IS_4 = AgentExpr(asm(("reg", 1), ("const8", 4), "equal", "end"))
BAD = AgentExpr(bytes([0xFE]))


def test_conditions_or_ed_and_counted():
    table = ConditionTable()
    key = ("break", 0x100, 0)
    table.set(key, StopConditions.from_agent([X0_IS_3, X1_IS_4]))
    out: list[str] = []
    assert table.should_stop([key], view({0: 3, 1: 0}, out))
    assert table.should_stop([key], view({0: 0, 1: 4}, out))
    assert not table.should_stop([key], view({0: 0, 1: 0}, out))
    record = table.get(key)
    assert (record.hits, record.evaluations, record.true, record.errors) == (3, 3, 2, 0)
    # a point with no record (unconditional) stops; a stop at several points stops if any says so
    assert table.should_stop([("break", 0x200, 0)], view({}, out))
    assert table.should_stop([key, ("watch", 0x10, 4)], view({0: 0, 1: 0}, out))


def test_errors_count_as_true_and_are_kept():
    table = ConditionTable()
    key = ("break", 0x100, 0)
    table.set(key, StopConditions.from_agent([BAD]))
    assert table.should_stop([key], view({}, []))
    record = table.get(key)
    assert record.errors == 1 and "unknown opcode" in record.last_error
    table.set(key, lambda v: 1 / 0)
    assert table.should_stop([key], view({}, []))
    assert "division by zero" in table.get(key).last_error
    assert "last error" in "\n".join(table.report())


def test_commands_run_when_the_condition_holds_and_never_stop():
    table = ConditionTable()
    out: list[str] = []
    table.output = out.append
    key = ("break", 0x100, 0)
    hello = AgentExpr(asm(("reg", 0), ("const8", 0), ("const8", 0), ("printf", (1, "x0=%d\\n")), "end"))
    table.set(key, StopConditions.from_agent([X0_IS_3], [hello]))
    assert not table.should_stop([key], view({0: 3}, out))
    assert not table.should_stop([key], view({0: 4}, out))
    assert out == ["x0=3\n"]
    # a failing command says so and the guest runs on
    table.set(key, StopConditions.from_agent([], [BAD]))
    assert not table.should_stop([key], view({0: 3}, out))
    assert "failed" in out[-1] and table.get(key).errors == 1


def test_python_conditions_read_registers_by_name():
    table = ConditionTable()
    key = ("break", 0x100, 0)
    table.set(key, lambda v: v.read_register("x1") == 4)
    assert table.should_stop([key], view({1: 4}, []))
    assert not table.should_stop([key], view({1: 5}, []))
    with pytest.raises(TypeError):
        table.set(key, 42)  # type: ignore[arg-type]


def test_reinsertion_keeps_counts_and_a_new_condition_resets_them():
    """gdb takes its breakpoints out at every stop and inserts them again (conditions and all)
    on resume: the same condition goes on counting; another one starts afresh."""
    table = ConditionTable()
    key = ("break", 0x100, 0)
    table.set(key, StopConditions.from_agent([X0_IS_3]))
    table.should_stop([key], view({0: 1}, []))
    table.remove(key)
    assert not table and table.get(key).hits == 1 and "not inserted now" in "\n".join(table.report())
    table.set(key, StopConditions.from_agent([AgentExpr(X0_IS_3.code)]))
    assert table.get(key).hits == 1 and table.get(key).inserted
    table.set(key, StopConditions.from_agent([X1_IS_4]))
    assert table.get(key).hits == 0
    table.set(key, None)  # Z0 again with no condition: unconditional
    assert not table and table.get(key).key == key
    table.clear()
    assert not table.active
