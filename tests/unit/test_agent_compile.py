"""The compiled form of straight-line agent bytecode (agent_expr.compile_straight), against the
interpreter: the same value, or both fail (AgentExpr.evaluate then gives the interpreter's
AgentExprError); and exactly the bytecode it can take is compiled."""

from __future__ import annotations

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from guestdbg.debug.agent_expr import MASK64, AgentExpr, AgentExprError, compile_straight, evaluate
from tests.unit.test_agent_expr import Target, asm

U64 = st.integers(0, MASK64)
# Straight-line operations (what compile_straight takes) and a few it leaves to the interpreter.
LEAF = st.one_of(st.tuples(st.just("reg"), st.integers(0, 12)),
                 st.tuples(st.sampled_from(["const8", "const16", "const32", "const64"]), U64),
                 st.tuples(st.just("const64"), st.sampled_from([0, 1, 2, 63, 64, MASK64, 1 << 63])))
UNARY = st.one_of(st.sampled_from(["log_not", "bit_not", "ref8", "ref16", "ref32", "ref64"]),
                  st.tuples(st.sampled_from(["ext", "zero_ext"]), st.integers(0, 70)))
BINARY = st.sampled_from(["add", "sub", "mul", "div_signed", "div_unsigned", "rem_signed", "rem_unsigned",
                          "lsh", "rsh_signed", "rsh_unsigned", "bit_and", "bit_or", "bit_xor", "equal",
                          "less_signed", "less_unsigned"])
OTHER = st.sampled_from(["dup", "swap", "pop", ("if_goto", 0), ("goto", 0), ("getv", 1)])


def _flatten(tree) -> list:
    """An expression tree (leaf, (tree, unary), (tree, tree, binary)) in stack order."""
    if isinstance(tree, list):
        return [op for t in tree[:-1] for op in _flatten(t)] + [tree[-1]]
    return [tree]


# Well-formed expressions (most of them compile; the failures are in their reads and divisions).
EXPRESSION = st.recursive(LEAF, lambda sub: st.one_of(st.builds(lambda a, u: [a, u], sub, UNARY),
                                                      st.builds(lambda a, b, o: [a, b, o], sub, sub, BINARY)),
                          max_leaves=8).map(_flatten)
PROGRAM = st.one_of(EXPRESSION, EXPRESSION, EXPRESSION, st.lists(st.one_of(LEAF, UNARY, BINARY, OTHER), min_size=0, max_size=12))


def _fit(item):
    """Operands cut to their size (hypothesis draws any u64)."""
    if isinstance(item, tuple) and item[0].startswith("const"):
        bits = {"const8": 8, "const16": 16, "const32": 32, "const64": 64}[item[0]]
        return item[0], item[1] & ((1 << bits) - 1)
    return item


@settings(max_examples=800, deadline=None)
@given(PROGRAM, st.sampled_from([True] * 9 + [False]),
       st.dictionaries(st.integers(0, 12), U64), st.integers(0, 48))
def test_compiled_equals_interpreted(items, with_end, regs, base):
    code = asm(*[_fit(i) for i in items], *(["end"] if with_end else []))
    mem = {base + i: (i * 37 + 11) & 0xFF for i in range(64)}
    t = Target(regs, mem)
    try:
        expected: int | type = evaluate(code, t.reg, t.read)
    except AgentExprError:
        expected = AgentExprError
    fast = compile_straight(code)
    if fast is not None:
        try:
            got: int | type = fast(t.reg, t.read)
        except Exception:  # noqa: BLE001 - any failure: the interpreter must fail too
            got = AgentExprError
        assert got == expected, (code.hex(), got, expected)
    # Through AgentExpr.evaluate: the interpreter's value or its error, compiled or not.
    try:
        through = AgentExpr(code).evaluate(t.reg, t.read)
    except AgentExprError:
        through = AgentExprError
    assert through == expected


def test_what_is_compiled():
    assert compile_straight(asm(("reg", 0), ("ext", 64), ("const16", 77), "equal", "end")) is not None
    assert compile_straight(asm(("const32", 0x1000), "ref64", ("const8", 3), "less_signed", "end")) is not None
    # jumps (gdb's && and ||), stack shuffles, printf, a missing end, two values left: interpreted
    assert compile_straight(asm(("reg", 0), ("if_goto", 5), ("const8", 0), "end", ("const8", 1), "end")) is None
    assert compile_straight(asm(("reg", 0), "dup", "add", "end")) is None
    assert compile_straight(asm(("reg", 0), ("const8", 0), ("printf", (1, "%d")), "end")) is None
    assert compile_straight(asm(("reg", 0))) is None
    assert compile_straight(asm(("reg", 0), ("reg", 1), "end")) is None
    assert compile_straight(asm("add", "end")) is None
    assert compile_straight(asm(("reg", 0), ("ext", 0), "end")) is None


def test_a_failing_compiled_read_gives_the_interpreters_error():
    t = Target({0: 5}, {})
    with pytest.raises(AgentExprError, match="cannot read 4 bytes at 0x2000"):
        AgentExpr(asm(("const32", 0x2000), "ref32", "end")).evaluate(t.reg, t.read)
    with pytest.raises(AgentExprError, match="register 7"):
        AgentExpr(asm(("reg", 7), "end")).evaluate(t.reg, t.read)
