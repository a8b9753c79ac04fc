"""``unroll experiment NAME``: one paper's claim (or one pass of unroll) measured on small data,
several seeds, mean ± std; writes a plot, the numbers and its section of docs/experiments.md.

NAME is one of momentum (Li et al.: feedforward vs HB-Net vs AGD-Net), multistep (Lu et al.:
ResNet vs LM-ResNet, stochastic depth), order (Runge–Kutta schemes vs Euler), grow (signed vs
positive splitting), parallel (deep vs parallel), or all of them in turn.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from unroll.errors import UnrollError
from unroll.experiments import catalogue
from unroll.experiments.harness import Result


@click.command("experiment")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--seeds", type=int, default=None,
              help="Seeds per configuration, at least 2  [default: the experiment's, 3 to 10]")  # fmt: skip
@click.option("--tiny", is_flag=True,
              help="Seconds-long sizes that check the plumbing; the numbers mean nothing, and "
                   "nothing is written unless --out is given.")  # fmt: skip
@click.option("--stored", is_flag=True,
              help="Train nothing: write the section and the plot again from the stored "
                   "results in OUT/experiments/NAME.json.")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of experiments.md and experiments/NAME.{json,png}  [default: docs]")  # fmt: skip
def command(
    names: tuple[str, ...], seeds: int | None, tiny: bool, stored: bool, out: Path | None
) -> None:
    """Run experiments (NAME: momentum, multistep, order, grow, parallel or all)."""

    chosen = list(catalogue.EXPERIMENTS) if "all" in names else list(dict.fromkeys(names))
    for name in chosen:
        catalogue.settings(name)  # an unknown name fails before anything trains
    if stored and (tiny or seeds is not None):
        raise UnrollError("--stored trains nothing: it takes no --tiny or --seeds")
    folder = out if out is not None else (None if tiny else Path("docs"))
    console = Console()
    for name in chosen:
        if stored:
            path = folder / "experiments" / f"{name}.json"
            if not path.exists():
                raise UnrollError(f"no stored results for {name!r}: {path} does not exist")
            result = Result.load(path)
        else:
            result = catalogue.run(name, seeds=seeds, tiny=tiny)
        header, rows = catalogue.console_table(result)
        title = catalogue.EXPERIMENTS[name].TITLE
        table = Table(title=f"{title}: mean ± std over {result.seeds} seeds")
        for h in header:
            table.add_column(h)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        console.print(
            f"{name}: {len(result.runs)} runs in {result.wall_s:.0f} s "
            f"({result.cpu_s:.0f} s of CPU time)"
        )
        if folder is not None:
            paths = catalogue.write(result, folder)
            console.print("wrote " + ", ".join(str(p) for p in paths))
