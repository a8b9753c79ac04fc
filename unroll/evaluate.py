"""SymPy expression -> Python closure over torch values (the eager lowering of one expression).

The closure tree is built once per equation and then called every step, so running a scheme
costs one Python call per SymPy node and no string is ever generated or executed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import reduce
from typing import Any

import sympy as sp
import torch

from . import ir
from .errors import UnrollError

Env = Mapping[Any, Any]  # SymPy leaf (Indexed or Symbol) -> value
Ops = Mapping[str, Callable]  # operator name ("∇F", "φ", "f", "W1", ...) -> callable
Closure = Callable[[Env, Ops], Any]


def _elementwise(name: str) -> Callable[[Any], Any]:
    tfn, mfn = getattr(torch, name), getattr(math, name if name != "abs" else "fabs")
    return lambda a: tfn(a) if isinstance(a, torch.Tensor) else mfn(a)


_ELEMENTARY = {
    sp.exp: _elementwise("exp"),
    sp.log: _elementwise("log"),
    sp.Abs: _elementwise("abs"),
}


def compile_expr(expr: sp.Basic) -> Closure:
    """A closure computing ``expr`` from an environment of leaf values and operator callables."""
    if isinstance(expr, (sp.Indexed, sp.Symbol)):
        leaf = expr
        return lambda env, ops: env[leaf]
    if isinstance(expr, sp.Number):
        if not expr.is_finite:
            raise UnrollError(f"non-finite number {expr}")
        value = int(expr) if expr.is_Integer else float(expr)
        return lambda env, ops: value
    if expr is sp.pi:
        return lambda env, ops: math.pi
    if isinstance(expr, sp.Add):
        parts = [compile_expr(a) for a in expr.args]
        return lambda env, ops: reduce(lambda a, b: a + b, (p(env, ops) for p in parts))
    if isinstance(expr, sp.Mul):
        parts = [compile_expr(a) for a in expr.args]
        return lambda env, ops: reduce(lambda a, b: a * b, (p(env, ops) for p in parts))
    if isinstance(expr, sp.Pow):
        base = compile_expr(expr.base)
        e = expr.exp
        if e.is_Integer:
            n = int(e)
            return lambda env, ops: base(env, ops) ** n
        if e == sp.Rational(1, 2):
            sqrt = _elementwise("sqrt")
            return lambda env, ops: sqrt(base(env, ops))
        power = compile_expr(e)
        return lambda env, ops: base(env, ops) ** power(env, ops)
    if isinstance(expr, sp.Function):
        kind = ir.operator_kind(expr)
        args = [compile_expr(a) for a in expr.args]
        if kind == "elementary":
            fn = _ELEMENTARY[expr.func]
            return lambda env, ops: fn(args[0](env, ops))
        if kind is not None:
            name = expr.func.__name__
            return lambda env, ops: ops[name](*(a(env, ops) for a in args))
    raise UnrollError(f"cannot evaluate {expr} ({type(expr).__name__}) with PyTorch")
