"""`unroll list`: the bundled schemes, one line each."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from unroll.frontend.library import schemes


@click.command("list")
def command() -> None:
    """List the bundled schemes: name, kind and description."""

    table = Table(box=None, show_header=True, header_style="bold")
    for column in ("scheme", "kind", "description"):
        table.add_column(column)
    for name, scheme in schemes.items():
        table.add_row(name, scheme.kind, scheme.description)
    Console().print(table)
