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

The modified field of backward error analysis (Hairer, Lubich, Wanner, section IX.9) is the
B-series vector field h f̃ = B(b, ·) whose exact flow the step follows: the values
x_<k+s> = φ_{sh}(x_k) = B(exp(s b), x_k), put into the step, satisfy it to every order. The flow
is the Lie series exp(s b) = Σ_m s^m/m! ∂_b^{m-1} b, where ∂_b a (the derivative of B(a, y)
along B(b, y)) is a(∅) b(t) + Σ a(r) b(c) over the edges of t, r the part that keeps the root
and c the subtree cut off: differentiating an elementary differential grafts the new argument
onto each vertex.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from math import factorial, prod

import sympy as sp
from sympy.polys.constructor import construct_domain

from unroll.analysis.ode import OdeStep, linear_parts
from unroll.errors import UnrollError

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


@cache
def sigma(tree: Tree) -> int:
    """The symmetry σ(t): the order of t's automorphism group."""
    out = 1
    for child in set(tree):
        m = tree.count(child)
        out *= factorial(m) * sigma(child) ** m
    return out


@cache
def cuts(tree: Tree) -> tuple[tuple[Tree, Tree], ...]:
    """(r, c) for every edge of ``tree``: c the subtree the edge cuts off, r what keeps the
    root; edges that an automorphism exchanges are counted each."""
    out = []
    for i, child in enumerate(tree):
        rest = tree[:i] + tree[i + 1 :]
        out.append((rest, child))
        for r, c in cuts(child):
            out.append((tuple(sorted((*rest, r))), c))
    return tuple(out)


@cache
def differential(tree: Tree) -> sp.Symbol:
    """The elementary differential F(t) as a symbol named as in the literature: f, f'f,
    f''(f,f), f'f'f, f'''(f,f,f), f''(f,f'f), f'f''(f,f), ..."""

    def name(t: Tree) -> str:
        if not t:
            return "f"
        if len(t) == 1:
            return "f'" + name(t[0])
        return "f" + "'" * len(t) + "(" + ",".join(name(c) for c in t) + ")"

    return sp.Symbol(name(tree))


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

    def __init__(self, step: OdeStep, check_times: bool = True):
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
            times.append(None if step.autonomous or not check_times else c)
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


def modified_field(step: OdeStep, max_size: int) -> dict[Tree, sp.Expr]:
    """b(t) for every tree of up to ``max_size`` vertices: h f̃ = Σ_t h^|t|/σ(t) b(t) F(t) is
    the field whose exact flow the step follows (see the module docstring). Raises `NotBSeries`
    for a step that is not a B-series method and `UnrollError` for one that no field fits."""
    probe = BSeriesStep(step)  # the time arguments, against the exact solution's times
    for t in (None, ()):
        probe.compute(t, exact_history(probe, t))
    b = BSeriesStep(step, check_times=False)
    K = b.K
    offsets = {x: -j for j, x in enumerate(step.history)}
    offsets[step.new] = 1
    if b.compute(None, {x: K.one for x in step.history}, fixed={step.new: K.one}) != K.one:
        raise UnrollError(
            f"{step.name!r} is inconsistent (ρ(1) ≠ 0): a constant solution does not satisfy it, "
            "so no field f̃ has a flow that does"
        )
    field: dict[Tree, object] = {}
    lie: dict[int, dict[Tree, object]] = {1: field}  # ∂_b^{m-1} b, by m
    for n in range(1, max_size + 1):
        for t in trees(n):
            for m in range(2, n + 1):
                lie.setdefault(m, {})[t] = sum(
                    (lie[m - 1].get(r, K.zero) * field[c] for r, c in cuts(t)), K.zero
                )
            # x_<k+s> at t is s b(t) + (terms of smaller trees, known): the residual is affine
            # in b(t), so two evaluations give it.
            higher = {
                x: sum(
                    (
                        b.number(sp.Rational(s**m, factorial(m))) * lie[m][t]
                        for m in range(2, n + 1)
                    ),
                    K.zero,
                )
                for x, s in offsets.items()
            }
            at_zero = _flow_residual(b, step, t, offsets, higher, K.zero)
            slope = _flow_residual(b, step, t, offsets, higher, K.one) - at_zero
            if slope == K.zero:
                raise UnrollError(
                    f"{step.name!r}: ρ'(1) = 0, so the step does not fix the field's leading term"
                )
            field[t] = -at_zero / slope
            _flow_residual(b, step, t, offsets, higher, field[t])  # keep the solved values
    return {t: sp.factor(K.to_sympy(v)) for t, v in field.items()}


def _flow_residual(b: BSeriesStep, step: OdeStep, t: Tree, offsets: dict, higher: dict, bt):
    """The step's new value minus the flow's x_<k+1>, at tree t, for b(t) = ``bt``."""
    values = {x: b.number(s) * bt + higher[x] for x, s in offsets.items()}
    new = values.pop(step.new)
    return b.compute(t, values, fixed={step.new: new}) - new


def series_terms(coefficients: dict[Tree, sp.Expr]) -> Iterator[tuple[int, sp.Expr]]:
    """(n, Σ_{|t| = n} c(t)/σ(t) F(t)) for each tree size n present, smallest first, each
    coefficient factored."""
    by_size: dict[int, sp.Expr] = {}
    for t, c in coefficients.items():
        term = sp.factor(c / sigma(t)) * differential(t)
        by_size[size(t)] = by_size.get(size(t), sp.S.Zero) + term
    yield from sorted(by_size.items())
