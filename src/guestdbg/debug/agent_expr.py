"""gdb's agent expressions: the bytecode gdb sends with a breakpoint's condition (`Z0,...;X len,
bytes`) and its target-side commands (`;cmds:...`, dprintf's agent printf).

Pure and architecture-neutral: registers come through a callable (gdb's register numbers, the
`p` packet's), memory through another (bytes at a guest virtual address, or an exception), and
printf output through a third. Nothing here touches a vCPU, so a condition can never change the
guest.

The machine is gdb's ("Agent Expressions" in gdb's manual; opcodes as in gdb's ax.def, which
gdbserver's ax.cc interprets): a stack of unsigned 64-bit values, big-endian operands in the
bytecode, `end` returning the top. Differences from gdbserver's interpreter, all on bytecode
gdb does not generate:

- every error is an `AgentExprError` (gdbserver reads past its stack or bytecode): stack
  underflow or overflow (`MAX_STACK` entries), a jump or operand outside the bytecode, running
  off its end, more than `MAX_STEPS` operations (a loop), an unknown or floating-point opcode,
  division by zero, an unreadable memory reference, a register the target does not have, a
  bad printf;
- shifts by 64 or more give 0 (`lsh`, `rsh_unsigned`) or the sign (`rsh_signed`), and `ext`/
  `zero_ext` by 64 or more leave the value as it is (gdb emits `ext 64` after every 64-bit
  register read);
- the trace opcodes (`trace`, `trace_quick`, `trace16`, `tracev`, `tracenz`) collect nothing:
  there is no trace frame; they only take their operands off the stack;
- trace state variables (`getv`/`setv`) live in the dict given to `evaluate` (none: 0).

printf (opcode 0x34, gdb's dprintf with `set dprintf-style agent`) formats like C's printf
the conversions gdb's agent printf allows: %d %i %u %x %X %o %c %s %p and %%, with flags,
width, precision and the length modifiers hh h l ll z; `int` arguments are 32 bits, `long`,
`long long` and `size_t` 64. %s reads a NUL-terminated string from guest memory (at most
`MAX_STRING` bytes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, MutableMapping

MASK64 = (1 << 64) - 1
MAX_STACK = 100          # as gdbserver's STACK_MAX
MAX_STEPS = 100_000      # operations one evaluation may execute (gdb never emits a backward jump)
MAX_STRING = 4096        # bytes a printf %s reads at most

ReadRegister = Callable[[int], int]
ReadMemory = Callable[[int, int], bytes]
Output = Callable[[str], None]

# name -> (opcode, operand bytes). gdb's ax.def; 0x31 is a placeholder there ("invalid2").
OPCODES: dict[str, tuple[int, int]] = {
    "float": (0x01, 0), "add": (0x02, 0), "sub": (0x03, 0), "mul": (0x04, 0),
    "div_signed": (0x05, 0), "div_unsigned": (0x06, 0), "rem_signed": (0x07, 0),
    "rem_unsigned": (0x08, 0), "lsh": (0x09, 0), "rsh_signed": (0x0a, 0), "rsh_unsigned": (0x0b, 0),
    "trace": (0x0c, 0), "trace_quick": (0x0d, 1), "log_not": (0x0e, 0), "bit_and": (0x0f, 0),
    "bit_or": (0x10, 0), "bit_xor": (0x11, 0), "bit_not": (0x12, 0), "equal": (0x13, 0),
    "less_signed": (0x14, 0), "less_unsigned": (0x15, 0), "ext": (0x16, 1),
    "ref8": (0x17, 0), "ref16": (0x18, 0), "ref32": (0x19, 0), "ref64": (0x1a, 0),
    "ref_float": (0x1b, 0), "ref_double": (0x1c, 0), "ref_long_double": (0x1d, 0),
    "l_to_d": (0x1e, 0), "d_to_l": (0x1f, 0), "if_goto": (0x20, 2), "goto": (0x21, 2),
    "const8": (0x22, 1), "const16": (0x23, 2), "const32": (0x24, 4), "const64": (0x25, 8),
    "reg": (0x26, 2), "end": (0x27, 0), "dup": (0x28, 0), "pop": (0x29, 0), "zero_ext": (0x2a, 1),
    "swap": (0x2b, 0), "getv": (0x2c, 2), "setv": (0x2d, 2), "tracev": (0x2e, 2),
    "tracenz": (0x2f, 0), "trace16": (0x30, 2), "pick": (0x32, 1), "rot": (0x33, 0),
    "printf": (0x34, 3),  # nargs (1 byte), format length (2 bytes), then the format itself
}
NAMES: dict[int, str] = {op: name for name, (op, _) in OPCODES.items()}
OPERAND_SIZE: dict[int, int] = {op: size for op, size in OPCODES.values()}
_FLOATING = {OPCODES[n][0] for n in ("float", "ref_float", "ref_double", "ref_long_double", "l_to_d", "d_to_l")}


class AgentExprError(Exception):
    """The bytecode cannot be evaluated (a breakpoint condition that raises this counts as
    true: the user sees the stop)."""


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


@dataclass(frozen=True)
class AgentExpr:
    """One agent expression: its bytecode, as a `Z` packet's `X len,hex` carries it.
    Straight-line bytecode (what gdb compiles most conditions to) is also compiled once to a
    Python function (`compile_straight`), which `evaluate` runs first: the interpreter runs
    only when there is none, and again when it fails, to say why."""

    code: bytes
    _fast: Callable[[ReadRegister, ReadMemory], int] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fast", compile_straight(self.code))

    @classmethod
    def from_hex(cls, text: str | bytes) -> AgentExpr:
        data = text.decode("ascii") if isinstance(text, bytes) else text
        return cls(bytes.fromhex(data))

    def evaluate(self, read_register: ReadRegister, read_memory: ReadMemory, *,
                 output: Output | None = None, variables: MutableMapping[int, int] | None = None,
                 need_value: bool = True) -> int:
        fast = self._fast
        if fast is not None:
            try:
                return fast(read_register, read_memory)
            except Exception:  # noqa: BLE001 - the interpreter runs it again and says why
                pass
        return evaluate(self.code, read_register, read_memory, output=output, variables=variables,
                        need_value=need_value)

    def disassemble(self) -> str:
        return disassemble(self.code)

    def __str__(self) -> str:
        return self.disassemble()


def _operand(code: bytes, pc: int, size: int) -> int:
    if pc + size > len(code):
        raise AgentExprError(f"operand of the opcode at {pc - 1} runs past the end of the bytecode ({len(code)} bytes)")
    return int.from_bytes(code[pc:pc + size], "big")


def _jump(code: bytes, target: int, at: int) -> int:
    if not 0 <= target < len(code):
        raise AgentExprError(f"jump from {at} to {target}, outside the bytecode ({len(code)} bytes)")
    return target


def evaluate(code: bytes, read_register: ReadRegister, read_memory: ReadMemory, *,
             output: Output | None = None, variables: MutableMapping[int, int] | None = None,
             max_steps: int = MAX_STEPS, need_value: bool = True) -> int:
    """Run `code` and return the value `end` leaves on top of the stack (an unsigned 64-bit
    int; a command, `need_value=False`, may end with an empty stack: 0). `read_register(n)`
    gives register n (gdb's numbering) as an unsigned int or raises; `read_memory(addr, n)`
    gives n bytes (little-endian values) or raises; `output(text)` takes printf's text. Any
    failure is an AgentExprError, whatever the callables raised."""
    stack: list[int] = []
    push, pop = stack.append, stack.pop
    tsv = variables if variables is not None else {}
    pc = 0
    n = len(code)
    steps = 0
    try:
        while True:
            if pc >= n:
                raise AgentExprError(f"ran off the end of the bytecode ({n} bytes) without `end`")
            steps += 1
            if steps > max_steps:
                raise AgentExprError(f"more than {max_steps} operations (a loop?)")
            at = pc
            op = code[pc]
            pc += 1
            if op == 0x27:  # end
                if stack:
                    return stack[-1]
                if need_value:
                    raise AgentExprError("`end` with an empty stack: no value")
                return 0
            if op == 0x26:  # reg
                num = _operand(code, pc, 2)
                pc += 2
                try:
                    value = read_register(num)
                except Exception as e:
                    raise AgentExprError(f"register {num}: {e}") from None
                push(value & MASK64)
            elif 0x22 <= op <= 0x25:  # const8..const64
                size = 1 << (op - 0x22)
                push(_operand(code, pc, size))
                pc += size
            elif op == 0x16 or op == 0x2a:  # ext, zero_ext
                bits = _operand(code, pc, 1)
                pc += 1
                if bits == 0:
                    raise AgentExprError(f"{NAMES[op]} 0 at {at}")
                if bits < 64:
                    v = pop() & ((1 << bits) - 1)
                    if op == 0x16 and v >> (bits - 1):
                        v = (v - (1 << bits)) & MASK64
                    push(v)
                elif not stack:
                    raise IndexError
            elif 0x17 <= op <= 0x1a:  # ref8..ref64
                size = 1 << (op - 0x17)
                addr = pop()
                try:
                    data = read_memory(addr, size)
                except Exception as e:
                    raise AgentExprError(f"cannot read {size} bytes at {addr:#x}: {e}") from None
                if len(data) != size:
                    raise AgentExprError(f"cannot read {size} bytes at {addr:#x}")
                push(int.from_bytes(data, "little"))
            elif op == 0x20:  # if_goto
                target = _operand(code, pc, 2)
                if pop():
                    pc = _jump(code, target, at)
                else:
                    pc += 2
            elif op == 0x21:  # goto
                pc = _jump(code, _operand(code, pc, 2), at)
            elif 0x02 <= op <= 0x15 and op not in (0x0c, 0x0d, 0x0e, 0x12):
                b = pop()
                a = pop()
                push(_binary(op, a, b, at))
            elif op == 0x0e:  # log_not
                push(int(not pop()))
            elif op == 0x12:  # bit_not
                push(~pop() & MASK64)
            elif op == 0x28:  # dup
                push(stack[-1])
            elif op == 0x29:  # pop
                pop()
            elif op == 0x2b:  # swap
                b = pop()
                a = pop()
                push(b)
                push(a)
            elif op == 0x32:  # pick
                depth = _operand(code, pc, 1)
                pc += 1
                if depth >= len(stack):
                    raise AgentExprError(f"pick {depth} with {len(stack)} values on the stack")
                push(stack[-1 - depth])
            elif op == 0x33:  # rot: a b c => c a b
                c = pop()
                b = pop()
                a = pop()
                push(c)
                push(a)
                push(b)
            elif op == 0x2c:  # getv
                push(tsv.get(_operand(code, pc, 2), 0) & MASK64)
                pc += 2
            elif op == 0x2d:  # setv: the value stays on the stack
                tsv[_operand(code, pc, 2)] = stack[-1]
                pc += 2
            elif op == 0x0c or op == 0x2f:  # trace, tracenz: addr size =>
                pop()
                pop()
            elif op == 0x0d:  # trace_quick SIZE: addr => addr
                _operand(code, pc, 1)
                stack[-1]  # noqa: B018 (underflow check)
                pc += 1
            elif op == 0x30:  # trace16 SIZE: addr => addr
                _operand(code, pc, 2)
                stack[-1]  # noqa: B018
                pc += 2
            elif op == 0x2e:  # tracev
                _operand(code, pc, 2)
                pc += 2
            elif op == 0x34:  # printf
                pc = _printf(code, pc, stack, read_memory, output)
            elif op in _FLOATING:
                raise AgentExprError(f"floating-point opcode {NAMES[op]} at {at} is not supported")
            else:
                raise AgentExprError(f"unknown opcode {op:#04x} at {at}")
            if len(stack) > MAX_STACK:
                raise AgentExprError(f"stack overflow: more than {MAX_STACK} values")
    except IndexError:
        raise AgentExprError(f"stack underflow at {at} ({NAMES.get(code[at], hex(code[at]))})") from None


def _binary(op: int, a: int, b: int, at: int) -> int:
    if op == 0x02:
        return (a + b) & MASK64
    if op == 0x03:
        return (a - b) & MASK64
    if op == 0x04:
        return (a * b) & MASK64
    if 0x05 <= op <= 0x08:
        if b == 0:
            raise AgentExprError(f"division by zero at {at}")
        if op == 0x06:
            return a // b
        if op == 0x08:
            return a % b
        sa, sb = _signed(a), _signed(b)
        q = abs(sa) // abs(sb)  # C: truncate toward zero; the remainder takes the dividend's sign
        if (sa < 0) != (sb < 0):
            q = -q
        return (q if op == 0x05 else sa - q * sb) & MASK64
    if op == 0x09:
        return (a << b) & MASK64 if b < 64 else 0
    if op == 0x0a:
        return (_signed(a) >> min(b, 63)) & MASK64
    if op == 0x0b:
        return a >> b if b < 64 else 0
    if op == 0x0f:
        return a & b
    if op == 0x10:
        return a | b
    if op == 0x11:
        return a ^ b
    if op == 0x13:
        return int(a == b)
    if op == 0x14:
        return int(_signed(a) < _signed(b))
    if op == 0x15:
        return int(a < b)
    raise AgentExprError(f"unknown opcode {op:#04x} at {at}")


# ---------------------------------------------------------------------------- compiled
def _ref(read_memory: ReadMemory, addr: int, size: int) -> int:
    data = read_memory(addr, size)
    if len(data) != size:
        raise AgentExprError(f"cannot read {size} bytes at {addr:#x}")
    return int.from_bytes(data, "little")


# Binary operators compiled inline (the others call _binary): each takes and gives u64.
_INLINE = {0x02: "(({a}) + ({b})) & 0xFFFFFFFFFFFFFFFF", 0x03: "(({a}) - ({b})) & 0xFFFFFFFFFFFFFFFF",
           0x04: "(({a}) * ({b})) & 0xFFFFFFFFFFFFFFFF", 0x0f: "(({a}) & ({b}))", 0x10: "(({a}) | ({b}))",
           0x11: "(({a}) ^ ({b}))", 0x13: "int(({a}) == ({b}))", 0x15: "int(({a}) < ({b}))",
           0x14: "int(_signed({a}) < _signed({b}))"}
MAX_COMPILED = 256  # bytecode longer than this is interpreted


def compile_straight(code: bytes) -> Callable[[ReadRegister, ReadMemory], int] | None:
    """A Python function computing what `evaluate(code, ...)` returns, for bytecode with no
    jumps, trace variables or printf that ends in `end` with a value (gdb's conditions without
    && or ||, e.g. `$x0 == 77`, `*(int *)p > 3`); None for anything else, or for bytecode the
    interpreter would reject (it then says why). Values are evaluated left to right, as the
    interpreter does; a failure (a register or memory read, a division by zero) raises, and
    AgentExpr.evaluate then runs the interpreter for its AgentExprError."""
    if len(code) > MAX_COMPILED:
        return None
    stack: list[str] = []
    pc, n = 0, len(code)
    try:
        while pc < n:
            op, at = code[pc], pc
            pc += 1
            if op == 0x27:  # end
                if pc != n or len(stack) != 1:  # (a value under the top is computed, not returned)
                    return None
                break
            if op == 0x26:  # reg
                if pc + 2 > n:
                    return None
                stack.append(f"(r({int.from_bytes(code[pc:pc + 2], 'big')}) & 0xFFFFFFFFFFFFFFFF)")
                pc += 2
            elif 0x22 <= op <= 0x25:  # const8..const64
                size = 1 << (op - 0x22)
                if pc + size > n:
                    return None
                stack.append(str(int.from_bytes(code[pc:pc + size], "big")))
                pc += size
            elif op == 0x16 or op == 0x2a:  # ext, zero_ext
                if pc + 1 > n or code[pc] == 0:
                    return None
                bits = code[pc]
                pc += 1
                if bits < 64:
                    v = f"(({stack.pop()}) & {(1 << bits) - 1})"
                    stack.append(f"_sext({v}, {bits})" if op == 0x16 else v)
                elif not stack:
                    return None
            elif 0x17 <= op <= 0x1a:  # ref8..ref64
                stack.append(f"_ref(m, {stack.pop()}, {1 << (op - 0x17)})")
            elif 0x02 <= op <= 0x15 and op not in (0x0c, 0x0d, 0x0e, 0x12):
                b = stack.pop()
                a = stack.pop()
                if op in _INLINE:
                    # The left operand first, as the interpreter pushed it.
                    stack.append(_INLINE[op].format(a=a, b=b) if op != 0x14 else
                                 f"_lt_signed({a}, {b})")
                else:
                    stack.append(f"_binary({op}, {a}, {b}, {at})")
            elif op == 0x0e:  # log_not
                stack.append(f"int(not ({stack.pop()}))")
            elif op == 0x12:  # bit_not
                stack.append(f"(~({stack.pop()}) & 0xFFFFFFFFFFFFFFFF)")
            else:
                return None  # jumps, stack shuffles, trace, printf, floats, unknown: interpreted
            if len(stack) > MAX_STACK:
                return None
        else:
            return None  # no `end`
    except IndexError:  # underflow: the interpreter reports it
        return None
    source = f"lambda r, m: {stack[-1]}"
    return eval(source, {"_ref": _ref, "_binary": _binary, "_signed": _signed,  # noqa: S307 - built above
                         "_sext": _sext, "_lt_signed": _lt_signed})


def _sext(v: int, bits: int) -> int:
    return (v - (1 << bits)) & MASK64 if v >> (bits - 1) else v


def _lt_signed(a: int, b: int) -> int:
    return int(_signed(a) < _signed(b))


# ---------------------------------------------------------------------------- printf
# One conversion: flags, width, precision, length, conversion (C99's, as gdb's format_pieces).
_CONVERSION = re.compile(r"%([-+ #0]*)(\d*)(?:\.(\d*))?(hh|h|ll|l|z|j|t|L)?([a-zA-Z%])")


def _printf(code: bytes, pc: int, stack: list[int], read_memory: ReadMemory, output: Output | None) -> int:
    nargs = _operand(code, pc, 1)
    length = _operand(code, pc + 1, 2)
    pc += 3
    if length == 0 or pc + length > len(code):
        raise AgentExprError("printf's format string runs past the end of the bytecode")
    raw = code[pc:pc + length]
    pc += length
    if raw[-1] != 0:
        raise AgentExprError("printf's format string is not NUL-terminated")
    stack.pop()  # function
    stack.pop()  # channel
    args = [stack.pop() for _ in range(nargs)]  # the first argument was on top
    text = format_printf(unescape(raw[:-1].decode("utf-8", "replace")), args, read_memory)
    if output is not None:
        output(text)
    return pc


_ESCAPES = {"\\": "\\", "a": "\a", "b": "\b", "e": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
            "v": "\v", '"': '"'}


def unescape(fmt: str) -> str:
    """The backslash escapes of a printf format as gdb sends it (the text between the user's
    quotes, escapes untouched): gdbserver's format_pieces turns them into characters."""
    if "\\" not in fmt:
        return fmt
    out = []
    it = iter(fmt)
    for c in it:
        if c != "\\":
            out.append(c)
            continue
        e = next(it, "")
        if e not in _ESCAPES:
            raise AgentExprError(f"printf: unrecognized escape \\{e} in the format")
        out.append(_ESCAPES[e])
    return "".join(out)


def format_printf(fmt: str, args: list[int], read_memory: ReadMemory) -> str:
    """C printf of `fmt` with `args` (64-bit values; %s takes guest addresses), as gdb's agent
    printf allows it (see the module docstring). AgentExprError for a conversion it does not
    take or a wrong number of arguments."""
    out: list[str] = []
    pos = 0
    used = 0
    for m in _CONVERSION.finditer(fmt):
        out.append(fmt[pos:m.start()])
        pos = m.end()
        flags, width, precision, size, conv = m.groups()
        if conv == "%":
            out.append("%")
            continue
        if conv not in "diuxXocsp" or size in ("L", "j", "t"):
            raise AgentExprError(f"printf conversion {m.group(0)!r} is not supported")
        if used >= len(args):
            raise AgentExprError("printf: fewer arguments than conversions")
        value = args[used]
        used += 1
        spec = "%" + flags + width + ("." + precision if precision is not None else "")
        if conv == "s":
            text = "(null)" if value == 0 else _c_string(value, read_memory)
            out.append((spec + "s") % text)
        elif conv == "c":
            out.append((spec + "c") % chr(value & 0xFF))
        elif conv == "p":
            out.append(f"{value:#x}")
        else:
            bits = 64 if size in ("l", "ll", "z") else 16 if size == "h" else 8 if size == "hh" else 32
            v = value & ((1 << bits) - 1)
            if conv in "di":
                if v >> (bits - 1):
                    v -= 1 << bits
                out.append((spec + "d") % v)
            elif conv == "o" and "#" in flags:  # C's alternate octal form is a leading 0, not 0o
                out.append((spec.replace("#", "") + "s") % ("0" + format(v, "o") if v else "0"))
            else:
                out.append((spec + ("d" if conv == "u" else conv)) % v)
    out.append(fmt[pos:])
    if used != len(args):
        raise AgentExprError(f"printf: {len(args)} arguments for {used} conversions")
    return "".join(out)


def _c_string(addr: int, read_memory: ReadMemory) -> str:
    data = bytearray()
    while len(data) < MAX_STRING:
        try:
            chunk = read_memory(addr + len(data), 1)
        except Exception as e:
            raise AgentExprError(f"printf %s: cannot read the string at {addr:#x}: {e}") from None
        if not chunk or chunk[0] == 0:
            break
        data += chunk
    return data.decode("utf-8", "replace")


# ---------------------------------------------------------------------------- listing
def disassemble(code: bytes) -> str:
    """The bytecode as gdb's `maint agent` lists it ("reg 0; ext 64; const8 77; equal; end"),
    on one line; what cannot be decoded is shown as bytes."""
    parts = []
    pc = 0
    while pc < len(code):
        op = code[pc]
        name = NAMES.get(op)
        size = OPERAND_SIZE.get(op, 0)
        if name is None or pc + 1 + size > len(code):
            parts.append(f"<{code[pc:].hex()}>")
            break
        if op == 0x34:
            nargs, length = code[pc + 1], int.from_bytes(code[pc + 2:pc + 4], "big")
            fmt = code[pc + 4:pc + 4 + length].rstrip(b"\0").decode("utf-8", "replace")
            parts.append(f"printf {fmt!r}, {nargs} args")
            pc += 4 + length
            continue
        operand = f" {int.from_bytes(code[pc + 1:pc + 1 + size], 'big')}" if size else ""
        parts.append(name + operand)
        pc += 1 + size
    return "; ".join(parts)


# ---------------------------------------------------------------------------- Z packet options
@dataclass
class PointOptions:
    """What follows `Z0,ADDR,KIND` (gdb's remote protocol, "Z0"): conditions `;X len,hex...`
    (several OR-ed: the breakpoint stops if any is true) and `;cmds:persist,X len,hex...`."""

    conditions: list[AgentExpr] = field(default_factory=list)
    commands: list[AgentExpr] = field(default_factory=list)
    persist: bool = False


class OptionsError(ValueError):
    pass


def _expressions(text: str, where: str) -> list[AgentExpr]:
    """`X len,hex` repeated, with or without separators between them."""
    out = []
    pos = 0
    while pos < len(text):
        if text[pos] != "X":
            raise OptionsError(f"{where}: expected X LEN,BYTES at {text[pos:pos + 16]!r}")
        comma = text.find(",", pos)
        if comma < 0:
            raise OptionsError(f"{where}: expected X LEN,BYTES")
        try:
            length = int(text[pos + 1:comma], 16)
        except ValueError:
            raise OptionsError(f"{where}: bad length {text[pos + 1:comma]!r}") from None
        if length <= 0 or length > 0xFFFF or not all(c in "0123456789abcdefABCDEF" for c in text[comma + 1:comma + 1 + 2 * length]):
            raise OptionsError(f"{where}: bad bytecode length or hex")
        hexdata = text[comma + 1:comma + 1 + 2 * length]
        if len(hexdata) != 2 * length:
            raise OptionsError(f"{where}: {length} bytes announced, {len(hexdata) // 2} given")
        out.append(AgentExpr(bytes.fromhex(hexdata)))
        pos = comma + 1 + 2 * length
        if text[pos:pos + 1] in (";", ","):  # tolerate separators between expressions
            pos += 1
    return out


def parse_point_options(text: str) -> PointOptions:
    """The options of a Z packet, the text after its first `;` (empty: none). OptionsError for
    anything malformed (the packet is refused; nothing is inserted)."""
    options = PointOptions()
    if not text:
        return options
    conditions, _, commands = text.partition("cmds:")
    conditions = conditions.rstrip(";")
    if conditions:
        options.conditions = _expressions(conditions, "condition")
    if _:
        persist, comma, cmd_list = commands.partition(",")
        if not comma or persist not in ("0", "1"):
            raise OptionsError("expected cmds:PERSIST,X LEN,BYTES...")
        options.persist = persist == "1"
        options.commands = _expressions(cmd_list.rstrip(";"), "commands")
    return options

