"""The stability of a scheme's inverse (unroll/analysis/inverse.py): the growth per layer against
its closed forms (1/γ, 1/|κ|, 1), against the reversed first characteristic polynomial of
unroll.analysis.stability, and against the amplification measured by running the inverse."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch

import unroll
from tests.tolerances import F64_MATRIX_POWER, F64_RELATIVE, MEASURED_RATE
from unroll.analysis.inverse import (
    ZETA,
    inverse_amplification,
    inverse_matrix,
    inverse_stability,
)
from unroll.analysis.stability import first_characteristic_polynomial
from unroll.errors import UnrollError
from unroll.frontend.library import compile as compile_scheme
from unroll.ir.inverse import inverse
from unroll.lowering.eager.run import Stepper, operators

MOMENTUM = "v_<k+1> = γ v_k + (1 - γ) f(x_k)\nx_<k+1> = x_k + v_<k+1>"


# -- closed forms ------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [0.5, 0.9, 0.99])
def test_momentum_growth_is_one_over_gamma(gamma):
    facts = inverse_stability(compile_scheme(MOMENTUM), 10, gamma=gamma)
    assert facts.growth == pytest.approx(1 / gamma, rel=F64_RELATIVE)


@pytest.mark.parametrize("kappa", [-0.05, -0.5, 0.5, 0.9])
def test_lm_resnet_growth_is_one_over_abs_kappa(kappa):
    facts = inverse_stability(unroll.schemes["lm_resnet"], 10, kappa=kappa)
    assert facts.growth == pytest.approx(1 / abs(kappa), rel=F64_RELATIVE)


@pytest.mark.parametrize("beta", [0.3, 0.9])
def test_heavy_ball_growth_is_one_over_beta(beta):
    for name in ("heavy_ball", "heavy_ball_velocity"):
        facts = inverse_stability(unroll.schemes[name], 10, beta=beta)
        assert facts.growth == pytest.approx(1 / beta, rel=F64_RELATIVE)


@pytest.mark.parametrize("name", ["leapfrog", "revnet"])
def test_leapfrog_and_revnet_neither_grow_nor_amplify(name):
    facts = inverse_stability(unroll.schemes[name], 64)
    assert facts.growth == pytest.approx(1.0, rel=F64_RELATIVE)
    # Leapfrog's inverse with f off swaps the two slots, RevNet's is the identity: ‖A^64‖ = 1.
    assert facts.amplification == pytest.approx(1.0, rel=F64_RELATIVE)


def test_lm_resnet_amplification_closed_form():
    """A = [[1 − 1/κ, 1/κ], [1, 0]] has eigenvalues 1 and −1/κ, so A^N = V diag(1, (−1/κ)^N) V⁻¹
    with V's columns (1, 1) and (−1/κ, 1)."""
    kappa, depth = -0.05, 16
    v = np.array([[1.0, -1 / kappa], [1.0, 1.0]])
    power = v @ np.diag([1.0, (-1 / kappa) ** depth]) @ np.linalg.inv(v)
    facts = inverse_stability(unroll.schemes["lm_resnet"], depth, kappa=kappa)
    assert facts.amplification == pytest.approx(np.linalg.norm(power, 2), rel=F64_MATRIX_POWER)
    assert facts.amplification > 20.0**depth  # at least the growth over the depth
    assert facts.digits_lost > 20


@pytest.mark.parametrize(("name", "params"), [("lm_resnet", {"κ": -0.05}), ("leapfrog", {})])
def test_roots_are_those_of_the_reversed_first_characteristic_polynomial(name, params):
    scheme = unroll.schemes[name]
    rho = first_characteristic_polynomial(scheme, **params)
    zeta = next(iter(rho.free_symbols))
    reversed_rho = sp.expand(zeta**2 * rho.subs(zeta, 1 / zeta))
    expected = [complex(r) for r in sp.Poly(reversed_rho, zeta).nroots()]
    facts = inverse_stability(scheme, 4, **params)
    got = sorted(facts.roots, key=lambda z: (z.real, z.imag))
    expected = sorted(expected, key=lambda z: (z.real, z.imag))
    assert np.allclose(got, expected, rtol=F64_RELATIVE)
    assert (
        sp.expand(facts.polynomial - sp.Poly(reversed_rho, zeta).monic().as_expr().subs(zeta, ZETA))
        == 0
    )


def test_untied_amplification_multiplies_the_layers():
    scheme = unroll.schemes["lm_resnet"]
    kappas = [-0.5, 0.8, -0.9, 0.6]

    def a(k):
        return np.array([[1 - 1 / k, 1 / k], [1.0, 0.0]])

    product = a(kappas[0]) @ a(kappas[1]) @ a(kappas[2]) @ a(kappas[3])
    got = inverse_amplification(scheme, [{"κ": k} for k in kappas])
    assert got == pytest.approx(np.linalg.norm(product, 2), rel=F64_RELATIVE)
    # Per channel: the worst channel.
    channels = inverse_amplification(scheme, [{"κ": np.array([-0.5, -0.05])}] * 3)
    assert channels == pytest.approx(inverse_stability(scheme, 3, kappa=-0.05).amplification)
    # Tied values give the tied figure.
    tied = inverse_amplification(scheme, [{"κ": -0.5}] * 7)
    assert tied == pytest.approx(inverse_stability(scheme, 7, kappa=-0.5).amplification)


def test_inverse_matrix_is_symbolic_in_the_parameters():
    inv = inverse_matrix(unroll.schemes["lm_resnet"])
    kappa = sp.Symbol("κ")
    assert inv.labels == ("u_n", "u_<n-1>")
    assert inv.matrix == sp.Matrix([[1 - 1 / kappa, 1 / kappa], [1, 0]])


def test_refusals():
    with pytest.raises(UnrollError, match="κ = 0"):
        inverse_stability(unroll.schemes["lm_resnet"], 8, kappa=0)
    with pytest.raises(UnrollError, match="implicit"):
        inverse_stability(unroll.schemes["rk4"], 8)
    with pytest.raises(UnrollError, match="pass a value for γ"):
        inverse_stability(compile_scheme(MOMENTUM), 8)
    with pytest.raises(UnrollError, match="depth"):
        inverse_stability(unroll.schemes["leapfrog"], -1)


# -- measured ----------------------------------------------------------------------------------
def _measure(scheme, params, depth, scale=1e-4, coords=4000):
    """Run ``depth`` forward steps with a weak random field, perturb the final history by a
    random δ, run the inverse from both; returns the error norms after each inverse step
    (index 0: ‖δ‖) over the stacked history."""
    dim = 4
    g = torch.Generator().manual_seed(0)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)

    def f(t, x):
        return scale * torch.tanh(x @ a)

    ops = operators(scheme, f=f, grad=lambda x: f(0.0, x))
    forward = Stepper(scheme, ops, params)
    backward = Stepper(inverse(scheme), ops, params)
    batch = coords // dim
    history = {
        n: [torch.randn(batch, dim, generator=g, dtype=torch.float64) for _ in range(s.depth)]
        for n, s in scheme.states.items()
    }
    for k in range(depth):
        new = forward.step(history, k, 0.0)
        history = {n: [new[n], *v[:-1]] for n, v in history.items()}
    exact = {n: v[::-1] for n, v in history.items()}
    bumped = {
        n: [x + 1e-9 * torch.randn(x.shape, generator=g, dtype=x.dtype) for x in v]
        for n, v in exact.items()
    }

    def distance(p, q):
        return math.sqrt(
            sum(float(((x - y) ** 2).sum()) for n in p for x, y in zip(p[n], q[n], strict=True))
        )

    errors = [distance(exact, bumped)]
    for j in range(depth):
        steps = [backward.step(h, j, 0.0) for h in (exact, bumped)]
        exact, bumped = (
            {n: [s[n], *v[:-1]] for n, v in h.items()}
            for s, h in zip(steps, (exact, bumped), strict=True)
        )
        errors.append(distance(exact, bumped))
    return errors


@pytest.mark.parametrize(
    ("text", "params", "depth"),
    [
        (MOMENTUM, {"γ": 0.9}, 64),
        ("lm_resnet", {"κ": -0.05, "h": 1.0}, 8),
        ("lm_resnet", {"κ": 0.5, "h": 1.0}, 32),
        ("leapfrog", {"h": 1.0}, 64),
        ("heavy_ball_velocity", {"α": 1.0, "β": 0.8}, 48),
    ],
)
def test_measured_amplification_matches_the_prediction(text, params, depth):
    scheme = unroll.schemes[text] if text in unroll.schemes else compile_scheme(text)
    errors = _measure(scheme, params, depth)
    facts = inverse_stability(scheme, depth, **params)
    measured = errors[-1] / errors[0]
    m = sum(max(s.depth, 1) for s in scheme.states.values())
    # A random δ over thousands of coordinates is amplified by ‖A^N‖_F/√m (law of large
    # numbers), which lies between ‖A^N‖₂/√m and ‖A^N‖₂; the field adds h·L ≤ 1e-4 per layer,
    # (1 + 1e-4)^64 < 1.01, and sampling noise is about 1/√4000 ≈ 2%: hence 0.9 and 1.1.
    assert facts.amplification / math.sqrt(m) * 0.9 <= measured <= facts.amplification * 1.1
    # The growth per layer: the error ratio over the last layers, where the largest root
    # dominates (the next root is at most 1/1.11 of it: after 16 layers its share is < 20%,
    # after 40 below 2%; measured, it is within 6e-4).
    tail = 24 if depth >= 32 else 4
    rate = (errors[-1] / errors[-1 - tail]) ** (1 / tail)
    assert rate == pytest.approx(facts.growth, rel=MEASURED_RATE)
