"""The ODE reading of a scheme's step IR: what every ODE analysis works on.

``ode_step(scheme, what, params) -> OdeStep`` reads `unroll.ir.step.build(scheme)` (no pass here
walks the scheme's equations) and raises an `UnrollError` that says why the analysis ``what``
does not apply. The step is a straight-line program over IR symbols:

    o_i = gain_i · f(t + τ_i, arg_i)     (`Branch`, in call order; arg_i reads earlier o_j)
    u   = expr                           (`Assignment`: the new state, or an implicit stage)

Conventions (documented once, here):

- The ODE is ẋ = f(x) when every branch is written f(x) (an autonomous field, ∂f/∂t = 0), and
  ẋ = f(t, x) when some branch is written f(t, x); then a branch written f(x) is evaluated at
  the step's time t_k, as at run time (`unroll.lowering.eager`). Every branch (``f``, ``f_1``,
  ``g``, ...) is read as the same right-hand side f: FractalNet's f_1 and f_2 are two
  evaluations of one vector field, as in the Runge–Kutta reading of Lu et al. 2018.
- The step is the parameter ``h`` (or ``Δt``, ``dt``). A residual network without a step
  (PolyNet, FractalNet) absorbs it into its branches, so each branch f is read as h·f̃ with f̃
  the vector field (``gain`` h); the analyses then speak of f̃, still written f, and of z = hλ.
- Schemes with several states (RevNet's X and Y) advance a coupled system with different
  branches; the one-state test equation ẋ = λx and the scalar order conditions do not apply to
  them, and the analyses say so instead of guessing a splitting.

Results are written back in the scheme's own symbols with `OdeStep.scheme_form`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sympy as sp

from unroll.errors import UnrollError
from unroll.frontend.scheme import STEP_NAMES, Scheme, canonical_params
from unroll.ir.step import StepIR, build

STEPLESS_H = sp.Symbol("h")  # how results name the step of a scheme written without one


def label(scheme: Scheme) -> str:
    """How messages name ``scheme``."""
    return scheme.name or str(scheme).replace("\n", "; ")


@dataclass(frozen=True)
class Branch:
    """``symbol = gain · f(t_k + tau, arg)``; ``timed``: written f(t, x) (``tau`` is 0 for a
    branch written f(x), evaluated at the step's time)."""

    symbol: sp.Symbol
    arg: sp.Expr
    tau: sp.Expr
    gain: sp.Expr
    timed: bool


@dataclass(frozen=True)
class Assignment:
    """``symbol = expr``: the state's new value, or a stage an implicit scheme reads before its
    equation computes it."""

    symbol: sp.Symbol
    expr: sp.Expr


@dataclass(frozen=True)
class OdeStep:
    """One step of a one-state ODE scheme, as a program over IR symbols.

    ``history``: x_k, x_<k-1>, ... (newest first, ``depth`` of them); ``new``: x_<k+1>;
    ``branches`` and ``updates`` in evaluation order (``updates`` ends with the one that
    computes ``new``; an explicit scheme has only that one); ``h``: the step's IR symbol (a
    fresh one for a stepless scheme); parameters given a value are substituted.
    """

    ir: StepIR
    state: str
    h: sp.Symbol
    history: tuple[sp.Symbol, ...]
    new: sp.Symbol
    branches: tuple[Branch, ...]
    updates: tuple[Assignment, ...]
    stepless: bool
    autonomous: bool

    @property
    def depth(self) -> int:
        return len(self.history)

    @property
    def is_explicit(self) -> bool:
        return self.ir.is_explicit

    @property
    def unknowns(self) -> tuple[sp.Symbol, ...]:
        """What an implicit step solves for: the new value and stages read early."""
        return tuple(u.symbol for u in self.updates)

    @property
    def name(self) -> str:
        return label(self.ir.scheme)

    def value(self, offset: int) -> sp.Symbol:
        """The IR symbol of x_<k+offset> (offset 1 is the new value)."""
        return self.new if offset == 1 else self.history[-offset]

    def scheme_form(self, expr: sp.Expr) -> sp.Expr:
        """``expr`` (in IR parameter symbols and ``h``) in the scheme's own symbols."""
        if self.stepless:
            expr = expr.xreplace({self.h: STEPLESS_H})
        return self.ir.scheme_form(expr)


def exact_number(value: Any, where: str) -> sp.Expr:
    """A parameter value as an exact SymPy number (0.1 becomes 1/10), or the SymPy expression
    it already is."""
    if isinstance(value, sp.Basic):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnrollError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise UnrollError(f"{where}: a non-finite number {value!r}")
        return sp.Rational(repr(value))
    return sp.Integer(value)


def substitutions(scheme: Scheme, params: Mapping[str, Any], *, defaults: bool) -> dict:
    """The scheme's parameter symbol -> exact value for the given parameters (``alpha`` names
    ``α``), plus the scheme's defaults for the others when ``defaults`` is true."""
    values = dict(scheme.defaults()) if defaults else {}
    values.update(canonical_params(scheme, params))
    return {sp.Symbol(n): exact_number(v, f"parameter {n}") for n, v in values.items()}


def require_ode(scheme: Scheme, what: str) -> None:
    if scheme.kind != "ode":
        hint = {
            "optimizer": "for optimizer schemes see iteration_matrix, rate and tune",
            "layer": "a layer scheme has no step h; see unroll.objective for its optimizer reading",
        }[scheme.kind]
        article = "an" if scheme.kind[0] in "aeiou" else "a"
        raise UnrollError(
            f"{what} is defined for ODE schemes; {label(scheme)!r} is {article} {scheme.kind} "
            f"scheme ({hint})"
        )


def ode_step(scheme: Scheme, what: str, params: Mapping[str, Any] | None = None) -> OdeStep:
    """The ODE program of ``scheme`` for the analysis ``what`` (named in errors), with the
    parameters in ``params`` substituted."""
    values = substitutions(scheme, params or {}, defaults=False)
    return _ode_step(scheme, what, tuple(sorted(values.items(), key=lambda kv: kv[0].name)))


@functools.lru_cache(maxsize=256)
def _ode_step(scheme: Scheme, what: str, values: tuple) -> OdeStep:
    require_ode(scheme, what)
    name = label(scheme)
    ir = build(scheme)
    if len(ir.states) != 1:
        raise UnrollError(
            f"not applicable to {name!r}: it advances {len(ir.states)} states "
            f"({', '.join(s.name for s in ir.states)}) with separate branches, a coupled system "
            "that the one-state analysis (ẋ = f(t, x), test equation ẋ = λx) does not cover"
        )
    (state,) = ir.states
    for call in ir.calls:
        if call.kind != "branch":
            raise UnrollError(
                f"{what} is not applicable to {name!r}: it applies {call.op} besides f"
            )
    if ir.uses_activation:
        raise UnrollError(f"{what} is not applicable to {name!r}: it applies φ besides f")
    if ir.host:  # pragma: no cover - a scalar state would be a second state
        raise UnrollError(f"{what} is not applicable to {name!r}: it has host values")

    by_ref = {c.ref: c for c in ir.coefficients}
    subs = {by_ref[s].symbol: v for s, v in values}
    step = next((by_ref[sp.Symbol(n)] for n in STEP_NAMES if sp.Symbol(n) in by_ref), None)
    stepless = step is None
    h = sp.Dummy("h", real=True) if stepless else step.symbol
    if h in subs:
        raise UnrollError(f"{what} treats the step {step.ref} as a symbol: do not give it a value")
    time = next(c.symbol for c in ir.coefficients if c.source == "time")
    index = next(c.symbol for c in ir.coefficients if c.source == "index")

    def clean(e: sp.Expr, where: str) -> sp.Expr:
        e = e.xreplace(subs)
        if e.has(time):
            raise UnrollError(
                f"{name!r}: the time t appears outside the time argument of f(t, x) ({where})"
            )
        if e.has(index):
            raise UnrollError(f"{name!r}: the index {index} appears in {where}")
        return e

    timed = any(c.time is not None for c in ir.calls)
    branches = []
    for call in ir.calls:
        tau = sp.S.Zero
        if call.time is not None:
            tau = sp.expand(call.time.xreplace(subs) - time)
            if tau.has(time, index) or any(s in tau.free_symbols for s in _dynamic(ir)):
                raise UnrollError(
                    f"{name!r}: the time argument of {call.text()} is not t plus a multiple of the step"
                )
        gain = h if stepless else sp.S.One
        branches.append(
            Branch(call.symbol, clean(call.arg, call.text()), tau, gain, call.time is not None)
        )
    updates = [Assignment(u.symbol, clean(u.expr, u.name)) for u in ir.updates]
    (new,) = [u.symbol for u in ir.updates if u.state == state.name]
    # the new value last: earlier updates are stages an implicit step reads before computing
    updates.sort(key=lambda u: u.symbol == new)
    return OdeStep(
        ir=ir,
        state=state.name,
        h=h,
        history=tuple(v.symbol for v in state.history),
        new=new,
        branches=tuple(branches),
        updates=tuple(updates),
        stepless=stepless,
        autonomous=not timed,
    )


def _dynamic(ir: StepIR) -> set[sp.Symbol]:
    return {*(v.symbol for v in ir.history), *(c.symbol for c in ir.calls)} | {
        u.symbol for u in ir.updates
    }


def linear_parts(expr: sp.Expr, leaves: tuple[sp.Symbol, ...]) -> tuple[dict, sp.Expr] | None:
    """``expr`` as (leaf -> coefficient, constant) when it is linear in ``leaves`` (with
    coefficients free of them), else None."""
    expr = sp.expand(expr)
    present = [s for s in leaves if expr.has(s)]
    coeffs = {}
    for s in present:
        c = sp.expand(sp.diff(expr, s))
        if c.has(*present):
            return None
        coeffs[s] = c
    rest = sp.expand(expr - sum((c * s for s, c in coeffs.items()), sp.S.Zero))
    if rest.has(*leaves):
        return None
    return coeffs, rest
