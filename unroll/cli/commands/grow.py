"""``unroll grow``: train a small network on the digits, then grow its width by splitting.

Each method starts from the same trained network and runs ``rounds`` of (split, retrain for
``epochs``); "none" retrains without splitting, the control for the extra training. Prints
validation accuracy against parameter count; ``--out DIR`` also writes DIR/grow.png and
DIR/grow.md.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from unroll.errors import UnrollError
from unroll.experiments import digits
from unroll.experiments.growing import METHODS, Row, experiment, markdown, plot_rows
from unroll.experiments.splitting import check_options

__all__ = ["METHODS", "Row", "command", "experiment"]


@click.command("grow")
@click.option("--rounds", default=4, show_default=True, help="Split-and-retrain rounds.")
@click.option("--epochs", default=15, show_default=True, help="Epochs before and after each split.")
@click.option("--scheme", default="forward_euler", show_default=True,
              help="Bundled ODE scheme whose network (with a tanh branch f) is grown.")  # fmt: skip
@click.option("--depth", default=2, show_default=True, help="Steps (blocks) of the scheme.")
@click.option("--width", default=6, show_default=True, help="Width of the state x.")
@click.option("--hidden", default=2, show_default=True, help="Initial hidden width of each f.")
@click.option("--fraction", default=0.5, show_default=True, help="Share of neurons that may split.")
@click.option("--eps", default=0.01, show_default=True, help="Offset size ε.")
@click.option("--lr", default=1e-2, show_default=True, help="Adam learning rate.")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--exact/--matrix-free", default=True, show_default=True,
    help="Form each splitting matrix, or use S·v products only.",
)  # fmt: skip
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Write grow.png and grow.md into this folder.",
)  # fmt: skip
def command(
    rounds, epochs, scheme, depth, width, hidden, fraction, eps, lr, seed, exact, out
) -> None:
    """Train a small network on the digits and grow it by splitting (S2D and signed)."""

    check_options(fraction=fraction, eps=eps)
    if rounds < 0:
        raise UnrollError(f"--rounds must be 0 or more, got {rounds}")
    digits.check_sizes({"epochs": epochs, "depth": depth, "width": width, "hidden": hidden}, lr)
    with digits.progress(epochs * (1 + rounds * len(METHODS))) as advance:
        rows = experiment(
            lambda: digits.scheme_net(scheme, depth, width, hidden, seed),  # the model
            rounds=rounds, epochs=epochs, fraction=fraction, eps=eps, lr=lr, seed=seed,
            exact=exact, advance=advance,
        )  # fmt: skip
    where = digits.machine()

    table = Table(title="digits: validation accuracy against parameter count")
    for col in ("method", "round", "params", "splits", "predicted", "train loss", "val acc"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(
            r.method, str(r.round), str(r.params), str(r.splits), f"{r.predicted_change:.2e}",
            f"{r.train_loss:.4f}", f"{r.val_accuracy:.4f}",
        )  # fmt: skip
    Console().print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        plot_rows(rows, out / "grow.png")
        (out / "grow.md").write_text(markdown(rows, digits.command_line(), where, scheme))
        click.echo(f"wrote {out / 'grow.png'} and {out / 'grow.md'}")
