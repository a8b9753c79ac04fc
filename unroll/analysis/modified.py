"""The modified equation of a one-state ODE scheme, in two forms.

`modified_equation`: backward error analysis (Hairer, Lubich, Wanner, chapter IX). The
scheme's values lie on the exact solution of a nearby autonomous equation

    ẋ = f + h f_2 + h² f_3 + ...,

each f_j a combination of elementary differentials (f'f, f''(f,f), f'f'f, ..., all evaluated at
x), truncated after a requested power of h. Forward Euler: ẋ = f − (h/2) f'f + O(h²); a scheme
of order p has ẋ = f + O(h^p). For a multistep scheme this is the equation of its smooth
(principal) solution; LM-ResNet's starts ẋ = f/(1 + κ). It exists for B-series methods
(`unroll.analysis.bseries`): Runge–Kutta and linear multistep forms, not for a branch nested
inside another (PolyNet) or evaluated away from the state (FractalNet for generic c_3).

`truncation_equation`: the form of Lu, Zhong, Li, Dong (ICML 2018). A smooth u(t) is put into
one step, u_<k+j> = u(t + jh) (the new value too, where an implicit scheme reads it); the step
equation x_<k+1> − (right-hand side) = 0 is divided by h and expanded in h around t. The terms
without f (derivatives of u) make the left-hand side, the terms with f the right-hand side:

    LM-ResNet:  (1 + κ) u̇ + (1 − κ)(h/2) ü + (1 + κ)(h²/6) u⃛ + O(h³) = f(u).

The ODE is read as autonomous, u̇ = f(u) (time arguments are dropped), and f's derivatives are
those of f at u(t), ``Derivative(f(u(t)), u(t))``. Terms are not rewritten with the equation
itself: this is the equation the scheme's differences satisfy, not a vector field.
"""

from __future__ import annotations

from typing import Any

import sympy as sp

from unroll.analysis.bseries import NotBSeries, modified_field, series_terms
from unroll.analysis.ode import OdeStep, ode_step
from unroll.analysis.series import Expander
from unroll.errors import UnrollError
from unroll.ir import vocabulary as vocab

T = vocab.T
MAX_TERMS = 6


def _check_terms(terms: Any) -> int:
    if isinstance(terms, bool) or not isinstance(terms, int) or not 0 <= terms <= MAX_TERMS:
        raise UnrollError(f"terms must be an int from 0 to {MAX_TERMS}, not {terms!r}")
    return terms


def modified_equation(scheme, terms: int = 2, **params: Any) -> sp.Eq:
    """``Eq(Derivative(x(t), t), f + h f_2 + ... + h^terms f_{terms+1} + O(h^(terms+1)))``: the
    field whose exact flow the scheme follows, to ``terms`` powers of h beyond the leading one.
    Each f_j is a sum of elementary differentials, symbols named ``f``, ``f'f``,
    ``f''(f,f)``, ... (see `unroll.analysis.bseries.differential`), all evaluated at x(t); x is
    the scheme's state and h its step (a scheme without a step reads each branch as h·f).
    Parameters left out stay symbolic."""
    _check_terms(terms)
    step = ode_step(scheme, "modified_equation", params)
    try:
        field = modified_field(step, terms + 1)
    except NotBSeries as e:
        raise UnrollError(
            f"modified_equation is not applicable to {step.name!r}: {e}, so no field of "
            "elementary differentials of f at x follows it (truncation_equation still applies)"
        ) from None
    h = step.scheme_form(step.h)
    rhs = sp.S.Zero
    for n, differentials in series_terms(field):
        rhs += h ** (n - 1) * step.scheme_form(differentials)
    lhs = sp.Function(step.state)(T).diff(T)
    return sp.Eq(lhs, rhs + sp.Order(h ** (terms + 1), (h, 0)), evaluate=False)


def truncation_equation(scheme, terms: int = 2, **params: Any) -> sp.Eq:
    """``Eq(lhs, rhs)`` to ``terms`` correction terms (powers h^1..h^terms) beyond the leading
    one, the form of Lu et al. 2018: lhs in u(t) and its t-derivatives (with the remainder
    O(h^(terms+1))), rhs in f(u(t)) and its derivatives, where u is the scheme's state and h its
    step (a scheme without a step reads each branch as h·f)."""
    _check_terms(terms)
    step = ode_step(scheme, "truncation_equation", params)
    return _truncation(step, terms)


def _truncation(step: OdeStep, terms: int) -> sp.Eq:
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
    rhs = step.scheme_form(_collect(rhs, h, []))
    hs = step.scheme_form(h)
    return sp.Eq(lhs + sp.Order(hs ** (terms + 1), (hs, 0)), rhs, evaluate=False)


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
