"""The SymPy vocabulary every pass shares: how states, stages, parameters and operators look.

A scheme's equations are plain SymPy objects built from these pieces:

- a state value ``x_<k+j>`` is ``IndexedBase("x")[k + j]`` with ``k`` the index symbol
  (``Symbol(letter, integer=True)``, so a coefficient written ``k`` stays a different symbol);
- a stage (``a = f(x_k)``) and a parameter (``α``, ``h``, ``b``) are plain ``Symbol``s; which is
  which the `Scheme` records;
- the time of step k is ``T = Symbol("t")``;
- operators are undefined SymPy functions, told apart by name:
  ``∇F(p)`` the objective's gradient, ``f(t, x)`` / ``g(t, x)`` / ``f1(t, x)`` right-hand sides or
  residual branches, ``φ(v)`` the activation, ``W(x)`` / ``W1(x)`` linear operators.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import sympy as sp

T = sp.Symbol("t")

GRAD = sp.Function("∇F")
ACT = sp.Function("φ")

_BRANCH = re.compile(r"^[fg](?:_?[0-9]+|[₀-₉]+)?$")
_LINEAR = re.compile(r"^W(?:_?[0-9]+|[₀-₉]+)?$")

# Elementary functions allowed in scheme text, by the name written there. Every lowering must
# print each of them: sqrt is the power x**(1/2), the others the SymPy function classes in
# `_ELEMENTARY_CLASSES` (sp.exp, sp.log, sp.Abs, sp.sin, sp.cos, sp.tanh).
ELEMENTARY = {
    "sqrt": sp.sqrt, "exp": sp.exp, "log": sp.log, "abs": sp.Abs,
    "sin": sp.sin, "cos": sp.cos, "tanh": sp.tanh,
}  # fmt: skip
_ELEMENTARY_CLASSES = (sp.exp, sp.log, sp.Abs, sp.sin, sp.cos, sp.tanh)


def index_symbol(letter: str) -> sp.Symbol:
    return sp.Symbol(letter, integer=True)


def is_branch_name(name: str) -> bool:
    """``f``, ``g``, ``f1``, ``f_2``, ``g₁``: an ODE right-hand side or residual branch."""
    return bool(_BRANCH.match(name))


def is_linear_name(name: str) -> bool:
    """``W``, ``W1``, ``W_2``: a linear operator (dense or convolutional in a network)."""
    return bool(_LINEAR.match(name))


def branch(name: str) -> sp.FunctionClass:
    return sp.Function(name)


def linear(name: str) -> sp.FunctionClass:
    return sp.Function(name)


def operator_kind(fn: sp.Basic) -> str | None:
    """'grad', 'branch', 'act', 'linear' or 'elementary' for an applied function, else None."""
    name = getattr(fn.func, "__name__", "")
    if name == "∇F":
        return "grad"
    if name == "φ":
        return "act"
    if isinstance(fn, sp.core.function.AppliedUndef):
        if is_branch_name(name):
            return "branch"
        if is_linear_name(name):
            return "linear"
        return None
    if isinstance(fn, _ELEMENTARY_CLASSES):
        return "elementary"
    return None


def offset(ref: sp.Indexed, k: sp.Symbol) -> int:
    """j for the state value x_<k+j>."""
    j = sp.expand(ref.indices[0] - k)
    if not j.is_Integer:
        raise ValueError(f"{ref} is not indexed as {k} plus an integer")
    return int(j)


def state_refs(expr: sp.Basic) -> set[sp.Indexed]:
    return set(expr.atoms(sp.Indexed))


def plain_symbols(expr: sp.Basic) -> set[sp.Symbol]:
    """Free symbols of ``expr`` that are not state values, labels or their indices."""
    out: set[sp.Symbol] = set()
    stack: list[sp.Basic] = [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, sp.Indexed):
            continue
        if isinstance(e, sp.Symbol):
            out.add(e)
        else:
            stack.extend(e.args)
    return out


def applications(expr: sp.Basic) -> Iterable[sp.Function]:
    """Every applied function in ``expr`` (operators and elementary functions), outermost first."""
    for e in sp.preorder_traversal(expr):
        if isinstance(e, sp.Function):
            yield e
