"""B-series (rooted trees) of one-step Runge–Kutta forms: the order conditions for systems.

Expanding one step on a scalar equation decides the order up to 4 only; from order 5 on the
elementary differentials of a system are independent where the scalar ones are not, and the
conditions are one per rooted tree t: a(t) = 1/γ(t) (Hairer, Nørsett, Wanner, section II.2;
Hairer, Lubich, Wanner, section III.1).

A tree is the sorted tuple of its children's trees, so the one-node tree • is ``()``. A B-series
B(a, y) = a(∅) y + Σ_t h^|t|/σ(t) a(t) F(t)(y) is a dict from trees (``None`` for ∅) to
coefficients; h f(B(a, y)) is the B-series a' with a'(∅) = 0 and a'([t_1, ..., t_m]) =
a(t_1)···a(t_m) (the composition rule in that normalisation).
"""

from __future__ import annotations

from functools import cache
from math import prod

import sympy as sp

from unroll.analysis._common import OdeView, branch_parts
from unroll.errors import UnrollError
from unroll.ir import vocabulary as ir

Tree = tuple


def _graft(tree: Tree) -> set[Tree]:
    """Every tree made by adding one leaf to a vertex of ``tree``."""
    out = {tuple(sorted((*tree, ())))}
    for i, child in enumerate(tree):
        for grown in _graft(child):
            out.add(tuple(sorted((*tree[:i], grown, *tree[i + 1 :]))))
    return out


@cache
def trees(order: int) -> tuple[Tree, ...]:
    """The rooted trees with ``order`` vertices (1, 1, 2, 4, 9, 20, 48, 115, ... of them)."""
    if order == 1:
        return ((),)
    return tuple(sorted({g for t in trees(order - 1) for g in _graft(t)}))


@cache
def size(tree: Tree) -> int:
    return 1 + sum(size(c) for c in tree)


@cache
def gamma(tree: Tree) -> int:
    """The density γ(t): the exact flow has a(t) = 1/γ(t)."""
    return size(tree) * prod(gamma(c) for c in tree)


class NotRungeKutta(Exception):
    """The scheme is not a one-step Runge–Kutta form (its B-series is not defined here)."""


class _BSeries:
    def __init__(self, view: OdeView, max_order: int):
        self.view = view
        self.all = [t for n in range(1, max_order + 1) for t in trees(n)]

    def compose(self, a: dict) -> dict:
        """h f(B(a, y))."""
        if sp.simplify(a[None] - 1) != 0:
            raise NotRungeKutta("f is evaluated away from the current state")
        out = {None: sp.S.Zero}
        for t in self.all:
            out[t] = sp.expand(prod((a[c] for c in t), start=sp.S.One))
        return out

    def ev(self, e: sp.Basic, env: dict) -> tuple[int, dict | sp.Expr]:
        """(kind, value): ("y", B-series) for a state-like value, ("f", a) for an f-value whose
        h-multiple is the B-series a, ("h", n) for h^n, ("const", expr) for a constant."""
        h = self.view.h
        if e in env:
            return env[e]
        if not (e.has(h, *self.view.stages) or e.atoms(sp.Indexed) or e.has(ir.T)):
            if any(ir.operator_kind(a) == "branch" for a in ir.applications(e)):
                raise NotRungeKutta(str(e))
            return ("const", e)
        if e == h:
            return ("h", 1)
        if e.is_Add:
            kinds = [self.ev(a, env) for a in e.args]
            if len({k for k, _ in kinds}) != 1 or kinds[0][0] not in ("y", "f"):
                raise NotRungeKutta(str(e))
            kind = kinds[0][0]
            keys = [None, *self.all]
            return (kind, {t: sum((v[t] for _, v in kinds), sp.S.Zero) for t in keys})
        if e.is_Mul:
            hs, c, series = 0, sp.S.One, None
            for a in e.args:
                kind, v = self.ev(a, env)
                if kind == "const":
                    c *= v
                elif kind == "h":
                    hs += v
                elif series is None:
                    series = (kind, v)
                else:
                    raise NotRungeKutta(str(e))
            if series is None:
                raise NotRungeKutta(str(e))
            kind, v = series
            if kind == "f" and hs == 1:
                kind = "y"
            elif hs != 0:
                raise NotRungeKutta(str(e))
            return (kind, {t: sp.expand(c * x) for t, x in v.items()})
        if e.is_Pow and e.base == h and e.exp.is_Integer:
            return ("h", int(e.exp))
        if isinstance(e, sp.Function) and ir.operator_kind(e) == "branch":
            t_arg, x_arg = branch_parts(e)
            kind, a = self.ev(x_arg, env)
            if kind != "y":
                raise NotRungeKutta(str(e))
            # Autonomous-system conditions hold for f(t, x) when each stage's time offset c_i
            # equals its row sum, the coefficient of the one-node tree.
            c = sp.expand((t_arg - ir.T) / h)
            if c.has(h, ir.T) or sp.simplify(c - a[()]) != 0:
                raise NotRungeKutta(f"the time argument of {e} does not match its state argument")
            out = self.compose(a)
            return ("f", out)  # a step without h has h·f in its view already
        raise NotRungeKutta(str(e))


def bseries_order(view: OdeView, max_order: int) -> int:
    """The order of a one-step Runge–Kutta form on systems, up to ``max_order`` (returned when
    every condition up to it holds). Raises `NotRungeKutta` for other forms."""
    if view.depth != 1:
        raise NotRungeKutta("multistep")
    b = _BSeries(view, max_order)
    keys = [None, *b.all]
    x = view.value(0)
    env: dict = {x: ("y", {t: (sp.S.One if t is None else sp.S.Zero) for t in keys})}
    new = view.value(1)
    env[new] = env[x]
    for st in view.stages:
        env[st] = ("f", {t: sp.S.Zero for t in keys})
    passes = 1 if view.is_explicit else max_order + 2
    for _ in range(passes):
        for eq in view.equations:
            env[eq.lhs] = b.ev(eq.rhs, env)
    kind, a = env[new]
    if kind != "y":
        raise UnrollError(f"the new state {new} is not of the form x + h(...)")
    if sp.simplify(a[None] - 1) != 0:
        return 0
    for n in range(1, max_order + 1):
        for t in trees(n):
            if sp.simplify(a[t] - sp.Rational(1, gamma(t))) != 0:
                return n - 1
    return max_order
