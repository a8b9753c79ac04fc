"""`unroll list` and `unroll show`, and the CLI's handling of bad input."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

import unroll
from unroll.cli import cli
from unroll.frontend.library import SCHEME_DIR


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
        (["show", "x_<k+1> = x_k + (a"], "unbalanced parentheses"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_every_command_has_help():
    for name in cli.commands:
        result = invoke(name, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "unroll.cli", "show", "lm_resnet"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "u_<n+1>" in out.stdout
