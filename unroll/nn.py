"""Networks from schemes, the public door: what `unroll.lowering.nn.modules` builds.

    net = unroll.nn.network(unroll.schemes["lm_resnet"], 8, dim=32, f=..., in_dim=64, out_dim=10)
    cnn = unroll.nn.staged(unroll.schemes["lm_resnet"], [(16, 3), (32, 3), (64, 3)],
                           in_channels=3, num_classes=10)

`Scheme.network` and `Scheme.layer` are the same as `network` and `layer` here.
"""

from unroll.lowering.nn.modules import (
    Block,
    Network,
    Options,
    Staged,
    Trace,
    basic_branch,
    layer,
    network,
    per_block,
    staged,
)

__all__ = [
    "Block",
    "Network",
    "Options",
    "Staged",
    "Trace",
    "basic_branch",
    "layer",
    "network",
    "per_block",
    "staged",
]
