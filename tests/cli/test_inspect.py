"""`unroll inspect`: one report per scheme, JSON with the same facts, one-line errors (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from unroll.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, ["inspect", *args])


def test_ode_report_names_every_analysis():
    r = invoke("lm_resnet")
    assert r.exit_code == 0, r.output
    for label in (
        "kind: ode",
        "identified architecture:",
        "order: 0",
        "zero-stable: yes at κ = -0.05",
        "stability: π(ζ, z)",
        "modified equation:",
    ):
        assert label in r.output, label


def test_json_carries_the_same_facts():
    r = invoke("heavy_ball", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["kind"] == "optimizer"
    assert set(data["tuned"]) == {"α", "β"}
    assert data["tuned_rate"] == pytest.approx(
        9 / 11
    )  # (√100 − 1)/(√100 + 1), docs/theory.md section 4
    assert data["order"] is None and "not applicable" in data["notes"]["order"]


def test_schedule_is_explained_not_crashed():
    r = invoke("nesterov_schedule")
    assert r.exit_code == 0, r.output
    assert "schedule" in r.output


def test_scheme_text_file_and_plot(tmp_path):
    plot = tmp_path / "r.png"
    r = invoke("x_<k+1> = x_k + h f(x_<k+1>)", "--plot", str(plot))
    assert r.exit_code == 0, r.output
    assert "order: 1" in r.output and plot.read_bytes()[:4] == b"\x89PNG"
    path = tmp_path / "euler.yaml"
    path.write_text("name: euler\nequations: x_<k+1> = x_k + h f(t, x_k)\n", encoding="utf-8")
    r = invoke(str(path))
    assert r.exit_code == 0 and "order: 1" in r.output


@pytest.mark.parametrize(
    "args, words",
    [
        (["no_such_scheme"], "no_such_scheme"),
        (["missing.yaml"], "missing.yaml"),
        (["heavy_ball", "--activation", "nope"], "nope"),
        (["heavy_ball", "--mu", "5", "--L", "1"], "mu"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, words):
    r = invoke(*args)
    assert r.exit_code == 2
    assert words in r.output and r.output.count("\n") == 1


def test_plot_of_an_optimizer_scheme_is_refused_after_the_report(tmp_path):
    plot = tmp_path / "r.png"
    r = CliRunner().invoke(cli, ["inspect", "heavy_ball", "--plot", str(plot)])
    assert r.exit_code == 2
    assert "iteration matrix on F = ½λx²" in r.stdout and "tuned rate" in r.stdout
    (line,) = r.stderr.splitlines()
    assert line.startswith("error: --plot") and "ODE schemes" in line
    assert not plot.exists()


def test_mu_and_L_are_checked_only_where_they_are_used():
    for name in ("rk4", "nesterov_schedule"):  # no rates: --mu and --L are not read
        r = invoke(name, "--mu", "5", "--L", "1")
        assert r.exit_code == 0, r.output
    r = invoke("heavy_ball", "--mu", "5", "--L", "1")
    assert r.exit_code == 2 and "mu" in r.output


def test_a_rate_of_one_or_more_says_diverges():
    # Heavy ball at its defaults α = 0.1, β = 0.9: on λ = 100 the characteristic polynomial
    # ζ² − (1 + β − αλ)ζ + β = ζ² + 8.1ζ + 0.9 has a root of modulus 7.99 > 1.
    r = invoke("heavy_ball")
    (line,) = [x for x in r.output.splitlines() if x.startswith("rate at the defaults")]
    assert "diverges" in line
    worst = max(abs(np.roots([1, 8.1, 0.9])))
    assert f"{worst:.4f}" in line
    # On λ ∈ [1, 10] the discriminant (1.9 − 0.1λ)² − 3.6 is negative: a complex pair of
    # modulus √β = 0.949 for every λ, so no divergence.
    r = invoke("heavy_ball", "--L", "10")
    assert r.exit_code == 0 and "diverges" not in r.output


def test_modified_equation_is_shown_in_the_standard_form():
    # Forward Euler: ẋ = f − (h/2) f'f + O(h²), the first correction of backward error analysis.
    r = invoke("forward_euler")
    assert "modified equation: dx/dt = f - f'f*h/2 + O(h**2)" in r.output
    r = invoke("lm_resnet")  # a multistep scheme also shows the form of Lu et al.
    assert "modified equation: du/dt = f/(κ + 1)" in r.output
    # (1 + κ)u' + (1 − κ)(h/2)u'' + O(h²) = f, written with primes as the paper writes it
    lu = "modified equation, form of Lu et al.: u'*(κ + 1) - h*u''*(κ - 1)/2 + h**2*u'''*(κ + 1)/6"
    assert lu in r.output and "+ O(h**3) = f(u)" in r.output
    r = invoke("ab2")  # f at earlier points expands in f'(x) and f''(x) at the state
    assert "= f'(x)*h*x'/2 - h**2*(f''(x)*x'**2 + f'(x)*x'')/4 + f(x)" in r.output


def test_inspect_says_how_stably_the_step_runs_backwards():
    out = CliRunner().invoke(cli, ["inspect", "lm_resnet", "--depth", "16"])
    assert out.exit_code == 0, out.output
    # LM-ResNet at κ = −0.05: the inverse divides by κ, 1/|κ| = 20 per layer
    assert "inverse step, error growth per layer: 20 (at the defaults)" in out.output
    assert "over 16 layers" in out.output
    leap = CliRunner().invoke(cli, ["inspect", "leapfrog", "--json"])
    data = json.loads(leap.output)
    assert data["inverse_growth"] == pytest.approx(1.0)  # leapfrog: roots on the unit circle
    relu = CliRunner().invoke(cli, ["inspect", "hb_net"])
    assert "no reversible network" in relu.output and "relu is not invertible" in relu.output


def test_param_gives_the_analyses_a_value():
    text = "x_<k+1> = x_k + κ(x_k - x_<k-1>) + h f(x_k)"
    r = invoke(text)  # no default for κ: the analyses that need one say so
    assert r.exit_code == 0 and "pass a value for κ" in r.output
    r = invoke(text, "-p", "kappa=-0.5", "--param", "h=1")  # ASCII or Greek, repeatable
    assert r.exit_code == 0, r.output
    assert "zero-stable: yes at κ = -0.5" in r.output
    assert "inverse step, error growth per layer: 2 (" in r.output  # 1/|κ|
    r = invoke("lm_resnet", "-p", "κ=-0.5")  # overrides a scheme file's default
    assert "error growth per layer: 2 (" in r.output
    for bad, message in [
        ("κ=2", "outside its bounds"),
        ("κ=abc", "'abc' is not a number"),
        ("q=1", "unknown parameter 'q'"),
        ("κ", "write NAME=VALUE"),
    ]:
        r = invoke("lm_resnet", "-p", bad)
        assert r.exit_code == 2 and message in r.output, (bad, r.output)
