"""One step of a one-state ODE scheme as a power series in the step h.

The order (`unroll.analysis.order`) and the modified equation (`unroll.analysis.modified`) both
substitute a smooth solution into the scheme and expand in h; they differ only in how a branch
f(t + τ, x + δ) is written as a Taylor series in (τ, δ). That is the ``taylor`` callback here.

A series is a list ``[c_0, ..., c_N]`` of SymPy coefficients of h^0..h^N (terms beyond h^N are
dropped).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import sympy as sp

from unroll.analysis._common import OdeView, branch_parts
from unroll.errors import UnrollError
from unroll.ir import vocabulary as ir

Series = list

# taylor(i, j, base_t, base_x) -> ∂_t^i ∂_x^j f at (t + base_t, base_x)
Taylor = Callable[[int, int, sp.Expr, sp.Expr], sp.Expr]


def constant(c: sp.Expr, n: int) -> Series:
    return [c] + [sp.S.Zero] * n


def add(a: Series, b: Series) -> Series:
    return [x + y for x, y in zip(a, b, strict=True)]


def scale(a: Series, c: sp.Expr) -> Series:
    return [sp.expand(c * x) for x in a]


def mul(a: Series, b: Series) -> Series:
    n = len(a) - 1
    out = [sp.S.Zero] * (n + 1)
    for i, x in enumerate(a):
        if x == 0:
            continue
        for j in range(n + 1 - i):
            if b[j] != 0:
                out[i + j] += x * b[j]
    return [sp.expand(c) for c in out]


def inverse(a: Series) -> Series:
    """1/a for a series with a nonzero constant term."""
    if a[0] == 0:
        raise UnrollError("division by a quantity that vanishes with h")
    n = len(a) - 1
    out = [sp.S.One / a[0]] + [sp.S.Zero] * n
    for m in range(1, n + 1):
        out[m] = sp.expand(-sum(a[i] * out[m - i] for i in range(1, m + 1)) / a[0])
    return out


def power(a: Series, e: int) -> Series:
    if e < 0:
        return power(inverse(a), -e)
    out = constant(sp.S.One, len(a) - 1)
    for _ in range(e):
        out = mul(out, a)
    return out


def _cut(a: Series, m: int) -> Series:
    """``a`` cut (or padded with zeros) to the coefficients of h^0..h^m."""
    return (list(a) + [sp.S.Zero] * (m + 1))[: m + 1]


class Expander:
    """Evaluates scheme expressions as series in h, given series for the state values."""

    def __init__(self, view: OdeView, n: int, taylor: Taylor, autonomous: bool = False):
        self.view, self.n, self.taylor, self.autonomous = view, n, taylor, autonomous
        self.stages = set(view.stages)

    def dynamic(self, e: sp.Basic) -> bool:
        return bool(
            e.has(self.view.h, ir.T, *self.stages)
            or e.atoms(sp.Indexed)
            or any(ir.operator_kind(a) == "branch" for a in ir.applications(e))
        )

    def __call__(self, e: sp.Basic, env: Mapping, time: bool = False) -> Series:
        n = self.n
        if e in env:
            return env[e]
        if e == self.view.h:
            return [sp.S.Zero, sp.S.One] + [sp.S.Zero] * (n - 1) if n >= 1 else [sp.S.Zero]
        if e == ir.T:
            if not time:
                raise UnrollError("the time t appears outside the time argument of f(t, x)")
            return constant(sp.S.Zero, n)  # time offset from t_k
        if not self.dynamic(e):
            return constant(e, n)
        if isinstance(e, sp.Indexed):
            raise UnrollError(f"{e}: no value for this state in the expansion")
        if e.is_Add:
            out = constant(sp.S.Zero, n)
            for a in e.args:
                out = add(out, self(a, env, time))
            return out
        if e.is_Mul:
            out = constant(sp.S.One, n)
            for a in e.args:
                out = mul(out, self(a, env, time))
            return out
        if e.is_Pow and e.exp.is_Integer:
            return power(self(e.base, env, time), int(e.exp))
        if isinstance(e, sp.Function) and ir.operator_kind(e) == "branch":
            return self.branch(e, env)
        raise UnrollError(f"cannot expand {e} in powers of the step {self.view.h}")

    def branch(self, app: sp.Function, env: Mapping) -> Series:
        n = self.n
        t_arg, x_arg = branch_parts(app)
        tau = self(t_arg, env, time=True)
        x = self(x_arg, env)
        base_t, base_x = (sp.S.Zero if self.autonomous else tau[0]), x[0]
        dt = [sp.S.Zero] + ([sp.S.Zero] * n if self.autonomous else tau[1:])
        dx = [sp.S.Zero] + x[1:]
        out = constant(sp.S.Zero, n)
        dt_pow = constant(sp.S.One, n)
        for i in range(n + 1):
            if i and self.autonomous:
                break
            dx_pow = constant(sp.S.One, n)
            for j in range(n + 1 - i):
                term = mul(dt_pow, dx_pow)
                if any(c != 0 for c in term):
                    coeff = self.taylor(i, j, base_t, base_x) / (sp.factorial(i) * sp.factorial(j))
                    out = add(out, scale(term, coeff))
                dx_pow = mul(dx_pow, dx)
            dt_pow = mul(dt_pow, dt)
        return out

    def step(self, history: Mapping[int, Series], new_guess: Series) -> Series:
        """x_{k+1} as a series, given the series of x_{k-j} (``history[-j]``); implicit
        equations (stages or x_{k+1} used before they are computed) are solved by fixed-point
        iteration, which gains one power of h per pass because every unknown enters through h·f
        (so pass m works with series cut after h^m)."""
        view, full = self.view, self.n
        new = view.value(1)
        unknowns: dict = {new: new_guess, **{st: constant(sp.S.Zero, full) for st in view.stages}}
        orders = [full] if view.is_explicit else [*range(1, full + 1), full]
        try:
            for m in orders:
                self.n = m
                env = {view.value(j): s[: m + 1] for j, s in history.items()}
                env.update({u: _cut(s, m) for u, s in unknowns.items()})
                for eq in view.equations:
                    env[eq.lhs] = self(eq.rhs, env)
                before = unknowns[new]
                unknowns = {u: env[u] for u in unknowns}
        finally:
            self.n = full
        if not view.is_explicit and any(
            sp.expand(a - b) != 0 for a, b in zip(before, unknowns[new], strict=True)
        ):
            raise UnrollError(
                "the implicit equations do not fix the new state as a power series in the "
                f"step {view.h} (an unknown enters without a factor {view.h})"
            )
        return unknowns[new]

    def residual(self, history: Mapping[int, Series], new: Series) -> Series:
        """x_{k+1} minus the scheme's right-hand side, with the given series for every state value
        x_{k+1}, x_k, ... (stages solved by fixed-point iteration where they are implicit)."""
        view = self.view
        env: dict = {view.value(j): s for j, s in history.items()}
        env[view.value(1)] = new
        for st in view.stages:
            env[st] = constant(sp.S.Zero, self.n)
        passes = 1 if view.is_explicit else self.n + 2
        out = None
        for _ in range(passes):
            for eq in view.equations:
                value = self(eq.rhs, env)
                if isinstance(eq.lhs, sp.Indexed):
                    out = [sp.expand(a - b) for a, b in zip(new, value, strict=True)]
                else:
                    env[eq.lhs] = value
        return out
