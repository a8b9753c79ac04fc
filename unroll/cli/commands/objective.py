"""``unroll objective ACTIVATION``: the convex objective F whose descent a φ-layer performs.

Prints g (with its domain), F and the conditions for the reading to be exact. An activation
that is not a proximal map (gelu, silu, elu(2)) is an error naming the failing condition.
``--table`` prints the Markdown table of docs/objectives.md instead.
"""

from __future__ import annotations

import click
import sympy as sp
from rich.console import Console
from rich.table import Table

from unroll.analysis.objectives import objective, table
from unroll.errors import UnrollError


def conditions_table(obj) -> Table:
    """The conditions of an `Objective` as a rich table: condition, status, how, evidence."""
    table = Table(title="conditions", show_lines=False)
    for col in ("condition", "status", "checked", "evidence"):
        table.add_column(col)
    for c in obj.conditions:
        status = {True: "holds", False: "FAILS", None: "assumed"}[c.holds]
        table.add_row(c.description, status, c.how, c.detail)
    return table


@click.command("objective")
@click.argument("activation", required=False)
@click.option("--latex", is_flag=True, help="Print g and F as LaTeX.")
@click.option("--table", "as_table", is_flag=True, help="Print the docs table of g instead.")
def command(activation: str | None, latex: bool, as_table: bool) -> None:
    """Derive g with φ = prox_g and F(x) = ½ xᵀ(I − W)x − bᵀx + Σ g(xᵢ) for ACTIVATION.

    ACTIVATION is a name such as relu, sigmoid, leaky_relu(0.1) or elu(0.5).
    """

    if as_table:
        click.echo(table())
        return
    if activation is None:
        raise UnrollError("give an ACTIVATION (e.g. relu, leaky_relu(0.1)) or --table")
    obj = objective(activation)
    click.echo(f"activation {obj.activation.name}: φ(v) = {sp.sstr(obj.activation.expr)}")
    if latex:
        click.echo(obj.latex())
    else:
        click.echo(f"g(t) = {sp.sstr(obj.g)}")
        click.echo(f"  for {obj.domain_str()}; normalised so that g(φ(0)) = 0")
        for c, gc in obj.points:
            click.echo(f"  g({sp.sstr(c)}) = {sp.sstr(gc)}")
        click.echo("F(x) = 1/2 x.T*(I - W)*x - b.T*x + Sum(g(x_i), (i, 1, n))")
    Console(width=120).print(conditions_table(obj))
