"""The activations unroll knows: one SymPy expression and one torch function each.

An activation is one home for everything that needs it: the symbolic form (for derived
objectives and kernel printing) and the eager torch function (for `Scheme.run` and modules).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp

from .errors import UnrollError

v = sp.Symbol("v", real=True)


@dataclass(frozen=True)
class Activation:
    """A coordinate-wise activation ``φ``: ``expr`` is φ(v) in the real symbol ``v``."""

    name: str
    expr: sp.Expr
    torch: Callable


def _build() -> dict[str, Activation]:
    import torch
    import torch.nn.functional as tf

    return {
        a.name: a
        for a in [
            Activation("identity", v, lambda x: x),
            Activation("relu", sp.Max(v, 0), torch.relu),
            Activation("sigmoid", 1 / (1 + sp.exp(-v)), torch.sigmoid),
            Activation("tanh", sp.tanh(v), torch.tanh),
            Activation("softplus", sp.log(1 + sp.exp(v)), tf.softplus),
            Activation("hardtanh", sp.Max(-1, sp.Min(1, v)), tf.hardtanh),
        ]
    }


_REGISTRY: dict[str, Activation] | None = None


def get(name: str) -> Activation:
    """The activation called ``name``; an `UnrollError` listing the known ones otherwise."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _build()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnrollError(f"unknown activation {name!r}; known: {known}") from None
