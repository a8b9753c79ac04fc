"""`unroll objective`: prints g, F and the conditions; refusals are one line and exit 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from unroll.cli import cli


def _run(*args: str):
    return CliRunner().invoke(cli, ["objective", *args])


def test_sigmoid():
    r = _run("sigmoid")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "φ(v) = 1/(1 + exp(-v))" in out
    # docs/theory.md: g = t ln t + (1 − t) ln(1 − t) − t²/2 (+ a constant) on (0, 1).
    assert "t*log(t)" in out and "(1 - t)*log(1 - t)" in out and "-t**2/2" in out
    assert "t in [0, 1], +oo elsewhere" in out
    assert "F(x) = 1/2 x.T*(I - W)*x - b.T*x" in out
    assert "conditions" in out and "holds" in out and "assumed" in out
    assert "1/4" in out  # the largest slope, σ′(0)


def test_latex():
    r = _run("leaky_relu(0.1)", "--latex")
    assert r.exit_code == 0, r.output
    # (1/a − 1) t²/2 with a = 1/10 is 9t²/2 for t ≤ 0, and 0 above.
    assert "\\frac{9 t^{2}}{2}" in r.stdout and "\\begin{cases}" in r.stdout
    assert "\\sum_{i=1}^{n} g{\\left({x}_{i} \\right)}" in r.stdout


@pytest.mark.parametrize(
    ("activation", "words"),
    [
        ("gelu", ["activation gelu", "not non-decreasing", "v ≈ -1.414"]),
        ("elu(2)", ["slope above 1", "φ/L with L = 2"]),
        ("nope", ["unknown activation 'nope'", "known:", "relu"]),
    ],
)
def test_refusals_are_one_line_and_exit_2(activation, words):
    r = _run(activation)
    assert r.exit_code == 2
    assert r.stdout == ""
    err = r.stderr
    assert err.startswith("error: ") and err.count("\n") == 1
    for w in words:
        assert w in err


def test_table_and_missing_activation():
    r = _run("--table")
    assert r.exit_code == 0
    assert r.stdout.startswith("| activation | φ(v) |")
    assert "| relu |" in r.stdout
    r = _run()
    assert r.exit_code == 2 and "give an ACTIVATION" in r.stderr
