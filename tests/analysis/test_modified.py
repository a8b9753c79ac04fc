"""The modified equation: backward-error fields derived by hand in the comments below, their
meaning measured (the scheme's step and the field's exact flow agree to the claimed power of h),
and the truncation-error form of Lu et al. against docs/theory.md section 3."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import unroll
from tests.tolerances import SLOPE
from unroll.analysis import modified_equation, truncation_equation

h, t, kappa = sp.Symbol("h"), sp.Symbol("t"), sp.Symbol("κ")
# Elementary differentials, named as in Hairer, Lubich, Wanner (the field f and its derivatives
# at x): f'f = f'(x) f(x), f''(f,f) = f''(x)(f(x), f(x)), f'f'f = f'(x) f'(x) f(x).
F, FF, F2FF, FFF = (sp.Symbol(n) for n in ("f", "f'f", "f''(f,f)", "f'f'f"))

# Hand derivation for a one-step method with
#     Φ_h(y) = y + h f + h² A f'f + h³ (B f''(f,f) + C f'f'f) + O(h⁴)
# and a field f̃ = f + h f₂ + h² f₃. The exact flow of f̃ is
#     y + h f̃ + (h²/2) f̃'f̃ + (h³/6)(f̃''(f̃,f̃) + f̃'f̃'f̃) + O(h⁴),
# and with f₂ = α f'f: (f₂)'f = α(f''(f,f) + f'f'f), f'f₂ = α f'f'f. Matching powers of h:
#     h²: f₂ + f'f/2 = A f'f                               ->  α = A − 1/2
#     h³: f₃ + (α/2) f''(f,f) + α f'f'f + (1/6)(f''(f,f) + f'f'f) = B f''(f,f) + C f'f'f
#         ->  f₃ = (B − 1/6 − α/2) f''(f,f) + (C − 1/6 − α) f'f'f.


def one_step_field(A, B, C):
    alpha = A - sp.Rational(1, 2)
    f3 = (B - sp.Rational(1, 6) - alpha / 2) * F2FF + (C - sp.Rational(1, 6) - alpha) * FFF
    return F + h * alpha * FF + h**2 * f3


ONE_STEP = {
    # Euler: Φ = y + h f, so A = B = C = 0: f̃ = f − (h/2) f'f + h²(f''(f,f)/12 + f'f'f/3).
    "forward_euler": (0, 0, 0),
    # explicit midpoint: Φ = y + h f(y + (h/2) f) = y + h f + (h²/2) f'f + (h³/8) f''(f,f).
    "midpoint": (sp.Rational(1, 2), sp.Rational(1, 8), 0),
    # Heun: Φ = y + (h/2)(f + f(y + h f)) = y + h f + (h²/2) f'f + (h³/4) f''(f,f).
    "heun": (sp.Rational(1, 2), sp.Rational(1, 4), 0),
}

USER_TEXT = {  # the same methods written with an autonomous f, as residual-network users do
    "forward_euler": "x_<k+1> = x_k + h f(x_k)",
    "midpoint": "a = f(x_k); x_<k+1> = x_k + h f(x_k + h/2 a)",
    "heun": "a = f(x_k); x_<k+1> = x_k + h/2 (a + f(x_k + h a))",
}


def rhs_matches(eq, expected, order_term):
    x = sp.Function("x")(t)
    u = sp.Function("u")(t)
    assert eq.lhs in (x.diff(t), u.diff(t))
    assert sp.simplify(eq.rhs.removeO() - expected) == 0, eq.rhs
    assert eq.rhs.getO() == sp.Order(order_term, (h, 0))


@pytest.mark.parametrize("name", sorted(ONE_STEP))
def test_one_step_fields_are_the_hand_derived_ones(name):
    expected = one_step_field(*ONE_STEP[name])
    rhs_matches(modified_equation(unroll.schemes[name], terms=2), expected, h**3)
    rhs_matches(modified_equation(unroll.compile(USER_TEXT[name]), terms=2), expected, h**3)


def test_forward_euler_to_first_order_is_the_textbook_line():
    # ẋ = f − (h/2) f'f + O(h²): the first correction of backward error analysis.
    rhs_matches(modified_equation(unroll.schemes["forward_euler"], terms=1), F - h / 2 * FF, h**2)


def test_rk4_follows_its_field_to_fourth_order():
    # Order 4: every correction up to h³ vanishes, ẋ = f + O(h⁴).
    rk4 = (
        "a = f(x_k); b = f(x_k + h/2 a); c = f(x_k + h/2 b); d = f(x_k + h c); "
        "x_<k+1> = x_k + h/6 (a + 2b + 2c + d)"
    )
    rhs_matches(modified_equation(unroll.compile(rk4), terms=3), F, h**4)


def test_leapfrog_field_is_even_in_h():
    # u(t ± h) = u ± h f̃ + (h²/2) f̃'f̃ ± (h³/6)(f̃''(f̃,f̃) + f̃'f̃'f̃) + O(h⁴), so
    # u(t + h) − u(t − h) = 2h f̃ + (h³/3)(f''(f,f) + f'f'f) + O(h⁴) = 2h f:
    #     f̃ = f − (h²/6)(f''(f,f) + f'f'f) + O(h³).
    expected = F - h**2 / 6 * (F2FF + FFF)
    rhs_matches(modified_equation(unroll.schemes["leapfrog"], terms=2), expected, h**3)


def test_lm_resnet_field():
    # u(t + h) − (1 − κ) u(t) − κ u(t − h) = h f(u) with u(t ± h) as above (D₂ = f̃'f̃,
    # D₃ = f̃''(f̃,f̃) + f̃'f̃'f̃):  (1 + κ) f̃ + (1 − κ)(h/2) D₂ + (1 + κ)(h²/6) D₃ = f + O(h³).
    # h⁰: f̃ = f/(1 + κ) =: g.  h¹: (1 + κ) f₂ + (1 − κ)/2 g'g = 0, g'g = f'f/(1 + κ)², so
    # f₂ = μ f'f with μ = −(1 − κ)/(2(1 + κ)³).  h²: (1 + κ) f₃ + (1 − κ)/2 (f₂'g + g'f₂)
    # + (1 + κ)/6 (g''(g,g) + g'g'g) = 0 with f₂'g + g'f₂ = μ/(1 + κ) (f''(f,f) + 2 f'f'f):
    #     f₃ = (1 − κ)²/(4(1 + κ)⁵) (f''(f,f) + 2 f'f'f) − (f''(f,f) + f'f'f)/(6(1 + κ)³).
    mu = -(1 - kappa) / (2 * (1 + kappa) ** 3)
    f3 = (1 - kappa) ** 2 / (4 * (1 + kappa) ** 5) * (F2FF + 2 * FFF) - (F2FF + FFF) / (
        6 * (1 + kappa) ** 3
    )
    expected = F / (1 + kappa) + h * mu * FF + h**2 * f3
    rhs_matches(modified_equation(unroll.schemes["lm_resnet"], terms=2), expected, h**3)
    # κ = 0 is forward Euler.
    rhs_matches(
        modified_equation(unroll.schemes["lm_resnet"], terms=2, κ=0),
        one_step_field(*ONE_STEP["forward_euler"]),
        h**3,
    )


def test_schemes_without_a_field_say_why():
    with pytest.raises(
        unroll.UnrollError, match="not applicable to 'polynet'.*truncation_equation"
    ):
        modified_equation(unroll.schemes["polynet"])
    with pytest.raises(unroll.UnrollError, match="terms"):
        modified_equation(unroll.schemes["heun"], terms=-1)


# -- the field's meaning, measured ---------------------------------------------------------------
# On ẋ = f(x) = 1 + x² from x = 0.3 the field truncated after h^terms must reproduce the
# scheme's values to O(h^(terms+2)) per step: measured as the slope of the defect against h
# (leapfrog's field is even in h, its h³ term vanishes, so its defect is O(h⁵)). The scalar
# values of the elementary differentials are written out by hand: f'f = f'(x) f(x),
# f''(f,f) = f''(x) f(x)², f'f'f = f'(x)² f(x).
X0 = 0.3
STEPS = (0.1, 0.05, 0.025)  # the defect at 0.025 (~1e-7) lies far above the flow's error


def f_scalar(x):
    return 1 + x * x


def scalar_field(rhs: sp.Expr):
    """(h, x) -> f̃(x) at the step h, floats, for f = 1 + x²."""
    field = sp.lambdify((h, F, FF, F2FF, FFF), rhs.removeO(), dummify=True)

    def at(hval: float, x: float) -> float:
        f, d1, d2 = f_scalar(x), 2 * x, 2.0
        return field(hval, f, d1 * f, d2 * f**2, d1 * d1 * f)

    return at


def flow(field, hval: float, x0: float, time: float, substeps: int = 400) -> float:
    """x(time) of ẋ = f̃(x) (f̃ at step h = hval) from x0: classical RK4 on ``substeps`` steps,
    whose error (time/400)^4 ~ 1e-13 lies far below the defects measured (> 1e-9)."""
    x, dt = x0, time / substeps
    for _ in range(substeps):
        k1 = field(hval, x)
        k2 = field(hval, x + dt / 2 * k1)
        k3 = field(hval, x + dt / 2 * k2)
        k4 = field(hval, x + dt * k3)
        x += dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def defect_slope(defect) -> float:
    errors = [abs(defect(s)) for s in STEPS]
    return float(np.polyfit(np.log(STEPS), np.log(errors), 1)[0])


SLOPE_TOL = SLOPE  # tests/tolerances.py


@pytest.mark.parametrize("name", ["forward_euler", "midpoint", "heun"])
def test_one_step_scheme_follows_the_flow_of_its_field(name):
    scheme = unroll.schemes[name]
    field = scalar_field(modified_equation(scheme, terms=2).rhs)

    def defect(hval):
        x = torch.tensor([X0], dtype=torch.float64)
        one = scheme.run(x, 1, f=lambda t, x: f_scalar(x), h=hval)
        return float(one) - flow(field, hval, X0, hval)

    assert abs(defect_slope(defect) - 4) <= SLOPE_TOL  # terms = 2: O(h^4)


@pytest.mark.parametrize(
    "name, params, slope", [("leapfrog", {}, 5), ("lm_resnet", {"κ": sp.Rational(-3, 10)}, 4)]
)
def test_multistep_scheme_is_satisfied_by_the_flow_of_its_field(name, params, slope):
    field = scalar_field(modified_equation(unroll.schemes[name], terms=2, **params).rhs)
    k = float(params.get("κ", 0))

    def defect(hval):
        back, ahead = flow(field, hval, X0, -hval), flow(field, hval, X0, hval)
        if name == "leapfrog":
            return ahead - back - 2 * hval * f_scalar(X0)
        return ahead - (1 - k) * X0 - k * back - hval * f_scalar(X0)

    assert abs(defect_slope(defect) - slope) <= SLOPE_TOL


# -- the form of Lu et al. ------------------------------------------------------------------------
def test_lm_resnet_truncation_equation_is_the_papers():
    eq = truncation_equation(unroll.schemes["lm_resnet"], terms=2)
    u, f = sp.Function("u")(t), sp.Function("f")
    # (1 + κ) u̇ + (1 − κ)(Δt/2) ü + (1 + κ)(Δt²/6) u⃛ = f(u), written out from docs/theory.md.
    expected = (1 + kappa) * u.diff(t) + (1 - kappa) * h / 2 * u.diff(t, 2)
    expected += (1 + kappa) * h**2 / 6 * u.diff(t, 3)
    assert sp.simplify(eq.lhs.removeO() - expected) == 0
    assert eq.lhs.getO() == sp.Order(h**3, (h, 0))
    assert eq.rhs == f(u)


def test_terms_controls_the_truncation():
    eq = truncation_equation(unroll.schemes["lm_resnet"], terms=0)
    assert sp.simplify(eq.lhs.removeO() - (1 + kappa) * sp.Function("u")(t).diff(t)) == 0
    with pytest.raises(unroll.UnrollError, match="terms"):
        truncation_equation(unroll.schemes["lm_resnet"], terms=-1)


def test_lm_resnet_converges_to_the_modified_equations_solution():
    # (1 + κ) u̇ = 1 + u², u(0) = 0: u = tan(t / (1 + κ)). Against it LM-ResNet converges at
    # first order; against tan(t), the solution of u̇ = f(u), it does not converge at all.
    s, k, T = unroll.schemes["lm_resnet"], -0.3, 0.5
    steps = [20, 40, 80]
    to_modified, to_plain = [], []
    for n in steps:
        u = s.run(torch.zeros(1, dtype=torch.float64), n, f=lambda t, x: 1 + x**2, h=T / n, κ=k)
        to_modified.append(abs(float(u) - np.tan(T / (1 + k))))
        to_plain.append(abs(float(u) - np.tan(T)))
    slope = -np.polyfit(np.log(steps), np.log(to_modified), 1)[0]
    assert abs(slope - 1) <= SLOPE_TOL  # first order, the slope tolerance
    assert min(to_plain) > 0.1  # tan(0.714) − tan(0.5) ≈ 0.32: no convergence to u̇ = f


def test_forward_euler_truncation_equation_is_the_taylor_series():
    eq = truncation_equation(unroll.schemes["forward_euler"], terms=3)
    x = sp.Function("x")(t)
    # (x(t + h) − x(t))/h = Σ h^{m−1}/m! x^(m): Taylor's theorem.
    expected = sum(h ** (m - 1) / sp.factorial(m) * x.diff(t, m) for m in range(1, 5))
    assert sp.simplify(eq.lhs.removeO() - expected) == 0
    assert eq.rhs == sp.Function("f")(x)
