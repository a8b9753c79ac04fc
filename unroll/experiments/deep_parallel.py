"""Experiment (e), deep against parallel on the digits: a residual stack against its wide form
y = x + Σ_k f_k(x) (`unroll.parallelize`, docs/theory.md section 6), both from the very same
weights (`unroll parallel`).

`experiment` trains both layouts for every depth and seed; `summary`, `plot_runs` and
`markdown` write docs/parallel.md; `jobs`, `section` and `plot` are the catalogue's experiment.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from unroll.experiments import digits, harness
from unroll.experiments.harness import Job, Result, of
from unroll.experiments.parallel import parallelize

NAME = "parallel"
TITLE = "Deep against parallel"
SEEDS = 5  # cheap runs: more seeds
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
    deep = digits.residual_net(depth, width, hidden, seed)
    wide = nn.Sequential(
        copy.deepcopy(deep[0]), parallelize(deep[1], order, share=False), copy.deepcopy(deep[2])
    )
    return deep, wide


def pair_runs(
    depth: int,
    seed: int,
    *,
    width: int,
    hidden: int,
    epochs: int,
    lr: float,
    order: int,
    data: digits.Data,
    advance: Callable[[int], None] | None = None,
) -> list[Run]:
    """Both layouts of one depth and seed, trained alike: two `Run`s (sequential first)."""
    deep, wide = _pair(depth, width, hidden, order, seed)
    with torch.no_grad():
        ref = deep(data.x_val)
        gap = float((ref - wide(data.x_val)).norm() / ref.norm())
    runs = []
    for layout, model in zip(LAYOUTS, (deep, wide), strict=True):
        curve: list[float] = []

        def after(epoch, model=model, curve=curve):
            curve.append(digits.evaluate(model, data.x_val, data.y_val)[0])
            if advance is not None:
                advance(epoch)

        digits.train(model, data, epochs=epochs, lr=lr, seed=seed, after_epoch=after)
        loss, acc = digits.evaluate(model, data.x_val, data.y_val)
        runs.append(Run(depth, seed, layout, digits.count(model), gap, loss, acc, tuple(curve)))
    return runs


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
                runs += pair_runs(
                    depth, seed, width=width, hidden=hidden, epochs=epochs, lr=lr, order=order,
                    data=data, advance=advance,
                )  # fmt: skip
    return runs


def _stats(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def summary(runs: list[Run]) -> list[dict[str, str]]:
    """One row per depth: mean ± sd over seeds of each layout's validation loss and accuracy."""
    rows = []
    for depth in sorted({r.depth for r in runs}):
        by = {lay: [r for r in runs if r.depth == depth and r.layout == lay] for lay in LAYOUTS}
        rows.append(
            {
                "K": str(depth),
                "params": str(by["sequential"][0].params),
                "init gap": f"{statistics.mean(r.init_gap for r in by['sequential']):.3f}",
                **{f"{lay} val loss": _stats([r.val_loss for r in by[lay]]) for lay in LAYOUTS},
                **{f"{lay} val acc": _stats([r.val_accuracy for r in by[lay]]) for lay in LAYOUTS},
            }
        )
    return rows


def plot_runs(runs: list[Run], path: Path) -> None:
    """Validation loss by depth (mean ± sd) and the deepest depth's curves (mean over seeds)."""
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
        curves = [r.curve for r in runs if r.depth == depths[-1] and r.layout == layout]
        mean_curve = [statistics.mean(c) for c in zip(*curves, strict=True)]
        right.plot(range(1, len(mean_curve) + 1), mean_curve, label=layout)
    left.set_xscale("log", base=2)
    left.set_xticks(depths, [str(d) for d in depths])
    left.set_xlabel("residual blocks K")
    left.set_ylabel("validation loss (mean ± sd over seeds)")
    right.set_xlabel("epoch")
    right.set_ylabel(f"validation loss, K = {depths[-1]}, mean over seeds")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("digits: deep residual stack against its wide parallel form")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _model_text(order: int) -> str:
    cross = " + Σ_{k>j} J_{f_k}(x) f_j(x)" if order == 2 else ""
    return (
        "A residual network 64 → W, K blocks x + W₂ tanh(W₁ x), W → 10, against its wide form "
        f"y = x + Σ_k f_k(x){cross} (`unroll.parallelize(blocks, order={order}, share=False)`), "
        "on scikit-learn's digits. Both start from the same weights and train with the same "
        "Adam settings, batches and epochs. `init gap` is ‖deep(x) − wide(x)‖ / ‖deep(x)‖ on "
        "the validation set before training: how far the truncated expansion is from the "
        "stack it came from. For K = 1 the two layouts are the same function and train "
        "identically."
    )


def _table(rows: list[dict[str, str]]) -> str:
    head = list(rows[0])
    return harness.table(head, [[r[h] for h in head] for r in rows], "r" * len(head))


def markdown(runs: list[Run], command_line: str, where: str, order: int) -> str:
    """docs/parallel.md."""
    lines = [
        "# Deep against parallel (`unroll parallel`)",
        "",
        _model_text(order),
        "",
        f"Generated by `{command_line}` on {where} (torch on one thread).",
        "",
        _table(summary(runs)),
        "",
        "![validation loss by depth and training curves](parallel.png)",
        "",
        "For comparison, Bermeitinger, Hrycej and Handschuh (arXiv 2309.08414) report close",
        "validation losses for the two layouts over 6,912 configurations on MNIST and CIFAR-10.",
        "",
        "The same from Python, for an `nn.Sequential` of residual blocks (any module that keeps",
        "x's shape, read as x + f(x)), or a `Scheme.network` of a one-step scheme (block k is",
        "x + f_k(x), f_k its step's increment):",
        "",
        "```python",
        "wide = unroll.parallelize(blocks, order=1, share=False)  # y = x + Σ_k f_k(x)",
        'net = unroll.schemes["forward_euler"].network(8, dim=32, f=make_branch)',
        "wide = unroll.parallelize(net, order=2)  # + Σ_{k>j} J_{f_k}(x) f_j(x), sharing weights",
        "```",
        "",
    ]
    return "\n".join(lines)


# -- the catalogue's experiment -----------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """`unroll parallel`'s defaults."""

    depths: tuple[int, ...] = (1, 2, 4, 8)
    width: int = 32
    hidden: int = 32
    epochs: int = 30
    lr: float = 3e-3
    order: int = 1

    @classmethod
    def tiny(cls) -> Settings:
        return cls(depths=(1, 2), width=8, hidden=8, epochs=1)


def jobs(s: Settings, seeds: int) -> list[Job]:
    """One job per depth and seed: both layouts from one initialisation."""
    data: list[digits.Data] = []  # loaded by the first job, shared by the others

    def job(depth: int, seed: int) -> Job:
        def run(advance):
            if not data:
                data.append(digits.load(0))
            runs = pair_runs(
                depth, seed, width=s.width, hidden=s.hidden, epochs=s.epochs, lr=s.lr,
                order=s.order, data=data[0], advance=advance,
            )  # fmt: skip
            return [dataclasses.asdict(r) for r in runs]

        return Job(f"K = {depth}, seed {seed}", s.epochs * len(LAYOUTS), run)

    return [job(depth, seed) for depth in s.depths for seed in range(seeds)]


def _runs(result: Result) -> list[Run]:
    return [Run(**{**r, "curve": tuple(r["curve"])}) for r in result.runs]


def console(result: Result) -> tuple[tuple[str, ...], list[list[str]]]:
    """The table the command prints: header and rows."""
    rows = summary(_runs(result))
    return tuple(rows[0]), [list(r.values()) for r in rows]


def section(result: Result) -> str:
    """The Markdown section of docs/experiments.md, from ``result`` alone."""
    s, runs = result.settings, result.runs
    verdicts = []
    for depth in s["depths"]:
        seq = of(runs, "val_loss", depth=depth, layout="sequential")
        par = of(runs, "val_loss", depth=depth, layout="parallel")
        seq_acc = of(runs, "val_accuracy", depth=depth, layout="sequential")
        par_acc = of(runs, "val_accuracy", depth=depth, layout="parallel")
        diff = harness.paired(
            runs, "val_loss", {"depth": depth, "layout": "parallel"},
            {"depth": depth, "layout": "sequential"},
        )  # fmt: skip
        verdicts.append(
            f"- K = {depth}: validation loss, parallel vs sequential {par.versus(seq, 4)}, "
            f"paired by seed (the same start) parallel − sequential {diff.signed(4)}; "
            f"accuracy {par_acc.versus(seq_acc, 4)}."
        )
    return "\n".join(
        [
            f"## (e) {TITLE} (`unroll experiment {NAME}`)",
            "",
            f"The experiment of `unroll parallel` (docs/parallel.md). {_model_text(s['order'])} "
            f"W = {s['width']}, H = {s['hidden']} (the hidden width of each branch); "
            f"{s['epochs']} epochs of Adam (lr {s['lr']}, batches of 128); {result.seeds} "
            "seeds (initialisation and batch order; one train/validation split).",
            "",
            f"{harness.provenance(result)} Mean ± standard deviation over seeds.",
            "",
            _table(summary(_runs(result))),
            "",
            f"![validation loss by depth and training curves](experiments/{NAME}.png)",
            "",
            "**Verdict** (a difference counts when the intervals mean ± std do not overlap):",
            "",
            *verdicts,
        ]
    )


def plot(result: Result, path: Path) -> None:
    """`plot_runs` of the stored runs."""
    plot_runs(_runs(result), path)
