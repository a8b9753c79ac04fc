"""`unroll inspect NAME|FILE|TEXT`: every analysis of one scheme in one report."""

from __future__ import annotations

import dataclasses
import json

import click

from unroll.analysis import report, stability_region
from unroll.errors import UnrollError
from unroll.frontend.library import resolve
from unroll.frontend.scheme import Scheme, canonical_params


@click.command("inspect")
@click.argument("scheme")
@click.option(
    "--activation", "-a", default=None, help="Activation for the objective (default: the scheme's)."
)
@click.option(
    "--plot",
    "plot",
    default=None,
    type=click.Path(dir_okay=False),
    help="Save the stability region as a PNG here (ODE schemes).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--mu", default=1.0, show_default=True, type=float, help="Smallest curvature λ for rates."
)
@click.option(
    "--L", "L", default=100.0, show_default=True, type=float, help="Largest curvature λ for rates."
)
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="A parameter's value for the analyses, e.g. -p κ=-0.5 or -p kappa=-0.5 (repeatable).",
)
@click.option(
    "--depth",
    default=16,
    show_default=True,
    type=click.IntRange(min=0),
    help="Layers over which the inverse step's error amplification is predicted.",
)
def command(
    scheme: str,
    activation: str | None,
    plot: str | None,
    as_json: bool,
    mu: float,
    L: float,
    params: tuple[str, ...],
    depth: int,
) -> None:
    """Report on SCHEME (a bundled name, a YAML file or scheme text): kind, architecture, layer,
    objective, order, zero-stability, stability function, modified equation, and for optimizer
    schemes the iteration matrix, rate and tuned parameters (--mu and --L bound the curvatures;
    they are checked only for those), and how stably the step runs backwards (the inverse's
    error growth per layer and amplification over --depth layers: reversible networks). A plot that cannot be drawn is refused after the report."""

    s = _with_values(resolve(scheme), params)
    facts = report.facts(s, activation=activation, mu=mu, L=L, depth=depth)
    refused = None
    if plot is not None:
        try:
            stability_region(s, plot=plot)
            facts["plot"] = plot
        except UnrollError as e:
            refused = f"--plot: no stability region drawn: {str(e).splitlines()[0]}"
            facts["plot"] = None
            facts["notes"]["plot"] = refused
    if as_json:
        click.echo(json.dumps(facts, ensure_ascii=False, indent=2))
    else:
        for line in report.lines(facts):
            click.echo(line)
        if facts.get("plot"):
            click.echo(f"stability region: {plot}")
    if refused:
        click.echo(f"error: {refused}", err=True)
        click.get_current_context().exit(2)


def _with_values(scheme: Scheme, given: tuple[str, ...]) -> Scheme:
    """``scheme`` with each NAME=VALUE of --param as its parameter's default."""
    values: dict[str, str] = {}
    for item in given:
        name, eq, text = item.partition("=")
        if not eq or not name.strip():
            raise UnrollError(f"--param {item!r}: write NAME=VALUE, e.g. --param κ=-0.5")
        values[name.strip()] = text.strip()
    defaults = {}
    for name, text in canonical_params(scheme, values).items():
        try:
            defaults[name] = float(text)
        except ValueError:
            raise UnrollError(f"--param {name}={text}: {text!r} is not a number") from None
    specs = dict(scheme.parameters)  # every parameter's spec, declared or not
    for name, value in defaults.items():
        specs[name] = dataclasses.replace(specs[name], default=value)  # checks the bounds
    return dataclasses.replace(scheme, parameter_specs=tuple(specs.values()))
