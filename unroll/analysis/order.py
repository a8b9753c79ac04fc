"""The order of consistency of an ODE scheme.

The exact solution of ẋ = f(t, x) is put into one step and the local error
x(t_k + h) − x_{k+1} is expanded in h (`unroll.analysis.series`); the order is p when the
expansion starts at h^{p+1}. Derivatives of the solution come from the equation itself:
x' = f, and d/dt acts on ∂_t^i ∂_x^j f as ∂_t^{i+1} ∂_x^j f + f ∂_t^i ∂_x^{j+1} f.

The scalar expansion decides orders up to 4. When it reports 5 or more, a linear multistep form
(every f evaluated at a past or new state) is still decided by it, since its local error is a
combination of derivatives of x alone; a one-step Runge–Kutta form is decided by the rooted-tree
conditions (`unroll.analysis.bseries`); any other form is an error rather than a guess.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import sympy as sp

from unroll.analysis._common import OdeView, branch_apps, branch_parts, label, ode_view
from unroll.analysis.bseries import NotRungeKutta, bseries_order
from unroll.analysis.series import Expander, Series
from unroll.errors import UnrollError

SCALAR_DECIDES = 4  # the scalar expansion decides orders up to this one
ORDER_LIMIT = 8  # orders beyond this one are reported as an error, not computed

X0 = sp.Symbol("x_0")


@cache
def partial(i: int, j: int) -> sp.Symbol:
    """∂_t^i ∂_x^j f at the current point (t_k, x(t_k))."""
    return sp.Symbol(f"f_{i}{j}" if i < 10 and j < 10 else f"f_{i}_{j}")


def _total_derivative(e: sp.Expr) -> sp.Expr:
    out = sp.S.Zero
    for s in e.free_symbols:
        if s == X0:
            out += sp.diff(e, s) * partial(0, 0)
            continue
        i, j = _PARTIAL_INDEX[s]
        out += sp.diff(e, s) * (partial(i + 1, j) + partial(0, 0) * partial(i, j + 1))
    return sp.expand(out)


_PARTIAL_INDEX: dict[sp.Symbol, tuple[int, int]] = {}


@cache
def solution_derivatives(n: int) -> tuple[sp.Expr, ...]:
    """x, x', ..., x^(n) of the exact solution at t_k, in the partial derivatives of f."""
    for i in range(n + 1):
        for j in range(n + 1):
            _PARTIAL_INDEX[partial(i, j)] = (i, j)
    out = [X0, partial(0, 0)]
    while len(out) <= n:
        out.append(_total_derivative(out[-1]))
    return tuple(out[: n + 1])


def exact_series(s: int, n: int) -> Series:
    """x(t_k + s h) as a series in h."""
    d = solution_derivatives(n)
    return [sp.expand(d[m] * sp.Integer(s) ** m / sp.factorial(m)) for m in range(n + 1)]


def _taylor(i: int, j: int, base_t: sp.Expr, base_x: sp.Expr) -> sp.Expr:
    if base_t == 0 and base_x == X0:
        return partial(i, j)
    # f evaluated away from the solution (a stepless branch nested in another, f(h f(x))):
    # its derivatives there are further unknowns.
    return sp.Symbol(f"f_{i}{j}({base_t}, {base_x})")


def local_error(view: OdeView, n: int) -> Series:
    """x(t_k + h) − x_{k+1} (exact past values) as a series up to h^n."""
    history = {-j: exact_series(-j, n) for j in range(view.depth)}
    new = Expander(view, n, _taylor).step(history, history[0])
    return [sp.expand(a - b) for a, b in zip(exact_series(1, n), new, strict=True)]


def _vanishes(c: sp.Expr) -> bool:
    return c == 0 or sp.cancel(sp.together(c)) == 0


def _first_nonzero(series: Series) -> int | None:
    return next((m for m, c in enumerate(series) if not _vanishes(c)), None)


def _is_multistep_form(view: OdeView) -> bool:
    return not view.stages and all(
        isinstance(branch_parts(app)[1], sp.Indexed)
        for eq in view.equations
        for app in branch_apps(eq.rhs)
    )


def order(scheme, **params: Any) -> int:
    """The order of consistency p of a one-state ODE scheme: the local error is O(h^{p+1}).

    0 for an inconsistent scheme. Parameters left out stay symbolic, so the answer holds for
    generic values (LM-ResNet: 0 for generic κ, 1 with ``κ=0``); pass values to fix them.
    """
    return order_of(ode_view(scheme, "order", params), label(scheme))


def order_of(view: OdeView, name: str = "") -> int:
    first = _first_nonzero(local_error(view, SCALAR_DECIDES + 1))
    if first is not None:
        return max(first - 1, 0)
    if _is_multistep_form(view):
        first = _first_nonzero(local_error(view, ORDER_LIMIT + 1))
        if first is None:
            raise UnrollError(f"{name!r}: the order exceeds {ORDER_LIMIT}, the largest computed")
        return first - 1
    try:
        p = bseries_order(view, ORDER_LIMIT + 1)
    except NotRungeKutta as e:
        raise UnrollError(
            f"{name!r} has order at least {SCALAR_DECIDES + 1} on scalar equations, but it is "
            f"neither a linear multistep nor a one-step Runge–Kutta form ({e}), so its order on "
            "systems is not decided"
        ) from None
    if p > ORDER_LIMIT:
        raise UnrollError(f"{name!r}: the order exceeds {ORDER_LIMIT}, the largest computed")
    return p


def order_conditions(scheme, max_order: int = SCALAR_DECIDES, **params: Any) -> list:
    """The coefficients of h^0..h^{max_order+1} of the local error on scalar equations (each a
    polynomial in the partial derivatives f_ij of f and the solution value x_0); the scheme has
    order p when the first p+1 vanish. Useful to read off conditions on free parameters."""
    view = ode_view(scheme, "order_conditions", params)
    return local_error(view, max_order + 1)
