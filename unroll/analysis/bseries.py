"""B-series (rooted trees) of a scheme's step: order conditions for systems, modified fields.

Expanding one step on a scalar equation decides the order up to 4 only (3 for an autonomous
f); from there on the elementary differentials of a system are independent where the scalar
ones are not, and the conditions are one per rooted tree t: a(t) = 1/γ(t) (Hairer, Nørsett,
Wanner, section II.2; Hairer, Lubich, Wanner, section III.1).

A tree is the sorted tuple of its children's trees, so the one-node tree τ is ``()``. A B-series
B(a, y) = a(∅) y + Σ_t h^|t|/σ(t) a(t) F(t)(y) is a dict from trees (``None`` for ∅) to
coefficients; h f(B(a, y)) is the B-series a' with a'(∅) = 0 and a'([t_1, ..., t_m]) =
a(t_1)···a(t_m) (the composition rule in that normalisation).

Any step whose expressions are linear in the state values and the branch values h·f(·), with
coefficients free of h, and whose every f is evaluated at a B-series with a(∅) = 1, is a B-series
method: Runge–Kutta methods (explicit or implicit), linear multistep methods, predictor–corrector
pairs. Past values enter as the exact solution, x_<k-j> = B(e_{-j}, x_k) with
e_s(t) = s^|t|/γ(t), which is what the local error compares against. A branch written f(t, x) in
a time-dependent step must be evaluated at the time its state argument stands for (c = a(τ),
the row-sum condition); then the autonomous conditions hold for f(t, x) too.

"""

from __future__ import annotations

from functools import cache
from math import prod

import sympy as sp
from sympy.polys.constructor import construct_domain

from unroll.analysis.ode import OdeStep, linear_parts

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


def _h_degree(c: sp.Expr, h: sp.Symbol) -> int:
    """m for a coefficient c_0 h^m (c_0 free of h)."""
    c0, m = sp.powsimp(sp.factor(c)).as_coeff_exponent(h)
    if c0.has(h) or not m.is_Integer:
        raise NotBSeries(f"a coefficient {c} is not a power of h times a constant")
    return int(m)


class NotBSeries(Exception):
    """The step is not a B-series method in the sense of the module docstring (the message
    says why)."""


class BSeriesStep:
    """The step as a B-series method, evaluated tree by tree in exact arithmetic.

    ``K``: the field the coefficients live in (SymPy's ``QQ``, an algebraic extension such as
    ``QQ<sqrt(3)>``, or rational functions of the parameters left symbolic); ``values[s][t]``:
    a(t) of the IR symbol s (history values, branch values h·f(·) and the unknowns), an element
    of K; ``compute(t, history)`` fills tree t (None for ∅) given the history values there, once
    every smaller tree is done. Raises `NotBSeries` when the step is not one;
    ``check_times``: check the time arguments at τ against the history values there (which
    must then be the exact solution's).
    """

    def __init__(self, step: OdeStep):
        self.step = step
        h = step.h
        # Each leaf is h^degree times a B-series: a state value h^0, a branch value gain·f
        # h^(gain's degree − 1); a stage an implicit step solves for, what its equation says.
        degree: dict[sp.Symbol, int] = {x: 0 for x in (*step.history, step.new)}
        for b in step.branches:
            degree[b.symbol] = _h_degree(b.gain, h) - 1
        leaves = (*step.history, *step.unknowns, *(b.symbol for b in step.branches))
        parts = {}
        for u in step.updates:
            p = linear_parts(u.expr, leaves)
            if p is None or p[1] != 0:
                raise NotBSeries("an update is not linear in the state values and f")
            parts[u.symbol] = p[0]
        for _ in step.updates:  # a stage's degree from a term whose leaf's degree is known
            for u, coeffs in parts.items():
                known = [(leaf, c) for leaf, c in coeffs.items() if leaf in degree]
                if u not in degree and known:
                    degree[u] = _h_degree(known[0][1], h) + degree[known[0][0]]
        if any(u not in degree for u in parts):
            raise NotBSeries("the implicit stages do not determine one another")

        def form(expr: sp.Expr, target: int, where: str) -> dict:
            p = linear_parts(expr, leaves)
            if p is None:
                raise NotBSeries(f"{where} is not linear in the state values and f")
            coeffs, rest = p
            if rest != 0:
                raise NotBSeries(f"{where} has a term without a state value or f")
            out = {}
            for leaf, c in coeffs.items():
                w = sp.cancel(c * h ** (degree[leaf] - target))
                if w.has(h):
                    raise NotBSeries(f"{where}: a coefficient is not a constant times h^0 or h f")
                out[leaf] = w
            return out

        args = [form(b.arg, 0, "an argument of f") for b in step.branches]
        updates = [(u.symbol, form(u.expr, degree[u.symbol], "an update")) for u in step.updates]
        times = []
        for b in step.branches:
            c = sp.cancel(b.tau / h)
            if c.has(h):
                raise NotBSeries("a time argument is not t plus a multiple of h")
            times.append(None if step.autonomous else c)
        numbers = [w for f in (*args, *(f for _, f in updates)) for w in f.values()]
        numbers += [c for c in times if c is not None]
        self.K, _ = construct_domain(numbers or [sp.S.One], extension=True, field=True)
        self.args = [self._in_field(f) for f in args]
        self.updates = [(s, self._in_field(f)) for s, f in updates]
        self.times = [None if c is None else self.K.from_sympy(c) for c in times]
        self.values: dict[sp.Symbol, dict] = {s: {} for s in leaves}
        self.arg_values: list[dict] = [{} for _ in step.branches]

    def _in_field(self, form: dict) -> dict:
        return {leaf: self.K.from_sympy(w) for leaf, w in form.items()}

    def number(self, value: sp.Expr):
        """``value`` (a SymPy number or expression in the parameters) as an element of K."""
        return self.K.from_sympy(sp.sympify(value))

    def _combine(self, form: dict, t: Tree | None):
        K = self.K
        return sum((w * self.values[s][t] for s, w in form.items()), K.zero)

    def compute(self, t: Tree | None, history: dict, fixed: dict | None = None):
        """Fill tree ``t`` (``history``: IR symbol -> element of K there; ``fixed``: unknowns
        given rather than computed); returns the new value's coefficient as the step computes
        it."""
        step, fixed, K = self.step, fixed or {}, self.K
        for i, b in enumerate(step.branches):
            if t is None:
                out = K.zero
            else:
                if t == () and self.arg_values[i][None] != K.one:
                    a = step.scheme_form(K.to_sympy(self.arg_values[i][None]))
                    raise NotBSeries(f"f is evaluated at ({a})·x + O(h), not at x + O(h)")
                out = K.one
                for c in t:
                    out *= self.arg_values[i][c]
            self.values[b.symbol][t] = out
        for s, v in history.items():
            self.values[s][t] = v
        for s in step.unknowns:
            self.values[s][t] = fixed.get(s, K.zero)
        # An implicit step's stages may read one another: sweep until nothing changes.
        for _ in range(1 if step.is_explicit else len(self.updates) + 2):
            changed = False
            for s, f in self.updates:
                if s not in fixed:
                    v = self._combine(f, t)
                    changed |= v != self.values[s][t]
                    self.values[s][t] = v
            if not changed:
                break
        else:
            if not step.is_explicit:
                raise NotBSeries("the implicit stages do not determine one another")
        for i, f in enumerate(self.args):
            self.arg_values[i][t] = self._combine(f, t)
            c = self.times[i]
            if t == () and c is not None and self.arg_values[i][t] != c:
                raise NotBSeries(
                    f"the time argument t + ({step.scheme_form(K.to_sympy(c) * step.h)}) of a "
                    "branch does not match its state argument"
                )
        return self._combine(self.updates[-1][1], t)


def exact_history(b: BSeriesStep, t: Tree | None) -> dict:
    """x_<k-j> = x(t_k − jh) of the exact solution, at tree ``t``."""
    if t is None:
        return {x: b.K.one for x in b.step.history}
    return {
        x: b.number(sp.Rational((-j) ** size(t), gamma(t))) for j, x in enumerate(b.step.history)
    }


def bseries_order(step: OdeStep, max_order: int) -> int:
    """The order of a B-series method on systems, up to ``max_order`` (returned when every
    condition up to it holds). Raises `NotBSeries` for other steps."""
    b = BSeriesStep(step)
    if b.compute(None, exact_history(b, None)) != b.K.one:
        return 0
    for n in range(1, max_order + 1):
        for t in trees(n):
            if b.compute(t, exact_history(b, t)) != b.number(sp.Rational(1, gamma(t))):
                return n - 1
    return max_order
