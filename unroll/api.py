"""What users hold: a `Scheme` with the passes as methods, and the front end that returns it.

The passes never import this module: `unroll.frontend.scheme.Scheme` is the passive value they
read, and this subclass only adds the entry points, each a call into the module that is that
pass's one home. ``unroll.compile(...)`` and ``unroll.schemes[...]`` return it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import sympy as sp

from unroll import analysis
from unroll.analysis.objectives import Objective
from unroll.analysis.objectives import objective as _objective
from unroll.errors import UnrollError
from unroll.frontend import library
from unroll.frontend import scheme as _passive
from unroll.ir.inverse import inverse as _inverse
from unroll.ir.layer_form import layer_form as _layer_form
from unroll.lowering.eager.run import run as _run
from unroll.lowering.nn.modules import Block, Network
from unroll.lowering.nn.modules import layer as _layer
from unroll.lowering.nn.modules import network as _network


class Scheme(_passive.Scheme):
    """An iteration scheme (see `unroll.frontend.scheme.Scheme`) with the passes as methods."""

    # -- execution and networks --------------------------------------------------------------
    def run(self, x0: Any, steps: int, **kwargs: Any) -> Any:
        """Execute the scheme with PyTorch; see `unroll.lowering.eager.run.run`."""
        return _run(self, x0, steps, **kwargs)

    def layer(self, **options: Any) -> Block:
        """One layer (block) of the network this scheme stands for; see
        `unroll.lowering.nn.modules.layer`."""
        return _layer(self, **options)

    def network(self, depth: int, **options: Any) -> Network:
        """``depth`` unrolled steps as a `torch.nn.Module`; see
        `unroll.lowering.nn.modules.network`."""
        return _network(self, depth, **options)

    def layer_form(self) -> Scheme:
        """This scheme as a network layer; see `layer_form`."""
        return layer_form(self)

    def objective(self, activation: Any = None) -> Objective:
        """The objective F behind this scheme's layer for ``activation`` (default: the scheme's);
        see `unroll.analysis.objectives.objective`."""
        act = activation if activation is not None else self.activation
        if act is None:
            raise UnrollError(f"scheme {self.name or str(self)!r} names no activation: pass one")
        return _objective(act)

    # -- analyses (unroll/analysis/), each a function of the scheme --------------------------
    def order(self) -> int:
        """The order of consistency of an ODE scheme (0 when inconsistent)."""
        return analysis.order(self)

    def characteristic_roots(self) -> list:
        """Roots of the first characteristic polynomial ρ(ζ) of an ODE scheme."""
        return analysis.characteristic_roots(self)

    def is_zero_stable(self) -> bool:
        """The root condition on ρ(ζ)."""
        return analysis.is_zero_stable(self)

    def stability_function(self) -> sp.Expr:
        """R(z) for one-step schemes, the stability polynomial in ζ and z = hλ for multistep ones."""
        return analysis.stability_function(self)

    def stability_region(self, *args: Any, **kwargs: Any) -> Any:
        """The absolute-stability region sampled on a grid (and optionally plotted)."""
        return analysis.stability_region(self, *args, **kwargs)

    def modified_equation(self, terms: int = 2) -> sp.Expr:
        """The field the scheme follows to higher order (backward error analysis):
        dx/dt = f + h^p f_p + ... in elementary differentials, to ``terms`` correction terms."""
        return analysis.modified_equation(self, terms)

    def truncation_equation(self, terms: int = 2) -> sp.Expr:
        """The scheme's Taylor relation between the derivatives of x and f (for multistep
        schemes, the form Lu et al. write for LM-ResNet), to ``terms`` terms."""
        return analysis.truncation_equation(self, terms)

    def iteration_matrix(self) -> sp.Matrix:
        """One step of an optimizer scheme on F = ½λx² as a matrix on its stacked history."""
        return analysis.iteration_matrix(self)

    def rate(self, mu: float, L: float, **params: Any) -> float:
        """The worst-case linear rate over λ ∈ [μ, L] of an optimizer scheme."""
        return analysis.rate(self, mu, L, **params)

    def inverse(self, **params: Any) -> Scheme:
        """The step solved for its oldest states: the scheme that runs this one backwards
        (`unroll.ir.inverse.inverse`); an `UnrollError` says why when there is none."""
        return wrap(_inverse(self, **params))

    def inverse_stability(self, depth: int, **params: Any) -> Any:
        """Error growth per layer of the inverse step and its amplification over ``depth``
        layers (`unroll.analysis.inverse.inverse_stability`)."""
        return analysis.inverse_stability(self, depth, **params)

    def tune(self, mu: float, L: float) -> dict:
        """Parameters minimising `rate` over λ ∈ [μ, L]."""
        return analysis.tune(self, mu, L)


def wrap(scheme: _passive.Scheme) -> Scheme:
    """``scheme`` as the user-facing `Scheme` (itself when it already is one)."""
    if isinstance(scheme, Scheme):
        return scheme
    return Scheme(**{f.name: getattr(scheme, f.name) for f in fields(scheme) if f.init})


def inverse(scheme: _passive.Scheme, **params: Any) -> Scheme:
    """``scheme``'s step solved for its oldest states (see `Scheme.inverse`)."""
    return wrap(_inverse(scheme, **params))


def layer_form(scheme: _passive.Scheme) -> Scheme:
    """``scheme`` as a network layer (`unroll.ir.layer_form.layer_form`): an optimizer scheme's
    gradient steps become φ(... W p + b ...); ODE and layer schemes come back unchanged."""
    return wrap(_layer_form(scheme))


def compile(spec: Any) -> Scheme:  # noqa: A001 - the public name users know
    """A `Scheme` from scheme text, a SymPy ``Eq`` or a list of them, or a YAML file path; see
    `unroll.frontend.library.compile`.

    >>> str(compile("x_<k+1> = x_k - α ∇F"))
    'x_<k+1> = -α*∇F(x_k) + x_k'
    """
    return wrap(library.compile(spec))


def load(path: str | Path) -> Scheme:
    """The scheme in the YAML file at ``path``."""
    return wrap(library.load(path))


class _Schemes(Mapping):
    """The bundled schemes by name (`unroll.frontend.library.schemes`), as user-facing values."""

    def __init__(self) -> None:
        self._wrapped: dict[str, Scheme] = {}

    def __getitem__(self, name: str) -> Scheme:
        if name not in self._wrapped:
            self._wrapped[name] = wrap(library.schemes[name])
        return self._wrapped[name]

    def __iter__(self) -> Iterator[str]:
        return iter(library.schemes)

    def __len__(self) -> int:
        return len(library.schemes)

    def __contains__(self, name: object) -> bool:
        return name in library.schemes


schemes: Mapping[str, Scheme] = _Schemes()
