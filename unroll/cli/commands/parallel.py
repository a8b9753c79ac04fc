"""``unroll parallel``: deep residual stack against its wide parallel form, on the digits.

For each depth K and seed, one residual network is built; its wide form (``unroll.parallelize``
at ``--order``, branches copied) starts from the very same weights. Both are trained with the
same optimiser, batches and epochs. Prints a table; ``--out DIR`` writes DIR/parallel.md and
DIR/parallel.png.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from unroll.errors import UnrollError
from unroll.experiments import digits
from unroll.experiments.deep_parallel import (
    LAYOUTS,
    Run,
    experiment,
    markdown,
    plot_runs,
    summary,
)

__all__ = ["LAYOUTS", "Run", "command", "experiment", "summary"]


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
        plot_runs(runs, out / "parallel.png")
        (out / "parallel.md").write_text(markdown(runs, digits.command_line(), where, order))
        click.echo(f"wrote {out / 'parallel.png'} and {out / 'parallel.md'}")
