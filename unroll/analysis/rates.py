"""Optimizer schemes on quadratics: the iteration matrix, the worst-case linear rate, tuning.

On F(x) = ½ λ x² every ∇F(p) is λp, and one step is a linear map M(λ) of the stacked history
(x_k, x_{k−1}, ...; every state and as many past values as the scheme reads). The rate over
λ ∈ [μ, L] is max_λ ρ(M(λ)), ρ the spectral radius (docs/theory.md section 4).

The maximum over λ can only sit at an end of the interval, where two eigenvalues meet (a zero of
the discriminant of det(ζI − M(λ)) in ζ) or where a real eigenvalue is stationary (a common zero
with its λ-derivative, a resultant); those points are found with SymPy and ρ is evaluated there
exactly, and a dense grid of λ guards the search (the two must agree).

`tune` recognises gradient descent, heavy ball and Nesterov's method by their characteristic
polynomials (whatever the parameters are called) and uses the known optimal parameters; any other
scheme is tuned numerically by a grid search refined around its best point.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy as sp

from unroll.analysis.ode import label, linear_parts, substitutions
from unroll.analysis.stability import ZETA
from unroll.errors import UnrollError
from unroll.ir import vocabulary as vocab
from unroll.ir.step import build

LAM = sp.Symbol("λ", positive=True)
MU, L_ = sp.symbols("μ L", positive=True)
GRID = 2001  # λ samples for the numerical guard of `rate`


def _require_optimizer(scheme, what: str) -> None:
    if scheme.kind != "optimizer":
        hint = (
            "an ODE scheme: see order and stability_function"
            if scheme.kind == "ode"
            else "a layer scheme: its optimizer reading is in unroll.objective"
        )
        raise UnrollError(
            f"{what} is defined for optimizer schemes (∇F); {label(scheme)!r} is {hint}"
        )
    scalar = [s.name for s in scheme.states.values() if s.scalar]
    if scalar:
        raise UnrollError(
            f"{label(scheme)!r} has no constant iteration matrix: its step depends on the scalar "
            f"state {scalar[0]} (a schedule that changes every step), so there is no single "
            "linear map and no linear rate to compute"
        )


def iteration_matrix(scheme, **params: Any) -> sp.Matrix:
    """M(λ) with (state history)_{k+1} = M(λ) (state history)_k on F = ½λx², in the symbol
    ``LAM`` (λ) and the scheme's parameters (symbolic unless given). The history vector stacks
    each state's values newest first, states in the scheme's order (`history_labels`)."""
    _require_optimizer(scheme, "iteration_matrix")
    ir = build(scheme)
    given = substitutions(scheme, params, defaults=False)
    subs = {c.symbol: given[c.ref] for c in ir.parameters if c.ref in given}
    for call in ir.calls:
        if call.kind != "grad":
            raise UnrollError(
                f"{label(scheme)!r} applies {call.op}: the quadratic model covers ∇F only"
            )
    quadratic: dict = {}
    for call in ir.calls:  # ∇F(p) = λp
        quadratic[call.symbol] = (LAM * call.arg).xreplace(quadratic)
    eqs = []
    for u in ir.updates:
        if any(a.func == vocab.ACT for a in vocab.applications(u.expr)):
            raise UnrollError(f"{label(scheme)!r} applies φ: the quadratic model covers ∇F only")
        eqs.append(sp.Eq(u.symbol, u.expr.xreplace(quadratic).xreplace(subs)))
    unknowns = [u.symbol for u in ir.updates]
    solved = sp.linsolve(eqs, unknowns)
    if not solved:
        raise UnrollError(f"{label(scheme)!r}: the step equations have no unique solution")
    (solution,) = solved
    values = dict(zip(unknowns, solution, strict=True))
    new = {u.state: values[u.symbol] for u in ir.updates if u.state is not None}
    columns = [v.symbol for s in ir.states for v in s.history[: s.depth]]
    rows = []
    for s in ir.states:
        for j in range(s.depth):
            if j == 0:
                parts = linear_parts(new[s.name], columns)
                if parts is None or parts[1] != 0:
                    raise UnrollError(f"{label(scheme)!r}: the step is not linear in the states")
                row = [sp.factor(parts[0].get(c, sp.S.Zero)) for c in columns]
            else:
                row = [sp.S.One if c == s.history[j - 1].symbol else sp.S.Zero for c in columns]
            rows.append([ir.scheme_form(e) for e in row])
    return sp.Matrix(rows)


def history_labels(scheme) -> list[str]:
    """What each entry of the iteration matrix's vector is (``x_k``, ``x_<k-1>``, ...)."""
    k = scheme.index.name
    return [
        f"{n}_{k}" if j == 0 else f"{n}_<{k}-{j}>"
        for n, s in scheme.states.items()
        for j in range(s.depth)
    ]


def check_interval(mu: Any, L: Any) -> tuple[float, float]:
    for name, v in (("mu", mu), ("L", L)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UnrollError(f"{name} must be a finite number, not {v!r}")
    if not 0 < mu <= L:
        raise UnrollError(f"need 0 < mu <= L, got mu={mu}, L={L}")
    return float(mu), float(L)


def _numeric_matrix(scheme, params: dict) -> tuple[sp.Matrix, Callable]:
    m = iteration_matrix(scheme).xreplace(substitutions(scheme, params, defaults=True))
    free = sorted(s.name for s in m.free_symbols - {LAM})
    if free:
        raise UnrollError(
            f"{label(scheme)!r}: parameter {free[0]} has no default; pass {free[0]}=..."
        )
    f = _batched(m, [LAM])
    return m, lambda lams: f(lams)


def _batched(m: sp.Matrix, args: list) -> Callable:
    """(arrays for ``args``, broadcast together) -> array (..., rows, cols) of M's entries."""
    entries = [[sp.lambdify(args, e, "numpy") for e in row] for row in m.tolist()]

    def call(*values: np.ndarray) -> np.ndarray:
        shape = np.broadcast_shapes(*(np.shape(v) for v in values))
        return np.stack(
            [
                np.stack([np.broadcast_to(np.asarray(e(*values), float), shape) for e in row], -1)
                for row in entries
            ],
            -2,
        )

    return call


def _spectral_radius(batch: Callable, lams: np.ndarray) -> np.ndarray:
    return np.abs(np.linalg.eigvals(batch(lams))).max(axis=-1)


def _candidates(m: sp.Matrix, mu: float, L: float) -> list[sp.Expr]:
    """λ in [μ, L] where the maximum of ρ(M(λ)) can sit, found exactly where SymPy can."""
    out = [sp.Rational(repr(mu)), sp.Rational(repr(L))]
    p = sp.expand(m.charpoly(ZETA).as_expr())
    polys = [sp.resultant(p, sp.diff(p, LAM), ZETA)]
    if sp.Poly(p, ZETA).degree() >= 2:
        polys.append(sp.discriminant(p, ZETA))
    for q in polys:
        q = sp.expand(q)
        if q == 0 or not q.has(LAM):
            continue
        try:
            roots = sp.Poly(q, LAM).real_roots()
        except (sp.PolynomialError, NotImplementedError):
            continue
        out += [r for r in roots if mu < float(r) < L]
    return out


def _radius_at(m: sp.Matrix, lam: sp.Expr) -> float:
    p = sp.Poly(m.subs(LAM, lam).charpoly(ZETA).as_expr(), ZETA)
    if p.degree() <= 2:
        return max(float(sp.Abs(r).evalf(30)) for r in sp.roots(p, multiple=True))
    return float(np.abs(np.roots([complex(c.evalf(30)) for c in p.all_coeffs()])).max())


def rate(scheme, mu: float, L: float, **params: Any) -> float:
    """max over λ ∈ [μ, L] of the spectral radius of `iteration_matrix` (parameters from
    ``params``, else the scheme's defaults): the worst-case linear convergence factor per step
    on quadratics with curvatures in [μ, L]. Above 1 the scheme diverges on some λ."""
    mu, L = check_interval(mu, L)
    m, batch = _numeric_matrix(scheme, params)
    lams = np.linspace(mu, L, GRID)
    numeric = float(_spectral_radius(batch, lams).max())
    try:
        exact = max(_radius_at(m, lam) for lam in _candidates(m, mu, L))
    except (NotImplementedError, sp.PolynomialError, TypeError):
        return numeric
    # The grid samples the same function, so it cannot exceed the true maximum (up to float
    # rounding); a larger grid value would mean a missed candidate, and the grid wins then.
    return max(exact, numeric)


@dataclass(frozen=True)
class Family:
    """A method whose optimal parameters on quadratics are known in closed form."""

    name: str
    params: tuple[sp.Symbol, ...]
    charpoly: sp.Expr  # in ζ and λ
    optimum: dict  # parameter -> expression in μ, L
    rate: sp.Expr  # the optimal rate, in μ, L
    reference: str


_a, _b = sp.symbols("a b")
_k = L_ / MU
FAMILIES = (
    Family(
        "gradient descent",
        (_a,),
        ZETA - (1 - _a * LAM),
        {_a: 2 / (L_ + MU)},
        (_k - 1) / (_k + 1),
        "docs/theory.md section 4",
    ),
    Family(
        "heavy ball",
        (_a, _b),
        ZETA**2 - (1 + _b - _a * LAM) * ZETA + _b,
        {
            _a: 4 / (sp.sqrt(L_) + sp.sqrt(MU)) ** 2,
            _b: ((sp.sqrt(_k) - 1) / (sp.sqrt(_k) + 1)) ** 2,
        },
        (sp.sqrt(_k) - 1) / (sp.sqrt(_k) + 1),
        "Polyak 1964; docs/theory.md section 4",
    ),
    Family(
        "Nesterov",
        (_a, _b),
        ZETA**2 - (1 + _b) * (1 - _a * LAM) * ZETA + _b * (1 - _a * LAM),
        {
            _a: 4 / (3 * L_ + MU),
            _b: (sp.sqrt(3 * _k + 1) - 2) / (sp.sqrt(3 * _k + 1) + 2),
        },
        1 - 2 / sp.sqrt(3 * _k + 1),
        "Lessard, Recht, Packard 2016 (the rate-optimal tuning on quadratics; the textbook "
        "α = 1/L, β = (√κ−1)/(√κ+1) gives 1 − 1/√κ)",
    ),
)


@dataclass(frozen=True)
class KnownTuning:
    family: Family
    params: dict  # scheme parameter name -> expression in μ, L
    rate: sp.Expr


def known_tuning(scheme) -> KnownTuning | None:
    """The closed-form optimal parameters of ``scheme`` when its characteristic polynomial is one
    of `FAMILIES` under some change of parameters; None otherwise."""
    _require_optimizer(scheme, "tune")
    m = iteration_matrix(scheme)
    p = sp.factor(m.charpoly(ZETA).as_expr())
    # Eigenvalues that are 0 for every λ (a state nobody reads) do not affect the rate.
    while sp.expand(p).subs(ZETA, 0) == 0 and sp.Poly(p, ZETA).degree() > 0:
        p = sp.cancel(p / ZETA)
    p = sp.expand(p)
    unknowns = [sp.Symbol(n) for n in scheme.parameters if sp.Symbol(n) in m.free_symbols]
    for fam in FAMILIES:
        diff = sp.expand(p - fam.charpoly)
        if sp.Poly(p, ZETA).degree() != sp.Poly(fam.charpoly, ZETA).degree():
            continue
        eqs = sp.Poly(diff, ZETA, LAM).coeffs()
        if not unknowns:
            continue
        try:
            sols = sp.solve(eqs, unknowns, dict=True)
        except NotImplementedError:
            continue
        if len(sols) != 1 or set(sols[0]) != set(unknowns):
            continue
        (sol,) = sols
        if any(v.free_symbols - set(fam.params) for v in sol.values()):
            continue
        values = {s.name: sp.simplify(v.xreplace(fam.optimum)) for s, v in sol.items()}
        return KnownTuning(fam, values, fam.rate)
    return None


def tune(scheme, mu: float, L: float) -> dict[str, float]:
    """Parameter values minimising `rate` over λ ∈ [μ, L]: the closed form for gradient descent,
    heavy ball and Nesterov (`known_tuning`), else a numerical search within each parameter's
    bounds (a step-like parameter with lower bound 0 and none above is searched in (0, 4/L])."""
    mu, L = check_interval(mu, L)
    known = known_tuning(scheme)
    if known is not None:
        return {n: float(v.subs({MU: mu, L_: L})) for n, v in known.params.items()}
    return _numerical_tune(scheme, mu, L)


def _numerical_tune(scheme, mu: float, L: float) -> dict[str, float]:
    m = iteration_matrix(scheme)
    names = [n for n in scheme.parameters if sp.Symbol(n) in m.free_symbols]
    if not names:
        return {}
    ranges = []
    for n in names:
        lo, hi = scheme.parameters[n].bounds
        if lo is None and hi is None:
            lo, hi = -1.0, 1.0
        elif hi is None:
            hi = lo + 4.0 / L
        elif lo is None:
            lo = hi - 2.0
        ranges.append((lo, hi))
    f = _batched(m, [LAM, *[sp.Symbol(n) for n in names]])
    lams = np.linspace(mu, L, 101)[:, None]

    def objective(xs: np.ndarray) -> np.ndarray:
        """The rate at each row of ``xs`` (points, params), on 101 values of λ."""
        mats = f(lams, *[xs[:, i][None, :] for i in range(xs.shape[1])])
        return np.abs(np.linalg.eigvals(mats)).max(axis=(0, -1))

    best = None
    width = np.array([hi - lo for lo, hi in ranges])
    center = np.array([(lo + hi) / 2 for lo, hi in ranges])
    points = 11 if len(names) <= 2 else 5
    for _ in range(16):
        axes = [
            np.clip(np.linspace(c - w / 2, c + w / 2, points), lo, hi)
            for c, w, (lo, hi) in zip(center, width, ranges, strict=True)
        ]
        xs = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(names))
        values = objective(xs)
        i = int(np.argmin(values))
        if best is None or values[i] < best[0]:
            best = (float(values[i]), xs[i])
        center, width = best[1], width / 2  # zoom slowly: the optimum sits in a narrow valley
    return {n: float(v) for n, v in zip(names, best[1], strict=True)}
