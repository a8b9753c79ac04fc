"""Zero-stability and absolute stability of one-state ODE schemes.

On the test equation ẋ = λx every branch f(t, x) becomes λx, and one step becomes a linear
recurrence x_{k+1} = Σ_j c_j(z) x_{k-j} in z = hλ (implicit schemes: the linear equations are
solved for the new state and the stages). Its stability polynomial is
π(ζ, z) = ζ^d − Σ_j c_j(z) ζ^{d−1−j} (denominators cleared); for a one-step scheme
R(z) = c_0(z) is the stability function. The first characteristic polynomial is ρ(ζ) = π(ζ, 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sympy as sp

from unroll.analysis.ode import OdeStep, label, linear_parts, ode_step, substitutions
from unroll.errors import UnrollError

Z = sp.Symbol("z")  # hλ
ZETA = sp.Symbol("ζ")
ROOT_TOL = 1e-9  # |root| within this of 1 counts as on the unit circle (float64 root finding)


def _stability_step(scheme, what: str, params: dict) -> OdeStep:
    for name in (Z.name, ZETA.name):
        if name in scheme.parameters:
            raise UnrollError(
                f"{label(scheme)!r}: the parameter {name} would read as {name} of the stability "
                "analysis (z = hλ, ζ a root); rename it"
            )
    return ode_step(scheme, what, params)


def _recurrence(step: OdeStep) -> list[sp.Expr]:
    """[c_0(z), ..., c_{d-1}(z)] with x_<k+1> = Σ_j c_j x_<k-j> on ẋ = λx, z = hλ, in the
    scheme's own symbols."""
    lam = sp.Dummy("λ")
    linear: dict = {}
    for b in step.branches:  # f(t, x) = λx: each branch value is gain·λ·(its argument)
        linear[b.symbol] = (b.gain * lam * b.arg).xreplace(linear)
    eqs = [sp.Eq(u.symbol, u.expr.xreplace(linear)) for u in step.updates]
    unknowns = list(step.unknowns)
    (solution,) = sp.linsolve(eqs, unknowns) or [None]
    if solution is None or solution[unknowns.index(step.new)].has(*unknowns):
        raise UnrollError("on ẋ = λx the step equations have no unique solution")
    value = sp.cancel(solution[unknowns.index(step.new)].subs(lam, Z / step.h))
    parts = linear_parts(value, step.history)
    if parts is None or sp.simplify(parts[1]) != 0:
        raise UnrollError("on ẋ = λx the step is not linear in the past states")
    coeffs = [sp.factor(sp.cancel(parts[0].get(x, sp.S.Zero))) for x in step.history]
    return [step.scheme_form(c) for c in coeffs]


def stability_polynomial(step: OdeStep) -> sp.Expr:
    """π(ζ, z), a polynomial in ζ and z with no common denominator."""
    coeffs = _recurrence(step)
    d = step.depth
    poly = ZETA**d - sum(c * ZETA ** (d - 1 - j) for j, c in enumerate(coeffs))
    num, _ = sp.fraction(sp.cancel(sp.together(poly)))
    num = sp.expand(num)
    lead = sp.Poly(num, ZETA).LC()
    if lead.is_number and lead < 0:
        num = -num
    return sp.collect(num, ZETA)


def stability_function(scheme, **params: Any) -> sp.Expr:
    """R(z), z = hλ, for a one-step scheme (x_{k+1} = R(z) x_k on ẋ = λx); for a multistep
    scheme the stability polynomial π(ζ, z) (the scheme is stable at z when every root ζ has
    modulus ≤ 1). Parameters other than h stay symbolic unless given."""
    step = _stability_step(scheme, "stability_function", params)
    if step.depth == 1:
        (r,) = _recurrence(step)
        num, den = sp.fraction(sp.cancel(r))
        return sp.expand(num) / sp.expand(den) if den != 1 else sp.expand(num)
    return stability_polynomial(step)


def first_characteristic_polynomial(scheme, **params: Any) -> sp.Expr:
    """ρ(ζ) = π(ζ, 0)."""
    step = _stability_step(scheme, "characteristic_roots", params)
    rho = sp.expand(stability_polynomial(step).subs(Z, 0))
    if rho == 0:
        raise UnrollError(f"{label(scheme)!r}: ρ(ζ) vanishes identically")
    return rho


def characteristic_roots(scheme, **params: Any) -> list:
    """The roots of ρ(ζ), each repeated by its multiplicity (symbolic where parameters are left
    out and SymPy finds them in closed form, else floats at the given or default values)."""
    rho = first_characteristic_polynomial(scheme, **params)
    found = sp.roots(rho, ZETA)
    deg = sp.Poly(rho, ZETA).degree()
    if sum(found.values()) == deg:
        return [r for r, m in found.items() for _ in range(m)]
    rho = rho.xreplace(substitutions(scheme, params, defaults=True))
    _require_numeric(scheme, rho)
    return [complex(r) if r.imag else float(r.real) for r in _numeric_roots(sp.Poly(rho, ZETA))]


def _require_numeric(scheme, expr: sp.Expr, also: tuple = ()) -> None:
    free = sorted(s.name for s in expr.free_symbols - {ZETA, Z, *also})
    if free:
        raise UnrollError(
            f"{label(scheme)!r}: parameter {free[0]} has no default; pass {free[0]}=... "
            "to decide this numerically"
        )


def is_zero_stable(scheme, **params: Any) -> bool:
    """The root condition: every root of ρ(ζ) in the closed unit disc, those on the circle
    simple. Parameters not given take the scheme's defaults."""
    rho = first_characteristic_polynomial(scheme, **params)
    rho = rho.xreplace(substitutions(scheme, params, defaults=True))
    _require_numeric(scheme, rho)
    poly = sp.Poly(rho, ZETA)
    if any(abs(r) > 1 + ROOT_TOL for r in _numeric_roots(poly)):
        return False
    repeated = sp.gcd(poly, poly.diff(ZETA))  # exact: the roots of ρ that are not simple
    return not any(abs(abs(r) - 1) <= ROOT_TOL for r in _numeric_roots(repeated))


NEWTON_STEPS = 4  # per grid column, from the roots at the neighbouring column
VIETA_TOL = 1e-10  # relative: the roots must sum to −a_1 (else they are recomputed)


def _companion_roots(monic: np.ndarray) -> np.ndarray:
    """(d, m) monic coefficients a_1..a_d -> (m, d) roots, as companion-matrix eigenvalues."""
    d, m = monic.shape
    comp = np.zeros((m, d, d), dtype=complex)
    comp[:, 0, :] = -monic.T
    comp[:, np.arange(1, d), np.arange(d - 1)] = 1
    return np.linalg.eigvals(comp)


def largest_root_modulus(monic: np.ndarray) -> np.ndarray:
    """(d, ny, nx) coefficients a_1..a_d of ζ^d + a_1 ζ^{d-1} + ... + a_d on a grid -> (ny, nx)
    largest root modulus (inf where a coefficient is not finite).

    The roots move continuously with z: each grid column starts Newton's method from the roots
    of the column before (a batched eigenvalue solve costs some 40 µs per point, this a few
    array operations per column). A column's roots are kept only where they sum to −a_1, which
    fails when two starts converge to one root; there the companion matrix decides."""
    d, ny, nx = monic.shape
    finite = np.isfinite(monic).all(axis=0)
    a = np.where(finite, monic, 0)
    modulus = np.empty((ny, nx))
    roots = _companion_roots(a[:, :, 0])
    for j in range(nx):
        coeff = a[:, :, j]
        if j:
            with np.errstate(all="ignore"):
                for _ in range(NEWTON_STEPS):
                    p, dp = np.ones_like(roots), np.zeros_like(roots)
                    for k in range(d):
                        dp = dp * roots + p
                        p = p * roots + coeff[k][:, None]
                    step = p / dp
                    roots = np.where(np.isfinite(step), roots - step, roots)
                total = roots.sum(axis=1)
                scale = 1 + np.abs(roots).sum(axis=1)
                wrong = ~(np.abs(total + coeff[0]) <= VIETA_TOL * scale)
            if wrong.any():
                roots[wrong] = _companion_roots(coeff[:, wrong])
        modulus[:, j] = np.abs(roots).max(axis=1)
    modulus[~finite] = np.inf
    return modulus


def _numeric_roots(poly: sp.Poly) -> np.ndarray:
    return np.roots(np.array([complex(c) for c in poly.all_coeffs()]))


@dataclass(frozen=True)
class StabilityRegion:
    """The absolute-stability region sampled on a grid of z = x + iy.

    ``x``: (nx,) real parts; ``y``: (ny,) imaginary parts; ``modulus``: (ny, nx) |R(z)| for a
    one-step scheme, the largest root modulus of π(ζ, z) for a multistep one; ``stable``:
    (ny, nx) booleans, modulus ≤ 1.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    modulus: np.ndarray
    formula: str

    @property
    def stable(self) -> np.ndarray:
        return self.modulus <= 1 + 1e-12

    def draw(self, ax) -> None:
        """Draw the region (shaded) and its boundary on a matplotlib ``ax``."""
        ax.contourf(
            self.x, self.y, self.stable.astype(float), levels=[0.5, 1.5], colors=["#9ecae1"]
        )
        ax.contour(self.x, self.y, self.modulus, levels=[1.0], colors=["#08519c"], linewidths=1)
        ax.axhline(0, color="0.5", lw=0.5)
        ax.axvline(0, color="0.5", lw=0.5)
        if not self.stable.any():  # leapfrog: stable on a segment of the imaginary axis only
            ax.text(
                0.5,
                0.9,
                "no stable z with an interior\nin this grid",
                ha="center",
                va="top",
                transform=ax.transAxes,
                fontsize=8,
            )
        ax.set_aspect("equal")
        ax.set_xlabel("Re z")
        ax.set_ylabel("Im z")
        ax.set_title(self.name, fontsize=10)

    def plot(self, path: str | Path) -> Path:
        """Save the region as a PNG at ``path``; returns the path."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.5, 4.5), dpi=100, layout="constrained")
        self.draw(fig.add_subplot())
        path = Path(path)
        try:
            fig.savefig(path, format="png")
        except OSError as e:
            raise UnrollError(f"cannot write {path}: {e}") from None
        return path


def stability_region(
    scheme,
    re: tuple[float, float] = (-5.0, 2.0),
    im: tuple[float, float] = (-3.5, 3.5),
    n: int = 281,
    plot: str | Path | None = None,
    **params: Any,
) -> StabilityRegion:
    """Sample the absolute-stability region on an n×n grid of z over ``re`` × ``im`` (and save
    a PNG at ``plot``). Parameters other than h take the given values, else the defaults."""
    if n < 2:
        raise UnrollError(f"n must be at least 2, not {n}")
    step = _stability_step(scheme, "stability_region", params)
    subs = substitutions(scheme, params, defaults=True)
    x = np.linspace(*re, n)
    y = np.linspace(*im, n)
    zz = x[None, :] + 1j * y[:, None]
    if step.depth == 1:
        (r,) = _recurrence(step)
        r = r.xreplace(subs)
        _require_numeric(scheme, r)
        formula = f"R(z) = {r}"
        with np.errstate(divide="ignore", invalid="ignore"):
            modulus = np.abs(np.broadcast_to(sp.lambdify(Z, r, "numpy")(zz), zz.shape))
    else:
        poly = stability_polynomial(step).xreplace(subs)
        _require_numeric(scheme, poly)
        formula = f"π(ζ, z) = {poly}"
        coeffs = sp.Poly(poly, ZETA).all_coeffs()
        values = [np.broadcast_to(sp.lambdify(Z, c, "numpy")(zz), zz.shape) for c in coeffs]
        with np.errstate(divide="ignore", invalid="ignore"):
            monic = np.stack([v / values[0] for v in values[1:]]).astype(complex)
        modulus = largest_root_modulus(monic)
    modulus = np.where(np.isfinite(modulus), modulus, np.inf)
    region = StabilityRegion(label(scheme), x, y, modulus, formula)
    if plot is not None:
        region.plot(plot)
    return region
