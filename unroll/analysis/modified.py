"""The modified equation of a one-state ODE scheme (the truncation-error form of Lu et al.).

A smooth u(t) is put into one step, u_{k+j} = u(t + jh) (the new value too, where an implicit
scheme reads it); the step equation
x_{k+1} − (right-hand side) = 0 is divided by h and expanded in h around t. The terms without f
(derivatives of u) make the left-hand side, the terms with f the right-hand side:

    LM-ResNet:  (1 + κ) u̇ + (1 − κ)(h/2) ü + (1 + κ)(h²/6) u⃛ + ... = f(u).

The ODE is read as autonomous, u̇ = f(u) (time arguments are dropped), and f's derivatives are
those of f at u(t), ``Derivative(f(u(t)), u(t))``; stages are expanded too, so a Runge–Kutta
step gives u̇ + (h/2) ü + ... = f + (h/2) f' f + .... Terms are not rewritten with the equation
itself: this is the equation the scheme's differences satisfy, not a backward-error vector field.
"""

from __future__ import annotations

from typing import Any

import sympy as sp

from unroll.analysis.ode import ode_step
from unroll.analysis.series import Expander
from unroll.errors import UnrollError
from unroll.ir import vocabulary as vocab

T = vocab.T


def modified_equation(scheme, terms: int = 2, **params: Any) -> sp.Eq:
    """``Eq(lhs, rhs)`` to ``terms`` correction terms (powers h^1..h^terms) beyond the leading
    one: lhs in u(t) and its t-derivatives, rhs in f(u(t)) and its derivatives, where u is the
    scheme's state and h its step (a scheme without a step reads each branch as h·f)."""
    if isinstance(terms, bool) or not isinstance(terms, int) or not 0 <= terms <= 6:
        raise UnrollError(f"terms must be an int from 0 to 6, not {terms!r}")
    step = ode_step(scheme, "modified_equation", params)
    u = sp.Function(step.state)(T)
    f = sp.Function("f")
    n = terms + 1
    derivs = [u] + [u.diff(T, m) for m in range(1, n + 1)]

    def at(s: int) -> list:
        return [sp.expand(derivs[m] * sp.Integer(s) ** m / sp.factorial(m)) for m in range(n + 1)]

    def taylor(i: int, j: int, base_t: sp.Expr, base_x: sp.Expr) -> sp.Expr:
        if j == 0:
            return f(base_x)
        if base_x == u:
            return sp.Derivative(f(u), (u, j))
        xi = sp.Dummy("ξ")
        return sp.Subs(sp.Derivative(f(xi), (xi, j)), xi, base_x)

    history = {x: at(-j) for j, x in enumerate(step.history)}
    residual = Expander(step, n, taylor, autonomous=True).residual(history, at(1))
    h = step.h
    total = sp.expand(sum(c * h ** (m - 1) for m, c in enumerate(residual)))
    lhs, rhs = sp.S.Zero, sp.S.Zero
    for term in sp.Add.make_args(total):
        if term.has(f):
            rhs -= term
        else:
            lhs += term
    lhs = step.scheme_form(_collect(lhs, h, derivs))
    return sp.Eq(lhs, step.scheme_form(_collect(rhs, h, [])), evaluate=False)


def _collect(e: sp.Expr, h: sp.Symbol, derivs: list) -> sp.Expr:
    """Group by powers of h, each coefficient factored (so (1 + κ) stays a factor)."""
    e = sp.expand(e)
    if e == 0:
        return e
    poly = sp.collect(e, h, evaluate=False)
    out = sp.S.Zero
    for power, coeff in poly.items():
        coeff = sp.collect(coeff, derivs[::-1], func=sp.factor) if derivs else sp.factor(coeff)
        out += power * coeff
    return out
