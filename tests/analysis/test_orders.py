"""Order claims against measured convergence: the fitted log-log slope of the global error
against the step size on a nonlinear, non-autonomous ODE with a known solution."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import sympy as sp
import torch

import unroll
from tests.tolerances import SLOPE
from unroll.analysis import order
from unroll.analysis.bseries import gamma, trees
from unroll.ir import vocabulary as ir

# ẋ = cos(t)(1 + x²), x(0) = 0 has the solution x(t) = tan(sin t): nonlinear in x, depends on t,
# and f(t, 0) ≠ 0 (so PolyNet's f(f(x)) term is not accidentally consistent).
# End at t = 1.5: at t = 1 RK4's leading error coefficient nearly vanishes on this equation and
# three step sizes then fit a slope of 5.4 (measured), a coincidence of the end point.
T_END = 1.5
SLOPE_TOL = SLOPE  # tests/tolerances.py


def f(t, x):
    return torch.cos(torch.as_tensor(t, dtype=x.dtype)) * (1 + x**2)


def exact(t):
    return np.tan(np.sin(t))


def slope(errors, steps):
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


def measured_slope(scheme, steps, **params):
    errors = []
    for n in steps:
        x = scheme.run(torch.zeros(1, dtype=torch.float64), n, f=f, h=T_END / n, **params)
        errors.append(abs(float(x) - exact(T_END)))
    return slope(errors, steps)


ONE_STATE_WITH_STEP = [
    "forward_euler",
    "heun",
    "midpoint",
    "rk4",
    "rk38",
    "ab2",
    "ab3",
    "leapfrog",
    "lm_resnet",
]


@pytest.mark.parametrize("name", ONE_STATE_WITH_STEP)
def test_order_matches_measured_slope(name):
    s = unroll.schemes[name]
    p = order(s)
    # rk4 at 64 steps is near 1e-10 error, far above float64 rounding.
    got = measured_slope(s, [16, 32, 64])
    assert abs(got - p) <= SLOPE_TOL, (name, p, got)


def test_bundled_orders_against_the_literature():
    # Hairer, Nørsett, Wanner: these are textbook orders, independent of this code.
    expected = {
        "forward_euler": 1,
        "heun": 2,
        "midpoint": 2,
        "rk4": 4,
        "rk38": 4,
        "ab2": 2,
        "ab3": 3,
        "leapfrog": 2,
    }
    assert {n: order(unroll.schemes[n]) for n in expected} == expected


def test_lm_resnet_is_consistent_only_at_kappa_zero():
    s = unroll.schemes["lm_resnet"]
    assert order(s) == 0  # generic κ: (1 + κ)u̇ = f is solved instead, docs/theory.md section 3
    assert order(s, kappa=0) == 1
    assert abs(measured_slope(s, [16, 32, 64], κ=0.0) - 1) <= SLOPE_TOL


def test_stepless_polynet_reads_f_as_h_times_the_field():
    s = unroll.schemes["polynet"]
    assert order(s) == 0
    errors = []
    steps = [16, 32, 64]
    for n in steps:
        h = T_END / n
        x = s.run(torch.zeros(1, dtype=torch.float64), n, f=lambda t, x, h=h: h * f(t, x), h=h)
        errors.append(abs(float(x) - exact(T_END)))
    assert abs(slope(errors, steps)) <= SLOPE_TOL  # no convergence: order 0


def implicit_run(scheme, n, h):
    """Steps of a one-state, stage-free implicit scheme, each solved by fixed-point iteration
    (it contracts: |h ∂f/∂x| ≤ 1.5·3.2/16 < 0.3 here)."""
    (eq,) = scheme.equations
    new, old = sp.symbols("x_new x_old")
    rhs = eq.rhs.xreplace({scheme.state_value("x", 1): new, scheme.state_value("x", 0): old})
    g = sp.lambdify([new, old, sp.Symbol("h"), ir.T], rhs, modules=[{"f": f}, "math"])
    x = torch.zeros(1, dtype=torch.float64)
    for k in range(n):
        y = x
        for _ in range(30):  # contraction < 0.3 per sweep: 0.3^30 < 1e-15
            y = g(y, x, h, k * h)
        x = y
    return float(x)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("x_<k+1> = x_k + h f(t + h, x_<k+1>)", 1),  # backward Euler
        ("x_<k+1> = x_k + h/2 (f(t, x_k) + f(t + h, x_<k+1>))", 2),  # trapezoid
    ],
)
def test_implicit_order_against_fixed_point_runs(text, expected):
    s = unroll.compile(text)
    assert not s.is_explicit
    p = order(s)
    assert p == expected
    steps = [16, 32, 64]
    errors = [abs(implicit_run(s, n, T_END / n) - exact(T_END)) for n in steps]
    assert abs(slope(errors, steps) - p) <= SLOPE_TOL


def test_trees_are_counted_as_in_the_literature():
    # OEIS A000081, rooted trees with n nodes; γ of the tall and the bushy tree of order 4.
    assert [len(trees(n)) for n in range(1, 8)] == [1, 1, 2, 4, 9, 20, 48]
    assert gamma(((((),),),)) == 24 and gamma(((), (), ())) == 4


def dopri5_text():
    """Dormand–Prince 5(4), fifth-order weights, from torchdiffeq's own tableau."""
    from torchdiffeq._impl.dopri5 import _DORMAND_PRINCE_SHAMPINE_TABLEAU as tab

    def q(v):
        return Fraction(float(v)).limit_denominator(100000)

    lines = ["s1 = f(t, x_k)"]
    for i, (c, row) in enumerate(zip(tab.alpha[:5], tab.beta[:5], strict=True)):
        comb = " + ".join(f"({q(r)}) s{j + 1}" for j, r in enumerate(row))
        lines.append(f"s{i + 2} = f(t + ({q(c)}) h, x_k + h({comb}))")
    comb = " + ".join(f"({q(r)}) s{j + 1}" for j, r in enumerate(tab.c_sol[:6]))
    lines.append(f"x_<k+1> = x_k + h({comb})")
    return "\n".join(lines)


def test_fifth_order_runge_kutta_is_decided_by_the_tree_conditions():
    s = unroll.compile(dopri5_text())
    assert order(s) == 5
    # 8 steps already give errors near 1e-9: fit on coarse steps, above rounding.
    assert abs(measured_slope(s, [4, 8, 16]) - 5) <= SLOPE_TOL


def test_order_refuses_what_it_does_not_cover():
    with pytest.raises(unroll.UnrollError, match="ODE schemes"):
        order(unroll.schemes["heavy_ball"])
    with pytest.raises(unroll.UnrollError, match="2 states"):
        order(unroll.schemes["revnet"])
    with pytest.raises(unroll.UnrollError, match="unknown parameter"):
        order(unroll.schemes["lm_resnet"], gamma=1)


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "a = f(x_k); b = f(x_k + h/2 a); c = f(x_k + h/2 b); d = f(x_k + h c); "
            "x_<k+1> = x_k + h/6 (a + 2b + 2c + d)",
            4,
        ),
        ("a = f(x_k); x_<k+1> = x_k + h/2 (a + f(x_k + h a))", 2),
    ],
)
def test_autonomous_spelling_matches_measured_slope(text, expected):
    # The logistic equation ẋ = x(1 − x), x(0) = 1/2: x = 1/(1 + e^−t), an autonomous field
    # written f(x). (On ẋ = 1 + x² up to t = 1, RK4's leading error term nearly cancels: three
    # step sizes fit a slope of 1.1, measured; the logistic curve has no such coincidence.)
    s = unroll.compile(text)
    p = order(s)
    errors = []
    steps = [16, 32, 64]
    for n in steps:
        x0 = torch.full((1,), 0.5, dtype=torch.float64)
        x = s.run(x0, n, f=lambda t, x: x * (1 - x), h=2.0 / n)
        errors.append(abs(float(x) - 1 / (1 + np.exp(-2.0))))
    assert p == expected and abs(slope(errors, steps) - p) <= SLOPE_TOL


def test_linear_multistep_coefficients_are_nodepys():
    # Σ a_j x_<n+j> = h Σ b_j f(x_<n+j>), read off the scheme text, against nodepy's (alpha,
    # beta) for every multistep method of the catalogue; the order then follows from
    # C_0 = Σ a_j, C_q = Σ j^q a_j − q Σ j^(q−1) b_j.
    lm = pytest.importorskip("nodepy.linear_multistep_method")
    from tests.analysis.catalogue import MULTISTEP
    from unroll.analysis.ode import ode_step
    from unroll.analysis.orders import linear_multistep

    for name, (text, constructor, k) in MULTISTEP.items():
        method = getattr(lm, constructor)(k)
        a, b = linear_multistep(ode_step(unroll.compile(text), "order"))
        assert [sp.nsimplify(v) for v in method.alpha] == a, name
        assert [sp.nsimplify(v) for v in method.beta] == b, name
    assert linear_multistep(ode_step(unroll.schemes["rk4"], "order")) is None  # stages


def test_order_past_the_limit_is_an_error_not_a_guess():
    # The 9-step Adams–Bashforth method has order 9, past ORDER_LIMIT = 8 (its coefficients
    # as nodepy's Adams_Bashforth(9) gives them, times 3628800).
    ab9 = unroll.compile(
        "x_<k+1> = x_k + h/3628800 (14097247 f(x_k) - 43125206 f(x_<k-1>) + 95476786 f(x_<k-2>)"
        " - 139855262 f(x_<k-3>) + 137968480 f(x_<k-4>) - 91172642 f(x_<k-5>)"
        " + 38833486 f(x_<k-6>) - 9664106 f(x_<k-7>) + 1070017 f(x_<k-8>))"
    )
    with pytest.raises(unroll.UnrollError, match="exceeds 8"):
        order(ab9)
