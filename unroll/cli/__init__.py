"""The ``unroll`` command line.

Each command lives in its own module under ``unroll/commands/`` and exposes ``command``
(a click command); this file only gathers them. Bad input is one line on stderr and exit 2.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

from unroll.cli import commands
from unroll.errors import UnrollError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UnrollError as e:
            # One line: the message names the symbol, key or column at fault.
            click.echo(f"error: {str(e).splitlines()[0]}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="unroll")
def cli() -> None:
    """unroll: compile iteration schemes into networks, analyses and Triton kernels."""


for _info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
    _module = importlib.import_module(f"{commands.__name__}.{_info.name}")
    cli.add_command(_module.command)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="unroll")
