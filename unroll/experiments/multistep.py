"""Experiment (b), after Lu, Zhong, Li and Dong (ICML 2018, arXiv 1710.10121): ResNet (forward
Euler, x_{n+1} = x_n + f(x_n)) against LM-ResNet (the two-step scheme
x_{n+1} = (1 − κ_n) x_n + κ_n x_{n−1} + f(x_n)) in the same staged convolutional classifier,
with and without stochastic depth, on scikit-learn's digits as 1×8×8 images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from unroll.experiments import digits, harness
from unroll.experiments.harness import Job, Result, of, select
from unroll.frontend.library import schemes
from unroll.lowering.nn.options import per_block
from unroll.lowering.nn.staged import staged

NAME = "multistep"
TITLE = "ResNet against LM-ResNet (Lu et al. 2018)"
SEEDS = 5  # paired by seed, the differences are small: more seeds
NETWORKS = {"ResNet": "forward_euler", "LM-ResNet": "lm_resnet"}
# Stochastic depth: none, dropped branches (η ~ Bernoulli(p_n)) or the SDE reading's noise.
MODES = ("none", "drop", "noise")


@dataclass(frozen=True)
class Settings:
    stages: tuple[tuple[int, int], ...] = ((8, 4), (16, 4))
    survival: float = 0.5
    epochs: int = 15
    batch_size: int = 128
    lr: float = 3e-3

    @classmethod
    def tiny(cls) -> Settings:
        return cls(stages=((4, 1), (4, 1)), epochs=1)


def model(net: str, mode: str, *, stages, survival: float, seed: int) -> nn.Module:
    """`unroll.nn.staged` of the scheme of ``net``: conv stem 1 → width, stages of (width,
    blocks) with ResNet's basic branch conv3×3 → BatchNorm → ReLU → conv3×3 → BatchNorm, a
    stride-2 transition between stages, average pool → Linear head; maps (n, 1, 8, 8) to
    (n, 10). LM-ResNet's κ_n start at U(−0.1, 0), one per block, as the paper initialises
    them, drawn from a generator of their own: both networks of one seed start from the very
    same weights (and draw the same stochastic depth), so they compare paired by seed.
    ``mode`` "drop" or "noise" adds stochastic depth with p_L = ``survival``."""
    torch.manual_seed(seed)
    options = {}
    if net == "LM-ResNet":
        gen = torch.Generator().manual_seed(10_000 + seed)
        kappa = per_block(lambda n: torch.empty(()).uniform_(-0.1, 0.0, generator=gen))
        options["params"] = {"κ": kappa}
    if mode != "none":
        options.update(survival=survival, stochastic=mode)
    return staged(
        schemes[NETWORKS[net]], [tuple(st) for st in stages], in_channels=1,
        num_classes=digits.CLASSES, backend="torch", **options,
    )  # fmt: skip


def _kappas(m: nn.Module) -> list[float]:
    return [
        float(block.coefficients.value("κ").detach())
        for stage in m.stages
        for block in stage.blocks
        if "kappa" in block.coefficients.names
    ]


def jobs(s: Settings, seeds: int) -> list[Job]:
    """One job per network, stochastic-depth mode and seed."""
    data: list[digits.Data] = []  # loaded by the first job, shared by the others

    def job(net: str, mode: str, seed: int) -> Job:
        def run(advance):
            if not data:
                data.append(digits.images(digits.load(0)))
            m = model(net, mode, stages=s.stages, survival=s.survival, seed=seed)
            digits.train(
                m, data[0], epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, seed=seed,
                after_epoch=advance,
            )  # fmt: skip
            train_loss, _ = digits.evaluate(m, *data[0].train)
            val_loss, val_acc = digits.evaluate(m, data[0].x_val, data[0].y_val)
            kappas = _kappas(m)
            return [
                {
                    "network": net, "stochastic": mode, "seed": seed, "params": digits.count(m),
                    "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_acc,
                    "kappa_mean": sum(kappas) / len(kappas) if kappas else None,
                }
            ]  # fmt: skip

        return Job(f"{net}, stochastic depth {mode}, seed {seed}", s.epochs, run)

    return [job(net, mode, seed) for mode in MODES for net in NETWORKS for seed in range(seeds)]


HEADER = ("stochastic depth", "network", "params", "val accuracy", "val loss", "train loss",
          "learnt κ (mean)")  # fmt: skip


def _rows(result: Result) -> list[list[str]]:
    runs, rows = result.runs, []
    for mode in MODES:
        for net in NETWORKS:
            where = {"network": net, "stochastic": mode}
            kappa = [r["kappa_mean"] for r in select(runs, **where) if r["kappa_mean"] is not None]
            rows.append(
                [
                    mode,
                    net,
                    str(select(runs, **where)[0]["params"]),
                    str(of(runs, "val_accuracy", **where)),
                    str(of(runs, "val_loss", **where)),
                    of(runs, "train_loss", **where).format(4),
                    str(harness.stat(kappa)) if kappa else "-",
                ]
            )
    return rows


def console(result: Result) -> tuple[tuple[str, ...], list[list[str]]]:
    """The table the command prints: header and rows."""
    return HEADER, _rows(result)


def section(result: Result) -> str:
    """The Markdown section of docs/experiments.md, from ``result`` alone."""
    s, runs = result.settings, result.runs
    stages = ", ".join(f"{w} channels × {d} blocks" for w, d in s["stages"])
    verdicts = []
    for mode in MODES:
        lm = of(runs, "val_accuracy", network="LM-ResNet", stochastic=mode)
        res = of(runs, "val_accuracy", network="ResNet", stochastic=mode)
        lm_loss = of(runs, "val_loss", network="LM-ResNet", stochastic=mode)
        res_loss = of(runs, "val_loss", network="ResNet", stochastic=mode)
        pair = {"stochastic": mode}
        acc_diff = harness.paired(
            runs, "val_accuracy", {"network": "LM-ResNet", **pair}, {"network": "ResNet", **pair}
        )
        loss_diff = harness.paired(
            runs, "val_loss", {"network": "LM-ResNet", **pair}, {"network": "ResNet", **pair}
        )
        verdicts.append(
            f"- stochastic depth {mode}: LM-ResNet vs ResNet, validation accuracy "
            f"{lm.versus(res)}, paired LM-ResNet − ResNet {acc_diff.signed()}; validation "
            f"loss {lm_loss.versus(res_loss)}, paired {loss_diff.signed()}."
        )
    for net in NETWORKS:
        none = of(runs, "val_accuracy", network=net, stochastic="none")
        for mode in MODES[1:]:
            with_sd = of(runs, "val_accuracy", network=net, stochastic=mode)
            verdicts.append(
                f"- {net}, stochastic depth {mode} vs none: validation accuracy "
                f"{with_sd.versus(none)}."
            )
    return "\n".join(
        [
            f"## (b) {TITLE} (`unroll experiment {NAME}`)",
            "",
            "Lu, Zhong, Li and Dong (ICML 2018, arXiv 1710.10121) read ResNet as forward Euler "
            "and build LM-ResNet from a linear two-step scheme, "
            "x_{n+1} = (1 − κ_n) x_n + κ_n x_{n−1} + f(x_n), with one trainable κ_n per block "
            "(initialised U(−0.1, 0)); they report lower CIFAR error for LM-ResNet than for "
            "ResNet of the same depth, and read stochastic depth as a stochastic differential "
            "equation. Here both are `unroll.nn.staged` classifiers of the bundled schemes "
            "`forward_euler` and `lm_resnet` with the same stages "
            f"({stages}; ResNet's basic branch conv3×3 → BatchNorm → ReLU → conv3×3 → BatchNorm, "
            "a stride-2 transition between stages, conv stem and average-pool head), so their "
            "parameters differ only by the κ_n. Stochastic depth (`survival=`) keeps block n of "
            f"L with p_n = 1 − (n/L)(1 − p_L), p_L = {s['survival']}, per stage: `drop` "
            "multiplies each branch by η ~ Bernoulli(p_n) per sample, `noise` by "
            "η = p_n + √(p_n(1 − p_n)) ξ with ξ ~ N(0, 1) (the SDE reading); evaluation uses "
            "η = p_n. scikit-learn's digits as 1×8×8 images (1,348 train, 449 validation, one "
            f"split), {s['epochs']} epochs of Adam (lr {s['lr']}, batches of {s['batch_size']}), "
            f"{result.seeds} seeds (initialisation, κ_n, batch order and the stochastic depth "
            "draws); the two networks of a seed start from the same weights and see the same "
            "batches and draws, so their difference is also given paired by seed.",
            "",
            f"{harness.provenance(result)} Mean ± standard deviation over seeds.",
            "",
            harness.table(HEADER, _rows(result)),
            "",
            f"![validation accuracy and loss](experiments/{NAME}.png)",
            "",
            "**Verdict** (a difference counts when the intervals mean ± std do not overlap):",
            "",
            *verdicts,
        ]
    )


def plot(result: Result, path: Path) -> None:
    """Validation accuracy and loss by stochastic-depth mode and network, mean ± std over
    seeds: ``path`` PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result.runs
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, (net, marker) in enumerate(zip(NETWORKS, "os", strict=True)):
        xs = [m + (i - 0.5) * 0.2 for m in range(len(MODES))]
        for ax, metric in zip(axes, ("val_accuracy", "val_loss"), strict=True):
            st = [of(runs, metric, network=net, stochastic=mode) for mode in MODES]
            ax.errorbar(xs, [x.mean for x in st], yerr=[x.std for x in st], fmt=marker,
                        capsize=3, label=net, color=f"C{i}")  # fmt: skip
            for x, mode in zip(xs, MODES, strict=True):
                seeds = [r[metric] for r in select(runs, network=net, stochastic=mode)]
                ax.plot([x + 0.06] * len(seeds), seeds, ".", color="0.6", markersize=4)
    for ax, label in zip(axes, ("validation accuracy", "validation loss"), strict=True):
        ax.set_xticks(range(len(MODES)), [f"stochastic depth: {m}" for m in MODES], fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(f"digits (1×8×8): ResNet against LM-ResNet, {result.seeds} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
