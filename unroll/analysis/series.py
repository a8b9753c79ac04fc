"""One step of a one-state ODE scheme (`unroll.analysis.ode.OdeStep`) as a power series in h.

The scalar order test (`unroll.analysis.orders`) and the truncation-error form of the modified
equation (`unroll.analysis.modified`) both substitute a smooth solution into the step and expand
in h; they differ only in how a branch f(t + τ, x + δ) is written as a Taylor series in (τ, δ).
That is the ``taylor`` callback here.

A series is a list ``[c_0, ..., c_N]`` of SymPy coefficients of h^0..h^N (terms beyond h^N are
dropped).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import sympy as sp

from unroll.analysis.ode import Branch, OdeStep
from unroll.errors import UnrollError

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
    """Evaluates the step's IR expressions as series in h, given series for the state values;
    ``autonomous``: expand every branch in x only (∂f/∂t = 0, time arguments dropped)."""

    def __init__(self, step: OdeStep, n: int, taylor: Taylor, autonomous: bool):
        self.step, self.n, self.taylor, self.autonomous = step, n, taylor, autonomous
        self.dynamic = {
            step.h,
            *step.history,
            *step.unknowns,
            *(b.symbol for b in step.branches),
        }

    def __call__(self, e: sp.Basic, env: Mapping) -> Series:
        n = self.n
        if e in env:
            return env[e]
        if e == self.step.h:
            return [sp.S.Zero, sp.S.One] + [sp.S.Zero] * (n - 1) if n >= 1 else [sp.S.Zero]
        if not (e.free_symbols & self.dynamic):
            return constant(e, n)
        if isinstance(e, sp.Symbol):
            raise UnrollError(f"{e}: no value for it in the expansion")
        if e.is_Add:
            out = constant(sp.S.Zero, n)
            for a in e.args:
                out = add(out, self(a, env))
            return out
        if e.is_Mul:
            out = constant(sp.S.One, n)
            for a in e.args:
                out = mul(out, self(a, env))
            return out
        if e.is_Pow and e.exp.is_Integer:
            return power(self(e.base, env), int(e.exp))
        raise UnrollError(
            f"{self.step.name!r}: cannot expand {self.step.scheme_form(e)} in powers of the step"
        )

    def branch(self, b: Branch, env: Mapping) -> Series:
        """``gain · f(t_k + tau, arg)`` as a series."""
        n = self.n
        x = self(b.arg, env)
        tau = constant(sp.S.Zero, n) if self.autonomous else self(b.tau, env)
        base_t, base_x = tau[0], x[0]
        dt = [sp.S.Zero] + tau[1:]
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
        return mul(self(b.gain, env), out)

    def _pass(self, env: dict, skip: sp.Symbol | None = None) -> None:
        """One evaluation of the program: every branch, then every update but ``skip``."""
        for b in self.step.branches:
            env[b.symbol] = self.branch(b, env)
        for u in self.step.updates:
            if u.symbol != skip:
                env[u.symbol] = self(u.expr, env)

    def new_value(self, history: Mapping[sp.Symbol, Series], new_guess: Series) -> Series:
        """x_<k+1> as a series, given the series of the history values (``history``: IR symbol
        -> series); implicit steps (stages or x_<k+1> read before they are computed) are solved
        by fixed-point iteration, which gains one power of h per pass because every unknown
        enters through h·f (so pass m works with series cut after h^m)."""
        step, full = self.step, self.n
        unknowns: dict = {u: constant(sp.S.Zero, full) for u in step.unknowns}
        unknowns[step.new] = new_guess
        orders = [full] if step.is_explicit else [*range(1, full + 1), full]
        try:
            for m in orders:
                self.n = m
                env = {s: _cut(v, m) for s, v in history.items()}
                env.update({u: _cut(s, m) for u, s in unknowns.items()})
                self._pass(env)
                before = unknowns[step.new]
                unknowns = {u: env[u] for u in unknowns}
        finally:
            self.n = full
        if not step.is_explicit and any(
            sp.expand(a - b) != 0 for a, b in zip(before, unknowns[step.new], strict=True)
        ):
            raise UnrollError(
                "the implicit equations do not fix the new state as a power series in the "
                f"step {step.scheme_form(step.h)} (an unknown enters without a factor of it)"
            )
        return unknowns[step.new]

    def residual(self, history: Mapping[sp.Symbol, Series], new: Series) -> Series:
        """x_<k+1> minus the step's value of it, with the given series for every state value
        (stages an implicit step reads early solved by fixed-point iteration)."""
        step = self.step
        env: dict = dict(history)
        env[step.new] = new
        env.update({u: constant(sp.S.Zero, self.n) for u in step.unknowns if u != step.new})
        passes = 1 if step.is_explicit else self.n + 2
        for _ in range(passes):
            self._pass(env, skip=step.new)
        value = self(step.updates[-1].expr, env)
        return [sp.expand(a - b) for a, b in zip(new, value, strict=True)]
