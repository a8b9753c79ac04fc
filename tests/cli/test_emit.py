"""`unroll emit`, and the checked-in kernels/ kept current."""

from __future__ import annotations

import ast
import os
import stat

from click.testing import CliRunner

import unroll
from tests import ROOT
from unroll.cli import cli
from unroll.lowering.triton.emit import emit, module_stem

KERNELS = ROOT / "kernels"


def test_emit_writes_the_module_and_prints_the_equations(tmp_path):
    result = CliRunner().invoke(cli, ["emit", "hb_net", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = tmp_path / "hb_net.py"
    assert f"wrote {path}" in result.output
    assert "x_kp1 = φ(b + beta*(x_k - x_km1) + o_0)" in result.output
    assert "o_0 = W(x_k)" in result.output
    text = path.read_text()
    assert text.startswith("# unroll kernel module for scheme 'hb_net'")
    compile(text, str(path), "exec")  # valid Python


def test_emit_of_a_yaml_file_and_of_text(tmp_path):
    from unroll.frontend.library import SCHEME_DIR

    result = CliRunner().invoke(
        cli, ["emit", str(SCHEME_DIR / "lm_resnet.yaml"), "-o", str(tmp_path)]
    )
    assert result.exit_code == 0 and (tmp_path / "lm_resnet.py").exists()
    result = CliRunner().invoke(cli, ["emit", "x_<k+1> = x_k - α ∇F", "-o", str(tmp_path)])
    assert result.exit_code == 0 and (tmp_path / "scheme.py").exists()


def test_emit_errors_are_one_line():
    result = CliRunner().invoke(cli, ["emit", "x_<k+1> = x_k - α ∇F(x_<k+1>)"])
    assert result.exit_code == 2
    assert "implicit" in result.output and len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(cli, ["emit"])
    assert result.exit_code == 2 and "--all" in result.output
    # An unknown activation is refused even for a scheme without φ (it was silently ignored).
    result = CliRunner().invoke(cli, ["emit", "rk4", "--activation", "nosuch", "-o", "unused"])
    assert result.exit_code == 2 and "unknown activation 'nosuch'" in result.output


def test_checked_in_kernels_are_current():
    """kernels/ holds the emitted module of every bundled scheme, byte for byte; regenerate
    with `unroll emit --all -o kernels`."""
    expected = {}
    for scheme in unroll.schemes.values():
        block, text = emit(scheme)
        expected[f"{module_stem(block)}.py"] = text
    present = {p.name for p in KERNELS.glob("*.py")}
    assert present == set(expected), "run `unroll emit --all -o kernels`"
    stale = [n for n, t in expected.items() if (KERNELS / n).read_text() != t]
    assert not stale, f"stale kernels (run `unroll emit --all -o kernels`): {stale}"


def _jit(fn: ast.FunctionDef) -> bool:
    return any(ast.unparse(d) == "triton.jit" for d in fn.decorator_list)


def test_kernel_modules_hold_only_what_their_scheme_decides():
    """The view, checks, launchers and torch.library registration live once in
    unroll.lowering.triton.runtime: a module defines @triton.jit kernels and helpers, names and
    one registration call, and imports no torch. kernels/ stays under half of the 6,172 lines
    the modules took when each carried its own copy of the host code."""
    total = 0
    for path in sorted(KERNELS.glob("*.py")):
        text = path.read_text()
        total += len(text.splitlines())
        tree = ast.parse(text)
        functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert functions and all(_jit(f) for f in functions), path.name
        assert not any(isinstance(n, ast.ClassDef) for n in tree.body), path.name
        imported = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        assert imported == {"triton", "triton.language"}, path.name
        calls = [ast.unparse(n.value.func) for n in tree.body
                 if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)]  # fmt: skip
        assert calls == ["runtime.register"], path.name
    assert total <= 6172 // 2, total


def test_every_kernel_argument_is_commented_and_the_docstring_gives_the_equations():
    for scheme in unroll.schemes.values():
        block, text = emit(scheme)
        tree = ast.parse(text)
        for line in block.equations_text():
            assert line in ast.get_docstring(tree), scheme.name
        lines = text.splitlines()
        for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
            if not fn.name.endswith("_kernel"):
                continue  # a printer helper (_tanh, ...), documented by its own docstring
            for arg in fn.args.args:
                assert "#" in lines[arg.lineno - 1], f"{scheme.name}: {arg.arg} has no comment"


def test_emit_checks_that_what_it_wrote_compiles_and_imports(tmp_path, monkeypatch):
    """A generator bug must not leave a module that does not load behind an exit status 0."""
    from unroll.lowering.triton import emit as generator

    monkeypatch.setattr(generator, "module_source", lambda block: "def (:\n")
    result = CliRunner().invoke(cli, ["emit", "hb_net", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "does not compile" in result.output, result.output
    assert not list(tmp_path.glob("*.py"))  # nothing written
    monkeypatch.setattr(generator, "module_source", lambda block: "import no_such_module_here\n")
    result = CliRunner().invoke(cli, ["emit", "hb_net", "-o", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "does not import: ModuleNotFoundError" in result.output
    assert str(tmp_path / "hb_net.py") in result.output


def test_emitted_files_are_readable_by_all_under_the_usual_umask(tmp_path):
    old = os.umask(0o022)
    try:
        result = CliRunner().invoke(cli, ["emit", "heavy_ball", "-o", str(tmp_path)])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "heavy_ball.py").stat().st_mode) == 0o644
