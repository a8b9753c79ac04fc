"""The order of consistency of an ODE scheme, decided from its step IR.

The exact solution is put into one step and the local error x(t_k + h) − x_<k+1> is compared
with zero, order by order in h. Three readings, the first that applies:

1. A linear multistep form, Σ_j a_j x_<n+j> = h Σ_j b_j f(x_<n+j>) (every f evaluated at a
   state value, at that value's time when written f(t, x)): order p when the coefficient
   conditions C_0 = Σ a_j = 0 and C_q = Σ j^q a_j − q Σ j^{q−1} b_j = 0 hold for q ≤ p
   (Hairer, Nørsett, Wanner, section III.2); the local error is Σ_q C_q h^q x^(q)/q!.
2. A B-series method (Runge–Kutta methods, predictor–corrector pairs, ...): the rooted-tree
   conditions (`unroll.analysis.bseries`), which hold for systems.
3. Otherwise the local error is expanded on a scalar equation (`unroll.analysis.series`).
   Derivatives of the solution come from the equation itself: x' = f, and d/dt acts on
   ∂_t^i ∂_x^j f as ∂_t^{i+1} ∂_x^j f + f ∂_t^i ∂_x^{j+1} f (the ∂_t terms vanish for an
   autonomous f). On scalar equations the conditions of systems are told apart up to order 4
   for f(t, x) and up to order 3 for f(x) (the trees f''(f, f'f) and f'f''(f,f) give one scalar
   term); past that the order is an error rather than a guess.
"""

from __future__ import annotations

import functools
from typing import Any

import sympy as sp

from unroll.analysis.bseries import NotBSeries, bseries_order
from unroll.analysis.ode import OdeStep, linear_parts, ode_step
from unroll.analysis.series import Expander, Series
from unroll.errors import UnrollError

SCALAR_DECIDES = 4  # the scalar expansion of f(t, x) decides orders up to this one (f(x): one less)
ORDER_LIMIT = 8  # orders beyond this one are reported as an error, not computed

X0 = sp.Symbol("x_0")


@functools.cache
def partial_symbol(i: int, j: int) -> sp.Symbol:
    """∂_t^i ∂_x^j f at the current point (t_k, x(t_k))."""
    return sp.Symbol(f"f_{i}{j}" if i < 10 and j < 10 else f"f_{i}_{j}")


@functools.cache
def _partial_index() -> dict[sp.Symbol, tuple[int, int]]:
    return {
        partial_symbol(i, j): (i, j) for i in range(ORDER_LIMIT + 2) for j in range(ORDER_LIMIT + 2)
    }


def _total_derivative(e: sp.Expr, autonomous: bool) -> sp.Expr:
    out = sp.S.Zero
    index = _partial_index()
    for s in e.free_symbols:
        if s == X0:
            out += sp.diff(e, s) * partial_symbol(0, 0)
            continue
        i, j = index[s]
        dt = sp.S.Zero if autonomous else partial_symbol(i + 1, j)
        out += sp.diff(e, s) * (dt + partial_symbol(0, 0) * partial_symbol(i, j + 1))
    return sp.expand(out)


@functools.cache
def solution_derivatives(n: int, autonomous: bool = False) -> tuple[sp.Expr, ...]:
    """x, x', ..., x^(n) of the exact solution at t_k, in the partial derivatives of f."""
    out = [X0, partial_symbol(0, 0)]
    while len(out) <= n:
        out.append(_total_derivative(out[-1], autonomous))
    return tuple(out[: n + 1])


def exact_series(s: int, n: int, autonomous: bool = False) -> Series:
    """x(t_k + s h) as a series in h."""
    d = solution_derivatives(n, autonomous)
    return [sp.expand(d[m] * sp.Integer(s) ** m / sp.factorial(m)) for m in range(n + 1)]


def _taylor(i: int, j: int, base_t: sp.Expr, base_x: sp.Expr) -> sp.Expr:
    if base_t == 0 and base_x == X0:
        return partial_symbol(i, j)
    # f evaluated away from the solution (a stepless branch nested in another, f(h f(x))):
    # its derivatives there are further unknowns.
    return sp.Symbol(f"f_{i}{j}({base_t}, {base_x})")


def local_error(step: OdeStep, n: int) -> Series:
    """x(t_k + h) − x_<k+1> (exact past values) on a scalar equation, as a series up to h^n."""
    auto = step.autonomous
    history = {x: exact_series(-j, n, auto) for j, x in enumerate(step.history)}
    new = Expander(step, n, _taylor, auto).new_value(history, history[step.history[0]])
    return [sp.expand(a - b) for a, b in zip(exact_series(1, n, auto), new, strict=True)]


def _vanishes(c: sp.Expr) -> bool:
    return c == 0 or sp.cancel(sp.together(c)) == 0


def _first_nonzero(series: Series) -> int | None:
    return next((m for m, c in enumerate(series) if not _vanishes(c)), None)


def linear_multistep(step: OdeStep) -> tuple[list[sp.Expr], list[sp.Expr]] | None:
    """(a, b) with Σ_j a_j x_<n+j> = h Σ_j b_j f(x_<n+j>), j = 0..s and n + s = k + 1, when the
    step is a linear multistep form; None otherwise."""
    if len(step.updates) != 1:
        return None  # stages an implicit step solves for
    s, h = step.depth, step.h
    position = {x: s - 1 - j for j, x in enumerate(step.history)}
    position[step.new] = s
    for br in step.branches:
        if br.arg not in position:
            return None
        if not step.autonomous and not _vanishes(br.tau - (position[br.arg] - s + 1) * h):
            return None
    leaves = (*step.history, *(br.symbol for br in step.branches))
    parts = linear_parts(step.updates[0].expr, leaves)
    if parts is None or parts[1] != 0:
        return None
    coeffs = parts[0]
    a = [sp.S.Zero] * (s + 1)
    b = [sp.S.Zero] * (s + 1)
    a[s] = sp.S.One
    for j, x in enumerate(step.history):
        a[s - 1 - j] = -coeffs.get(x, sp.S.Zero)
    for br in step.branches:
        b[position[br.arg]] += sp.cancel(coeffs.get(br.symbol, sp.S.Zero) * br.gain / h)
    if any(c.has(h) for c in (*a, *b)):
        return None
    return a, b


def multistep_conditions(a: list, b: list, n: int) -> list[sp.Expr]:
    """C_0, ..., C_n: the local error of the form is Σ_q C_q h^q x^(q)/q!."""
    js = [sp.Integer(j) for j in range(len(a))]
    out = [sp.expand(sum(a, sp.S.Zero))]
    for q in range(1, n + 1):
        out.append(
            sp.expand(
                sum((j**q * aj for j, aj in zip(js, a, strict=True)), sp.S.Zero)
                - q * sum((j ** (q - 1) * bj for j, bj in zip(js, b, strict=True)), sp.S.Zero)
            )
        )
    return out


def order(scheme, **params: Any) -> int:
    """The order of consistency p of a one-state ODE scheme: the local error is O(h^{p+1}).

    0 for an inconsistent scheme. Parameters left out stay symbolic, so the answer holds for
    generic values (LM-ResNet: 0 for generic κ, 1 with ``κ=0``); pass values to fix them.
    """
    return order_of(ode_step(scheme, "order", params))


@functools.lru_cache(maxsize=256)
def order_of(step: OdeStep) -> int:
    """The order of ``step`` (see the module docstring for how it is decided)."""
    lmm = linear_multistep(step)
    if lmm is not None:
        first = _first_nonzero(multistep_conditions(*lmm, ORDER_LIMIT + 1))
        if first is None:
            raise UnrollError(
                f"{step.name!r}: the order exceeds {ORDER_LIMIT}, the largest computed"
            )
        return max(first - 1, 0)
    try:
        p = bseries_order(step, ORDER_LIMIT + 1)
    except NotBSeries as e:
        reason = str(e)
    else:
        if p > ORDER_LIMIT:
            raise UnrollError(
                f"{step.name!r}: the order exceeds {ORDER_LIMIT}, the largest computed"
            )
        return p
    decides = SCALAR_DECIDES - 1 if step.autonomous else SCALAR_DECIDES
    first = _first_nonzero(local_error(step, decides + 1))
    if first is not None:
        return max(first - 1, 0)
    raise UnrollError(
        f"{step.name!r} has order at least {decides + 1} on scalar equations, but it is neither "
        f"a linear multistep form nor a B-series method ({reason}), so its order on systems is "
        "not decided"
    )


def order_conditions(scheme, max_order: int = SCALAR_DECIDES, **params: Any) -> list:
    """The coefficients of h^0..h^{max_order+1} of the local error on scalar equations (each a
    polynomial in the partial derivatives f_ij of f and the solution value x_0); the scheme has
    order p on scalar equations when the first p+1 vanish. Useful to read off conditions on
    free parameters."""
    step = ode_step(scheme, "order_conditions", params)
    return [step.scheme_form(c) for c in local_error(step, max_order + 1)]
