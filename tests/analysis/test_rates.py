"""Rates against measured contraction of `Scheme.run` on quadratics, and the tuned parameters
against docs/theory.md section 4 (κ = 100: GD 0.980, Nesterov 0.900, heavy ball 0.818)."""

from __future__ import annotations

import math

import pytest
import sympy as sp
import torch

import unroll
from tests.tolerances import (
    DOUBLE_ROOT,
    MEASURED_RATE,
    PRINTED_THREE_DIGITS,
    RATE_NEARBY,
    RATE_SEARCH,
    RATE_SEARCH_BELOW,
)
from unroll.analysis import LAM, iteration_matrix, known_tuning, rate, tune
from unroll.analysis.rates import _numerical_tune

MU, L = 1.0, 100.0


def measured_rate(scheme, mu, L, n=400, **params):
    """The contraction per step of ‖x‖ over the second half of n steps on
    F(x) = ½ Σ λ_i x_i², λ_i spread over [μ, L] (ends included)."""
    lams = torch.linspace(mu, L, 41, dtype=torch.float64)
    x0 = torch.ones(41, dtype=torch.float64)
    path = scheme.run(x0, n, grad=lambda x: lams * x, trajectory=True, **params)
    x = path["x"] if isinstance(path, dict) else path
    a, b = x[n // 2].norm().item(), x[n].norm().item()
    return (b / a) ** (2 / n)


# Over 200 steps: a double root adds a factor (n/(n/2))^(2/n) = 1.0035, oscillating complex
# roots add their phase mixing, and the worst λ may fall between the 41 samples; 1% covers these.
REL = MEASURED_RATE  # tests/tolerances.py


@pytest.mark.parametrize(
    "name, params",
    [
        ("gradient_descent", {"α": 0.015}),
        ("heavy_ball", {"α": 0.03, "β": 0.6}),
        ("heavy_ball_velocity", {"α": 0.03, "β": 0.6}),
        ("nesterov", {"α": 0.01, "β": 0.7}),
    ],
)
def test_rate_is_the_measured_contraction(name, params):
    s = unroll.schemes[name]
    assert measured_rate(s, MU, L, **params) == pytest.approx(rate(s, MU, L, **params), rel=REL)


def test_background_numbers_for_kappa_100():
    # docs/theory.md section 4 prints three digits.
    gd, hb, nag = (unroll.schemes[n] for n in ("gradient_descent", "heavy_ball", "nesterov"))
    assert rate(gd, MU, L, **tune(gd, MU, L)) == pytest.approx(0.980, abs=PRINTED_THREE_DIGITS)
    assert rate(hb, MU, L, **tune(hb, MU, L)) == pytest.approx(0.818, abs=PRINTED_THREE_DIGITS)
    k = L / MU
    classic = {"α": 1 / L, "β": (math.sqrt(k) - 1) / (math.sqrt(k) + 1)}
    assert rate(nag, MU, L, **classic) == pytest.approx(0.900, abs=PRINTED_THREE_DIGITS)
    assert tune(gd, MU, L) == pytest.approx({"α": 2 / (L + MU)})
    assert tune(hb, MU, L) == pytest.approx(
        {
            "α": 4 / (math.sqrt(L) + math.sqrt(MU)) ** 2,
            "β": ((math.sqrt(k) - 1) / (math.sqrt(k) + 1)) ** 2,
        }
    )


@pytest.mark.parametrize("name", ["gradient_descent", "heavy_ball", "nesterov"])
def test_tuned_parameters_are_measured_optimal(name):
    s = unroll.schemes[name]
    best = tune(s, MU, L)
    r = rate(s, MU, L, **best)
    assert measured_rate(s, MU, L, **best) == pytest.approx(r, rel=REL)
    # No nearby parameters contract faster (rate itself, then measured for one of them).
    for name_, value in best.items():
        for factor in (0.9, 1.1):
            other = {**best, name_: value * factor}
            assert rate(s, MU, L, **other) >= r - RATE_NEARBY
    # An independent numerical search finds no better point than the closed form.
    found = _numerical_tune(s, MU, L)
    assert rate(s, MU, L, **found) >= r - RATE_SEARCH_BELOW
    assert rate(s, MU, L, **found) == pytest.approx(r, abs=RATE_SEARCH)


def test_nesterov_tuning_beats_the_textbook_choice():
    # The rate-optimal Nesterov tuning on quadratics (Lessard, Recht, Packard 2016) gives
    # 1 − 2/√(3κ + 1) < 1 − 1/√κ.
    nag = unroll.schemes["nesterov"]
    r = rate(nag, MU, L, **tune(nag, MU, L))
    # The optimum is a double root: rounding ε of the float parameters moves it by √ε ~ 1e-8.
    assert r == pytest.approx(1 - 2 / math.sqrt(3 * L / MU + 1), abs=DOUBLE_ROOT)
    assert known_tuning(nag).family.name == "Nesterov"


def test_iteration_matrix_of_heavy_ball_is_polyaks():
    m = iteration_matrix(unroll.schemes["heavy_ball"])
    a, b = sp.symbols("α β")
    # x_{k+1} = (1 + β − αλ) x_k − β x_{k−1}: the companion matrix, written out by hand.
    assert sp.simplify(m - sp.Matrix([[1 + b - a * LAM, -b], [1, 0]])) == sp.zeros(2, 2)


def test_rate_refuses_schedules_and_other_kinds():
    with pytest.raises(unroll.UnrollError, match="schedule"):
        rate(unroll.schemes["nesterov_schedule"], MU, L)
    with pytest.raises(unroll.UnrollError, match="optimizer schemes"):
        iteration_matrix(unroll.schemes["hb_net"])
    with pytest.raises(unroll.UnrollError, match="mu"):
        rate(unroll.schemes["heavy_ball"], 2.0, 1.0)
    with pytest.raises(unroll.UnrollError, match="unknown parameter"):
        rate(unroll.schemes["heavy_ball"], MU, L, gamma=0.1)
