"""Networks from schemes, the public door: what `unroll.lowering.nn` builds.

    net = unroll.nn.network(unroll.schemes["lm_resnet"], 8, dim=32, f=..., in_dim=64, out_dim=10)
    cnn = unroll.nn.staged(unroll.schemes["lm_resnet"], [(16, 3), (32, 3), (64, 3)],
                           in_channels=3, num_classes=10)

`Scheme.network` and `Scheme.layer` are the same as `network` and `layer` here.
"""

from unroll.lowering.nn.modules import Block, Network, Trace, layer, network
from unroll.lowering.nn.options import Options, per_block
from unroll.lowering.nn.staged import Staged, staged
from unroll.lowering.nn.stems import basic_branch

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
