"""Stability claims against measurements: R(z) against the amplification of one step on
ẋ = λx, the stability polynomial against measured growth, the root condition against bounded or
growing iterates, the sampled region against the geometry of forward Euler's disc."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch

import unroll
from tests.tolerances import DOUBLE_ROOT, F64_ROUNDING, GRID_AREA, MEASURED_RATE, TRIPLE_ROOT
from unroll.analysis import (
    ZETA,
    Z,
    characteristic_roots,
    is_zero_stable,
    stability_function,
    stability_region,
)
from unroll.ir import vocabulary as ir

ZS = [complex(-0.5, 0.5), complex(-1.8, 0.3), complex(0.2, -1.1), complex(-2.5, 2.0)]


@pytest.mark.parametrize("name", ["forward_euler", "heun", "midpoint", "rk4", "rk38"])
def test_stability_function_is_the_measured_one_step_amplification(name):
    s = unroll.schemes[name]
    R = sp.lambdify(Z, stability_function(s))
    h = 0.25
    for z in ZS:
        lam = z / h
        x0 = torch.tensor([1.0 + 0.0j], dtype=torch.complex128)
        x1 = s.run(x0, 1, f=lambda t, x, lam=lam: lam * x, h=h)
        # One float64 step against one evaluation of a degree-4 polynomial: rounding only.
        assert abs(complex(x1) - complex(R(z))) < F64_ROUNDING["atol"]


def test_stepless_polynet_amplifies_by_1_plus_z_plus_z2():
    s = unroll.schemes["polynet"]
    R = sp.lambdify(Z, stability_function(s))
    for z in ZS:
        x1 = s.run(torch.tensor([1.0 + 0.0j], dtype=torch.complex128), 1, f=lambda t, x, z=z: z * x)
        assert abs(complex(x1) - complex(R(z))) < F64_ROUNDING["atol"]


def _max_root_modulus(poly, z):
    coeffs = [complex(c.subs(Z, z)) for c in sp.Poly(poly, ZETA).all_coeffs()]
    return np.abs(np.roots(coeffs)).max()


@pytest.mark.parametrize(
    "name, zs",
    [
        ("ab2", [-1.5, -0.5, 0.4]),
        ("ab3", [-1.0, 0.3]),
        ("leapfrog", [-0.6, 0.5]),
        ("lm_resnet", [-2.5, 0.3]),
    ],
)
def test_stability_polynomial_predicts_the_measured_growth(name, zs):
    s = unroll.schemes[name]
    poly = stability_function(s).subs(sp.Symbol("κ"), sp.Rational(-1, 20))
    h, n = 0.1, 300
    for z in zs:
        lam = z / h
        path = s.run(
            torch.tensor([1.0], dtype=torch.float64),
            n,
            f=lambda t, x, lam=lam: lam * x,
            h=h,
            trajectory=True,
        )
        a, b = float(abs(path[n - 100])), float(abs(path[n]))
        measured = (b / a) ** (1 / 100)
        # Over the last 100 steps the subdominant roots' share decays like (r/ρ)^100; for these
        # z the start-up transient is gone and 1% bounds what is left (checks any wrong root).
        assert measured == pytest.approx(_max_root_modulus(poly, z), rel=MEASURED_RATE), (name, z)


def test_lm_resnet_characteristic_roots_and_root_condition():
    s = unroll.schemes["lm_resnet"]
    kappa = sp.Symbol("κ")
    # docs/theory.md section 3: ρ(ζ) = (ζ − 1)(ζ + κ).
    assert sorted(characteristic_roots(s), key=str) == sorted([sp.S.One, -kappa], key=str)
    for k, stable in [(-0.05, True), (0.9, True), (1.0, True), (-1.0, False), (1.5, False)]:
        assert is_zero_stable(s, kappa=k) is stable, k


def _growth_with_f_zero(scheme, steps, **params):
    """|x_n| with f = 0 after one unit kick at the first step: bounded iff zero-stable."""

    def f(t, x):
        return torch.ones_like(x) if t == 0 else torch.zeros_like(x)

    path = scheme.run(
        torch.zeros(1, dtype=torch.float64), steps, f=f, h=1.0, trajectory=True, **params
    )
    return path.abs().max().item()


def test_root_condition_against_measured_boundedness():
    lm = unroll.schemes["lm_resnet"]
    assert _growth_with_f_zero(lm, 200, κ=0.5) < 3  # roots 1 and −0.5: bounded
    assert _growth_with_f_zero(lm, 200, κ=1.0) < 3  # roots ±1, simple: bounded
    assert _growth_with_f_zero(lm, 60, κ=1.5) > 1e6  # root −1.5 grows like 1.5^n
    double = unroll.compile("x_<k+1> = 2x_k - x_<k-1> + h f(t, x_k)")  # ρ = (ζ − 1)²
    assert not is_zero_stable(double)
    assert _growth_with_f_zero(double, 200) > 100  # grows linearly, like n


def test_implicit_trapezoid_against_fixed_point_steps():
    s = unroll.compile("x_<k+1> = x_k + h/2 (f(t, x_k) + f(t + h, x_<k+1>))")
    R = sp.lambdify(Z, stability_function(s))
    (eq,) = s.equations
    new, old = sp.symbols("x_new x_old")
    rhs = eq.rhs.xreplace({s.state_value("x", 1): new, s.state_value("x", 0): old})
    for z in [complex(-0.5, 0.5), complex(-0.8, 0.0), complex(0.3, -0.6)]:
        f = {"f": lambda t, x, z=z: z * x}
        g = sp.lambdify([new, old, sp.Symbol("h"), ir.T], rhs, modules=[f, "cmath"])
        y = 1.0 + 0j
        for _ in range(80):  # contraction |z|/2 ≤ 0.4 per sweep: 0.4^80 ≈ 1e-32
            y = g(y, 1.0 + 0j, 1.0, 0.0)
        assert abs(y - R(z)) < F64_ROUNDING["atol"]
    assert sp.simplify(stability_function(s) - (1 + Z / 2) / (1 - Z / 2)) == 0


def test_forward_euler_region_is_the_unit_disc_around_minus_one(tmp_path):
    path = tmp_path / "region.png"
    region = stability_region(
        unroll.schemes["forward_euler"], re=(-2.5, 0.5), im=(-1.5, 1.5), n=301, plot=path
    )
    cell = (region.x[1] - region.x[0]) * (region.y[1] - region.y[0])
    # Area of |1 + z| ≤ 1 is π; counting grid cells errs by about the boundary length (2π)
    # times one cell width (0.01): 0.07.
    assert region.stable.sum() * cell == pytest.approx(math.pi, abs=GRID_AREA)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stability_refuses_schemes_it_does_not_cover():
    with pytest.raises(unroll.UnrollError, match="ODE schemes"):
        stability_function(unroll.schemes["nesterov"])
    with pytest.raises(unroll.UnrollError, match="not applicable"):
        stability_function(unroll.schemes["revnet"])
    with pytest.raises(unroll.UnrollError, match="n must be"):
        stability_region(unroll.schemes["rk4"], n=1)


@pytest.mark.parametrize("name", ["AB6", "BDF6", "AM5"])
def test_region_of_a_multistep_method_is_the_root_moduli_numpy_finds(name):
    # The region's largest root modulus, found by continuation across the grid, against
    # np.roots at every 7th grid point. Simple roots agree to rounding; where two roots nearly
    # meet, the root itself is only determined to about √eps·|root| (1.5e-8), hence 1e-7.
    from tests.analysis.catalogue import MULTISTEP

    s = unroll.compile(MULTISTEP[name][0])
    region = stability_region(s, n=141)
    coeffs = [sp.lambdify(Z, c) for c in sp.Poly(stability_function(s), ZETA).all_coeffs()]
    for i in range(0, 141, 7):
        for j in range(0, 141, 7):
            z = complex(region.x[j], region.y[i])
            want = np.abs(np.roots([complex(c(z)) for c in coeffs])).max()
            assert region.modulus[i, j] == pytest.approx(want, rel=DOUBLE_ROOT)


def test_root_moduli_survive_double_roots():
    # (ζ − 1)²(ζ + z): a double root at 1 for every z, the third root −z (a triple root at
    # z = −1, found only to about eps^(1/3) ≈ 6e-6 by any method in float64, hence 2e-5).
    from unroll.analysis.stability import largest_root_modulus

    x, y = np.linspace(-2, 2, 41), np.linspace(-2, 2, 41)
    zz = x[None, :] + 1j * y[:, None]
    monic = np.stack([zz - 2, 1 - 2 * zz, zz])
    assert np.allclose(largest_root_modulus(monic), np.maximum(1, np.abs(zz)), rtol=TRIPLE_ROOT)
