"""Multi-stage convolutional classifiers: stages of scheme networks with downsampling
transitions between them, as ResNet and LM-ResNet are built for CIFAR (`staged`)."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from unroll.errors import UnrollError
from unroll.frontend.scheme import Scheme
from unroll.ir.step import build
from unroll.lowering.nn.modules import Network, network, one_tensor_start
from unroll.lowering.nn.stems import basic_branch, conv_head, conv_stem, transition


class Staged(nn.Module):
    """stem → stage 1 → transition → stage 2 → ... → head: a convolutional classifier whose
    stages are `Network`s of one scheme. (B, in_channels, H, W) -> (B, num_classes)."""

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[Network],
        transitions: Sequence[nn.Module],
        head: nn.Module,
    ):
        super().__init__()
        self.stem, self.head = stem, head
        self.stages = nn.ModuleList(stages)
        self.transitions = nn.ModuleList(transitions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.stem[0].in_channels
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
            shown = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise UnrollError(
                f"the input is {shown}, but the network was built with in_channels={channels}: "
                f"give (batch, {channels}, height, width)"
            )
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i:
                x = self.transitions[i - 1](x)
            x = stage(x)
        return self.head(x)


def staged(
    scheme: Scheme,
    stages: Sequence[tuple[int, int]],
    *,
    in_channels: int,
    num_classes: int,
    f: Any = None,
    **options: Any,
) -> Staged:
    """A multi-stage convolutional classifier of ``scheme``'s blocks, as the papers' CIFAR
    networks are built: ``stages`` is a sequence of (width, depth), e.g. [(16, 3), (32, 3),
    (64, 3)]; a stride-2 `transition` halves the resolution between stages. ``f``: for an ODE
    scheme, a factory of the width returning a branch module (or a mapping from branch names to
    such factories); default `basic_branch`. Every other option is `network`'s, for every stage.
    """
    if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence) or not stages:
        raise UnrollError(f"stages must be a non-empty sequence of (width, depth), not {stages!r}")
    for i, stage in enumerate(stages):
        ok = isinstance(stage, (tuple, list)) and len(stage) == 2
        if not ok or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in stage):
            raise UnrollError(
                f"stages[{i}] must be (width, depth), two positive ints, not {stage!r}"
            )
    for key in ("channels", "dim", "in_channels", "num_classes", "in_dim", "out_dim"):
        if key in options:
            raise UnrollError(f"staged sets {key}= itself (from stages, in_channels, num_classes)")
    ir = build(scheme, layer=True)
    one_tensor_start(
        ir.scheme,
        "staged's stem and transitions give each stage",
        "build its stages with network() and pass each x0 as a mapping of those states",
    )
    branches = [n for n, k in ir.operators().items() if k == "branch"]

    def factory(width: int) -> Any:
        if not branches:
            return None
        if f is None:
            return dict.fromkeys(branches, lambda: basic_branch(width))
        if isinstance(f, Mapping):
            return {name: (lambda fac=fac: _of_width(fac, width)) for name, fac in f.items()}
        if callable(f) and not isinstance(f, nn.Module):
            return dict.fromkeys(branches, lambda: _of_width(f, width))
        raise UnrollError(
            "f= for staged must be a factory of the width (or a mapping of such factories): "
            "a module has one width"
        )

    networks = [
        network(scheme, depth, channels=width, f=factory(width), **options)
        for width, depth in stages
    ]
    widths = [w for w, _ in stages]
    transitions = [transition(a, b) for a, b in itertools.pairwise(widths)]
    return Staged(
        conv_stem(in_channels, widths[0]), networks, transitions, conv_head(widths[-1], num_classes)
    )


def _of_width(factory: Callable, width: int) -> nn.Module:
    """``factory(width)``, or an UnrollError saying what staged's f= must take."""
    try:
        inspect.signature(factory).bind(width)
    except (TypeError, ValueError):
        raise UnrollError(
            f"f= for staged must be a factory of the width, called f({width}); "
            f"{getattr(factory, '__name__', factory)!r} does not take one argument"
        ) from None
    return factory(width)
