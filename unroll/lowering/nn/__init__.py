"""Networks from schemes: the layer form (`form`), the block program (`program`) and the torch
modules (`modules`), one pass per module::

    form    = layer_form(scheme)      # Scheme -> Scheme: ∇F realised as φ(W p + b ...)
    program = lower(form)             # Scheme -> Program: operator calls + one block update
    net     = network(scheme, depth)  # Program -> torch.nn.Module (Block per step, history)

`layer_form` is SymPy only; torch is imported when a module is built.
"""

from __future__ import annotations

from typing import Any

from unroll.ir.layer_form import layer_form
from unroll.lowering.nn.program import Call, Program, lower

__all__ = ["Call", "Program", "layer", "layer_form", "lower", "network"]


def layer(scheme: Any, **options: Any) -> Any:
    """One block of ``scheme``'s network; see `unroll.lowering.nn.modules.Options` for the options."""
    from unroll.lowering.nn.modules import layer as build

    return build(scheme, **options)


def network(scheme: Any, depth: int, **options: Any) -> Any:
    """``depth`` unrolled steps of ``scheme`` as a `unroll.lowering.nn.modules.Network`."""
    from unroll.lowering.nn.modules import network as build

    return build(scheme, depth, **options)
