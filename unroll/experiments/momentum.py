"""Experiment (a), after Li, Yang, Chen and Lin (ACML 2018, arXiv 1810.01638): the feedforward
layer φ(W x_k + b) against the heavy-ball layer (HB-Net) φ(W x_k + b + β(x_k − x_{k−1})) and
the accelerated layer (AGD-Net) φ(W(x_k + β(x_k − x_{k−1})) + b), with the residual layer
x_k + φ(W x_k + b) (ResNet) as the reference, at several depths, tied (one W, b and β for
every layer) and untied, with the weight initialisation as a factor, on scikit-learn's digits
as vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from unroll.experiments import digits, harness
from unroll.experiments.harness import Job, Result, of, select
from unroll.frontend.library import schemes
from unroll.lowering.nn.modules import Network, network

NAME = "momentum"
TITLE = "Feedforward against HB-Net and AGD-Net (Li et al. 2018)"
SEEDS = 3
# The networks, by the name the paper gives them, and the bundled scheme of each.
NETWORKS = {
    "feedforward": "gradient_descent",
    "ResNet": "forward_euler",
    "HB-Net": "hb_net",
    "AGD-Net": "agd_net",
}
INIT_TEXT = {
    "default": "keeps PyTorch's nn.Linear initialisation U(−1/√n, 1/√n)",
    "kaiming": "is He's normal (fan in, gain √2)",
    "xavier": "is Glorot's uniform",
    "orthogonal": "is a random orthogonal matrix",
    "zeros": "zeroes the last layer of a residual branch",
}
CHANCE = 0.2  # a run below this validation accuracy learnt nothing (10 classes: chance is 0.1)


@dataclass(frozen=True)
class Settings:
    depths: tuple[int, ...] = (4, 16, 32)
    inits: tuple[str, ...] = ("default", "kaiming", "orthogonal")
    width: int = 32
    epochs: int = 24
    batch_size: int = 256
    lr: float = 3e-3

    @classmethod
    def tiny(cls) -> Settings:
        return cls(depths=(2, 3), inits=("default", "kaiming"), width=8, epochs=1)


def model(net: str, depth: int, *, width: int, tied: bool, init: str, seed: int) -> Network:
    """64 → width (a Linear stem), ``depth`` layers of the scheme of ``net`` with φ = ReLU, a
    dense W and a bias b (the scheme's β starts at 0.5, trainable in [0, 1]; ResNet's layer is
    forward Euler with h = 1 and the branch f = ReLU ∘ Linear, so it has the feedforward
    layer's parameters), width → 10 (a Linear head); ``init`` applies to the layers' W (the
    stem and head keep PyTorch's initialisation). Maps (n, 64) to (n, 10) logits."""
    torch.manual_seed(seed)
    scheme = schemes[NETWORKS[net]]
    if scheme.kind == "ode":
        options = {"f": lambda: nn.Sequential(nn.Linear(width, width), nn.ReLU())}
    else:
        options = {"activation": "relu"}
    return network(
        scheme, depth, dim=width, in_dim=digits.FEATURES, out_dim=digits.CLASSES, tied=tied,
        init=init, backend="torch", **options,
    )  # fmt: skip


def jobs(s: Settings, seeds: int) -> list[Job]:
    """One job per network, depth, tying, init and seed."""
    data: list[digits.Data] = []  # loaded by the first job, shared by the others

    def job(net: str, depth: int, tied: bool, init: str, seed: int) -> Job:
        def run(advance):
            if not data:
                data.append(digits.load(0))
            m = model(net, depth, width=s.width, tied=tied, init=init, seed=seed)
            digits.train(
                m, data[0], epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, seed=seed,
                after_epoch=advance,
            )  # fmt: skip
            train_loss, _ = digits.evaluate(m, *data[0].train)
            val_loss, val_acc = digits.evaluate(m, data[0].x_val, data[0].y_val)
            return [
                {
                    "network": net, "depth": depth, "tied": tied, "init": init, "seed": seed,
                    "params": digits.count(m), "train_loss": train_loss, "val_loss": val_loss,
                    "val_accuracy": val_acc,
                }
            ]  # fmt: skip

        tying = "tied" if tied else "untied"
        return Job(f"{net}, depth {depth}, {tying}, init {init}, seed {seed}", s.epochs, run)

    return [
        job(net, depth, tied, init, seed)
        for tied in (False, True)
        for init in s.inits
        for depth in s.depths
        for net in NETWORKS
        for seed in range(seeds)
    ]


def _tables(result: Result) -> list[str]:
    s, runs, out = result.settings, result.runs, []
    for tied in (False, True):
        rows = []
        for depth in s["depths"]:
            for net in NETWORKS:
                where = {"network": net, "depth": depth, "tied": tied}
                rows.append(
                    [
                        str(depth),
                        net,
                        str(select(runs, **where)[0]["params"]),
                        *(str(of(runs, "val_accuracy", init=i, **where)) for i in s["inits"]),
                    ]
                )
        header = ["depth", "network", "params", *(f"init {i}" for i in s["inits"])]
        out.append(("**Tied**" if tied else "**Untied**") + " (validation accuracy):")
        out.append("")
        out.append(harness.table(header, rows, "rl" + "r" * (len(header) - 2)))
        out.append("")
    return out


def console(result: Result) -> tuple[tuple[str, ...], list[list[str]]]:
    """The table the command prints: header and rows (validation accuracy)."""
    s, runs = result.settings, result.runs
    rows = []
    for tied in (False, True):
        for depth in s["depths"]:
            for net in NETWORKS:
                where = {"network": net, "depth": depth, "tied": tied}
                rows.append(
                    [
                        "tied" if tied else "untied",
                        str(depth),
                        net,
                        *(str(of(runs, "val_accuracy", init=i, **where)) for i in s["inits"]),
                    ]
                )
    return ("W", "depth", "network", *s["inits"]), rows


def _verdicts(result: Result) -> list[str]:
    s, runs = result.settings, result.runs
    deepest = max(s["depths"])
    lines = []
    for init in s["inits"]:
        for tied in (False, True):
            where = {"depth": deepest, "tied": tied, "init": init}
            ff = of(runs, "val_accuracy", network="feedforward", **where)
            others = "; ".join(
                f"{net} vs feedforward {of(runs, 'val_accuracy', network=net, **where).versus(ff)}"
                for net in NETWORKS
                if net != "feedforward"
            )
            lines.append(
                f"- depth {deepest}, {'tied' if tied else 'untied'}, init {init}: {others}."
            )
    lines += ["", "By initialisation, over every network, depth and tying:", ""]
    rows = []
    for init in s["inits"]:
        mine = select(runs, init=init)
        deep = [r for r in mine if r["depth"] > min(s["depths"])]
        failed = [r for r in mine if r["val_accuracy"] < CHANCE]
        best = sum(
            1
            for tied in (False, True)
            for depth in s["depths"]
            for net in NETWORKS
            if max(
                s["inits"],
                key=lambda i, w={"network": net, "depth": depth, "tied": tied}: (
                    of(runs, "val_accuracy", init=i, **w).mean
                ),
            )
            == init
        )
        rows.append(
            [
                init,
                f"{harness.stat(r['val_accuracy'] for r in mine).mean:.3f}",
                f"{harness.stat(r['val_accuracy'] for r in deep).mean:.3f}" if deep else "-",
                f"{len(failed)} of {len(mine)}",
                f"{best} of {2 * len(s['depths']) * len(NETWORKS)}",
            ]
        )
    lines.append(
        harness.table(
            [
                "init",
                "mean val accuracy",
                f"mean at depth > {min(s['depths'])}",
                f"runs below {CHANCE:.0%}",
                "configurations where best",
            ],
            rows,
        )
    )
    return lines


def section(result: Result) -> str:
    """The Markdown section of docs/experiments.md, from ``result`` alone."""
    s = result.settings
    return "\n".join(
        [
            f"## (a) {TITLE} (`unroll experiment {NAME}`)",
            "",
            "Li, Yang, Chen and Lin (ACML 2018, arXiv 1810.01638) read the feedforward layer as "
            "a gradient step on a layer objective, and the heavy-ball and Nesterov steps as "
            "layers with a skip connection to x_{k−1}: HB-Net "
            "x_{k+1} = φ(W x_k + b + β(x_k − x_{k−1})) and AGD-Net "
            "x_{k+1} = φ(W(x_k + β(x_k − x_{k−1})) + b); the residual layer "
            "x_{k+1} = x_k + φ(W x_k + b) (ResNet, forward Euler with h = 1 and the branch "
            "f = ReLU ∘ Linear: the feedforward layer's parameters) is the reference. "
            "Here: the bundled schemes "
            + ", ".join(f"`{v}` ({k})" for k, v in NETWORKS.items())
            + f", φ = ReLU, width {s['width']}, a Linear stem 64 → {s['width']} and head "
            f"{s['width']} → 10 (PyTorch's initialisation), β starting at 0.5 and trained in "
            "[0, 1]; tied networks share one W, b and β (ResNet: one f) across all layers. "
            "`init` sets every layer's W: "
            + ", ".join(f"`{i}` {INIT_TEXT[i]}" for i in s["inits"])
            + "; biases start at 0 but with `default`. "
            f"scikit-learn's digits as 64-vectors (1,348 train, 449 validation images, one "
            f"split), {s['epochs']} epochs of Adam (lr {s['lr']}, batches of {s['batch_size']}), "
            f"{result.seeds} seeds (initialisation and batch order).",
            "",
            f"{harness.provenance(result)} "
            "Validation accuracy, mean ± standard deviation over seeds.",
            "",
            *_tables(result),
            f"![validation accuracy against depth](experiments/{NAME}.png)",
            "",
            "**Verdict** at the largest depth (a difference counts when the intervals "
            "mean ± std do not overlap):",
            "",
            *_verdicts(result),
        ]
    )


def plot(result: Result, path: Path) -> None:
    """Validation accuracy against depth, one panel per tying and init, one line per
    network, mean ± std over seeds: ``path`` PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, runs = result.settings, result.runs
    inits = s["inits"]
    fig, axes = plt.subplots(
        2, len(inits), figsize=(2.9 * len(inits), 5.2), sharex=True, sharey=True, squeeze=False
    )
    for row, tied in enumerate((False, True)):
        for col, init in enumerate(inits):
            ax = axes[row][col]
            for net, marker in zip(NETWORKS, "oDs^", strict=True):
                st = [
                    of(runs, "val_accuracy", network=net, depth=d, tied=tied, init=init)
                    for d in s["depths"]
                ]
                ax.errorbar(
                    s["depths"], [x.mean for x in st], yerr=[x.std for x in st], marker=marker,
                    capsize=3, label=net,
                )  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_xticks(s["depths"], [str(d) for d in s["depths"]])
            ax.set_title(f"{'tied' if tied else 'untied'}, init {init}", fontsize=9)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("validation accuracy")
            if row == 1:
                ax.set_xlabel("depth")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"digits: feedforward, ResNet, HB-Net and AGD-Net ({result.seeds} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
