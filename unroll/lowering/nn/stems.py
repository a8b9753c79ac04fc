"""The parts around the blocks: a network's stem and head (``in_dim``/``out_dim``,
``in_channels``/``num_classes``), and the pieces of the papers' convolutional classifiers
(`basic_branch`, `transition`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unroll.errors import UnrollError
from unroll.lowering.nn.options import Options


def stem_of(opts: Options) -> nn.Module | None:
    if opts.in_dim is not None:
        return nn.Linear(opts.in_dim, opts.dim)
    if opts.in_channels is not None:
        return conv_stem(opts.in_channels, opts.channels)
    return None


def head_of(opts: Options) -> nn.Module | None:
    if opts.out_dim is not None:
        return nn.Linear(opts.dim, opts.out_dim)
    if opts.num_classes is not None:
        return conv_head(opts.channels, opts.num_classes)
    return None


def conv_stem(in_channels: int, channels: int) -> nn.Module:
    """conv3×3 (no bias) → BatchNorm → ReLU, as the CIFAR ResNets begin."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
    )


def conv_head(channels: int, num_classes: int) -> nn.Module:
    """Global average pooling → Linear, as the CIFAR ResNets end: (B, C, H, W) -> (B, classes)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def stem_input(opts: Options, x: Any) -> torch.Tensor:
    """The network's input when it has a stem: a tensor of in_dim features or in_channels."""
    if not isinstance(x, torch.Tensor):
        raise UnrollError(
            f"a network with a stem takes a tensor, not a {type(x).__name__} of states"
        )
    width, axis, option = (
        (opts.in_dim, -1, "in_dim")
        if opts.in_dim is not None
        else (opts.in_channels, -3, "in_channels")
    )
    if x.dim() < -axis or x.shape[axis] != width:
        raise UnrollError(
            f"the input has shape {tuple(x.shape)}, but the network was built with "
            f"{option}={width} (axis {axis} must be {width})"
        )
    return x


# -- multi-stage convolutional classifiers ----------------------------------------------------------
def basic_branch(width: int) -> nn.Module:
    """The residual branch of a CIFAR ResNet's basic block: conv3×3 → BatchNorm → ReLU →
    conv3×3 → BatchNorm, ``width`` channels in and out."""
    return nn.Sequential(
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
    )


def transition(in_width: int, out_width: int) -> nn.Module:
    """Between two stages: conv3×3 with stride 2 (half the resolution, new width) → BatchNorm →
    ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_width, out_width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_width),
        nn.ReLU(),
    )
