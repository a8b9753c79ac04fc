"""The modified equation: LM-ResNet's against docs/theory.md section 3, and its meaning measured: the
scheme converges at first order to the solution of the equation it states, not to u̇ = f(u)."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import unroll
from unroll.analysis import modified_equation


def test_lm_resnet_modified_equation_is_the_papers():
    eq = modified_equation(unroll.schemes["lm_resnet"], terms=2)
    t, h, kappa = sp.Symbol("t"), sp.Symbol("h"), sp.Symbol("κ")
    u, f = sp.Function("u")(t), sp.Function("f")
    # (1 + κ) u̇ + (1 − κ)(Δt/2) ü + (1 + κ)(Δt²/6) u⃛ = f(u), written out from docs/theory.md.
    expected = (1 + kappa) * u.diff(t) + (1 - kappa) * h / 2 * u.diff(t, 2)
    expected += (1 + kappa) * h**2 / 6 * u.diff(t, 3)
    assert sp.simplify(eq.lhs - expected) == 0
    assert eq.rhs == f(u)


def test_terms_controls_the_truncation():
    eq = modified_equation(unroll.schemes["lm_resnet"], terms=0)
    t, kappa = sp.Symbol("t"), sp.Symbol("κ")
    assert sp.simplify(eq.lhs - (1 + kappa) * sp.Function("u")(t).diff(t)) == 0
    with pytest.raises(unroll.UnrollError, match="terms"):
        modified_equation(unroll.schemes["lm_resnet"], terms=-1)


def test_lm_resnet_converges_to_the_modified_equations_solution():
    # (1 + κ) u̇ = 1 + u², u(0) = 0: u = tan(t / (1 + κ)). Against it LM-ResNet converges at
    # first order; against tan(t), the solution of u̇ = f(u), it does not converge at all.
    s, kappa, T = unroll.schemes["lm_resnet"], -0.3, 0.5
    steps = [20, 40, 80]
    to_modified, to_plain = [], []
    for n in steps:
        u = s.run(torch.zeros(1, dtype=torch.float64), n, f=lambda t, x: 1 + x**2, h=T / n, κ=kappa)
        to_modified.append(abs(float(u) - np.tan(T / (1 + kappa))))
        to_plain.append(abs(float(u) - np.tan(T)))
    slope = -np.polyfit(np.log(steps), np.log(to_modified), 1)[0]
    assert abs(slope - 1) <= 0.3  # first order, the slope tolerance
    assert min(to_plain) > 0.1  # tan(0.714) − tan(0.5) ≈ 0.32: no convergence to u̇ = f


def test_forward_euler_expands_to_the_taylor_series():
    eq = modified_equation(unroll.schemes["forward_euler"], terms=3)
    t, h = sp.Symbol("t"), sp.Symbol("h")
    x = sp.Function("x")(t)
    # (x(t + h) − x(t))/h = Σ h^{m−1}/m! x^(m): Taylor's theorem.
    expected = sum(h ** (m - 1) / sp.factorial(m) * x.diff(t, m) for m in range(1, 5))
    assert sp.simplify(eq.lhs - expected) == 0
    assert eq.rhs == sp.Function("f")(x)
