"""SymPy expression -> Python closure over torch values (the eager lowering of one expression).

The closure tree is built once per equation and then called every step, so running a scheme
costs one Python call per SymPy node and no string is ever generated or executed. Leaves
(state values, stages, parameters, the index and the time) are resolved to positions of a
`Frame` when the closure is built, so a step reads a plain list: no SymPy object is touched
while tensors flow, which keeps the closures traceable by ``torch.compile`` without graph breaks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from functools import reduce
from typing import Any

import sympy as sp
import torch

from unroll.errors import UnrollError
from unroll.ir import vocabulary as ir

Env = list  # one value per slot of a Frame
Ops = Mapping[str, Callable]  # operator name ("∇F", "φ", "f", "W1", ...) -> callable
Closure = Callable[[Env, Ops], Any]


class Frame:
    """The slots of a program: one position per SymPy leaf, given out in order of first use."""

    def __init__(self) -> None:
        self.slots: dict[sp.Basic, int] = {}

    def slot(self, leaf: sp.Basic) -> int:
        """The position of ``leaf``, a new one if it has none yet."""
        return self.slots.setdefault(leaf, len(self.slots))

    def values(self) -> Env:
        """A fresh, empty environment with one entry per slot."""
        return [None] * len(self.slots)


def _elementwise(name: str) -> Callable[[Any], Any]:
    tfn, mfn = getattr(torch, name), getattr(math, name if name != "abs" else "fabs")
    return lambda a: tfn(a) if isinstance(a, torch.Tensor) else mfn(a)


_ELEMENTARY = {
    sp.exp: _elementwise("exp"),
    sp.log: _elementwise("log"),
    sp.Abs: _elementwise("abs"),
    sp.sin: _elementwise("sin"),
    sp.cos: _elementwise("cos"),
    sp.tanh: _elementwise("tanh"),
}


def compile_expr(expr: sp.Basic, frame: Frame) -> Closure:
    """A closure computing ``expr`` from an environment (``frame.values()`` filled at the
    positions ``frame.slot(leaf)``) and the operator callables."""
    if isinstance(expr, (sp.Indexed, sp.Symbol)):
        i = frame.slot(expr)
        return lambda env, ops: env[i]
    if isinstance(expr, sp.Number):
        if not expr.is_finite:
            raise UnrollError(f"non-finite number {expr}")
        value = int(expr) if expr.is_Integer else float(expr)
        return lambda env, ops: value
    if expr is sp.pi:
        return lambda env, ops: math.pi
    if isinstance(expr, sp.Add):
        parts = [compile_expr(a, frame) for a in expr.args]
        return lambda env, ops: reduce(lambda a, b: a + b, (p(env, ops) for p in parts))
    if isinstance(expr, sp.Mul):
        parts = [compile_expr(a, frame) for a in expr.args]
        return lambda env, ops: reduce(lambda a, b: a * b, (p(env, ops) for p in parts))
    if isinstance(expr, sp.Pow):
        base = compile_expr(expr.base, frame)
        e = expr.exp
        if e.is_Integer:
            n = int(e)
            return lambda env, ops: base(env, ops) ** n
        if e == sp.Rational(1, 2):
            sqrt = _elementwise("sqrt")
            return lambda env, ops: sqrt(base(env, ops))
        power = compile_expr(e, frame)
        return lambda env, ops: base(env, ops) ** power(env, ops)
    if isinstance(expr, sp.Function):
        kind = ir.operator_kind(expr)
        args = [compile_expr(a, frame) for a in expr.args]
        if kind == "elementary":
            fn = _ELEMENTARY[expr.func]
            return lambda env, ops: fn(args[0](env, ops))
        if kind == "branch" and len(args) == 1:
            # An autonomous f(x): the callable still takes (t, x), as torchdiffeq's do; it is
            # handed the step's time t_k, which an autonomous field does not read.
            name, (x,), time = expr.func.__name__, args, compile_expr(ir.T, frame)
            return lambda env, ops: ops[name](time(env, ops), x(env, ops))
        if kind is not None:
            name = expr.func.__name__
            return lambda env, ops: ops[name](*(a(env, ops) for a in args))
    raise UnrollError(f"cannot evaluate {expr} ({type(expr).__name__}) with PyTorch")


@functools.lru_cache(maxsize=1024)
def _compiled(expr: sp.Basic) -> tuple[Frame, Closure]:
    frame = Frame()
    return frame, compile_expr(expr, frame)


def evaluate(expr: sp.Basic, values: Mapping[sp.Basic, Any], ops: Ops) -> Any:
    """``expr`` at ``values`` (leaf -> value), for one-off evaluations; the closures are built
    once per expression and kept. Programs that run every step build their own `Frame`."""
    frame, fn = _compiled(expr)
    env = frame.values()
    for leaf, i in frame.slots.items():
        env[i] = values[leaf]
    return fn(env, ops)


Assignment = tuple  # (state name, or None for a stage; slot of the left-hand side; closure)


class StepFrame(Frame):
    """A `Frame` laid out for one step of ``scheme``: slots for its parameters, the index, the
    time and every state's history values [x_k, x_<k-1>, ...]; `assign` compiles equations over
    it and `start` fills a fresh environment for a step."""

    def __init__(self, scheme) -> None:
        super().__init__()
        self.params = [(n, self.slot(sp.Symbol(n))) for n in scheme.parameters]
        self.index, self.time = self.slot(scheme.index), self.slot(ir.T)
        self.history = {
            n: [self.slot(scheme.state_value(n, -j)) for j in range(max(s.depth, 1))]
            for n, s in scheme.states.items()
        }

    def assign(self, equations) -> list[Assignment]:
        """One assignment per equation ``lhs = rhs``, in order."""
        return [
            (eq.lhs.base.label.name if isinstance(eq.lhs, sp.Indexed) else None,
             self.slot(eq.lhs), compile_expr(eq.rhs, self))
            for eq in equations
        ]  # fmt: skip

    def start(self, params: Mapping[str, Any], history: Mapping[str, Any], k: Any, t: Any) -> Env:
        """An environment holding ``params`` (by name), the index ``k``, the time ``t`` and the
        newest values of each state's ``history`` (newest first; older extra values ignored)."""
        env = self.values()
        for name, i in self.params:
            env[i] = params[name]
        env[self.index], env[self.time] = k, t
        for name, slots in self.history.items():
            for i, value in zip(slots, history[name][: len(slots)], strict=True):
                env[i] = value
        return env


def execute(program: list[Assignment], env: Env, ops: Ops) -> dict[str, Any]:
    """Run the assignments in order; returns the new value of each state they compute."""
    new: dict[str, Any] = {}
    for state, i, fn in program:
        env[i] = fn(env, ops)
        if state is not None:
            new[state] = env[i]
    return new
