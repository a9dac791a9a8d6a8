"""The import direction of ARCHITECTURE.md: a layer imports only from itself and the layers
below it, the two back ends never import each other, and no module-level import cycle exists.

Every import counts, including those inside functions (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Lowest first. A module belongs to the first layer whose prefix matches its dotted name.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("uapi", ("guestdbg.kvm", "guestdbg.vmapi")),
    ("arch", ("guestdbg.arm", "guestdbg.x86")),
    ("backends", ("guestdbg.backends",)),
    ("board", ("guestdbg.board",)),
    ("debug", ("guestdbg.debug", "guestdbg.snapshot")),
    ("gdb", ("guestdbg.gdb",)),
    ("app", ("guestdbg.cli", "guestdbg.__main__", "guestdbg")),
)
BACKENDS = ("guestdbg.backends.unicorn_arm64", "guestdbg.backends.kvm_x86")


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(_under(module, p) for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and ARCHITECTURE.md")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported guestdbg module, at module level?) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    top_level = _module_level_imports(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base_package = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_package + ([node.module] if node.module else []))
            # `from guestdbg import kvm` imports the module guestdbg.kvm.
            names = [f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base for alias in node.names]
        else:
            continue
        for name in names:
            if _under(name, "guestdbg"):
                found.append((name, id(node) in top_level))
    return found


def _is_module(dotted: str) -> bool:
    path = SRC.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _module_level_imports(tree: ast.Module) -> set[int]:
    """The imports that run when the module is imported: not inside functions, and not under
    `if TYPE_CHECKING:` (those never run)."""
    found: set[int] = set()
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.add(id(node))
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))
    return found


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "guestdbg").rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(all_modules()))
def test_imports_point_down(module):
    path = all_modules()[module]
    mine = layer_of(module)
    for target, _ in imports(path):
        theirs = layer_of(target)
        assert theirs <= mine, (f"{module} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]}), "
                                f"a layer above it")
        for backend in BACKENDS:
            other = [b for b in BACKENDS if b != backend]
            if _under(module, backend):
                assert not any(_under(target, o) for o in other), f"{module} imports the other back end {target}"


def test_no_module_level_import_cycle():
    modules = all_modules()
    graph = {m: {t for t, top in imports(p) if top and t in modules and t != m} for m, p in modules.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = path[path.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checker_sees_a_wrong_way_import(tmp_path, monkeypatch):
    """The rule itself can fail: a back end importing the debug layer is caught."""
    fake = tmp_path / "guestdbg" / "backends"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("from guestdbg.debug import manager\nfrom guestdbg import kvm\n")
    (tmp_path / "guestdbg" / "debug").mkdir()
    (tmp_path / "guestdbg" / "debug" / "manager.py").write_text("")
    (tmp_path / "guestdbg" / "kvm.py").write_text("")
    monkeypatch.setattr(__import__(__name__, fromlist=["SRC"]), "SRC", tmp_path)
    found = imports(fake / "bad.py")
    assert ("guestdbg.debug.manager", True) in found and ("guestdbg.kvm", True) in found
    assert layer_of("guestdbg.debug.manager") > layer_of("guestdbg.backends.bad")
