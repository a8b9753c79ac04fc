"""The block update of a scheme: the elementwise work of one step once the operators are applied.

``extract(scheme, activation) -> Block``. One step of a scheme is a sequence of operator calls
(``W(·)``, ``f(·)``, ``∇F(·)``: matrix products, networks, gradients, which PyTorch computes)
and elementwise arithmetic. Every operator application becomes an output symbol ``o_i``,
innermost first, a repeated application called once (as `unroll.lowering.nn.program` numbers them). What
remains of the new state values is elementwise in

- the history (``x_k``, ``x_<k-1>``, ...: tensors the step reads),
- the operator outputs ``o_i`` (tensors PyTorch computed), and
- coefficients: parameters (scalar or per channel), the time ``t``, and host values,

with the activation ``φ`` applied inside (it is elementwise). That is the block a fused kernel
computes: every input read once, every new state written once. An operator's own argument
(``x_k + h/2 a`` in RK4, ``y = x_k + β(x_k − x_<k-1>)`` in AGD-Net) is elementwise too, but it
must exist as a tensor before the operator runs, so the caller computes it (`Call.args`, eagerly
with `Block.operator_outputs`) and the kernel recomputes whatever of it the update needs.

Scalar states (the θ_k schedule of ``nesterov_schedule``) and the stages computed from them
alone are host values: the caller computes them (`Block.host`) and passes the results as
coefficients, so a kernel never sees a scalar state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import sympy as sp

from unroll.errors import UnrollError
from unroll.frontend.parse import GREEK
from unroll.frontend.printing import equation_text, expr_text
from unroll.frontend.scheme import Scheme
from unroll.ir import vocabulary as ir
from unroll.lowering.eager.evaluate import evaluate

CALLED = ("linear", "branch", "grad")  # operator kinds PyTorch computes outside the kernel
_ASCII = {g: a for a, g in GREEK.items() if a != "varepsilon"}


@dataclass(frozen=True)
class Input:
    """A tensor the kernel reads: a history value (``ref`` = ``x[k-1]``) or an operator output
    (``ref`` = the call's symbol ``o_i``). ``symbol`` is the kernel-level name as a Symbol."""

    name: str
    symbol: sp.Symbol
    kind: Literal["history", "output"]
    ref: sp.Basic
    text: str  # how the scheme writes it: 'x_<k-1>' or 'o_0 = W(x_k)'


@dataclass(frozen=True)
class Coefficient:
    """A value that is the same for every element (``per_channel``: for every element of one
    channel). ``source``: 'parameter', 'host' (a host value: a scalar state or a stage of
    scalar states), or 'time'."""

    name: str
    symbol: sp.Symbol
    ref: sp.Basic
    per_channel: bool
    trainable: bool
    source: Literal["parameter", "host", "time"]


@dataclass(frozen=True)
class Call:
    """``symbol = op(*args)``, computed by PyTorch before the kernel runs. ``args`` are in the
    history, coefficients and earlier outputs (a branch's first argument is the time)."""

    symbol: sp.Symbol
    op: str
    kind: str
    args: tuple[sp.Expr, ...]

    def text(self) -> str:
        return f"{self.symbol} = {self.op}({', '.join(expr_text(a) for a in self.args)})"


@dataclass(frozen=True)
class Output:
    """A new state value: ``expr`` in the kernel symbols with φ written out (what the kernel
    computes), ``eager`` the same with φ kept as an application (what PyTorch computes)."""

    state: str
    name: str
    expr: sp.Expr
    eager: sp.Expr


@dataclass(frozen=True)
class Block:
    scheme: Scheme
    activation: str | None
    inputs: tuple[Input, ...]
    coefficients: tuple[Coefficient, ...]
    outputs: tuple[Output, ...]
    calls: tuple[Call, ...]
    host: tuple[sp.Eq, ...]  # scalar-state and scalar-stage equations, in scheme order
    # Every history value the block or its calls read (kernel symbol, x[k-j]), and the
    # coefficients only the calls read (the step h in f(t + h/2, ...)).
    history: tuple[tuple[sp.Symbol, sp.Indexed], ...] = ()
    call_coefficients: tuple[Coefficient, ...] = ()

    @property
    def per_channel(self) -> bool:
        return any(c.per_channel for c in self.coefficients)

    def equations_text(self) -> list[str]:
        """The block as text, one line per new state (φ kept), in the kernel's names."""
        return [f"{o.name} = {expr_text(o.eager)}" for o in self.outputs]

    # -- the eager lowering ----------------------------------------------------------------
    def eager(self, tensors: Mapping[str, Any], coefficients: Mapping[str, Any]) -> dict[str, Any]:
        """New states by PyTorch (`unroll.lowering.eager.evaluate.evaluate`), keyed by state name.

        ``tensors``: input name -> tensor (all of one shape); ``coefficients``: coefficient
        name -> value (a number, a 0-d tensor, or for a per-channel one a (C,) tensor, which is
        broadcast over dimension 1 as in NCHW and (N, C))."""
        env: dict[Any, Any] = {i.symbol: tensors[i.name] for i in self.inputs}
        ref = next(iter(env.values()), None)
        for c in self.coefficients:
            value = coefficients[c.name]
            if c.per_channel and ref is not None and ref.dim() > 1:
                value = value.reshape(-1, *([1] * (ref.dim() - 2)))
            env[c.symbol] = value
        ops = _activation_ops(self)
        return {o.state: evaluate(o.eager, env, ops) for o in self.outputs}

    def operator_outputs(
        self,
        history: Mapping[str, Any],
        coefficients: Mapping[str, Any],
        ops: Mapping[str, Callable],
    ) -> dict[str, Any]:
        """The outputs ``o_i`` of every call, by PyTorch: ``history`` maps history input names
        (``x_k``, ``x_km1``) to tensors, ``ops`` operator names to callables (as
        `unroll.lowering.eager.run.operators` builds them)."""
        env: dict[Any, Any] = {}
        for sym, _ in self.history:
            if sym.name in history:
                env[sym] = history[sym.name]
        for c in self.coefficients + self.call_coefficients:
            if c.name in coefficients:
                env[c.symbol] = coefficients[c.name]
        ops = {**_activation_ops(self), **ops}
        out: dict[str, Any] = {}
        for call in self.calls:
            args = [evaluate(a, env, ops) for a in call.args]
            env[call.symbol] = ops[call.op](*args)
            out[call.symbol.name] = env[call.symbol]
        return out


def _activation_ops(block: Block) -> dict[str, Callable]:
    if block.activation is None:
        return {}
    from unroll.ir import activations
    from unroll.lowering.eager.activations import torch_function

    return {"φ": torch_function(activations.get(block.activation))}


def _ident(text: str) -> str:
    out = "".join(_ASCII.get(ch, ch) for ch in text)
    out = "".join(ch if (ch.isalnum() and ch.isascii()) or ch == "_" else "_" for ch in out)
    return out if out and not out[0].isdigit() else f"v_{out}"


def history_name(name: str, index: sp.Symbol, offset: int) -> str:
    """``x_k`` for x_k, ``x_km1`` for x_<k-1>, ``theta_kp1`` for θ_<k+1>."""
    suffix = "" if offset == 0 else (f"m{-offset}" if offset < 0 else f"p{offset}")
    return _ident(f"{name}_{index.name}{suffix}")


def extract(scheme: Scheme, activation: str | None = None) -> Block:
    """The block update of ``scheme`` with ``activation`` as φ (default: the scheme's)."""
    if not scheme.is_explicit:
        raise UnrollError(
            f"scheme {scheme.name or str(scheme)!r} is implicit ({scheme.implicit_reason}); "
            "only explicit schemes have a block update"
        )
    k = scheme.index
    act = activation if activation is not None else scheme.activation
    uses_act = any(
        ir.operator_kind(f) == "act" for eq in scheme.equations for f in ir.applications(eq.rhs)
    )
    if uses_act and act is None:
        raise UnrollError(
            f"scheme {scheme.name or str(scheme)!r} uses φ and names no activation: pass one"
        )
    if not uses_act:
        act = None

    # Host values: scalar states and the stages computed from them (and parameters) alone.
    scalar_states = {n for n, s in scheme.states.items() if s.scalar}
    host_names: set[str] = set(scalar_states)
    host: list[sp.Eq] = []
    for eq in scheme.equations:
        lhs_name = eq.lhs.base.label.name if isinstance(eq.lhs, sp.Indexed) else eq.lhs.name
        refs = {r.base.label.name for r in ir.state_refs(eq.rhs)}
        stages = {s.name for s in ir.plain_symbols(eq.rhs) if s.name in scheme.stages}
        has_op = any(ir.operator_kind(f) != "elementary" for f in ir.applications(eq.rhs))
        if lhs_name in scalar_states or (
            not has_op and refs <= scalar_states and stages <= host_names and refs | stages
        ):
            host_names.add(lhs_name)
            host.append(eq)

    taken: set[str] = set()

    def unique(base: str) -> str:
        name, i = base, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        return name

    coefficients: dict[sp.Basic, Coefficient] = {}

    def coefficient(ref: sp.Basic, source: str) -> sp.Symbol:
        if ref not in coefficients:
            if isinstance(ref, sp.Indexed):
                base = history_name(ref.base.label.name, k, ir.offset(ref, k))
            else:
                base = _ident(ref.name)
            param = scheme.parameters.get(getattr(ref, "name", ""))
            name = unique(base)
            coefficients[ref] = Coefficient(
                name,
                sp.Symbol(name, real=True),
                ref,
                per_channel=bool(param and param.per_channel),
                trainable=bool(param and param.trainable),
                source=source,  # type: ignore[arg-type]
            )
        return coefficients[ref].symbol

    history: dict[sp.Basic, sp.Symbol] = {}

    def history_symbol(ref: sp.Indexed) -> sp.Symbol:
        if ref not in history:
            name = unique(history_name(ref.base.label.name, k, ir.offset(ref, k)))
            history[ref] = sp.Symbol(name, real=True)
        return history[ref]

    calls: list[Call] = []
    seen: dict[tuple[str, tuple], sp.Symbol] = {}
    subst: dict[sp.Basic, sp.Expr] = {}  # stage / new state -> its expression in kernel symbols

    def leaf(e: sp.Basic) -> sp.Basic:
        if isinstance(e, sp.Indexed):
            state = e.base.label.name
            if state in scalar_states:
                return coefficient(e, "host")
            if ir.offset(e, k) == 1:
                return subst[e]
            return history_symbol(e)
        if isinstance(e, sp.Symbol):
            if e in subst:
                return subst[e]
            if e.name in host_names:
                return coefficient(e, "host")
            if e == ir.T or e == k:
                return coefficient(e, "time")
            if e.name in scheme.parameters:
                return coefficient(e, "parameter")
        return e

    def walk(e: sp.Basic) -> sp.Basic:
        if isinstance(e, (sp.Indexed, sp.Symbol)):
            return leaf(e)
        if isinstance(e, sp.Function) and ir.operator_kind(e) in CALLED:
            args = tuple(walk(a) for a in e.args)
            key = (e.func.__name__, args)
            if key not in seen:
                i = len(calls)
                while f"o_{i}" in taken:
                    i += 1000
                sym = sp.Symbol(unique(f"o_{i}"), real=True)
                calls.append(Call(sym, e.func.__name__, ir.operator_kind(e), args))
                seen[key] = sym
            return seen[key]
        if not e.args:
            return e
        return e.func(*[walk(a) for a in e.args])

    outputs_eager: list[tuple[str, sp.Expr]] = []
    for eq in scheme.equations:
        if eq in host:
            continue
        value = walk(eq.rhs)
        subst[eq.lhs] = value
        if isinstance(eq.lhs, sp.Indexed):
            outputs_eager.append((eq.lhs.base.label.name, value))

    phi = None
    if act is not None:
        from unroll.ir import activations

        a = activations.get(act)
        phi = sp.Lambda(activations.v, a.expr)
    outputs = []
    for state, value in outputs_eager:
        expr = value.replace(ir.ACT, phi) if phi is not None else value
        outputs.append(Output(state, history_name(state, k, 1), expr, value))

    used: set[sp.Basic] = set().union(*(o.expr.free_symbols for o in outputs))
    order = list(scheme.states)
    inputs: list[Input] = []
    for ref, sym in sorted(
        history.items(), key=lambda h: (order.index(h[0].base.label.name), -ir.offset(h[0], k))
    ):
        if sym in used:
            inputs.append(Input(sym.name, sym, "history", ref, expr_text(ref)))
    for call in calls:
        if call.symbol in used:
            inputs.append(Input(call.symbol.name, call.symbol, "output", call.symbol, call.text()))
    return Block(
        scheme,
        act,
        tuple(inputs),
        tuple(c for c in _ordered(scheme, coefficients) if c.symbol in used),
        tuple(outputs),
        tuple(calls),
        tuple(host),
        history=tuple((sym, ref) for ref, sym in history.items()),
        call_coefficients=tuple(c for c in _ordered(scheme, coefficients) if c.symbol not in used),
    )


def _ordered(scheme: Scheme, coefficients: Mapping[sp.Basic, Coefficient]) -> list[Coefficient]:
    """Parameters in the scheme's order, then host values, then the time."""
    params = list(scheme.parameters)
    rank = {"parameter": 0, "host": 1, "time": 2}

    def key(c: Coefficient) -> tuple:
        name = getattr(c.ref, "name", "")
        return (rank[c.source], params.index(name) if name in params else 0, c.name)

    return sorted(coefficients.values(), key=key)


def describe(block: Block) -> str:
    """Several lines: what the kernel computes and what the caller computes around it."""
    lines = [f"scheme {block.scheme.name or str(block.scheme)!r}: block update"]
    lines += [f"  {line}" for line in block.equations_text()]
    if block.activation:
        lines.append(f"  with φ = {block.activation}")
    if block.calls:
        lines.append("operator outputs (computed by PyTorch before the kernel):")
        lines += [f"  {c.text()}" for c in block.calls]
    if block.host:
        lines.append("host values (scalars, computed by the caller):")
        lines += [f"  {equation_text(eq)}" for eq in block.host]
    return "\n".join(lines)
