"""What every ODE analysis first asks of a scheme: its one state, its step, its branches.

`ode_view` turns a `Scheme` into the form the analyses work on (`OdeView`), or raises an
`UnrollError` that says why the analysis does not apply.

Conventions (documented once, here):

- The ODE is ẋ = f(t, x) for the scheme's one state x. Every branch (``f``, ``f_1``, ``g``, ...)
  is read as the same right-hand side f: FractalNet's f_1 and f_2 are two evaluations of one
  vector field, as in the Runge–Kutta reading of Lu et al.
- The step is the parameter ``h`` (or ``Δt``, ``dt``). A residual network without a step
  (PolyNet, FractalNet) absorbs it into its branches, so each branch f is read as h·f̃ with f̃
  the vector field; the analyses then speak of f̃, still written f, and of z = hλ.
- Schemes with several states (RevNet's X and Y) advance a coupled system with different
  branches; the one-state test equation ẋ = λx and the scalar order conditions do not apply to
  them, and the analyses say so instead of guessing a splitting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sympy as sp

from unroll.errors import UnrollError
from unroll.frontend.scheme import STEP_NAMES, canonical_params
from unroll.ir import vocabulary as ir


def label(scheme) -> str:
    return scheme.name or str(scheme).replace("\n", "; ")


@dataclass(frozen=True)
class OdeView:
    """A one-state ODE scheme ready for analysis.

    ``equations``: the scheme's equations with parameter values substituted and, for a scheme
    without a step, every branch f replaced by h·f; ``h``: the step symbol; ``state``: the state
    name; ``depth``: its history depth (1 for one-step schemes); ``stages``: the stage symbols;
    ``stepless``: whether h was introduced here.
    """

    equations: tuple[sp.Eq, ...]
    h: sp.Symbol
    state: str
    depth: int
    stages: tuple[sp.Symbol, ...]
    index: sp.Symbol
    stepless: bool
    is_explicit: bool

    def value(self, offset: int) -> sp.Indexed:
        return sp.IndexedBase(self.state)[self.index + offset]


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


def substitutions(scheme, params: Mapping[str, Any], *, defaults: bool) -> dict:
    """Symbol -> exact value for the given parameters (``alpha`` names ``α``), plus the scheme's
    defaults for the others when ``defaults`` is true."""
    values = dict(scheme.defaults()) if defaults else {}
    values.update(canonical_params(scheme, params))
    return {sp.Symbol(n): exact_number(v, f"parameter {n}") for n, v in values.items()}


def branch_apps(expr: sp.Basic) -> list[sp.Function]:
    return [e for e in ir.applications(expr) if ir.operator_kind(e) == "branch"]


def branch_parts(app: sp.Function) -> tuple[sp.Expr, sp.Expr]:
    """(time argument, state argument) of a branch application f(t, x) or f(x)."""
    if len(app.args) == 2:
        return app.args[0], app.args[1]
    if len(app.args) == 1:
        return ir.T, app.args[0]
    raise UnrollError(f"{app}: a branch takes (t, x) or (x)")


def require_ode(scheme, what: str) -> None:
    if scheme.kind != "ode":
        hint = {
            "optimizer": "for optimizer schemes see iteration_matrix, rate and tune",
            "layer": "a layer scheme has no step h; see unroll.objective for its optimizer reading",
        }[scheme.kind]
        raise UnrollError(
            f"{what} is defined for ODE schemes; {label(scheme)!r} is a {scheme.kind} scheme ({hint})"
        )


def ode_view(scheme, what: str, params: Mapping[str, Any] | None = None) -> OdeView:
    """The one-state ODE form of ``scheme`` for the analysis ``what`` (named in errors)."""
    require_ode(scheme, what)
    if len(scheme.states) != 1:
        raise UnrollError(
            f"not applicable to {label(scheme)!r}: it advances {len(scheme.states)} states "
            f"({', '.join(scheme.states)}) with separate branches, a coupled system that the "
            "one-state analysis (ẋ = f(t, x), test equation ẋ = λx) does not cover"
        )
    for eq in scheme.equations:
        for fn in ir.applications(eq.rhs):
            if ir.operator_kind(fn) in ("act", "linear"):
                raise UnrollError(
                    f"{what} is not applicable to {label(scheme)!r}: it applies {fn.func} besides f"
                )
    (state,) = scheme.states.values()
    subs = substitutions(scheme, params or {}, defaults=False)
    step = next((n for n in STEP_NAMES if n in scheme.parameters), None)
    stepless = step is None
    h = sp.Symbol("h") if stepless else sp.Symbol(step)
    if stepless and h.name in scheme.stages:
        raise UnrollError(f"{label(scheme)!r}: the stage h would clash with the step h")
    if h in subs:
        raise UnrollError(f"{what} treats the step {h} as a symbol: do not give it a value")
    eqs = []
    for eq in scheme.equations:
        rhs = eq.rhs.xreplace(subs)
        if stepless:
            rhs = rhs.replace(
                lambda e: (
                    isinstance(e, sp.core.function.AppliedUndef) and ir.operator_kind(e) == "branch"
                ),
                lambda e: h * e,
            )
        eqs.append(sp.Eq(eq.lhs, rhs, evaluate=False))
    return OdeView(
        equations=tuple(eqs),
        h=h,
        state=state.name,
        depth=max(state.depth, 1),
        stages=tuple(sp.Symbol(s) for s in scheme.stages),
        index=scheme.index,
        stepless=stepless,
        is_explicit=scheme.is_explicit,
    )
