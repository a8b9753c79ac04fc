"""scikit-learn's digits for the experiments: the data, the two model builders of ``unroll grow``
and ``unroll parallel``, and the commands' shared parts.

The data is scikit-learn's bundled 8×8 digits (1,797 images, 10 classes; no download).
Training, evaluation and the rest live in `unroll.experiments.harness` (re-exported here);
everything is deterministic given ``seed``.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import click
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from torch import nn

from unroll.errors import UnrollError
from unroll.experiments.harness import Data, count, evaluate, machine, one_thread, train
from unroll.experiments.parallel import Residual
from unroll.frontend.library import schemes
from unroll.ir import vocabulary as ir
from unroll.lowering.nn.modules import network

__all__ = [
    "Data",
    "Digits",
    "check_sizes",
    "command_line",
    "count",
    "evaluate",
    "images",
    "load",
    "machine",
    "scheme_net",
    "one_thread",
    "progress",
    "residual_net",
    "train",
]

FEATURES, CLASSES = 64, 10
SIDE = 8  # the images are SIDE × SIDE, one channel

Digits = Data  # the digits' split: x of shape (n, 64) float32, centred; y of shape (n,)


def load(seed: int = 0, val_fraction: float = 0.25) -> Data:
    """The digits, pixels scaled to [0, 1] and centred by the training mean (per pixel); the
    split (a ``val_fraction`` of the images for validation) is drawn with ``seed``. x has
    shape (n, 64)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is in the 'grow' extra
        raise UnrollError(
            "the digits experiments need scikit-learn: pip install 'unroll[grow]'"
        ) from e
    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x, dtype=torch.float32) / 16
    y = torch.as_tensor(y, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = round(val_fraction * len(x))
    val, tr = order[:n_val], order[n_val:]
    mean = x[tr].mean(0)
    return Data(x[tr] - mean, y[tr], x[val] - mean, y[val])


def images(data: Data) -> Data:
    """The same split with x as images for convolutional networks: shape (n, 1, 8, 8)."""
    shape = (-1, 1, SIDE, SIDE)
    return Data(data.x_train.reshape(shape), data.y_train, data.x_val.reshape(shape), data.y_val)


def scheme_net(scheme: str, depth: int, width: int, hidden: int, seed: int = 0) -> nn.Sequential:
    """64 → width, ``depth`` steps of the ODE ``scheme`` (a bundled name, e.g. "forward_euler":
    the ResNet block x + h f(x)) with each branch (f, or f_1, f_2, ...) = Linear(width, hidden)
    → tanh → Linear(hidden, width), one per block and branch, then width → 10: the network
    `grow` widens (the ``hidden`` units). The scheme must be an ODE scheme with one state."""
    spec = schemes[scheme]  # an UnrollError naming the scheme if there is none
    if spec.kind != "ode" or len(spec.states) != 1:
        raise UnrollError(
            f"scheme {scheme!r} ({spec.kind}, states {', '.join(spec.states)}) has no network "
            "of branches f on one state: choose an ODE scheme with one state, e.g. forward_euler"
        )
    names = {
        a.func.__name__
        for eq in spec.equations
        for a in ir.applications(eq.rhs)
        if ir.operator_kind(a) == "branch"
    }
    torch.manual_seed(seed)

    def branch() -> nn.Module:
        return nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, width))

    net = network(spec, depth, dim=width, f=dict.fromkeys(names, branch), backend="torch")
    # float32 whatever the default dtype: the data is float32.
    return nn.Sequential(nn.Linear(FEATURES, width), net, nn.Linear(width, CLASSES)).float()


def residual_net(blocks: int, width: int, hidden: int, seed: int = 0) -> nn.Sequential:
    """64 → width, ``blocks`` residual blocks x + W₂ tanh(W₁x) (in ``net[1]``), width → 10."""
    torch.manual_seed(seed)
    stack = nn.Sequential(
        *[
            Residual(nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, width)))
            for _ in range(blocks)
        ]
    )
    return nn.Sequential(nn.Linear(FEATURES, width), stack, nn.Linear(width, CLASSES)).float()


# -- the commands' shared parts ----------------------------------------------------------------
def check_sizes(sizes: Mapping[str, int], lr: float) -> None:
    """UnrollError naming the first option ``--name`` below 1, or a learning rate not > 0."""
    for name, value in sizes.items():
        if value < 1:
            raise UnrollError(f"--{name} must be positive, got {value}")
    if not lr > 0:
        raise UnrollError(f"--lr must be positive, got {lr}")


@contextmanager
def progress(total: int) -> Iterator[Callable[..., None]]:
    """A bar of ``total`` training epochs on stderr (hidden when stderr is no terminal);
    yields the function to call after each epoch (it ignores its arguments)."""
    err = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal,
    ) as bar:  # fmt: skip
        task = bar.add_task("training epochs", total=total)
        yield lambda *_: bar.advance(task)


def command_line() -> str:
    """The running click command's line with every option spelled out, to reproduce a run
    (lists comma-separated, flags by name)."""
    ctx = click.get_current_context()
    args = [ctx.info_name]
    for p in ctx.command.params:
        value = ctx.params[p.name]
        if isinstance(p, click.Option) and p.is_flag:
            args.append(p.opts[0] if value else p.secondary_opts[0])
        elif isinstance(value, list | tuple):
            args += [p.opts[0], ",".join(map(str, value))]
        elif value is not None:
            args += [p.opts[0], str(value)]
    return shlex.join(["unroll", *args])
