"""The objective behind a layer: φ = prox_g, and x_{k+1} = φ(W x_k + b) descends F.

docs/theory.md section 2. For a coordinate-wise φ that is continuous, non-decreasing and has slope
at most 1, φ is the proximal map of the convex function

    g(t) = ∫ (φ⁻¹(s) − s) ds   on the range of φ, +∞ outside it,

and the layer x_{k+1} = φ(W x_k + b) is one unit proximal-gradient step on

    F(x) = ½ xᵀ(I − W)x − bᵀx + Σᵢ g(xᵢ).

The pass, for one activation::

    pieces = _analyse(φ)            # φ as (interval of v, expression, image, inverse) pieces
    slopes = _slopes(pieces)        # inf/sup of φ′, exact where SymPy can, else numeric
    conds  = _conditions(slopes)    # continuity, φ′ ≥ 0, φ′ ≤ 1, and the two on W
    g      = _derive(pieces)        # integrate each rising piece, glue, normalise
    F      = _objective_expr()      # the symbolic F, W, b, x as indexed symbols

g is derived, never looked up: each rising piece of φ is inverted with `sympy.solve`, and
∫ φ⁻¹ is integrated by parts, ∫ φ⁻¹(s) ds = s φ⁻¹(s) − Φ(φ⁻¹(s)) with Φ = ∫ φ dv (often the
easier integral), falling back to integrating φ⁻¹ directly. Flat pieces of φ (ReLU below 0)
become closed ends or kinks of g. The constant is fixed by **g(φ(0)) = 0**, and g is taken
lower-semicontinuous: an end of the range that φ only approaches (sigmoid's 0 and 1) belongs
to the domain when g has a finite limit there (g's value there is that limit); the prox is
unchanged by this.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import sympy as sp
import torch

from unroll.errors import UnrollError
from unroll.ir import activations
from unroll.ir.activations import Activation
from unroll.lowering.eager.activations import lambdify_torch

v = activations.v
t = sp.Symbol("t", real=True)

# Numerical checks of symbolic results (g′ against φ⁻¹ − t, inverse round trip) evaluate with
# 30 digits, so a relative 1e-9 only absorbs evaluating near a singular end.
_CHECK_TOL = 1e-9
# A slope found numerically counts as ≥ 0 (≤ 1) within this: round-off of φ′ in float64.
_SLOPE_TOL = 1e-12


@dataclass(frozen=True)
class Condition:
    """One thing that must hold for the reading F to be exact.

    ``holds``: True or False when checked, None for an assumption on the weights that cannot be
    checked without their values (see `Objective.check_weights`). ``how``: "symbolic",
    "numeric" or "assumed". ``detail``: the evidence, e.g. "max φ′ = 1/4 at v ≈ 0".
    """

    description: str
    holds: bool | None
    how: str
    detail: str = ""


# --- φ in pieces ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    """φ = ``expr`` for v in ``where`` (an Interval, or one point). A piece that depends on v
    also has its ``image`` (an Interval of t) and, where SymPy finds it, ``inverse`` (in t)."""

    where: sp.Set
    expr: sp.Expr
    image: sp.Interval | None = None
    inverse: sp.Expr | None = None

    @property
    def rises(self) -> bool:
        return not isinstance(self.where, sp.FiniteSet) and self.expr.has(v)


def _split(expr: sp.Expr) -> list[_Piece]:
    """φ as pieces on disjoint sets of v covering ℝ, in order; Max/Min/Abs become Piecewise."""
    pw = sp.piecewise_fold(expr.rewrite(sp.Piecewise))
    pairs = pw.args if isinstance(pw, sp.Piecewise) else [(pw, sp.true)]
    rest: sp.Set = sp.Reals
    out = []
    for e, cond in pairs:
        cset = sp.Reals if cond == sp.true else cond.as_set()
        here = sp.Intersection(rest, cset)
        rest = sp.Complement(rest, cset)
        for part in here.args if isinstance(here, sp.Union) else [here]:
            if isinstance(part, sp.FiniteSet):
                out.extend(_Piece(sp.FiniteSet(p), e) for p in part)
            elif part != sp.S.EmptySet:
                out.append(_Piece(part, e))
    # In order of where they start; a piece that contains its start (the point {0}, or [0, 1])
    # before one open there ((0, ∞)), so that neighbours in the list are neighbours on ℝ.
    return sorted(
        out,
        key=lambda p: (
            float(p.where.inf),
            not (isinstance(p.where, sp.FiniteSet) or not p.where.left_open),
        ),
    )


def _samples(where: sp.Set, k: int = 3) -> list[sp.Expr]:
    """k exact points inside an interval (of v or t), spread over it."""
    a, b = where.inf, where.sup
    fr = [sp.Rational(j + 1, k + 1) for j in range(k)]
    if a.is_finite and b.is_finite:
        return [a + (b - a) * f for f in fr]
    if a.is_finite:
        return [a + 4 * f for f in fr]
    if b.is_finite:
        return [b - 4 * f for f in fr]
    return [6 * f - 3 for f in fr]


def _num(e: sp.Expr) -> complex:
    """e as a complex number (30 digits); NaN for zoo, nan or anything not numeric."""
    try:
        return complex(sp.N(e, 30))
    except (TypeError, ValueError):
        return complex(math.nan, 0)


def _close(a: complex, b: complex) -> bool:
    return abs(a - b) <= _CHECK_TOL * (1 + abs(b))


def _inverse(e: sp.Expr, where: sp.Set, image: sp.Interval) -> sp.Expr | None:
    """The solution v of t = e(v) that is real, lies in ``where`` and maps back to t (checked at
    sample points of ``image``); None if SymPy finds none."""
    try:
        sols = sp.solve(sp.Eq(t, e), v, check=False, simplify=False)
    except NotImplementedError:
        return None
    for sol in sols:
        ok = True
        for p in _samples(image):
            z = _num(sol.subs(t, p))
            ok = (
                math.isfinite(z.real)
                and abs(z.imag) <= _CHECK_TOL
                and where.contains(sp.Float(z.real, 30)) == sp.true
                and _close(_num(e.subs(v, sp.Float(z.real, 30))), _num(p))
            )
            if not ok:
                break
        if ok:
            return _simplest([sol], sol, image)
    return None


def _analyse(expr: sp.Expr) -> list[_Piece]:
    """The pieces of φ; each rising one with its image (one-sided limits at its ends: right for
    a non-decreasing φ, and refused later otherwise). `_piece_slopes` adds the inverse."""
    out = []
    for p in _split(expr):
        if not p.rises:
            out.append(p)
            continue
        lo = sp.limit(p.expr, v, p.where.inf, "+")
        hi = sp.limit(p.expr, v, p.where.sup, "-")
        lo_open = p.where.left_open or not lo.is_finite
        hi_open = p.where.right_open or not hi.is_finite
        # (lo <= hi) stays unevaluated for limits that do not exist (AccumBounds of sin at ∞).
        if not (lo.is_extended_real and hi.is_extended_real and sp.Le(lo, hi) == sp.true):
            out.append(p)  # not rising: φ′ < 0 somewhere, which `_slopes` will report
            continue
        out.append(replace(p, image=sp.Interval(lo, hi, lo_open, hi_open)))
    return out


# --- slopes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Extreme:
    value: sp.Expr  # exact when found symbolically, a Float otherwise
    at: str  # where: "v ≈ -1.414" from a grid search, or "every v in (-oo, 0]"
    how: str

    def show(self) -> str:
        if self.how == "symbolic" and not self.value.is_Rational:
            return f"{self.value} ≈ {float(self.value):.4g}"
        return str(self.value) if self.how == "symbolic" else f"{float(self.value):.6g}"


def _grid(where: sp.Set):
    """Points of v in ``where``: 0.005 apart on [−30, 30], log-spaced out to 1e6, plus ends."""
    inner = torch.linspace(-30, 30, 12001, dtype=torch.float64)
    far = torch.logspace(math.log10(30), 6, 200, dtype=torch.float64)
    pts = torch.cat([-far.flip(0), inner, far])
    lo, hi = float(where.inf), float(where.sup)
    ends = [x for x, c in ((lo, where.inf), (hi, where.sup)) if c.is_finite]
    pts = torch.cat([pts[(pts > lo) & (pts < hi)], torch.tensor(ends, dtype=torch.float64)])
    return pts.sort().values


def _golden(f: Callable[[float], float], a: float, b: float, iters: int = 80) -> float:
    """The minimiser of a unimodal f on [a, b]."""
    r = (math.sqrt(5) - 1) / 2
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - r * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + r * (b - a)
            fd = f(d)
    return (a + b) / 2


def _exact_range(e: sp.Expr, sym: sp.Symbol, where: sp.Interval) -> tuple[sp.Expr, sp.Expr] | None:
    """(inf, sup) of e over ``where``: e at its critical points (`solveset` of e′ = 0) and its
    one-sided limits at the ends. None when SymPy cannot list the critical points or a value is
    not a real number. e must be continuous on ``where`` (the numeric grid cross-checks)."""
    inside = sp.Interval.open(where.inf, where.sup)
    try:
        crit = sp.solveset(sp.diff(e, sym), sym, inside)
        if not isinstance(crit, sp.FiniteSet) and crit != sp.S.EmptySet:
            return None
        vals = [e.subs(sym, c) for c in crit]
        vals.append(sp.limit(e, sym, where.inf, "+"))
        vals.append(sp.limit(e, sym, where.sup, "-"))
        vals = [sp.nsimplify(x) if x.is_Float else sp.simplify(x) for x in vals]
    except (NotImplementedError, ValueError, TypeError, AttributeError):
        return None
    if not all(x.is_extended_real for x in vals):
        return None
    key = lambda x: float(x)  # noqa: E731
    return min(vals, key=key), max(vals, key=key)


def _piece_slopes(p: _Piece) -> tuple[_Piece, _Extreme, _Extreme]:
    """inf and sup of φ′ on one piece, and the piece with its inverse where SymPy finds one.

    From a grid search (location, and the value when nothing exact is found) and, where SymPy
    can, exactly: φ′ written in t = φ(v) (tanh′ = 1 − t²) or in v. An exact value must not beat
    what the grid saw (a grid value is attained), else it is dropped as wrong. The inverse is
    only sought where the grid finds φ′ ≥ 0: elsewhere there is none to find.
    """
    d = sp.diff(p.expr, v)
    if d.has(sp.Derivative):
        raise UnrollError(
            f"cannot check the slope of φ(v) = {p.expr} on {interval_str(p.where)}: SymPy cannot "
            "differentiate it (write it with Piecewise)"
        )
    if p.image is not None and not d.has(v) and d > 0:
        p = replace(p, inverse=_inverse(p.expr, p.where, p.image))
    if not d.has(v):
        at = f"every v in {interval_str(p.where)}"
        return p, _Extreme(d, at, "symbolic"), _Extreme(d, at, "symbolic")
    fn = lambdify_torch(d, v)
    pts = _grid(p.where)
    with torch.no_grad():
        real = torch.isfinite(lambdify_torch(p.expr, v)(pts))
        vals = torch.where(real, fn(pts), math.nan)  # φ′ only where φ itself is real
    # φ and φ′ are finite on |v| ≤ 30 for every activation with a proximal reading (float64
    # does not overflow there); a NaN or ±∞ there means φ is not real (log v for v < 0) or its
    # slope is unbounded (sqrt v at 0), and no scaling can help.
    bad = ~torch.isfinite(vals) & (pts.abs() <= 30)
    out = []
    for sign in (1, -1):
        signed = torch.where(torch.isfinite(vals), sign * vals, torch.inf)
        i = int(torch.argmin(signed))
        lo, hi = pts[max(i - 1, 0)].item(), pts[min(i + 1, len(pts) - 1)].item()

        def f(x: float, sign: int = sign) -> float:
            y = sign * fn(torch.tensor([x], dtype=torch.float64)).item()
            return y if math.isfinite(y) else math.inf

        at = _golden(f, lo, hi) if hi > lo else lo
        best = min(f(at), signed[i].item())
        # An extreme that the grid's far end also reaches is approached at infinity (softplus′
        # → 1), not attained where float64 first rounds to it.
        finite = signed[torch.isfinite(signed)]
        slack = best + 1e-9 * (1 + abs(best))
        if not p.where.inf.is_finite and len(finite) and finite[0].item() <= slack:
            where_ = "v → −∞"
        elif not p.where.sup.is_finite and len(finite) and finite[-1].item() <= slack:
            where_ = "v → +∞"
        else:
            where_ = f"v ≈ {round(at, 6) + 0.0:.4g}"
        out.append((sign, best, where_))
    if bool(bad.any()):  # no objective; the least slope seen where φ is real, and where not
        at = f"v ≈ {pts[bad][0].item():.4g} (φ or φ′ is not a real number there)"
        _, low, low_at = out[0]
        return p, _Extreme(sp.Float(low, 15), low_at, "numeric"), _Extreme(sp.oo, at, "numeric")
    exact = None
    if p.image is not None and out[0][1] >= -_SLOPE_TOL:
        p = replace(p, inverse=_inverse(p.expr, p.where, p.image))
    if p.inverse is not None:
        dt = _compose(d, p.expr, p.inverse)
        if not dt.has(v):
            dt = sp.cancel(dt) if dt.is_rational_function(t) else dt
            exact = _exact_range(dt, t, p.image)
    if exact is None:
        exact = _exact_range(d, v, p.where)
    res = []
    for (sign, best, where_), ex in zip(out, exact or (None, None), strict=True):
        if ex is not None and sign * float(ex) <= best + _CHECK_TOL * (1 + abs(best)):
            res.append(_Extreme(ex, where_, "symbolic"))
        else:
            res.append(_Extreme(sp.Float(sign * best, 15), where_, "numeric"))
    return p, res[0], res[1]


@dataclass(frozen=True)
class _Slopes:
    low: _Extreme  # smallest φ′
    high: _Extreme  # largest φ′
    jumps: tuple[tuple[sp.Expr, sp.Expr, sp.Expr], ...]  # (v, left limit, right limit)


def _slopes(pieces: list[_Piece]) -> tuple[list[_Piece], _Slopes]:
    """The extremes of φ′ over all pieces and where φ jumps; the pieces gain their inverses."""
    lows, highs, done = [], [], []
    for p in pieces:
        if not isinstance(p.where, sp.FiniteSet):
            p, lo, hi = _piece_slopes(p)
            lows.append(lo)
            highs.append(hi)
        done.append(p)
    pieces = done
    jumps = []
    for left, right in zip(pieces, pieces[1:], strict=False):
        c = left.where.sup
        a = left.expr.subs(v, c) if not left.rises else sp.limit(left.expr, v, c, "-")
        b = right.expr.subs(v, c) if not right.rises else sp.limit(right.expr, v, c, "+")
        if not _close(_num(a), _num(b)):
            jumps.append((c, a, b))
    low = min(lows, key=lambda e: float(e.value))
    high = max(highs, key=lambda e: float(e.value))
    return pieces, _Slopes(low, high, tuple(jumps))


_W_DETAIL = "a condition on the weights: check given ones with Objective.check_weights(W)"


def _conditions(s: _Slopes) -> tuple[Condition, ...]:
    """Continuity, φ′ ≥ 0 and φ′ ≤ 1 (checked), then symmetry and 0 ⪯ W ⪯ I (assumed)."""
    cont = Condition(
        "φ is continuous",
        not s.jumps,
        "symbolic",
        "; ".join(f"jumps from {a} to {b} at v = {c}" for c, a, b in s.jumps)
        or "its pieces meet (one-sided limits agree)",
    )
    nondec = Condition(
        "φ is non-decreasing: φ′(v) ≥ 0",
        bool(float(s.low.value) >= -(_SLOPE_TOL if s.low.how == "numeric" else 0)),
        s.low.how,
        f"inf φ′ = {s.low.show()} at {s.low.at}",
    )
    lip = Condition(
        "φ has slope at most 1: φ′(v) ≤ 1 (φ is 1-Lipschitz)",
        bool(float(s.high.value) <= 1 + (_SLOPE_TOL if s.high.how == "numeric" else 0)),
        s.high.how,
        f"sup φ′ = {s.high.show()} at {s.high.at}",
    )
    sym = Condition(
        "W is symmetric, so that W x + b = x − ∇h(x) with h(x) = ½ xᵀ(I − W)x − bᵀx",
        None,
        "assumed",
        _W_DETAIL,
    )
    psd = Condition(
        "0 ⪯ W ⪯ I: h is convex (W ⪯ I) and ∇h is 1-Lipschitz (W ⪰ 0), so F is convex "
        "and F(x_k) never increases along the layers",
        None,
        "assumed",
        _W_DETAIL,
    )
    return (cont, nondec, lip, sym, psd)


@functools.lru_cache(maxsize=64)
def _analysis(expr: sp.Expr) -> tuple[tuple[_Piece, ...], _Slopes, tuple[Condition, ...]]:
    pieces, slopes = _slopes(_analyse(expr))
    return tuple(pieces), slopes, _conditions(slopes)


def check_activation(
    activation: str | Activation | sp.Lambda, **params: object
) -> tuple[Condition, ...]:
    """The conditions for ``activation`` to be a proximal map, checked; refuses nothing (an
    `UnrollError` only for a φ SymPy cannot differentiate, such as floor).

    Returns five `Condition`s: continuity, φ′ ≥ 0, φ′ ≤ 1 (each checked, symbolically where
    SymPy finds the extremes of φ′, else on a grid), and the two assumptions on W.
    """
    act = activations.from_spec(activation, **params)
    return _analysis(act.expr)[2]


def _refuse(act: Activation, s: _Slopes, conds: tuple[Condition, ...]) -> UnrollError:
    """The error for an activation that is not a proximal map: which condition fails, where,
    and, when only the slope is wrong, the scaling φ/L that fixes it. One line."""
    cont, nondec, lip = conds[:3]
    why = []
    if not cont.holds:
        why.append(f"φ is not continuous ({cont.detail})")
    if not nondec.holds:
        why.append(
            f"φ is not non-decreasing: φ′ = {s.low.show()} < 0 at {s.low.at} "
            f"(found {s.low.how}ally)"
        )
    if not lip.holds:
        why.append(
            f"φ has slope above 1: φ′ reaches {s.high.show()} at {s.high.at} "
            f"(found {s.high.how}ally)"
        )
    msg = (
        f"activation {act.name} is not the proximal map of a convex function, "
        f"so no objective F exists: {'; '.join(why)}"
    )
    if not lip.holds and not sp.sympify(s.high.value).is_finite:
        msg += ". φ′ is unbounded, so no scaling φ/L helps"
    elif not lip.holds and nondec.holds and cont.holds:
        L = s.high.value
        if s.high.how == "symbolic":
            scaled = sp.simplify(act.expr / L)
            msg += f". Scale it: use φ/L with L = {L}, i.e. Lambda(v, {sp.sstr(scaled)})"
        else:
            msg += f". Scale it: use φ/L with L ≈ {float(L):.6g} (found numerically; round up)"
    elif not lip.holds:
        msg += ". (Scaling φ/L would fix only the slope.)"
    return UnrollError(msg)


# --- deriving g -------------------------------------------------------------------------------


def _no_integral(e: sp.Expr | None) -> bool:
    return e is not None and not e.has(sp.Integral)


def _compose(phi: sp.Expr, e: sp.Expr, inv: sp.Expr) -> sp.Expr:
    """Φ(φ⁻¹(t)), keeping it small: a function of v that φ is built from (tanh v in tanh(v)/2,
    e⁻ᵛ in the sigmoid) is replaced by its value in t, solved from t = φ(v), before v = φ⁻¹(t)
    is substituted; so tanh(φ⁻¹(t)) becomes 2t rather than tanh of a logarithm."""
    phi = phi.xreplace({e: t})
    z = sp.Dummy("z")
    for a in sorted(phi.atoms(sp.Function, sp.Pow), key=sp.count_ops, reverse=True):
        if not a.has(v) or a == v or not e.has(a) or not phi.has(a):
            continue
        try:
            sols = sp.solve(sp.Eq(t, e.xreplace({a: z})), z)
        except NotImplementedError:
            continue
        if len(sols) == 1 and not sols[0].has(v):
            phi = phi.xreplace({a: sols[0]})
    return phi.subs(v, inv)


def _antiderivative(e: sp.Expr, inv: sp.Expr, name: str) -> sp.Expr:
    """G(t) with G′(t) = φ⁻¹(t) − t, by parts: t φ⁻¹(t) − Φ(φ⁻¹(t)) − t²/2, Φ = ∫ φ dv.

    Φ is tried directly, then with u = eᵛ when φ has exponentials (softplus: ∫ log(1+u)/u du is
    a dilogarithm); failing both, ∫ (φ⁻¹ − t) dt directly.
    """
    phi = sp.integrate(e, v)
    if not _no_integral(phi) and e.has(sp.exp):
        u = sp.Dummy("u", positive=True)
        integrand = sp.expand_log(sp.powsimp(e.subs(v, sp.log(u)) / u), force=True)
        got = sp.integrate(integrand, u).replace(sp.exp_polar, sp.exp)
        phi = got.subs(u, sp.exp(v)) if _no_integral(got) else None
    if _no_integral(phi):
        return t * inv - _compose(phi, e, inv) - t**2 / 2
    direct = sp.integrate(inv - t, t)
    if _no_integral(direct):
        return direct
    raise UnrollError(
        f"cannot derive g for {name}: SymPy could not integrate φ(v) = {e} or its inverse"
    )


def _derivative_ok(G: sp.Expr, inv: sp.Expr, image: sp.Interval) -> bool:
    """G is real on the interior of ``image`` and G′ = φ⁻¹ − t there (at sample points)."""
    dG = sp.diff(G, t)
    for p in _samples(image, 4):
        g, want = _num(G.subs(t, p)), _num((inv - t).subs(t, p))
        got = _num(dG.subs(t, p))
        if not (math.isfinite(g.real) and abs(g.imag) <= _CHECK_TOL):
            return False
        if abs(got - want) > 1e-9 * (1 + abs(want)):
            return False
    return True


def _drop_abs(e: sp.Expr, image: sp.Interval) -> sp.Expr:
    """Replace |a(t)| by ±a(t) where a has no root inside ``image`` (its sign is then fixed)."""
    rep = {}
    inside = sp.Interval.open(image.inf, image.sup)
    for ab in e.atoms(sp.Abs):
        a = ab.args[0]
        try:
            roots = sp.solveset(a, t, inside)
        except (NotImplementedError, ValueError, TypeError):
            continue
        if roots == sp.S.EmptySet:
            rep[ab] = a if _num(a.subs(t, _samples(image, 1)[0])).real > 0 else -a
    return e.xreplace(rep)


def _same_values(a: sp.Expr, b: sp.Expr, image: sp.Interval) -> bool:
    for p in _samples(image, 4):
        x, y = _num(a.subs(t, p)), _num(b.subs(t, p))
        if not abs(x - y) <= 1e-9 * (1 + abs(y)):
            return False
    return True


def _split_logs(e: sp.Expr) -> sp.Expr:
    """log(c · Π fᵢ^kᵢ / Π hⱼ^lⱼ) -> log c + Σ kᵢ log fᵢ − Σ lⱼ log hⱼ, ignoring branches.

    Only the real part of the result is used (`_simplest`), and there the split is exact:
    Re log(ab) = log|a| + log|b|.
    """

    def split(a: sp.Expr) -> sp.Expr:
        num, den = sp.fraction(sp.factor(a))
        out = sp.S.Zero
        for part, sign in ((num, 1), (den, -1)):
            c, factors = sp.factor_list(part)
            out += sign * (sp.log(c) + sum(k * sp.log(f) for f, k in factors))
        return out

    return e.replace(lambda x: isinstance(x, sp.log), lambda x: split(x.args[0]))


def _tidy(e: sp.Expr) -> list[sp.Expr]:
    """A few cheap rewritings of e: collected over its logs, and SymPy's simplify when small."""
    out = [e, sp.collect(sp.expand(e), sorted(e.atoms(sp.log), key=str))]
    if sp.count_ops(e) < 40:
        out.append(sp.simplify(e))
    return out


def _cost(e: sp.Expr) -> int:
    """Operation count, plus a penalty for a log that appears twice or of a non-polynomial
    (so t·log t + (1 − t)·log(1 − t) beats log(t/(1 − t)) forms of the same size)."""
    logs = [x for x in sp.preorder_traversal(e) if isinstance(x, sp.log)]
    odd = sum(1 for x in set(logs) if not x.args[0].is_polynomial(t))
    return sp.count_ops(e) + 3 * (len(logs) - len(set(logs))) + 3 * odd


def _simplest(candidates: list[sp.Expr], ref: sp.Expr, image: sp.Interval) -> sp.Expr:
    """The shortest candidate free of re/im/I that equals ``ref`` inside ``image``.

    Each candidate is also tried as the real part of its log-expanded form (exact wherever
    the candidate is real), and through `_tidy`.
    """
    more = []
    for e in candidates:
        try:
            more.append(_drop_abs(sp.re(_split_logs(e)), image))
        except (NotImplementedError, ValueError, TypeError, sp.PolynomialError):
            pass
    cands = [c for e in [*candidates, *more] for c in _tidy(e)]
    good = [c for c in cands if not c.has(sp.re, sp.im, sp.I) and _same_values(c, ref, image)]
    return min(good, key=_cost) if good else ref


def _real_form(G: sp.Expr, inv: sp.Expr, image: sp.Interval) -> sp.Expr:
    """The shortest of a few rewritings of G that is still real with G′ = φ⁻¹ − t.

    SymPy's antiderivatives can leave branch artefacts (log(t − 1) for t in (0, 1), i πt):
    the real part of the log-expanded form, with |·| resolved by sign, removes them. A real
    candidate may differ from G by a constant, so each is checked through its derivative.
    """
    candidates = [G]
    try:
        candidates.append(_drop_abs(sp.re(sp.expand_log(sp.expand(G), force=True)), image))
    except (NotImplementedError, ValueError, TypeError):
        pass
    cands = [c for e in candidates for c in _tidy(e)]
    good = [c for c in cands if not c.has(sp.re, sp.im, sp.I) and _derivative_ok(c, inv, image)]
    if not good:
        raise UnrollError(f"internal: no real antiderivative found for φ⁻¹(t) − t = {inv - t}")
    return min(good, key=_cost)


def _value_at(e: sp.Expr, c: sp.Expr, side: str) -> sp.Expr:
    """e at t = c, or its one-sided limit where plain substitution is undefined (0·log 0)."""
    if c.is_finite:
        direct = e.subs(t, c)
        if direct.is_finite:
            return direct
    if isinstance(e, sp.Add):  # term by term is much faster when every term has a finite limit
        parts = [_value_at(a, c, side) for a in e.args]
        if all(p.is_finite for p in parts):
            return sp.Add(*parts)
    return sp.limit(e, t, c, side)


@dataclass(frozen=True)
class _G:
    domain: sp.Set
    open_pieces: tuple[tuple[sp.Interval, sp.Expr], ...]  # open intervals of t, in order
    points: tuple[tuple[sp.Expr, sp.Expr], ...]  # (t, g(t)) at joins and closed ends
    expr: sp.Expr


def _derive(act: Activation, pieces: tuple[_Piece, ...]) -> _G:
    """g from the pieces of a φ that passed its conditions."""
    rising = [p for p in pieces if p.rises]
    flat = [p.expr.subs(v, p.where.inf) for p in pieces if not p.rises]
    for p in rising:
        if p.inverse is None:
            raise UnrollError(
                f"cannot derive g for {act.name}: SymPy could not invert φ(v) = {p.expr} "
                f"for v in {interval_str(p.where)}"
            )
    rng = sp.Union(*[p.image for p in rising], sp.FiniteSet(*flat))
    if not rising:  # φ constant c: g is the indicator of {c}
        (c,) = rng
        return _G(rng, (), ((c, sp.S.Zero),), sp.S.Zero)
    if not isinstance(rng, sp.Interval):
        raise UnrollError(
            f"cannot derive g for {act.name}: the range of φ, {rng}, is not an interval"
        )
    rising.sort(key=lambda p: float(p.image.inf))
    Gs = [
        _real_form(_antiderivative(p.expr, p.inverse, act.name), p.inverse, p.image) for p in rising
    ]

    # Glue: g is continuous on its domain, so each piece continues the last one's value.
    shifted = [Gs[0]]
    for prev, G in zip(rising, Gs[1:], strict=False):
        c = prev.image.sup
        shifted.append(G + _value_at(shifted[-1], c, "-") - _value_at(G, c, "+"))

    # Normalise: g(φ(0)) = 0.
    c0 = act.expr.subs(v, 0)
    k = next(i for i, p in enumerate(rising) if c0 <= p.image.sup)
    g0 = _value_at(shifted[k], c0, "+" if c0 <= rising[k].image.inf else "-")
    exprs = [_simplest([e - g0], e - g0, p.image) for e, p in zip(shifted, rising, strict=True)]

    # Joins and ends: a point belongs to the domain where g has a finite value or limit there.
    points = [
        (p.image.inf, _value_at(e, p.image.inf, "+"))
        for p, e in zip(rising[1:], exprs[1:], strict=True)
    ]
    lo, hi = rising[0].image.inf, rising[-1].image.sup
    left_open = right_open = True
    if lo.is_finite:
        val = _value_at(exprs[0], lo, "+")
        if val.is_finite:
            points.insert(0, (lo, val))
            left_open = False
    if hi.is_finite:
        val = _value_at(exprs[-1], hi, "-")
        if val.is_finite:
            points.append((hi, val))
            right_open = False
    points = [(c, sp.simplify(val)) for c, val in points]
    domain = sp.Interval(lo, hi, left_open, right_open)
    opens = tuple(
        (sp.Interval.open(p.image.inf, p.image.sup), e) for p, e in zip(rising, exprs, strict=True)
    )
    if len(exprs) == 1:
        expr = exprs[0]
    else:
        conds = [(e, t <= p.image.sup) for p, e in zip(rising[:-1], exprs[:-1], strict=True)]
        expr = sp.Piecewise(*conds, (exprs[-1], True))
    return _G(domain, opens, tuple(points), expr)


# --- F ----------------------------------------------------------------------------------------

n = sp.Symbol("n", integer=True, positive=True)
_i, _j = sp.symbols("i j", integer=True, positive=True)
x = sp.IndexedBase("x", real=True)
W = sp.IndexedBase("W", real=True)
b = sp.IndexedBase("b", real=True)
g_fn = sp.Function("g")


def _objective_parts() -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    """The three terms of F, in reading order: ½ xᵀ(I − W)x, −bᵀx and Σᵢ g(xᵢ)."""
    quad = sp.Sum(x[_i] * (sp.KroneckerDelta(_i, _j) - W[_i, _j]) * x[_j], (_i, 1, n), (_j, 1, n))
    return quad / 2, -sp.Sum(b[_i] * x[_i], (_i, 1, n)), sp.Sum(g_fn(x[_i]), (_i, 1, n))


def _objective_expr() -> sp.Expr:
    """F(x) = ½ Σᵢⱼ xᵢ (δᵢⱼ − Wᵢⱼ) xⱼ − Σᵢ bᵢ xᵢ + Σᵢ g(xᵢ), i.e. ½ xᵀ(I − W)x − bᵀx + Σ g(xᵢ)."""
    return sp.Add(*_objective_parts())


def interval_str(s: sp.Set) -> str:
    """A set of t as text: ``[0, 1]``, ``(-oo, oo)``, ``{0}``."""
    if isinstance(s, sp.Interval):
        lb, rb = "(" if s.left_open else "[", ")" if s.right_open else "]"
        return f"{lb}{sp.sstr(s.inf)}, {sp.sstr(s.sup)}{rb}"
    return sp.sstr(s)


# --- the result -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Objective:
    """The convex objective whose unit proximal-gradient step is the layer φ(W x + b).

    ``g``: g(t), a SymPy expression in the real symbol ``t`` (Piecewise when φ has pieces), valid
    on ``domain`` (a SymPy Interval); g is +∞ outside it. An indicator has ``g`` = 0.
    ``points``: (t, g(t)) where the expression needs a limit (0·log 0 at sigmoid's ends) or
    pieces meet. ``F``: the symbolic objective in ``x``, ``W``, ``b`` (IndexedBase, size ``n``)
    with ``g`` as the undefined function ``g_fn``; ``conditions``: what must hold for F to be
    exact, each checked or stated as an assumption. Normalisation: g(φ(0)) = 0.
    """

    activation: Activation
    g: sp.Expr
    domain: sp.Set
    points: tuple[tuple[sp.Expr, sp.Expr], ...]
    F: sp.Expr
    conditions: tuple[Condition, ...]
    # g per open interval of t, and the same printed to torch: (lo, hi, an inner point, fn).
    _open_pieces: tuple[tuple[sp.Interval, sp.Expr], ...] = field(repr=False)
    _torch_pieces: tuple[tuple[float, float, float, Callable], ...] = field(repr=False)

    # The symbols g and F are written in (class attributes, not fields).
    t = t
    x, W, b, n = x, W, b, n

    # -- evaluation --

    def evaluate_g(self, values):
        """g at every element of the tensor ``values`` (any shape): same shape, +inf off the domain."""
        values = torch.as_tensor(values)
        if not values.is_floating_point():
            values = values.to(torch.get_default_dtype())
        out = torch.full_like(values, math.inf)
        for lo, hi, mid, fn in self._torch_pieces:
            inside = (values > lo) & (values < hi)
            # Evaluate on a safe copy so nothing off the piece produces NaN (and NaN gradients).
            safe = torch.where(inside, values, torch.full_like(values, mid))
            out = torch.where(inside, fn(safe), out)
        for c, gc in self.points:
            out = torch.where(values == float(c), torch.full_like(values, float(gc)), out)
        return out

    def evaluate(self, x, W, b):
        """F(x) for a batch: x (..., n), W (n, n), b (n,) -> (...); +inf where any xᵢ is off the
        domain of g. Computed in x's dtype as ½ xᵀx − ½ xᵀW x − bᵀx + Σᵢ g(xᵢ)."""
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        W = torch.as_tensor(W, dtype=x.dtype, device=x.device)
        b = torch.as_tensor(b, dtype=x.dtype, device=x.device)
        size = x.shape[-1] if x.dim() else None
        if size is None or W.shape != (size, size) or b.shape != (size,):
            raise UnrollError(
                f"evaluate needs x (..., n), W (n, n), b (n,); got x {tuple(x.shape)}, "
                f"W {tuple(W.shape)}, b {tuple(b.shape)}"
            )
        quad = 0.5 * (x * x).sum(-1) - 0.5 * ((x @ W.T) * x).sum(-1)
        return quad - x @ b + self.evaluate_g(x).sum(-1)

    def check_weights(self, W, tol: float = 1e-10) -> tuple[Condition, ...]:
        """The two weight conditions checked numerically for a given W (n, n): symmetry and
        0 ⪯ W ⪯ I, each up to ``tol`` times the size of W."""
        W = torch.as_tensor(W, dtype=torch.float64)
        scale = max(1.0, float(W.abs().max())) if W.numel() else 1.0
        asym = float((W - W.T).abs().max()) if W.numel() else 0.0
        sym = Condition(
            self.conditions[3].description,
            asym <= tol * scale,
            "numeric",
            f"max |W − Wᵀ| = {asym:.3g}",
        )
        eig = torch.linalg.eigvalsh((W + W.T) / 2)
        lo, hi = float(eig.min()), float(eig.max())
        psd = Condition(
            self.conditions[4].description,
            lo >= -tol * scale and hi <= 1 + tol * scale,
            "numeric",
            f"eigenvalues of W in [{lo:.6g}, {hi:.6g}]",
        )
        return (sym, psd)

    # -- printing --

    def domain_str(self) -> str:
        """The domain of g as text: ``"t in [0, 1], +oo elsewhere"``."""
        rest = "" if self.domain == sp.Reals else ", +oo elsewhere"
        return f"t in {interval_str(self.domain)}{rest}"

    def latex(self) -> str:
        """g with its domain, and F, as two LaTeX lines."""
        quad, lin, gsum = (sp.latex(p) for p in _objective_parts())
        return (
            f"g(t) = {sp.latex(self.g)}, \\quad t \\in {sp.latex(self.domain)}"
            " \\quad (+\\infty \\text{ elsewhere})\n"
            f"F(x) = {quad} {lin} + {gsum}"
        )

    def __str__(self) -> str:
        lines = [
            f"activation  φ(v) = {sp.sstr(self.activation.expr)}   ({self.activation.name})",
            f"g(t) = {sp.sstr(self.g)}   for {self.domain_str()}",
        ]
        lines += [
            f"  g({sp.sstr(c)}) = {sp.sstr(gc)}" for c, gc in self.points if gc != 0 or self.g != 0
        ]
        lines += [
            "F(x) = 1/2 x.T*(I - W)*x - b.T*x + Sum(g(x_i), (i, 1, n))",
            "conditions:",
        ]
        for c in self.conditions:
            mark = {True: "holds", False: "FAILS", None: "assumed"}[c.holds]
            how = "" if c.how == "assumed" else f", {c.how}"
            lines.append(f"  [{mark}{how}] {c.description}: {c.detail}")
        return "\n".join(lines)


def _torch_pieces(G: _G) -> tuple[tuple[float, float, float, Callable], ...]:
    out = []
    for where, e in G.open_pieces:
        lo, hi = float(where.inf), float(where.sup)
        if math.isinf(lo) and math.isinf(hi):
            mid = 0.0
        elif math.isinf(lo):
            mid = hi - 1.0
        elif math.isinf(hi):
            mid = lo + 1.0
        else:
            mid = (lo + hi) / 2
        out.append((lo, hi, mid, lambdify_torch(e, t)))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _build(act_name: str, expr: sp.Expr) -> tuple[_G, tuple[Condition, ...]]:
    act = Activation(act_name, expr, lambda z: z)  # the torch function plays no part here
    pieces, slopes, conds = _analysis(expr)
    if not all(c.holds for c in conds[:3]):
        raise _refuse(act, slopes, conds)
    return _derive(act, pieces), conds


def objective(activation: str | Activation | sp.Lambda, **params: object) -> Objective:
    """The `Objective` of the layer x -> φ(W x + b) for ``activation``.

    ``activation``: a name (``"relu"``, ``"elu(0.5)"``, or ``"elu"`` with ``alpha=0.5``), an
    `Activation`, or a one-variable SymPy ``Lambda``. Raises `UnrollError` when φ is not a
    proximal map (decreasing somewhere, or slope above 1: then it proposes φ/L), naming the
    condition and the point. Results are cached per activation expression.
    """
    act = activations.from_spec(activation, **params)
    G, conds = _build(act.name, act.expr)
    return Objective(
        act,
        G.expr,
        G.domain,
        G.points,
        _objective_expr(),
        conds,
        G.open_pieces,
        _torch_pieces(G),
    )


def table(names: list[str] | None = None) -> str:
    """A Markdown table of φ, g and the domain of g for each activation in ``names``
    (default: every bundled one that has an objective, families at their defaults and at
    one other value). This is the table in docs/objectives.md."""
    rows = [
        "| activation | φ(v) | g(t), normalised so that g(φ(0)) = 0 | domain of g |",
        "|---|---|---|---|",
    ]
    for name in names or DOC_ACTIVATIONS:
        o = objective(name)
        cells = [o.activation.name, *(sp.latex(e) for e in (o.activation.expr, o.g, o.domain))]
        cells = [c if i == 0 else f"${c}$" for i, c in enumerate(cells)]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


DOC_ACTIVATIONS = [
    "identity",
    "relu",
    "leaky_relu(0.1)",
    "elu(1)",
    "elu(0.5)",
    "sigmoid",
    "tanh",
    "softplus",
    "hardtanh",
    "atan",
    "softsign",
]
