"""Experiment (c): residual networks of higher-order Runge–Kutta schemes (Heun, midpoint, RK4)
against forward Euler (ResNet), at equal parameters and at equal evaluations of the branch f,
on two spirals (`unroll.experiments.harness.spirals`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from unroll.experiments import harness
from unroll.experiments.harness import Job, Result, of, select
from unroll.frontend.library import schemes
from unroll.ir.step import build
from unroll.lowering.nn.modules import Network, network

NAME = "order"
TITLE = "Higher-order schemes against Euler"
SEEDS = 5  # cheap runs with a wide spread: more seeds
SCHEMES = ("forward_euler", "heun", "midpoint", "rk4")
# How each comparison sets the number of steps and h (T = the horizon, E = the evaluations).
COMPARISONS = {
    "equal parameters": "untied, `blocks` steps of h = 1 for every scheme: one f per block, "
    "so equal parameters, and s evaluations of f per step for an s-stage scheme",
    "equal evaluations": "untied, E / s steps of h = 1: every network evaluates f E times, "
    "Euler with the most blocks (and parameters)",
    "tied, equal evaluations": "one f shared by every step (an ODE x' = f(x) on [0, T]), E / s "
    "steps of h = T s / E: equal parameters and equal evaluations",
}


def stages(scheme: str) -> int:
    """Evaluations of f per step of ``scheme`` (the branch calls of its step IR)."""
    return sum(1 for c in build(schemes[scheme], layer=True).calls if c.kind == "branch")


@dataclass(frozen=True)
class Settings:
    blocks: int = 4  # steps of the equal-parameter networks; the horizon T (h = 1 each)
    width: int = 8
    hidden: int = 32
    turns: float = 2.0
    noise: float = 0.1
    points: int = 1000  # for training, and as many for validation
    epochs: int = 40
    batch_size: int = 100
    lr: float = 1e-2

    @classmethod
    def tiny(cls) -> Settings:
        return cls(blocks=1, width=4, hidden=4, points=64, epochs=1, batch_size=32)


def plan(s: Settings) -> list[tuple[str, str, int, float, bool]]:
    """(comparison, scheme, steps, h, tied) of every network."""
    evaluations = s.blocks * max(stages(n) for n in SCHEMES)
    out = []
    for scheme in SCHEMES:
        per = stages(scheme)
        out.append(("equal parameters", scheme, s.blocks, 1.0, False))
        out.append(("equal evaluations", scheme, evaluations // per, 1.0, False))
        out.append(
            ("tied, equal evaluations", scheme, evaluations // per, s.blocks * per / evaluations,
             True)
        )  # fmt: skip
    return out


def model(scheme: str, steps: int, h: float, tied: bool, s: Settings, seed: int) -> Network:
    """Linear stem 2 → width, ``steps`` steps of ``scheme`` with step ``h`` and branch
    f = Linear(width, hidden) → tanh → Linear(hidden, width) (one per step, or one shared
    when ``tied``), Linear head width → 2. Maps (n, 2) to (n, 2) logits."""
    torch.manual_seed(seed)

    def branch() -> nn.Module:
        return nn.Sequential(nn.Linear(s.width, s.hidden), nn.Tanh(), nn.Linear(s.hidden, s.width))

    return network(
        schemes[scheme], steps, dim=s.width, in_dim=2, out_dim=2, f=branch, tied=tied,
        params={"h": h}, backend="torch",
    )  # fmt: skip


def jobs(s: Settings, seeds: int) -> list[Job]:
    """One job per comparison, scheme and seed."""
    data = harness.spirals(s.points, s.points, turns=s.turns, noise=s.noise, seed=0)

    def job(comparison, scheme, steps, h, tied, seed) -> Job:
        def run(advance):
            m = model(scheme, steps, h, tied, s, seed)
            harness.train(
                m, data, epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, seed=seed,
                after_epoch=advance,
            )  # fmt: skip
            train_loss, _ = harness.evaluate(m, *data.train)
            val_loss, val_acc = harness.evaluate(m, data.x_val, data.y_val)
            return [
                {
                    "comparison": comparison, "scheme": scheme, "steps": steps, "h": h,
                    "tied": tied, "seed": seed, "params": harness.count(m),
                    "evaluations": steps * stages(scheme), "train_loss": train_loss,
                    "val_loss": val_loss, "val_accuracy": val_acc,
                }
            ]  # fmt: skip

        return Job(f"{comparison}: {scheme}, {steps} steps, seed {seed}", s.epochs, run)

    return [job(*p, seed) for p in plan(s) for seed in range(seeds)]


HEADER = ("comparison", "scheme", "steps", "h", "params", "f evaluations", "val accuracy",
          "val loss", "train loss")  # fmt: skip


def _rows(result: Result) -> list[list[str]]:
    runs, rows = result.runs, []
    for comparison in COMPARISONS:
        for scheme in SCHEMES:
            where = {"comparison": comparison, "scheme": scheme}
            first = select(runs, **where)[0]
            rows.append(
                [
                    comparison,
                    scheme,
                    str(first["steps"]),
                    f"{first['h']:g}",
                    str(first["params"]),
                    str(first["evaluations"]),
                    str(of(runs, "val_accuracy", **where)),
                    str(of(runs, "val_loss", **where)),
                    str(of(runs, "train_loss", **where)),
                ]
            )
    return rows


def console(result: Result) -> tuple[tuple[str, ...], list[list[str]]]:
    """The table the command prints: header and rows."""
    return HEADER, _rows(result)


def section(result: Result) -> str:
    """The Markdown section of docs/experiments.md, from ``result`` alone."""
    s, runs = result.settings, result.runs
    evaluations = max(r["evaluations"] for r in select(runs, comparison="equal evaluations"))
    verdicts = []
    for comparison in COMPARISONS:
        euler = of(runs, "val_accuracy", comparison=comparison, scheme="forward_euler")
        parts = []
        for scheme in SCHEMES[1:]:
            mine = of(runs, "val_accuracy", comparison=comparison, scheme=scheme)
            diff = harness.paired(
                runs, "val_accuracy", {"comparison": comparison, "scheme": scheme},
                {"comparison": comparison, "scheme": "forward_euler"},
            )  # fmt: skip
            parts.append(f"{scheme} vs Euler {mine.versus(euler)}, paired {diff.signed()}")
        verdicts.append(f"- {comparison} (validation accuracy): " + "; ".join(parts) + ".")
    how = "; ".join(f"**{k}**: {v}" for k, v in COMPARISONS.items())
    return "\n".join(
        [
            f"## (c) {TITLE} (`unroll experiment {NAME}`)",
            "",
            "A residual network is forward Euler on x' = f(x); a Runge–Kutta scheme of s stages "
            "evaluates its branch f s times per step (Heun and midpoint 2, RK4 4). Each network "
            f"here is a Linear stem 2 → {s['width']}, steps of the bundled scheme with "
            f"f = Linear({s['width']}, {s['hidden']}) → tanh → Linear({s['hidden']}, "
            f"{s['width']}), and a Linear head {s['width']} → 2 (`Scheme.network(..., in_dim=2, "
            f"out_dim=2)`); blocks = T = {s['blocks']}, E = {evaluations}. The comparisons: "
            f"{how}.",
            "",
            f"Data: two spirals, generated (`unroll.experiments.harness.spirals`): a point is "
            "t = √u with u ~ U(0, 1) and a class c ∈ {0, 1}, at "
            f"2t (cos θ, sin θ) + {s['noise']}·N(0, I) with θ = 2π·{s['turns']:g}·t + π·c "
            f"({s['turns']:g} turns per arm, radius 2); {s['points']} training and "
            f"{s['points']} validation points, one draw. {s['epochs']} epochs of Adam "
            f"(lr {s['lr']}, batches of {s['batch_size']}), {result.seeds} seeds "
            "(initialisation and batch order).",
            "",
            f"{harness.provenance(result)} Mean ± standard deviation over seeds.",
            "",
            harness.table(HEADER, _rows(result), "llrrrrrrr"),
            "",
            f"![validation accuracy by scheme and comparison](experiments/{NAME}.png)",
            "",
            "**Verdict** (a difference counts when the intervals mean ± std do not overlap; "
            "`paired` is the scheme's accuracy minus Euler's of the same seed, which starts "
            "from the same weights where the two networks have the same shape and sees the "
            "same batches):",
            "",
            *verdicts,
        ]
    )


def plot(result: Result, path: Path) -> None:
    """Validation accuracy by scheme, one panel per comparison, mean ± std over seeds (with
    each seed's value): ``path`` PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result.runs
    fig, axes = plt.subplots(1, len(COMPARISONS), figsize=(11, 3.6), sharey=True)
    for ax, comparison in zip(axes, COMPARISONS, strict=True):
        labels = []
        for i, scheme in enumerate(SCHEMES):
            mine = select(runs, comparison=comparison, scheme=scheme)
            st = harness.stat(r["val_accuracy"] for r in mine)
            ax.errorbar([i], [st.mean], yerr=[st.std], fmt="o", capsize=4, color="C0")
            ax.plot([i] * len(mine), [r["val_accuracy"] for r in mine], ".", color="0.5")
            labels.append(f"{scheme}\n{mine[0]['steps']} steps\n{mine[0]['params']} params")
        ax.set_xticks(range(len(SCHEMES)), labels, fontsize=7)
        ax.set_title(comparison, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("validation accuracy")
    fig.suptitle(f"two spirals: Runge–Kutta schemes against Euler, {result.seeds} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
