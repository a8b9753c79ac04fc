"""Analyses of schemes, each a pure function of a `Scheme` (one module per analysis), each
reading the scheme's step IR (`unroll.ir.step`; the ODE analyses through `unroll.analysis.ode`).

- `order` (orders.py, with bseries.py): the order of consistency;
- `characteristic_roots`, `is_zero_stable`, `stability_function`, `stability_region`
  (stability.py): zero-stability and absolute stability;
- `modified_equation`, `truncation_equation` (modified.py): the equation the scheme solves to
  higher order (backward error analysis; the form of Lu et al. 2018);
- `iteration_matrix`, `rate`, `tune` (rates.py): optimizer schemes on quadratics;
- `inverse_stability`, `inverse_amplification` (inverse.py): how stably the step runs backwards;
- `unroll.analysis.identification.identify`: which known architecture a scheme is;
- `unroll.analysis.objectives.objective`: the objective behind a layer's activation;
- `unroll.analysis.report.facts`: all of them for one scheme (`unroll inspect`, docs/schemes.md).
"""

from __future__ import annotations

from unroll.analysis.inverse import (
    InverseStability,
    inverse_amplification,
    inverse_matrix,
    inverse_stability,
)
from unroll.analysis.modified import modified_equation, truncation_equation
from unroll.analysis.orders import order, order_conditions
from unroll.analysis.rates import (
    FAMILIES,
    LAM,
    history_labels,
    iteration_matrix,
    known_tuning,
    rate,
    tune,
)
from unroll.analysis.stability import (
    ZETA,
    StabilityRegion,
    Z,
    characteristic_roots,
    first_characteristic_polynomial,
    is_zero_stable,
    stability_function,
    stability_region,
)

__all__ = [
    "InverseStability",
    "inverse_amplification",
    "inverse_matrix",
    "inverse_stability",
    "FAMILIES",
    "LAM",
    "history_labels",
    "iteration_matrix",
    "known_tuning",
    "rate",
    "tune",
    "Z",
    "ZETA",
    "StabilityRegion",
    "characteristic_roots",
    "first_characteristic_polynomial",
    "is_zero_stable",
    "modified_equation",
    "order",
    "order_conditions",
    "stability_function",
    "stability_region",
    "truncation_equation",
]
