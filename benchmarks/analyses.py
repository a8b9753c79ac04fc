"""Benchmark of the symbolic analyses: every analysis of every bundled scheme and of the
multistep catalogue (AB1-AB6, AM1-AM5, BDF1-BDF6, `tests.analysis.catalogue`), each timed warm.

``python -m benchmarks.analyses [--repeat N]`` (from the repository root) prints, per scheme and
analysis, the first call in this process and the median of N warm calls, and ends with the
slowest warm call. A warm call runs after the first, so that SymPy's and unroll's one-time work
(imports, tree tables, the bundled library) is done; the memoised results of unroll itself
(`unroll.ir.step.build`, the ODE reading, orders) are cleared before every warm call, so the
figure is the analysis's own computation, not a cache hit. The target is under 1 s per warm call.
A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import unroll
from tests.analysis.catalogue import MULTISTEP
from unroll.analysis import (
    characteristic_roots,
    is_zero_stable,
    iteration_matrix,
    modified_equation,
    ode,
    order,
    orders,
    rate,
    stability_function,
    stability_region,
    truncation_equation,
    tune,
)
from unroll.analysis.identification import identify
from unroll.analysis.report import facts
from unroll.errors import UnrollError
from unroll.ir import step
from unroll.ir.layer_form import layer_form

TARGET_S = 1.0
MU, L = 1.0, 100.0

ANALYSES: dict[str, dict[str, Callable]] = {
    "ode": {
        "order": order,
        "is_zero_stable": is_zero_stable,
        "characteristic_roots": characteristic_roots,
        "stability_function": stability_function,
        "stability_region": lambda s: stability_region(s, n=201),
        "modified_equation": lambda s: modified_equation(s, 2),
        "truncation_equation": lambda s: truncation_equation(s, 2),
    },
    "optimizer": {
        "iteration_matrix": iteration_matrix,
        "rate": lambda s: rate(s, MU, L),
        "tune": lambda s: tune(s, MU, L),
        "layer_form": layer_form,
    },
    "layer": {},
}
COMMON = {"identify": identify, "inspect (report.facts)": facts}


def clear_caches() -> None:
    """Forget unroll's memoised results (not SymPy's own caches)."""
    step.build.cache_clear()
    ode._ode_step.cache_clear()
    orders.order_of.cache_clear()


def schemes() -> dict[str, unroll.Scheme]:
    out = dict(unroll.schemes)
    out.update({name: unroll.compile(text) for name, (text, _, _) in MULTISTEP.items()})
    return out


def timed(fn: Callable, scheme) -> tuple[float, str | None]:
    start = time.perf_counter()
    try:
        fn(scheme)
        note = None
    except UnrollError as e:
        note = f"not applicable: {str(e).splitlines()[0][:60]}"
    return time.perf_counter() - start, note


def run(repeat: int = 3) -> list[tuple[str, str, float, float, str | None]]:
    """(scheme, analysis, first call s, median warm s, note) for every pair."""
    rows = []
    for name, scheme in schemes().items():
        for analysis, fn in {**ANALYSES[scheme.kind], **COMMON}.items():
            first, note = timed(fn, scheme)
            warm = []
            for _ in range(repeat):
                clear_caches()
                warm.append(timed(fn, scheme)[0])
            rows.append((name, analysis, first, statistics.median(warm), note))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="warm calls per analysis")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = run(args.repeat)
    print(f"{'scheme':<20} {'analysis':<24} {'first s':>8} {'warm s':>8}  note")
    for name, analysis, first, warm, note in rows:
        print(f"{name:<20} {analysis:<24} {first:8.3f} {warm:8.3f}  {note or ''}")
    slowest = max(rows, key=lambda r: r[3])
    over = [r for r in rows if r[3] >= TARGET_S]
    print(
        f"\n{len(rows)} analyses in {time.perf_counter() - start:.1f} s; slowest warm: "
        f"{slowest[1]} of {slowest[0]}, {slowest[3]:.3f} s (median of {args.repeat}); "
        f"{len(over)} at or over the {TARGET_S:g} s target"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
