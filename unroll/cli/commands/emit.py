"""`unroll emit SCHEME [-o DIR]`: write the Triton kernel module of a scheme's block update."""

from __future__ import annotations

from pathlib import Path

import click

from unroll.errors import UnrollError
from unroll.frontend.library import resolve
from unroll.frontend.library import schemes as bundled
from unroll.ir.activations import get
from unroll.lowering.triton.emit import write
from unroll.lowering.triton.resources import emit_report


@click.command("emit")
@click.argument("schemes", nargs=-1)
@click.option(
    "-o",
    "--output",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory to write <scheme>.py into.",
)
@click.option("--activation", default=None, help="φ for a layer scheme (default: the scheme's).")
@click.option("--all", "every", is_flag=True, help="Every bundled scheme (as kernels/ holds them).")
@click.option(
    "--target", default=None,
    help="Also compile the module's kernels for this GPU (sm_90a, sm_80; no GPU needed) and "
    "report registers, spills, shared memory, warps and tensor cores per launch shape.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="With --target: the report as JSON.")
def command(
    schemes: tuple[str, ...],
    directory: Path,
    activation: str | None,
    every: bool,
    target: str | None,
    as_json: bool,
) -> None:
    """Write the fused forward/backward Triton module of each SCHEME (a bundled name, a YAML
    file or scheme text) and print the equations it implements."""

    specs = list(bundled) if every else list(schemes)
    if not specs:
        raise UnrollError("name a scheme to emit (or pass --all)")
    if activation is not None:
        get(activation)  # an unknown name is an error even for a scheme that uses no φ
    for spec in specs:
        block, path = write(resolve(spec), directory, activation)
        click.echo(f"wrote {path}", err=as_json)
        for line in block.describe().splitlines():
            click.echo(f"  {line}", err=as_json)
    if target is not None:
        click.echo(emit_report(specs, target, as_json, activation))
