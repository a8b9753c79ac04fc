"""``unroll parallel``: deep residual stack against its wide parallel form, on the digits.

For each depth K and seed, one residual network is built; its wide form (``unroll.parallelize``
at ``--order``, branches copied) starts from the very same weights. Both are trained with the
same optimiser, batches and epochs. Prints a table; ``--out DIR`` writes DIR/parallel.md and
DIR/parallel.png.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import torch
from torch import nn

from unroll.errors import UnrollError
from unroll.experiments import digits

LAYOUTS = ("sequential", "parallel")


@dataclass(frozen=True)
class Run:
    depth: int
    seed: int
    layout: str
    params: int
    init_gap: float  # ‖deep(x) − wide(x)‖ / ‖deep(x)‖ on the validation set, before training
    val_loss: float
    val_accuracy: float
    curve: tuple[float, ...]  # validation loss after each epoch


def _pair(depth: int, width: int, hidden: int, order: int, seed: int):
    """(deep, wide) from one initialisation: same embedding, branches and head."""
    from unroll.experiments.parallel import parallelize

    deep = digits.residual_net(depth, width, hidden, seed)
    wide = nn.Sequential(
        copy.deepcopy(deep[0]), parallelize(deep[1], order, share=False), copy.deepcopy(deep[2])
    )
    return deep, wide


def experiment(
    *,
    depths: list[int],
    width: int,
    hidden: int,
    epochs: int,
    seeds: int,
    lr: float,
    order: int,
    advance: Callable[[int], None] | None = None,
) -> list[Run]:
    """One `Run` per depth, seed and layout; ``advance(epoch)`` is called after every epoch."""
    runs = []
    with digits.one_thread():
        data = digits.load(0)
        for depth in depths:
            for seed in range(seeds):
                deep, wide = _pair(depth, width, hidden, order, seed)
                with torch.no_grad():
                    ref = deep(data.x_val)
                    gap = float((ref - wide(data.x_val)).norm() / ref.norm())
                for layout, model in zip(LAYOUTS, (deep, wide), strict=True):
                    curve: list[float] = []

                    def after(epoch, model=model, curve=curve):
                        curve.append(digits.evaluate(model, data.x_val, data.y_val)[0])
                        if advance is not None:
                            advance(epoch)

                    digits.train(model, data, epochs=epochs, lr=lr, seed=seed, after_epoch=after)
                    loss, acc = digits.evaluate(model, data.x_val, data.y_val)
                    runs.append(
                        Run(depth, seed, layout, digits.count(model), gap, loss, acc, tuple(curve))
                    )
    return runs


def _stats(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def summary(runs: list[Run]) -> list[dict[str, str]]:
    """One row per depth: mean ± sd over seeds of each layout's validation loss and accuracy."""
    rows = []
    for depth in sorted({r.depth for r in runs}):
        of = {lay: [r for r in runs if r.depth == depth and r.layout == lay] for lay in LAYOUTS}
        rows.append(
            {
                "K": str(depth),
                "params": str(of["sequential"][0].params),
                "init gap": f"{statistics.mean(r.init_gap for r in of['sequential']):.3f}",
                **{f"{lay} val loss": _stats([r.val_loss for r in of[lay]]) for lay in LAYOUTS},
                **{f"{lay} val acc": _stats([r.val_accuracy for r in of[lay]]) for lay in LAYOUTS},
            }
        )
    return rows


def _plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    depths = sorted({r.depth for r in runs})
    for layout, marker in zip(LAYOUTS, "os", strict=True):
        means, sds = [], []
        for d in depths:
            vals = [r.val_loss for r in runs if r.depth == d and r.layout == layout]
            means.append(statistics.mean(vals))
            sds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
        left.errorbar(depths, means, yerr=sds, marker=marker, capsize=3, label=layout)
        curve = next(r.curve for r in runs if r.depth == depths[-1] and r.layout == layout)
        right.plot(range(1, len(curve) + 1), curve, label=layout)
    left.set_xscale("log", base=2)
    left.set_xticks(depths, [str(d) for d in depths])
    left.set_xlabel("residual blocks K")
    left.set_ylabel("validation loss (mean ± sd over seeds)")
    right.set_xlabel("epoch")
    right.set_ylabel(f"validation loss, K = {depths[-1]}, seed 0")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("digits: deep residual stack against its wide parallel form")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(runs: list[Run], command_line: str, where: str, order: int) -> str:
    rows = summary(runs)
    head = list(rows[0])
    lines = [
        "# Deep against parallel (`unroll parallel`)",
        "",
        "A residual network 64 → W, K blocks x + W₂ tanh(W₁ x), W → 10, against its wide form",
        f"y = x + Σ_k f_k(x){' + Σ_{k>j} J_{f_k}(x) f_j(x)' if order == 2 else ''} "
        f"(`unroll.parallelize(blocks, order={order}, share=False)`), on scikit-learn's digits.",
        "Both start from the same weights and train with the same Adam settings, batches and",
        "epochs. `init gap` is ‖deep(x) − wide(x)‖ / ‖deep(x)‖ on the validation set before",
        "training: how far the truncated expansion is from the stack it came from. For K = 1",
        "the two layouts are the same function and train identically.",
        "",
        f"Generated by `{command_line}` on {where} (torch on one thread).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---:|" * len(head),
        *("| " + " | ".join(r[h] for h in head) + " |" for r in rows),
        "",
        "![validation loss by depth and training curves](parallel.png)",
        "",
        "For comparison, Bermeitinger, Hrycej and Handschuh (arXiv 2309.08414) report close",
        "validation losses for the two layouts over 6,912 configurations on MNIST and CIFAR-10.",
        "",
        "The same from Python, for an `nn.Sequential` of blocks exposing `.f` or `.branch`, or a",
        "`Scheme.network` of a one-step scheme (block k is x + f_k(x), f_k its step's increment):",
        "",
        "```python",
        "wide = unroll.parallelize(blocks, order=1, share=False)  # y = x + Σ_k f_k(x)",
        'net = unroll.schemes["forward_euler"].network(8, dim=32, f=make_branch)',
        "wide = unroll.parallelize(net, order=2)  # + Σ_{k>j} J_{f_k}(x) f_j(x), sharing weights",
        "```",
        "",
    ]
    return "\n".join(lines)


def _depths(ctx, param, value: str) -> list[int]:
    try:
        depths = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UnrollError(f"--depths must be comma-separated integers, got {value!r}") from None
    if not depths or min(depths) < 1:
        raise UnrollError(f"--depths must be positive integers, got {value!r}")
    return depths


@click.command("parallel")
@click.option("--depths", default="1,2,4,8", show_default=True, callback=_depths,
              help="Numbers of residual blocks K, comma-separated.")  # fmt: skip
@click.option("--width", default=32, show_default=True, help="Width W of the residual stream.")
@click.option("--hidden", default=32, show_default=True, help="Hidden width of each branch.")
@click.option("--epochs", default=30, show_default=True)
@click.option("--seeds", default=3, show_default=True, help="Initialisations per depth.")
@click.option("--lr", default=3e-3, show_default=True, help="Adam learning rate.")
@click.option("--order", default=1, show_default=True, type=click.IntRange(1, 2),
              help="Where the expansion is cut.")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write parallel.md and parallel.png into this folder.")  # fmt: skip
def command(depths, width, hidden, epochs, seeds, lr, order, out) -> None:
    """Train a deep residual stack and its wide parallel form from the same start."""
    from rich.console import Console
    from rich.table import Table

    digits.check_sizes({"width": width, "hidden": hidden, "epochs": epochs, "seeds": seeds}, lr)
    with digits.progress(len(depths) * seeds * len(LAYOUTS) * epochs) as advance:
        runs = experiment(
            depths=depths, width=width, hidden=hidden, epochs=epochs, seeds=seeds, lr=lr,
            order=order, advance=advance,
        )  # fmt: skip
    where = digits.machine()
    rows = summary(runs)
    table = Table(title="digits: deep residual stack against its wide parallel form")
    for h in rows[0]:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*r.values())
    Console().print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _plot(runs, out / "parallel.png")
        (out / "parallel.md").write_text(_markdown(runs, digits.command_line(), where, order))
        click.echo(f"wrote {out / 'parallel.png'} and {out / 'parallel.md'}")
