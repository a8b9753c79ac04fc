"""`unroll docs`: regenerate docs/schemes.md and the stability-region figure from the analyses."""

from __future__ import annotations

from pathlib import Path

import click

from unroll.analysis import report


@click.command("docs")
@click.option(
    "--out",
    default=None,
    type=click.Path(file_okay=False),
    help="Directory (default: the project's docs/).",
)
@click.option("--no-figures", is_flag=True, help="Write the Markdown only.")
def command(out: str | None, no_figures: bool) -> None:
    """Write schemes.md (every bundled scheme with its analyses) and stability.png."""

    for path in report.write(Path(out) if out else report.DOCS, figures=not no_figures):
        click.echo(str(path))
