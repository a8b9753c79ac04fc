"""How stable a scheme's inverse is: how fast errors grow when the step runs backwards.

Reversible backpropagation (`unroll.lowering.nn.reversible`) rebuilds each layer's input from
its output with the inverse step (`unroll.ir.inverse.inverse`); a rounding error in the last
state is carried back through every layer. With the operators switched off (f = 0, the h → 0
reading of zero-stability, docs/theory.md section 3) the inverse step is a linear map ``A`` of
the stacked history, and

- its characteristic polynomial is, for a one-state linear multistep scheme, the reversed first
  characteristic polynomial ζ^d ρ(1/ζ) of the scheme: its roots are the reciprocals of ρ's;
- the *growth* per layer is the spectral radius of ``A``, max |root|: 1/γ for a momentum
  network with momentum γ (v_<k+1> = γ v_k + (1 − γ) f(x_k)), 1/|κ| for LM-ResNet, 1 for
  leapfrog and RevNet;
- the *amplification* over ``depth`` layers is ‖A^depth‖₂, the largest factor by which the
  inverse can multiply an error in the last state on its way back to the first (for untied
  coefficients, ‖A_0 A_1 ⋯ A_<depth-1>‖₂).

What the operators add (h·L for an f with Lipschitz constant L) is left out: the figures are
those of the scheme's coefficients, the part that a small step does not change.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy as sp

from unroll.analysis.ode import label, substitutions
from unroll.errors import UnrollError
from unroll.frontend.printing import expr_text
from unroll.frontend.scheme import Scheme
from unroll.ir import vocabulary as vocab
from unroll.ir.inverse import inverse
from unroll.ir.step import build

ZETA = sp.Symbol("ζ")


@dataclass(frozen=True)
class InverseStability:
    """The stability of ``scheme``'s inverse at given parameter values.

    ``polynomial``: the characteristic polynomial in ζ of the inverse's linear part (the
    reversed first characteristic polynomial for a one-state multistep scheme); ``roots``: its
    roots; ``growth``: max |root|, the error growth per layer; ``amplification``:
    ‖A^depth‖₂, the worst error amplification over ``depth`` layers (inf past float64's range).
    """

    scheme: str
    depth: int
    polynomial: sp.Expr
    roots: tuple[complex, ...]
    growth: float
    amplification: float

    @property
    def digits_lost(self) -> float:
        """Decimal digits the inverse can lose over ``depth`` layers: log10(amplification)."""
        return math.log10(self.amplification) if self.amplification > 0 else 0.0

    def relative_error(self, eps: float) -> float:
        """The predicted relative error of rebuilt states for a machine epsilon ``eps``:
        amplification × eps."""
        return self.amplification * eps


@dataclass(frozen=True)
class InverseMatrix:
    """The inverse step's linear part: ``matrix`` maps the stacked history (``labels``, each
    state's values newest first, in the inverse's state order) to the next one; entries are in
    the scheme's parameter symbols ``parameters``."""

    matrix: sp.ImmutableMatrix
    labels: tuple[str, ...]
    parameters: tuple[sp.Symbol, ...]

    def numeric(self, values: Mapping[str, Any]) -> np.ndarray:
        """The matrix at ``values`` (by parameter name; numbers, or arrays of one value per
        channel that broadcast together): shape (..., m, m) with m = len(labels)."""
        missing = [p.name for p in self.parameters if p.name not in values]
        if missing:
            raise UnrollError(f"no value for parameter {missing[0]} of the inverse step")
        args = [np.asarray(values[p.name], dtype=np.float64) for p in self.parameters]
        entries = _lambdified(self)(*args)
        entries = np.broadcast_arrays(*[np.asarray(e, dtype=np.float64) for e in entries])
        m = len(self.labels)
        return np.stack(entries, axis=-1).reshape(*entries[0].shape, m, m)


@functools.lru_cache(maxsize=128)
def _lambdified(inv: InverseMatrix):
    return sp.lambdify(list(inv.parameters), list(inv.matrix), "numpy")


@functools.lru_cache(maxsize=128)
def inverse_matrix(scheme: Scheme) -> InverseMatrix:
    """The linear part of ``scheme``'s inverse step (operators and φ at zero) on the stacked
    history. Raises `UnrollError` when the scheme has no inverse (`unroll.ir.inverse.inverse`
    says why) or when its inverse is not linear in the states once the operators are off."""
    inv = build(inverse(scheme))
    if any(s.scalar for s in inv.states):
        raise UnrollError(
            f"scheme {label(scheme)!r}: the stability of an inverse with scalar states "
            f"({', '.join(s.name for s in inv.states if s.scalar)}) is not analysed"
        )
    history = [h.symbol for s in inv.states for h in s.history]
    off = {c.symbol: 0 for c in inv.calls}
    rows: dict[str, list[sp.Expr]] = {}
    for u in inv.updates:
        expr = u.expr.xreplace(off).replace(
            lambda e: getattr(e, "func", None) == vocab.ACT, lambda e: 0
        )
        expr = sp.expand(expr)
        coeffs = [sp.diff(expr, h) for h in history]
        if any(c.free_symbols & set(history) for c in coeffs):
            raise UnrollError(
                f"scheme {label(scheme)!r}: its inverse, {expr_text(inv.scheme_form(u.expr))}, "
                "is not linear in the states with the operators off"
            )
        rows[u.state] = coeffs
    m = len(history)
    matrix = sp.zeros(m, m)
    i = 0
    for s in inv.states:
        matrix[i, :] = sp.Matrix([rows[s.name]])
        for lag in range(1, len(s.history)):  # the older slots shift by one
            matrix[i + lag, i + lag - 1] = 1
        i += len(s.history)
    back = {c.symbol: c.ref for c in inv.coefficients}
    matrix = matrix.xreplace(back)
    t = [c.ref for c in inv.coefficients if c.source in ("time", "index")]
    if any(matrix.has(x) for x in t):
        raise UnrollError(
            f"scheme {label(scheme)!r}: its inverse's coefficients depend on the time or index"
        )
    parameters = tuple(sorted(matrix.free_symbols, key=lambda s: s.name))
    labels = tuple(expr_text(h.ref) for s in inv.states for h in s.history)
    return InverseMatrix(sp.ImmutableMatrix(matrix), labels, parameters)


def inverse_stability(scheme: Scheme, depth: int, **params: Any) -> InverseStability:
    """Growth per layer and amplification over ``depth`` layers of ``scheme``'s inverse at the
    given parameter values (``kappa=-0.05`` or ``κ=-0.05``; defaults from the scheme). Raises
    `UnrollError` when the scheme has no inverse there, or a value is missing."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise UnrollError(f"depth must be a non-negative int, not {depth!r}")
    inverse(scheme, **params)  # refuses where the oldest coefficient vanishes at these values
    inv = inverse_matrix(scheme)
    subs = substitutions(scheme, params, defaults=True)
    matrix = inv.matrix.xreplace(subs)
    missing = sorted(s.name for s in matrix.free_symbols)
    if missing:
        raise UnrollError(
            f"scheme {label(scheme)!r}: pass a value for {missing[0]} (it has no default)"
        )
    polynomial = matrix.charpoly(ZETA).as_expr()
    a = np.array(matrix.evalf(), dtype=np.float64)
    roots = tuple(complex(r) for r in np.linalg.eigvals(a))
    growth = max(abs(r) for r in roots)
    return InverseStability(
        scheme=label(scheme),
        depth=depth,
        polynomial=polynomial,
        roots=roots,
        growth=float(growth),
        amplification=_norm_of_power(a, depth),
    )


def inverse_amplification(scheme: Scheme, layers: Sequence[Mapping[str, Any]]) -> float:
    """‖A_0 A_1 ⋯ A_<N-1>‖₂ for the parameter values of each of N layers (``layers[n]`` by
    parameter name; an array of one value per channel gives the worst channel): the factor by
    which rebuilding the first layer's input from the last layer's output can multiply an
    error. The first layer's A is applied last, as the inverse runs."""
    inv = inverse_matrix(scheme)
    product: np.ndarray | None = None
    with np.errstate(over="ignore", invalid="ignore"):
        for values in layers:
            a = inv.numeric(values)
            product = a if product is None else product @ a
    if product is None:
        return 1.0
    return _worst_norm(product)


def _norm_of_power(a: np.ndarray, depth: int) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        return _worst_norm(np.linalg.matrix_power(a, depth))


def _worst_norm(a: np.ndarray) -> float:
    if not np.all(np.isfinite(a)):
        return math.inf
    return float(np.max(np.linalg.norm(a, 2, axis=(-2, -1))))
