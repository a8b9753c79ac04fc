"""The package's shape: no import cycle (imports inside functions included), and imports inside
functions only where the layout allows them.

The graph is read from the source with `ast`, not from a running interpreter, so an import
that only happens on some code path counts the same as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "unroll"

# Imports a function may make: optional heavy dependencies, loaded only where they are used.
OPTIONAL = {"triton", "matplotlib", "sklearn"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, name: str, modules: dict[str, Path]):
    """(imported unroll module, inside a function?, line) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, in_function, child.lineno
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = name.split(".")
                    parts = parts if is_package else parts[:-1]
                    parts = parts[: len(parts) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    yield (sub if sub in modules else base), in_function, child.lineno
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # annotations only: never imported at run time
            else:
                yield from visit(child, inner)

    yield from visit(tree, False)


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, _, _ in _imports(path, name, modules):
            # Importing a.b.c runs a/__init__ and a/b/__init__ first; a module's own packages
            # have started before it runs, so naming them closes no loop.
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in modules and not (name == prefix or name.startswith(prefix + ".")):
                    graph[name].add(prefix)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def go(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = go(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = go(node)
            if found:
                return found
    return None


def test_the_graph_reader_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    graph = _graph()
    assert sum(len(v) for v in graph.values()) > 50  # the reader found the package's imports
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_imports_inside_functions_are_optional_dependencies_only():
    """A CLI command loads when it runs because unroll/cli/__init__.py imports its module by
    name (importlib) only then; inside the command's module, imports sit at the top."""
    modules = _modules()
    bad = []
    for name, path in modules.items():
        for target, in_function, line in _imports(path, name, modules):
            if not in_function:
                continue
            top = target.split(".")[0]
            if top in OPTIONAL:
                continue
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not bad, "imports inside functions:\n" + "\n".join(bad)


# Where a function may import a module by name (importlib.import_module), and why: the rest of
# the package imports by statement, which the graph above reads.
LOADERS_BY_NAME = {
    "unroll/__init__.py": "lazy attributes (PEP 562): `import unroll`, which every CLI command "
    "runs first, loads no torch until an attribute needs it",
    "unroll/cli/__init__.py": "each command's module loads when that command runs",
}


def _loads_by_name(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr == "import_module") or (
                isinstance(f, ast.Name) and f.id in ("__import__", "import_module")
            ):
                yield node.lineno


def test_modules_are_imported_by_name_only_where_the_layout_allows():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        where = path.relative_to(PACKAGE.parent).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bad += [f"{where}:{line}" for line in _loads_by_name(tree) if where not in LOADERS_BY_NAME]
    assert not bad, "modules imported by name outside " + ", ".join(LOADERS_BY_NAME) + ":\n" + (
        "\n".join(bad)
    )
    assert list(_loads_by_name(ast.parse("importlib.import_module('x')"))) == [1]  # it sees one
