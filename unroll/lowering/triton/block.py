"""The kernel view of a step: what a fused block-update kernel reads, computes and writes.

``kernel_view(ir, activation) -> KernelBlock``, read off the step IR (`unroll.ir.step.build`):
one step is its operator calls (which PyTorch computes) and the elementwise updates of the
tensor states. A block-update kernel computes those updates, every input read once and every
new state written once, from

- ``inputs``: the tensors the updates read, history values (``x_k``, ``x_km1``) and call
  outputs (``o_0``), the IR's own `HistoryValue` and `Call` leaves;
- ``coefficients``: the values shared by every element (or every element of one channel) the
  updates read: parameters, host values (a scalar state such as θ_k, or a stage computed from
  scalars alone: `StepIR.host`), the time ``t`` and the index ``k``;

and writes ``outputs``, the IR's updates (`Assign`), whose ``expressions`` are the IR
expressions with φ replaced by the activation's SymPy expression. An operator's argument
(``x_k + h/2 o_0`` in RK4) must exist as a tensor before the operator runs, so the caller
computes it; the kernel recomputes whatever part of it the updates read.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import sympy as sp

from unroll.errors import UnrollError
from unroll.frontend.printing import expr_text
from unroll.ir import activations
from unroll.ir import vocabulary as vocab
from unroll.ir.step import Assign, Call, Coefficient, HistoryValue, Leaf, StepIR

# Coefficients in kernel order: parameters, host values, the time, the index.
_RANK = {"parameter": 0, "host": 1, "time": 2, "index": 3}


@dataclass(frozen=True)
class KernelBlock:
    """The block update of ``ir`` with ``activation`` as φ (None when the step has no φ); see
    the module docstring. ``expressions[i]`` is what the kernel computes for ``outputs[i]``."""

    ir: StepIR
    activation: str | None
    inputs: tuple[HistoryValue | Call, ...]
    coefficients: tuple[Leaf, ...]  # Coefficient, host Assign or scalar HistoryValue leaves
    outputs: tuple[Assign, ...]
    expressions: tuple[sp.Expr, ...]

    @property
    def per_channel(self) -> bool:
        """Whether some coefficient holds one value per channel."""
        return any(is_per_channel(c) for c in self.coefficients)

    @property
    def states(self) -> tuple[str, ...]:
        """The state each output advances, in order."""
        return tuple(str(o.state) for o in self.outputs)

    def equations_text(self) -> list[str]:
        """The updates as text, one line each (φ kept), in the kernel's names."""
        return [f"{o.name} = {expr_text(o.expr)}" for o in self.outputs]

    def describe(self) -> str:
        """Several lines: what the kernel computes and what the caller computes around it."""
        lines = [f"scheme {self.ir.label!r}: block update"]
        lines += [f"  {line}" for line in self.equations_text()]
        if self.activation:
            lines.append(f"  with φ = {self.activation}")
        if self.ir.calls:
            lines.append("operator outputs (computed by PyTorch before the kernel):")
            lines += [f"  {c.text()}" for c in self.ir.calls]
        if self.ir.host:
            lines.append("host values (scalars, computed by the caller):")
            lines += [f"  {a.name} = {expr_text(a.expr)}" for a in self.ir.host]
        return "\n".join(lines)


def is_per_channel(leaf: Leaf) -> bool:
    """Whether ``leaf`` is a coefficient holding one value per channel."""
    return isinstance(leaf, Coefficient) and leaf.per_channel


def origin(leaf: Leaf) -> str:
    """Where a coefficient's value comes from: 'parameter', 'host', 'time' or 'index'."""
    return leaf.source if isinstance(leaf, Coefficient) else "host"


def leaf_text(leaf: Leaf) -> str:
    """How the scheme writes ``leaf``: ``x_<k-1>``, ``o_0 = W(x_k)``, ``β``."""
    return leaf.text() if isinstance(leaf, Call) else expr_text(leaf.ref)


@functools.lru_cache(maxsize=256)
def kernel_view(ir: StepIR, activation: str | None = None) -> KernelBlock:
    """The kernel view of ``ir`` with ``activation`` (a name of `unroll.ir.activations`;
    default: the scheme's) as φ; memoised. Raises `UnrollError` for an implicit scheme, a
    scheme with φ and no activation, and a step that updates no tensor."""
    scheme, label = ir.scheme, ir.label
    if not ir.is_explicit:
        raise UnrollError(
            f"scheme {label!r} is implicit ({scheme.implicit_reason}); "
            "only explicit schemes have a block update"
        )
    act = activation if activation is not None else scheme.activation
    if not ir.uses_activation:
        act = None
    elif act is None:
        raise UnrollError(f"scheme {label!r} uses φ and names no activation: pass one")
    outputs = tuple(u for u in ir.updates if u.state is not None)
    if not outputs:
        raise UnrollError(f"scheme {label!r} updates no tensor state: there is no block update")
    expressions = tuple(u.expr for u in outputs)
    if act is not None:
        phi = sp.Lambda(activations.v, activations.get(act).expr)
        expressions = tuple(e.replace(vocab.ACT, phi) for e in expressions)

    read = set().union(*(e.free_symbols for e in expressions))
    inputs = tuple(
        leaf
        for leaf in (*ir.history, *ir.calls)
        if leaf.symbol in read and not (isinstance(leaf, HistoryValue) and leaf.scalar)
    )
    if not inputs:
        raise UnrollError(f"scheme {label!r}: its update reads no tensor, so no kernel computes it")
    host = (*(h for h in ir.history if h.scalar), *ir.host)
    candidates = [*(c for c in ir.coefficients if c.source == "parameter"), *host]
    candidates += [c for c in ir.coefficients if c.source != "parameter"]
    coefficients = tuple(
        sorted((c for c in candidates if c.symbol in read), key=lambda c: _RANK[origin(c)])
    )
    return KernelBlock(ir, act, inputs, coefficients, outputs, expressions)
