"""`unroll kernels --target sm_90a`: compile every kernel for a GPU (no GPU needed) and report
registers, spills, shared memory, warps and tensor-core instructions per launch shape."""

from __future__ import annotations

from pathlib import Path

import click

from unroll.lowering.triton import resources


@click.command("kernels")
@click.option(
    "--target", default="sm_90a", show_default=True, help="The GPU to compile for: sm_90a, sm_80."
)
@click.option(
    "--scheme", "schemes", multiple=True,
    help="Only these bundled schemes (repeatable; default every one).",
)  # fmt: skip
@click.option(
    "--only", type=click.Choice(["block", "tied"]), default=None,
    help="Only the block-update kernels or only the tied-network kernels.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="The reports as JSON.")
@click.option(
    "--write", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Write the generated section of this file (docs/kernels.md) instead of printing: the "
    "tables docs/kernels.md records (or, with --sweep, the launch-shape sweep).",
)  # fmt: skip
@click.option(
    "--sweep", is_flag=True,
    help="Compile the tied kernels at every launch shape of the sweep and show the shape chosen "
    "per width and dtype (minutes).",
)  # fmt: skip
@click.option("-j", "--jobs", type=int, default=None, help="Compiling processes (default: CPUs).")
def command(
    target: str,
    schemes: tuple[str, ...],
    only: str | None,
    as_json: bool,
    write: Path | None,
    sweep: bool,
    jobs: int | None,
) -> None:
    """Compile unroll's Triton kernels ahead of time for TARGET on this machine (a GPU is not
    needed): every bundled scheme's block kernels and the tied network's kernels at each
    supported width and dtype, each at the launch shape it gets on a GPU."""

    tgt = resources.find_target(target)
    if sweep:
        items = resources.sweep_items(dtype="bfloat16")
    elif write is not None and not schemes and only is None:
        items = resources.doc_items()
    else:
        items = resources.inventory(
            schemes or None, blocks=only != "tied", tied_kernels=only != "block"
        )
    reports = resources.compile_items(items, tgt, jobs)
    if write is not None:
        if sweep:
            resources.write_sweep(write, reports, tgt)
        else:
            resources.write_doc(write, reports, tgt)
        click.echo(f"wrote {write}")
    elif as_json:
        click.echo(resources.as_json(reports))
    else:
        resources.print_table(reports, title=f"{len(reports)} kernels compiled for {tgt.name}")
        if sweep:
            click.echo(resources.sweep_markdown(reports))
