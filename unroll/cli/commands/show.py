"""`unroll show NAME|FILE|TEXT`: a scheme's equations, states, stages, parameters and kind."""

from __future__ import annotations

import click
import sympy as sp

from unroll.analysis.identification import identify
from unroll.errors import UnrollError
from unroll.frontend.library import resolve
from unroll.frontend.printing import equation_text
from unroll.frontend.scheme import STEP_NAMES
from unroll.ir import activations
from unroll.ir import vocabulary as ir
from unroll.ir.layer_form import layer_form


def describe(scheme, activation: str | None = None) -> list[str]:
    """The lines `unroll show` prints for ``scheme`` (its layer with φ = ``activation``)."""
    lines = [f"scheme: {scheme.name or '(from text)'}"]
    if scheme.description:
        lines.append(f"description: {scheme.description}")
    lines.append(f"kind: {scheme.kind}")
    explicit = "yes" if scheme.is_explicit else f"no ({scheme.implicit_reason})"
    lines.append(f"explicit: {explicit}")
    lines.append("equations:")
    lines += [f"  {line}" for line in str(scheme).splitlines()]
    states = ", ".join(
        f"{s.name} (history {s.depth}"
        + (f", starts at {s.init:g}" if s.init is not None else "")
        + ")"
        for s in scheme.states.values()
    )
    lines.append(f"states: {states}")
    if scheme.stages:
        lines.append(f"stages: {', '.join(scheme.stages)}")
    params = []
    for p in scheme.parameters.values():
        bits = [] if p.default is None else [f"default {p.default:g}"]
        bits += ["trainable"] if p.trainable else []
        bits += ["per channel"] if p.per_channel else []
        if p.bounds != (None, None):
            lo, hi = (
                "-inf" if p.bounds[0] is None else f"{p.bounds[0]:g}",
                "inf" if p.bounds[1] is None else f"{p.bounds[1]:g}",
            )
            bits.append(f"in [{lo}, {hi}]")
        params.append(p.name + (f" ({', '.join(bits)})" if bits else ""))
    lines.append(f"parameters: {', '.join(params) or 'none'}")
    if scheme.activation:
        lines.append(f"activation: {scheme.activation}")
    if scheme.startup:
        lines.append(f"start-up scheme: {scheme.startup}")
    step = next((n for n in STEP_NAMES if n in scheme.parameters), None)
    if scheme.kind == "ode" and step is not None:
        run_h = scheme.parameters[step].default
        given = f"{run_h:g}" if run_h is not None else "none (give it)"
        lines.append(
            f"step: {step} = 1 in a network (absorbed into the branches, as ResNet); "
            f"Scheme.run defaults to {given}"
        )
    return lines + _network(scheme, activation)


def _network(scheme, activation: str | None) -> list[str]:
    """The identified architecture and the layer form, φ written as the activation's name."""

    name = identify(scheme) or "none known"
    if scheme.architecture and scheme.architecture != name:
        name += f" (the scheme file says {scheme.architecture})"
    lines = [f"architecture: {name}"]
    act = activation or scheme.activation
    if act is not None:
        activations.get(act)  # an unknown name is an UnrollError listing the known ones
    try:
        form = layer_form(scheme)
    except UnrollError as e:
        return lines + [f"layer: none ({e})"]
    phi = sp.Function(act) if act else ir.ACT
    lines.append(f"layer{f' (φ = {act})' if act else ''}:")
    lines += [f"  {equation_text(eq.replace(ir.ACT, phi))}" for eq in form.equations]
    return lines


@click.command("show")
@click.argument("scheme")
@click.option("--activation", default=None, help="φ for the layer formula (default: the scheme's).")
def command(scheme: str, activation: str | None) -> None:
    """Show SCHEME (a bundled name, a YAML file or scheme text): equations, states, parameters,
    the architecture it is and its network layer."""

    s = resolve(scheme)
    for line in describe(s, activation):
        click.echo(line)
