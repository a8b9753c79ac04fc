"""One layer as a program: operator calls, then one elementwise block update (a SymPy pass).

``lower(form) -> Program``. Stages and new state values are substituted forward, and every
operator application that is not elementwise (``W(·)``, ``f(·)``, ``∇F(·)``) becomes an output
symbol ``o_i``, innermost first (a repeated application is called once). What is left is:

- ``calls``: operator ``op`` applied to ``arg``, an elementwise expression in the history, the
  coefficients and earlier outputs (``y = x_k + β(x_k − x_<k-1>)`` for W(y) in AGD-Net);
- ``updates``: the scheme's equations in order, with the outputs in place of the applications:
  elementwise in the history, the coefficients, the outputs and the values computed before
  (stages, new states), with ``φ`` still in them. This is the block update a fused kernel
  replaces: ``x_<k+1> = φ(o_0 + b + β(x_k − x_<k-1>))`` for HB-Net.

Both parts are evaluated by the one eager lowering, `unroll.lowering.eager.evaluate.compile_expr`.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from unroll.errors import UnrollError
from unroll.frontend.scheme import Scheme
from unroll.ir import vocabulary as ir

# Operator kinds a module computes (φ and elementary functions stay in the elementwise parts).
CALLED = ("linear", "branch", "grad")


@dataclass(frozen=True)
class Call:
    """``symbol = op(arg)``; a branch's time argument is dropped (a branch module takes x)."""

    symbol: sp.Symbol
    op: str
    kind: str
    arg: sp.Expr


@dataclass(frozen=True)
class Program:
    form: Scheme
    calls: tuple[Call, ...]
    updates: tuple[sp.Eq, ...]  # lhs: a new state value x[k+1] or a stage

    @property
    def states(self) -> tuple[str, ...]:
        """The states the update computes, in order."""
        return tuple(e.lhs.base.label.name for e in self.updates if isinstance(e.lhs, sp.Indexed))

    @property
    def operators(self) -> dict[str, str]:
        """Operator name -> kind, in first-call order."""
        return {c.op: c.kind for c in self.calls}


def lower(form: Scheme) -> Program:
    """The program of one step of ``form`` (a layer, ODE or optimizer scheme)."""
    calls: list[Call] = []
    seen: dict[tuple[str, sp.Expr], sp.Symbol] = {}
    taken = {s.name for eq in form.equations for s in eq.free_symbols}

    def fresh() -> sp.Symbol:
        i = len(calls)
        while f"o_{i}" in taken:
            i += 1000
        return sp.Symbol(f"o_{i}")

    def walk(e: sp.Basic) -> sp.Basic:
        if isinstance(e, sp.Function) and ir.operator_kind(e) in CALLED:
            kind = ir.operator_kind(e)
            args = e.args[-1:] if kind == "branch" else e.args  # a branch module takes x
            if len(args) != 1:
                raise UnrollError(f"{e}: an operator in a network takes one tensor argument")
            arg = walk(args[0].xreplace(subst))  # self-contained: no stages, no new values
            key = (e.func.__name__, arg)
            if key not in seen:
                sym = fresh()
                calls.append(Call(sym, e.func.__name__, kind, arg))
                seen[key] = sym
            return seen[key]
        if not e.args or isinstance(e, sp.Indexed):
            return e
        return e.func(*[walk(a) for a in e.args])

    subst: dict[sp.Basic, sp.Basic] = {}
    updates: list[sp.Eq] = []
    for eq in form.equations:
        updates.append(sp.Eq(eq.lhs, walk(eq.rhs), evaluate=False))
        subst[eq.lhs] = eq.rhs.xreplace(subst)
    return Program(form, tuple(calls), tuple(updates))
