"""The package's imports run one way: no module of `mest_compile` imports, even lazily, one that imports it back.

Read from the source (no imports executed), so the training-side tier checks the compiler side too.
Imports under `if TYPE_CHECKING:` are annotations, not imports, and are left out.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: Where each part of the installed package lives in the checkout (setup.py maps the last two).
SOURCES = {"mest_compile": ROOT / "mest_compile", "mest_compile.schedules": ROOT / "schedules",
           "mest_compile.targets": ROOT / "targets"}


def modules() -> dict[str, pathlib.Path]:
    """Every module of the package by dotted name."""
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """Dotted names `tree` imports (module level and inside functions, not under TYPE_CHECKING)."""
    out: set[str] = set()
    todo = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                todo.extend(child.orelse)
                continue
            if isinstance(child, ast.Import):
                out.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base]) if base else ".".join(anchor)
                submodules = {f"{base}.{alias.name}" for alias in child.names}
                out.update(submodules)
                if not submodules <= known:  # `from package import module` needs the module, not the package
                    out.add(base)
            todo.append(child)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        names = _imported(ast.parse(path.read_text()), name, path.name == "__init__.py", set(mods))
        graph[name] = {n for n in names if n in mods and n != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            members = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                members.append(top)
                if top == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "mest_compile.compiler.runtime.cache" in graph
    assert "mest_compile.compiler.runtime.compiled" in graph["mest_compile.compiler.runtime.cache"]
    assert "mest_compile.schedules.host_space" in graph["mest_compile.compiler.target_families.cpu"]


def test_no_import_circles() -> None:
    assert circles(import_graph()) == []


@pytest.mark.parametrize("lower, upper", [
    ("mest_compile.compiler.families", "mest_compile.compiler.runtime"),
    ("mest_compile.compiler.runtime", "mest_compile.compiler.tune"),
    ("mest_compile.compiler.formats", "mest_compile.compiler.families"),
    ("mest_compile.train", "mest_compile.compiler"),
    ("mest_compile.sparsity", "mest_compile.compiler"),
])
def test_lower_parts_never_import_upper_ones(lower: str, upper: str) -> None:
    graph = import_graph()
    upward = sorted(f"{m} -> {n}" for m, targets in graph.items() if m == lower or m.startswith(lower + ".")
                    for n in targets if n == upper or n.startswith(upper + "."))
    assert upward == []


def test_circles_are_found() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
