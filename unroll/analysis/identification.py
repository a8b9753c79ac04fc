"""Architecture identification: which known network a scheme is (an analysis, Scheme -> name).

``identify(scheme) -> str | None``. Both the scheme and every known architecture's template
(written in the scheme language below) go through the same canonicalisation, read from the step
IR of their layer form (`unroll.ir.step.build(scheme, layer=True)`):

1. optimizer schemes become their layer form (`unroll.ir.layer_form.layer_form`), so heavy ball is
   compared as φ(W x_k + b + β(x_k − x_<k-1>));
2. the IR has stages and new values substituted, each operator call numbered once;
3. each tensor state's update is expanded into a linear combination of *atoms*: state values,
   the constant 1, and operator applications (the IR's calls and φ), whose arguments are
   canonicalised the same way (a linear operator is distributed, W(a x + b y) = a W(x) + b W(y);
   a branch's time argument is dropped). Scalar states (a schedule θ_k, computed on the host)
   and parameters make up the coefficients;
4. a tensor state whose new value is a combination of other states' new values and of state
   values alone (the velocity of ``v_<k+1> = x_<k+1> − x_k``) is eliminated:
   v_k = x_k − x_<k-1> everywhere.

A template matches when a one-to-one renaming of states and operators pairs every atom of the
scheme with an atom of the template (template atoms left over get coefficient 0), and the
equations "template coefficient = scheme coefficient" have a solution for the template's
parameters, with each branch and linear operator allowed a nonzero gain (the step absorbed into
f: ``h f(x)`` is ResNet's ``f(x)``). The solution must hold identically in the scheme's own
parameters (SymPy `solve`, then a check of every equation), and the template's nonzero
conditions must hold for it. Templates are tried most specific first, so ResNet is not reported
as LM-ResNet with κ = 0, nor AGD-Net as a two-state DenseNet.

DenseNet's all-history form at a fixed history depth m: x_<k+1> = φ(W(Σ_{j<m} c_j x_<k-j>) + b)
with every c_j nonzero, m ≥ 3. With m = 2 the form is AGD-Net (W absorbs c_0 + c_1: c_0 x_k +
c_1 x_<k-1> = (c_0 + c_1)(x_k + β(x_k − x_<k-1>)), β = −c_1/(c_0 + c_1)), and with m = 1
feedforward.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import sympy as sp

from unroll.errors import UnrollError
from unroll.frontend.library import compile as compile_scheme
from unroll.frontend.library import resolve
from unroll.frontend.scheme import Scheme
from unroll.ir import vocabulary as vocab
from unroll.ir.step import StepIR, build

# name, scheme text, parameters that must be nonzero. Most specific first.
TEMPLATES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("feedforward", "x_<k+1> = φ(W x_k + b)", ()),
    ("ResNet", "x_<k+1> = x_k + f(x_k)", ()),
    ("PolyNet", "x_<k+1> = x_k + f(x_k) + f(f(x_k))", ()),
    ("LM-ResNet", "x_<k+1> = (1 - κ) x_k + κ x_<k-1> + f(x_k)", ("κ",)),
    # c_2 ≠ 0: the short column f_1 reaches the join (else it is a plain stack f_2∘f_1).
    ("FractalNet", "z = c_3 x_k + f_1(x_k); x_<k+1> = c_1 x_k + c_2 z + f_2(z)", ("c_2",)),
    ("RevNet", "X_<k+1> = X_k + f(Y_k); Y_<k+1> = Y_k + g(X_<k+1>)", ()),
    ("HB-Net", "x_<k+1> = φ(W x_k + b + β(x_k - x_<k-1>))", ("β",)),
    ("AGD-Net", "y = x_k + β(x_k - x_<k-1>); x_<k+1> = φ(W y + b)", ("β",)),
    (
        "ADMM-Net",
        "x_<k+1> = W(z_k - u_k) + b; z_<k+1> = φ(x_<k+1> + u_k); "
        "u_<k+1> = u_k + η(x_<k+1> - z_<k+1>)",
        ("η",),
    ),
)
DENSE_DEPTHS = range(3, 9)  # the history depths m for which the DenseNet form is tried

ARCHITECTURES = tuple(t[0] for t in TEMPLATES) + ("DenseNet",)


def densenet_text(m: int) -> str:
    """The DenseNet all-history form with history depth m."""
    terms = " + ".join(f"c_{j} x_{'k' if j == 0 else f'<k-{j}>'}" for j in range(m))
    return f"x_<k+1> = φ(W({terms}) + b)"


# -- canonical form ----------------------------------------------------------------------------
ONE = ("1",)


@dataclass(frozen=True)
class Canonical:
    """A scheme's tensor-state updates as linear combinations: {state: ((atom, coeff), ...)};
    an atom is ONE, ("s", state, offset) or ("op", kind, name, (argument combinations)).
    Coefficients are in the IR's symbols; ``parameters`` maps each parameter's name in the
    scheme to its IR symbol."""

    updates: dict
    symbols: frozenset  # the parameters and scalar-state values in the coefficients
    parameters: dict


class _NotLinear(Exception):
    """An update is not a linear combination of atoms: no template can match it."""


def canonical(scheme: Scheme) -> Canonical | None:
    """The canonical form of ``scheme`` (None when it has no linear canonical form)."""
    if not scheme.is_explicit:
        return None
    try:
        ir = build(scheme, layer=True)
    except UnrollError:  # an optimizer step with no layer (two gradient terms, ...)
        return None
    reader = _Reader(ir)
    try:
        combs = {u.state: reader.lincomb(u.expr) for u in ir.updates if u.state is not None}
    except _NotLinear:
        return None
    combs = _eliminate(combs)
    scalar = {v.symbol for v in ir.history if v.scalar}
    params = {c.symbol for c in ir.parameters}
    symbols = frozenset(
        s for comb in combs.values() for s in _coefficient_symbols(comb) if s in params | scalar
    )
    return Canonical(combs, symbols, {c.ref.name: c.symbol for c in ir.parameters})


class _Reader:
    """Reads IR expressions as linear combinations of atoms."""

    def __init__(self, ir: StepIR):
        self.history = {v.symbol: v for v in ir.history if not v.scalar}
        self.calls = {c.symbol: c for c in ir.calls}
        # host values (a schedule's β_k) are coefficients: written out in scalar states
        self.host: dict = {}
        for a in ir.host:
            self.host[a.symbol] = a.expr.xreplace(self.host)

    def _is_atom(self, e: sp.Basic) -> bool:
        return bool(e.free_symbols & (set(self.history) | set(self.calls))) or any(
            vocab.operator_kind(a) == "act" for a in vocab.applications(e)
        )

    def lincomb(self, expr: sp.Expr) -> tuple:
        """``expr`` as ((atom, coefficient), ...), atoms in a canonical order."""
        out: dict = {}
        for term in sp.Add.make_args(sp.expand(expr.xreplace(self.host))):
            factors = sp.Mul.make_args(term)
            atoms = [f for f in factors if self._is_atom(f)]
            if len(atoms) > 1:
                raise _NotLinear
            coeff = sp.Mul(*[f for f in factors if not self._is_atom(f)])
            pieces = self._atom(atoms[0], coeff) if atoms else [(ONE, coeff)]
            for atom, c in pieces:
                out[atom] = out.get(atom, 0) + c
        return _sorted(out)

    def _atom(self, e: sp.Basic, coeff: sp.Expr) -> list:
        if e in self.history:
            v = self.history[e]
            return [(("s", v.state, -v.lag), coeff)]
        if e in self.calls:
            call = self.calls[e]
            return _op(call.kind, call.op, self.lincomb(call.arg), coeff)
        if isinstance(e, sp.Function) and vocab.operator_kind(e) == "act" and len(e.args) == 1:
            return _op("act", e.func.__name__, self.lincomb(e.args[0]), coeff)
        raise _NotLinear  # a power or elementary function of a state


def _op(kind: str, name: str, inner: tuple, coeff: sp.Expr) -> list:
    if kind == "linear":  # W(Σ c a) = Σ c W(a)
        return [(("op", kind, name, (((a, sp.Integer(1)),),)), coeff * c) for a, c in inner]
    return [(("op", kind, name, (inner,)), coeff)]


def _sorted(out: dict) -> tuple:
    items = [(a, sp.expand(c)) for a, c in out.items()]
    return tuple(sorted(((a, c) for a, c in items if c != 0), key=lambda ac: str(ac[0])))


def _coefficient_symbols(comb: tuple) -> Iterator[sp.Symbol]:
    for atom, c in comb:
        yield from c.free_symbols
        if atom[0] == "op":
            for arg in atom[3]:
                yield from _coefficient_symbols(arg)


def _substitute(comb: tuple, state: str, value) -> tuple:
    """``comb`` with every atom ("s", state, j) replaced by the combination ``value(j)``
    (a dict atom -> coefficient), inside operator arguments too."""
    out: dict = {}
    for atom, c in comb:
        if atom[0] == "s" and atom[1] == state:
            pieces = list(value(atom[2]).items())
        elif atom[0] == "op":
            args = tuple(_substitute(a, state, value) for a in atom[3])
            if atom[1] == "linear":  # redistribute W over the substituted argument
                pieces = _op("linear", atom[2], args[0], sp.S.One)
            else:
                pieces = [(("op", atom[1], atom[2], args), sp.S.One)]
        else:
            pieces = [(atom, sp.S.One)]
        for a, k in pieces:
            out[a] = out.get(a, 0) + c * k
    return _sorted(out)


def _eliminate(combs: dict[str, tuple]) -> dict[str, tuple]:
    """Drop each state v whose new value is a combination of other states' new values and of
    state values other than v's: v_<k+1> = Σ_s c_s s_<k+1> + L gives v_<k+j> = Σ_s c_s s_<k+j>
    + L shifted by j − 1, substituted everywhere."""
    for v, comb in combs.items():
        relation = _relation(v, comb, {s: c for s, c in combs.items() if s != v})
        if relation is None:
            continue
        news, rest = relation

        def value(j: int, news=news, rest=rest) -> dict:
            out: dict = {("s", s, j): c for s, c in news.items()}
            for (_, s, off), c in rest:
                key = ("s", s, off + j - 1)
                out[key] = out.get(key, 0) + c
            return out

        return _eliminate({s: _substitute(c, v, value) for s, c in combs.items() if s != v})
    return combs


def _relation(v: str, comb: tuple, others: dict[str, tuple]) -> tuple[dict, tuple] | None:
    """({s: c_s}, L) with v's combination = Σ_s c_s (s's combination) + L, L made of state
    atoms of states other than v; None when there is none."""
    if not others:
        return None
    cs = {s: sp.Dummy(f"c_{s}") for s in others}
    total: dict = dict(comb)
    for s, c in cs.items():
        for atom, k in others[s]:
            total[atom] = total.get(atom, 0) - c * k
    solutions = sp.linsolve([k for a, k in total.items() if a[0] != "s"], list(cs.values()))
    if not solutions:
        return None
    (solution,) = solutions
    free = {d: 0 for d in cs.values()}  # a particular solution, should several fit
    values = {c: sp.expand(e.xreplace(free)) for c, e in zip(cs.values(), solution, strict=True)}
    rest = []
    for atom, k in total.items():
        k = sp.expand(sp.sympify(k).xreplace(values))
        if k == 0:
            continue
        if atom[0] != "s" or atom[1] == v:
            return None
        rest.append((atom, k))
    news = {s: values[c] for s, c in cs.items() if values[c] != 0}
    return (news, tuple(rest)) if news or rest else None


# -- matching ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Binding:
    states: tuple[tuple[str, str], ...]
    ops: tuple[tuple[str, str], ...]

    def bind(self, field_: str, t: str, s: str) -> _Binding | None:
        pairs = dict(getattr(self, field_))
        if t in pairs:
            return self if pairs[t] == s else None
        if s in pairs.values():
            return None
        pairs[t] = s
        return _Binding(**{**self.__dict__, field_: tuple(sorted(pairs.items()))})


def _gain(atom: tuple, gains: dict) -> sp.Expr:
    if atom[0] == "op" and atom[1] in ("branch", "linear"):
        return gains[atom[2]]
    return sp.Integer(1)


def _match_atom(ta, sa, bind: _Binding, gains) -> Iterator[tuple[_Binding, list]]:
    if ta[0] != sa[0]:
        return
    if ta == ONE:
        yield bind, []
    elif ta[0] == "s":
        if ta[2] == sa[2] and (b := bind.bind("states", ta[1], sa[1])) is not None:
            yield b, []
    elif ta[1] == sa[1] and len(ta[3]) == len(sa[3]):
        b = bind.bind("ops", ta[2], sa[2])
        if b is None:
            return
        yield from _match_args(list(zip(ta[3], sa[3], strict=True)), b, gains)


def _match_args(pairs: list, bind: _Binding, gains) -> Iterator[tuple[_Binding, list]]:
    if not pairs:
        yield bind, []
        return
    (t, s), rest = pairs[0], pairs[1:]
    for b, eqs in _match_comb(t, s, bind, gains):
        for b2, eqs2 in _match_args(rest, b, gains):
            yield b2, eqs + eqs2


def _match_comb(t: tuple, s: tuple, bind: _Binding, gains) -> Iterator[tuple[_Binding, list]]:
    """Pair every scheme term of ``s`` with a distinct template term of ``t``."""

    def go(i: int, free: tuple, bind: _Binding, eqs: list):
        if i == len(s):
            yield bind, eqs + [t[j][1] * _gain(t[j][0], gains) for j in free]
            return
        sa, sc = s[i]
        for j in free:
            ta, tc = t[j]
            for b, inner in _match_atom(ta, sa, bind, gains):
                eq = tc * _gain(ta, gains) - sc
                yield from go(i + 1, tuple(x for x in free if x != j), b, eqs + inner + [eq])

    if len(s) <= len(t):
        yield from go(0, tuple(range(len(t))), bind, [])


@cache
def _template(text: str) -> tuple[Canonical, dict, dict]:
    """The template's canonical form with its parameters made unknowns, each branch's and
    linear operator's gain, and the unknown of each parameter by its name in ``text``."""
    scheme = compile_scheme(text)
    c = canonical(scheme)
    if c is None:
        raise UnrollError(
            f"template {text!r} is not a linear combination of state values and operators"
        )
    unknowns = {s: sp.Dummy(s.name) for s in c.symbols}
    ops = {o for o, kind in build(scheme, layer=True).operators().items() if kind != "grad"}
    gains = {name: sp.Dummy(f"g_{name}") for name in ops}
    updates = {n: _subs(comb, unknowns) for n, comb in c.updates.items()}
    names = {n: unknowns[s] for n, s in c.parameters.items() if s in unknowns}
    return Canonical(updates, frozenset(unknowns.values()), {}), gains, names


def _subs(comb: tuple, m: dict) -> tuple:
    out = []
    for atom, c in comb:
        if atom[0] == "op":
            atom = atom[:3] + (tuple(_subs(a, m) for a in atom[3]),)
        out.append((atom, c.xreplace(m)))
    return tuple(out)


def matches(scheme: Scheme | Canonical, text: str, nonzero: tuple[str, ...] = ()) -> bool:
    """Whether ``scheme`` is the template ``text`` up to renaming and algebra (see the module
    docstring); ``nonzero`` names template parameters that must not vanish."""
    c = canonical(scheme) if isinstance(scheme, Scheme) else scheme
    if c is None:
        return False
    t, gains, names = _template(text)
    if len(t.updates) != len(c.updates):
        return False
    must = [names[n] for n in nonzero] + list(gains.values())
    unknowns = list(t.symbols) + list(gains.values())
    tnames = list(t.updates)
    for perm in itertools.permutations(c.updates):
        bind = _Binding(tuple(sorted(zip(tnames, perm, strict=True))), ())
        pairs = [(t.updates[a], c.updates[b]) for a, b in zip(tnames, perm, strict=True)]
        for _, eqs in _match_args(pairs, bind, gains):
            if _solvable(eqs, unknowns, must):
                return True
    return False


def _solvable(eqs: list, unknowns: list, must: list) -> bool:
    eqs = [e for e in (sp.expand(e) for e in eqs) if e != 0]
    if not eqs:
        return True  # every unknown is free, so each can be chosen nonzero
    used = [u for u in unknowns if any(e.has(u) for e in eqs)]
    if not used:
        return False  # a nonzero equation in the scheme's parameters alone
    try:
        solutions = sp.solve(eqs, used, dict=True, check=False)  # checked below
    except NotImplementedError:
        return False
    for sol in solutions:
        if any(sp.simplify(e.xreplace(sol)) != 0 for e in eqs):
            continue
        if all(sp.simplify(m.xreplace(sol)) != 0 for m in must):
            return True
    return False


def identify(scheme: Scheme | str) -> str | None:
    """The name of the known architecture ``scheme`` is (see `ARCHITECTURES`), or None.

    >>> from unroll import compile
    >>> identify(compile("u_<n+1> = u_n + κ(u_<n-1> - u_n) + Δt f(u_n)"))
    'LM-ResNet'
    """
    if isinstance(scheme, str):
        scheme = resolve(scheme)
    if not isinstance(scheme, Scheme):
        raise UnrollError(f"identify takes a Scheme, not {type(scheme).__name__}")
    c = canonical(scheme)
    if c is None:
        return None
    for name, text, nonzero in TEMPLATES:
        if matches(c, text, nonzero):
            return name
    m = max((s.depth for s in scheme.states.values()), default=0)
    if m in DENSE_DEPTHS and matches(c, densenet_text(m), tuple(f"c_{j}" for j in range(m))):
        return "DenseNet"
    return None
