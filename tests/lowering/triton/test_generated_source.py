"""What reaches generated source from a user: scheme names, descriptions, references and notes
from a YAML file, any symbol name from SymPy input. Each is escaped for where it lands (a
comment, the module docstring, a string literal) so that the module holds exactly the
statements the template writes, whatever the text (issue: a name holding three quotes closed
the docstring and the rest of it ran on import)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import sympy as sp
import torch
import yaml
from click.testing import CliRunner

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import unroll  # noqa: E402
from unroll.cli import cli  # noqa: E402
from unroll.lowering import cache  # noqa: E402
from unroll.lowering.triton.emit import emit  # noqa: E402
from unroll.lowering.triton.op import block_update, kernel_module  # noqa: E402

# Each is formatted with the marker directory's path (``marker``: a literal; ``codes``: its
# bytes, for a payload without quotes): running any of them creates it.
HOSTILE = [
    'x""";import os;os.mkdir(bytes({codes}).decode());"""',
    'x""";import os;os.mkdir({marker!r});"""',
    "x'''\nimport os\nos.mkdir({marker!r})\n'''",
    'x"""\nimport os\nos.mkdir({marker!r})\n"""',
    "x\nimport os; os.mkdir({marker!r}) #",
    "x\rimport os; os.mkdir({marker!r}) #",
    "x\\\nimport os; os.mkdir({marker!r}) #",
    "ends in a backslash\\",
    'ends in a quote"',
    "\x00\u2028\x0c\x1b[31m; import os; os.mkdir({marker!r})",
]

EQUATIONS = "x_<k+1> = x_k + β(x_k - x_<k-1>) - α ∇F"


@pytest.fixture
def marker(tmp_path, monkeypatch):
    monkeypatch.setenv("UNROLL_CACHE_DIR", str(tmp_path / "kcache"))
    monkeypatch.setattr(cache, "_loaded", {})
    path = tmp_path / "marker"
    yield path
    assert not path.exists(), "generated code ran text from the scheme"


def _yaml(tmp_path: Path, name: str) -> Path:
    data = {
        "name": name,
        "description": name,
        "references": [name],
        "notes": name,
        "equations": EQUATIONS,
        "parameters": {"α": 0.1, "β": 0.9},
    }
    path = tmp_path / "scheme.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _normalised(node: ast.AST) -> str:
    """``node`` dumped with every string constant and the kernels' names (which carry the
    scheme's stem) replaced by placeholders: what the template decides, not the user."""

    class Blank(ast.NodeTransformer):
        def visit_Constant(self, n):
            return ast.Constant("S") if isinstance(n.value, str) else n

        def visit_Name(self, n):
            return ast.Name("KERNEL", n.ctx) if n.id.endswith("_kernel") else n

    return ast.dump(Blank().visit(node))


def shape(text: str) -> list[tuple]:
    """The module's top-level statements: their kinds and targets, and for a function every
    node of its arguments and body by kind (the identifiers come from the scheme's names)."""
    out = []
    for stmt in ast.parse(text).body:
        if isinstance(stmt, ast.FunctionDef):
            name = "KERNEL" if stmt.name.endswith("_kernel") else stmt.name
            out.append(("def", name, [type(n).__name__ for n in ast.walk(stmt)]))
        elif isinstance(stmt, ast.Assign):
            targets = [ast.unparse(t) for t in stmt.targets]
            out.append(("assign", targets, _normalised(stmt.value)))
        else:
            out.append((type(stmt).__name__, _normalised(stmt)))
    return out


def _benign() -> str:
    return emit(unroll.compile(EQUATIONS))[1]


@pytest.mark.parametrize("template", HOSTILE)
def test_emit_of_a_hostile_yaml_file_writes_only_the_template(template, marker, tmp_path):
    name = template.format(marker=str(marker), codes=list(str(marker).encode()))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["emit", str(_yaml(tmp_path, name)), "-o", str(out)])
    assert result.exit_code == 0, result.output
    (path,) = out.glob("*.py")
    text = path.read_text(encoding="utf-8")
    assert shape(text) == shape(_benign())
    tree = ast.parse(text)
    assert repr(name) in ast.get_docstring(tree)  # escaped, not lost
    assert next(n.value.value for n in tree.body if isinstance(n, ast.Assign)) == name
    cache.import_file(path, "unroll_hostile_test")  # imports, runs nothing of the user's
    assert not marker.exists()


@pytest.mark.parametrize("template", HOSTILE)
def test_backend_triton_on_a_hostile_yaml_file_runs_nothing_of_it(template, marker, tmp_path):
    name = template.format(marker=str(marker), codes=list(str(marker).encode()))
    scheme = unroll.compile(_yaml(tmp_path, name))
    x, xp, g = torch.randn(5), torch.randn(5), torch.randn(5)
    out = block_update(scheme, backend="triton")({"x_k": x, "x_km1": xp, "o_0": g})["x"]
    torch.testing.assert_close(out, x + 0.9 * (x - xp) - 0.1 * g)
    assert shape(Path(kernel_module(scheme).__file__).read_text()) == shape(_benign())


def test_hostile_symbol_names_from_sympy_input(marker):
    """SymPy input carries any name at all, for parameters and states: they reach comments
    (``# in: x_<k-1>``) and string constants; the identifiers come from unroll.ir.names."""
    payload = f'"""\nimport os\nos.mkdir({str(marker)!r}) #'
    k = sp.Symbol("k", integer=True)
    x, a = sp.IndexedBase("x" + payload), sp.Symbol("a" + payload)
    grad = sp.Function("∇F")
    scheme = unroll.compile(sp.Eq(x[k + 1], x[k] - a * grad(x[k])))
    benign = emit(unroll.compile("x_<k+1> = x_k - a ∇F"))[1]
    assert shape(emit(scheme)[1]) == shape(benign)
    op = block_update(scheme, backend="triton")
    block = op.view
    t, g = torch.randn(4), torch.randn(4)
    tensors = dict(zip([i.name for i in block.inputs], [t, g], strict=True))
    (out,) = op(tensors, {block.coefficients[0].name: 0.5}).values()
    torch.testing.assert_close(out, t - 0.5 * g)
