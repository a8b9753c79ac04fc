"""The ``unroll`` command line.

Each command lives in its own module under ``unroll/cli/commands/`` and exposes ``command`` (a
click command). The group knows them from the static table `COMMANDS` (name, module, one-line
help) and imports a command's module only when that command runs, so ``unroll --help`` and
``unroll list`` start without importing torch. A new command is a module plus a row here.

Bad input (an `UnrollError`) is printed on stderr after ``error: `` and exits with status 2; a
message that points into scheme text or a file keeps the caret lines under its first line.
"""

from __future__ import annotations

import importlib

import click

from unroll.errors import UnrollError

# name -> (module, the one-line help `unroll --help` shows without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "docs": (
        "unroll.cli.commands.docs",
        "Write docs/schemes.md (every bundled scheme with its analyses) and stability.png.",
    ),
    "emit": (
        "unroll.cli.commands.emit",
        "Write the fused forward/backward Triton module of each scheme.",
    ),
    "experiment": (
        "unroll.cli.commands.experiment",
        "Run an experiment (the papers' claims on small data) and write its part of "
        "docs/experiments.md.",
    ),
    "grow": (
        "unroll.cli.commands.grow",
        "Train a small network on the digits and grow it by splitting (S2D and signed).",
    ),
    "inspect": (
        "unroll.cli.commands.inspect",
        "Report every analysis of a scheme: order, stability, modified equation, rates, objective.",
    ),
    "kernels": (
        "unroll.cli.commands.kernels",
        "Compile kernels ahead of time for a GPU target and report registers, spills, "
        "shared memory and tensor cores.",
    ),
    "list": ("unroll.cli.commands.list", "List the bundled schemes: name, kind and description."),
    "objective": (
        "unroll.cli.commands.objective",
        "Derive the convex objective F whose descent a φ-layer performs, for an activation.",
    ),
    "parallel": (
        "unroll.cli.commands.parallel",
        "Train a deep residual stack and its wide parallel form from the same start.",
    ),
    "show": (
        "unroll.cli.commands.show",
        "Show a scheme's equations, states, parameters, architecture and network layer.",
    ),
}


class LazyGroup(click.Group):
    """A click group whose commands are the rows of `COMMANDS`, imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """The command ``name`` from its module; None for a name not in the table."""
        if name not in COMMANDS:
            return None
        module_name = COMMANDS[name][0]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise  # the module exists; something it imports is missing
            ctx.fail(f"the command {name!r} is listed but its module {module_name} is missing")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands section of ``--help``, from the table alone (no command is imported)."""
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UnrollError as e:
            # The message names the symbol, key or column at fault; when it points into text,
            # the text and a caret under the column follow on two more lines.
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="unroll")
def cli() -> None:
    """unroll: compile iteration schemes into networks, analyses and Triton kernels."""


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="unroll")
