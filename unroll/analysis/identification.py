"""Architecture identification: which known network a scheme is (an analysis, Scheme -> name).

``identify(scheme) -> str | None``. Both the scheme and every known architecture's template
(written in the scheme language below) go through the same canonicalisation:

1. optimizer schemes become their layer form (`unroll.ir.layer_form.layer_form`), so heavy ball is
   compared as φ(W x_k + b + β(x_k − x_<k-1>));
2. stages are substituted into the state updates, in evaluation order;
3. a tensor state that is only a linear combination of another state's values (the velocity of
   ``v_<k+1> = x_<k+1> − x_k``) is eliminated: v_k = x_k − x_<k-1> everywhere;
4. new values (x_<k+1> in a later update) are substituted;
5. each update is expanded into a linear combination of *atoms*: state values, the constant 1,
   and operator applications, whose arguments are canonicalised the same way (a linear
   operator is distributed, W(a x + b y) = a W(x) + b W(y); a branch's time argument is
   dropped). Scalar states (a schedule θ_k) and parameters make up the coefficients.

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
from unroll.frontend.scheme import Scheme
from unroll.ir import vocabulary as ir

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
    an atom is ONE, ("s", state, offset) or ("op", kind, name, (argument combinations))."""

    updates: dict
    symbols: frozenset  # the parameters and scalar-state values in the coefficients


class _NotLinear(Exception):
    """An update is not a linear combination of atoms: no template can match it."""


def canonical(scheme: Scheme) -> Canonical | None:
    """The canonical form of ``scheme`` (None when it has no linear canonical form)."""
    from unroll.ir.layer_form import layer_form

    if not scheme.is_explicit:
        return None
    try:
        form = layer_form(scheme)
    except UnrollError:  # an optimizer step with no layer (two gradient terms, ...)
        return None
    k = form.index
    scalar = {n for n, s in form.states.items() if s.scalar}

    def scalarise(e: sp.Basic) -> sp.Basic:
        refs = {r: sp.Symbol(f"{r.base.label.name}[{ir.offset(r, k)}]") for r in ir.state_refs(e)}
        return e.xreplace({r: s for r, s in refs.items() if r.base.label.name in scalar})

    stages: dict[sp.Symbol, sp.Expr] = {}
    updates: dict[sp.Indexed, sp.Expr] = {}
    for eq in form.equations:
        rhs = scalarise(eq.rhs.xreplace(stages))
        if isinstance(eq.lhs, sp.Indexed):
            if eq.lhs.base.label.name not in scalar:
                updates[eq.lhs] = rhs
        else:
            stages[eq.lhs] = rhs
    updates = _eliminate(updates, k)
    done: dict[sp.Indexed, sp.Expr] = {}
    for lhs, rhs in updates.items():
        done[lhs] = rhs.xreplace(done)
    try:
        result = {lhs.base.label.name: _lincomb(rhs, k) for lhs, rhs in done.items()}
    except _NotLinear:
        return None
    symbols = frozenset(s for e in done.values() for s in ir.plain_symbols(e) if s not in (k, ir.T))
    return Canonical(result, symbols)


def _eliminate(updates: dict[sp.Indexed, sp.Expr], k: sp.Symbol) -> dict[sp.Indexed, sp.Expr]:
    """Drop states whose update is an operator-free linear combination of other states' values:
    v_<k+1> = L(x_<k+1>, x_k, ...) gives v_<k+j> = L shifted by j − 1, substituted everywhere."""
    changed = True
    while changed:
        changed = False
        for lhs, rhs in updates.items():
            name = lhs.base.label.name
            refs = ir.state_refs(rhs)
            if (
                list(ir.applications(rhs))
                or not refs
                or any(r.base.label.name == name for r in refs)
                or not sp.Poly(rhs, *refs).is_linear
            ):
                continue
            shifted: dict[sp.Indexed, sp.Expr] = {}
            for other in updates.values():
                for ref in ir.state_refs(other):
                    if ref.base.label.name == name:
                        j = ir.offset(ref, k)
                        shifted[ref] = rhs.xreplace({r: r.base[r.indices[0] + j - 1] for r in refs})
            updates = {key: value.xreplace(shifted) for key, value in updates.items() if key != lhs}
            changed = True
            break
    return updates


def _lincomb(expr: sp.Expr, k: sp.Symbol) -> tuple:
    """``expr`` as ((atom, coefficient), ...), atoms in a canonical order."""
    out: dict = {}
    for term in sp.Add.make_args(sp.expand(expr)):
        atoms = [f for f in sp.Mul.make_args(term) if _has_atom(f)]
        if len(atoms) > 1:
            raise _NotLinear
        coeff = sp.Mul(*[f for f in sp.Mul.make_args(term) if not _has_atom(f)])
        if not atoms:
            pieces = [(ONE, coeff)]
        else:
            pieces = _atom(atoms[0], k, coeff)
        for atom, c in pieces:
            out[atom] = out.get(atom, 0) + c
    items = [(a, sp.expand(c)) for a, c in out.items()]
    return tuple(sorted(((a, c) for a, c in items if c != 0), key=lambda ac: str(ac[0])))


def _has_atom(e: sp.Basic) -> bool:
    return bool(ir.state_refs(e)) or any(
        ir.operator_kind(a) not in (None, "elementary") for a in ir.applications(e)
    )


def _atom(e: sp.Basic, k: sp.Symbol, coeff: sp.Expr) -> list:
    if isinstance(e, sp.Indexed):
        return [(("s", e.base.label.name, ir.offset(e, k)), coeff)]
    kind = ir.operator_kind(e) if isinstance(e, sp.Function) else None
    if kind in (None, "elementary"):
        raise _NotLinear  # a power or elementary function of a state
    name = e.func.__name__
    args = e.args[-1:] if kind == "branch" else e.args
    if len(args) != 1:
        raise _NotLinear
    inner = _lincomb(args[0], k)
    if kind == "linear":  # W(Σ c a) = Σ c W(a)
        return [(("op", kind, name, (((a, sp.Integer(1)),),)), coeff * c) for a, c in inner]
    return [(("op", kind, name, (inner,)), coeff)]


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
    from unroll.frontend.library import compile as compile_scheme

    scheme = compile_scheme(text)
    c = canonical(scheme)
    assert c is not None, text
    unknowns = {s: sp.Dummy(s.name) for s in c.symbols}
    ops = {
        a.func.__name__
        for eq in scheme.equations
        for a in ir.applications(eq.rhs)
        if ir.operator_kind(a) in ("branch", "linear")
    }
    gains = {name: sp.Dummy(f"g_{name}") for name in ops}
    updates = {n: _subs(comb, unknowns) for n, comb in c.updates.items()}
    return (
        Canonical(updates, frozenset(unknowns.values())),
        gains,
        {s.name: d for s, d in unknowns.items()},
    )


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
        from unroll.frontend.library import resolve

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
