"""`unroll list` and `unroll show`, the command table, and the CLI's handling of bad input."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import unroll
import unroll.cli
from unroll.cli import COMMANDS, cli
from unroll.frontend.library import SCHEME_DIR

COMMAND_DIR = Path(unroll.cli.__file__).parent / "commands"


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_list_names_every_bundled_scheme():
    result = invoke("list")
    assert result.exit_code == 0
    for name in unroll.schemes:
        assert name in result.output


@pytest.mark.parametrize(
    "spec",
    [
        "heavy_ball",
        str(SCHEME_DIR / "heavy_ball.yaml"),
        "x_<k+1> = x_k + β(x_k - x_<k-1>) - α∇F",
    ],
)
def test_show_by_name_file_or_text(spec):
    result = invoke("show", spec)
    assert result.exit_code == 0, result.output
    assert "x_<k+1> = -α*∇F(x_k) + β*(-x_<k-1> + x_k) + x_k" in result.output
    assert "kind: optimizer" in result.output
    assert "states: x (history 2)" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["show", "no_such_scheme"], "no bundled scheme 'no_such_scheme'"),
        (["show", "missing.yaml"], "no such scheme file"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_a_parse_error_keeps_its_caret_line():
    result = CliRunner().invoke(cli, ["show", "x_<k+1> = x_k + (a"])
    assert result.exit_code == 2 and result.stdout == ""
    first, text, caret = result.stderr.rstrip("\n").split("\n")
    assert first == "error: unbalanced parentheses: this one is never closed (at column 17)"
    assert text == "  x_<k+1> = x_k + (a"
    assert caret == " " * text.index("(") + "^"


def test_a_yaml_syntax_error_names_the_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: s\nequations: |\n  x_<k+1> = x_k - α∇F\n parameters: {α: 1}\n")
    result = CliRunner().invoke(cli, ["show", str(path)])
    assert result.exit_code == 2
    first, text, caret = result.stderr.rstrip("\n").split("\n")
    assert first.startswith("error: bad.yaml: not valid YAML: ")
    assert first.endswith("(at line 4, column 2)")
    assert text == "   parameters: {α: 1}" and caret == "   ^"


def installed(name):
    return importlib.util.find_spec(COMMANDS[name][0]) is not None


def test_every_command_has_help():
    names = [name for name in cli.list_commands(None) if installed(name)]
    assert {"list", "show", "inspect", "emit", "objective"} <= set(names)
    for name in names:
        result = invoke(name, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


# Issue 10 moves two commands while this table is written: `kernels` arrives from another
# branch and `bench` leaves. Once both have landed these two sets are empty.
_ARRIVING, _LEAVING = set(), set()  # commands that moved in or out (none now)


def test_the_table_lists_every_command_module():
    modules = {p.stem for p in COMMAND_DIR.glob("*.py")} - {"__init__"}
    assert modules - _LEAVING <= set(COMMANDS)
    assert set(COMMANDS) - modules <= _ARRIVING
    for name, (module, help_line) in COMMANDS.items():
        assert module == f"unroll.cli.commands.{name}" and help_line.endswith(".")


def test_help_lists_the_table_without_importing_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert f"  {name} " in result.output
    assert "Compile kernels ahead of time for a GPU target" in result.output


def test_a_table_entry_without_its_module_leaves_help_working(monkeypatch):
    monkeypatch.setitem(COMMANDS, "ghost", ("unroll.cli.commands.ghost", "Not installed."))
    result = invoke("--help")
    assert result.exit_code == 0 and "ghost" in result.output and "Not installed." in result.output
    result = CliRunner().invoke(cli, ["ghost"])
    assert result.exit_code == 2
    assert "'ghost' is listed but its module unroll.cli.commands.ghost is missing" in result.output


@pytest.mark.parametrize("args", [["--help"], ["list"]])
def test_help_and_list_do_not_import_torch(args):
    """`unroll --help` and `unroll list` need only click, rich, SymPy and YAML (issue 10.7)."""
    code = (
        "import sys\n"
        "from unroll.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('torch loaded:', sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "torch loaded: []"


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "unroll.cli", "show", "lm_resnet"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "u_<n+1>" in out.stdout


def test_show_says_a_network_reads_an_ode_scheme_with_h_1():
    out = CliRunner().invoke(cli, ["show", "rk4"])
    assert out.exit_code == 0
    assert "step: h = 1 in a network" in out.output and "Scheme.run defaults to 0.1" in out.output
    out = CliRunner().invoke(cli, ["show", "heavy_ball"])
    assert "step:" not in out.output  # an optimizer's α is no ODE step
