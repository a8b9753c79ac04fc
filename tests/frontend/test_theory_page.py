"""docs/theory.md: the sections code and docs cite exist in order, every citation points at one,
and the page's table of g is right (prox_g, minimised numerically, reproduces φ)."""

from __future__ import annotations

import math
import re

import mpmath
import pytest

from tests import ROOT
from tests.tolerances import PROX

PAGE = ROOT / "docs" / "theory.md"
SECTIONS = [
    "Networks as unrolled iterations",
    "The objective behind a layer",
    "Multistep schemes",
    "Optimizers on quadratics",
    "Growing width",
    "Deep sequential versus wide parallel",
    "The hardware side",
]


def headings() -> list[str]:
    return re.findall(r"^## (\d+)\. (.+)$", PAGE.read_text(encoding="utf-8"), re.MULTILINE)


def test_sections_one_to_seven_in_order():
    found = headings()
    assert [int(n) for n, _ in found] == list(range(1, 8))
    for (_, title), want in zip(found, SECTIONS, strict=True):
        assert title.startswith(want)


def test_every_citation_of_a_section_points_at_one():
    cited = set()
    for path in [
        *ROOT.glob("unroll/**/*.py"),
        *ROOT.glob("tests/**/*.py"),
        *ROOT.glob("docs/*.md"),
    ]:
        text = path.read_text(encoding="utf-8")
        cited |= {int(n) for n in re.findall(r"docs/theory\.md section (\d+)", text)}
    assert cited and cited <= {int(n) for n, _ in headings()}


def test_no_timings_and_no_private_sources():
    text = PAGE.read_text(encoding="utf-8")
    # A timing is a number with a unit of time or of throughput.
    assert not re.search(r"\d\s*(ms|µs|us|s|TFLOP/s|TB/s|GB/s)\b", text)
    assert "BACKGROUND" not in text
    assert (
        "f(x)` is an *autonomous* field" in text and "`f(t, x)` is a *time-dependent* field" in text
    )


# The table of g in section 2, transcribed: φ, g, and the closed interval that g is finite on
# (an open end is moved in by 1e-12, where g is still finite).
def _xlogx(t):
    return 0.0 if t == 0 else t * math.log(t)


EDGE = 1e-12
TABLE = {
    "relu": (lambda v: max(v, 0.0), lambda t: 0.0, (0.0, math.inf)),
    "leaky_relu(0.1)": (
        lambda v: v if v >= 0 else 0.1 * v,
        lambda t: (1 / 0.1 - 1) * t * t / 2 if t < 0 else 0.0,
        (-math.inf, math.inf),
    ),
    "hardtanh": (lambda v: max(-1.0, min(1.0, v)), lambda t: 0.0, (-1.0, 1.0)),
    "sigmoid": (
        lambda v: 1 / (1 + math.exp(-v)),
        lambda t: _xlogx(t) + _xlogx(1 - t) - t * t / 2,
        (0.0, 1.0),
    ),
    "tanh": (
        math.tanh,
        lambda t: t * math.atanh(t) + 0.5 * math.log(1 - t * t) - t * t / 2,
        (-1 + EDGE, 1 - EDGE),
    ),
    "softplus": (
        lambda v: math.log1p(math.exp(v)),
        lambda t: float(mpmath.polylog(2, mpmath.exp(-t))),
        (EDGE, math.inf),
    ),
}


@pytest.mark.parametrize("name", sorted(TABLE))
@pytest.mark.parametrize("v", [-2.5, -0.3, 0.0, 0.4, 1.7])
def test_prox_of_the_tabulated_g_is_the_activation(name, v):
    phi, g, (lo, hi) = TABLE[name]
    # prox_g(v) minimises the 1-strongly convex g(y) + ½(y − v)², found by golden-section search
    # on g's domain cut to [v − 3, v + 3] (|φ(v) − v| < 3 for these v).
    a, b = max(lo, v - 3), min(hi, v + 3)
    r = (math.sqrt(5) - 1) / 2
    for _ in range(120):  # the bracket shrinks by 0.618 a step: 6 · 0.618^120 < 1e-24
        c, d = b - r * (b - a), a + r * (b - a)
        if g(c) + 0.5 * (c - v) ** 2 <= g(d) + 0.5 * (d - v) ** 2:
            b = d
        else:
            a = c
    # The search ends on the minimiser to rounding of the objective (its values agree to
    # ~1e-16 within ~1e-8 of the minimum, a quadratic); 1e-6 is above that and far below the
    # error of a wrong row (a g off by a term in t moves the prox by about that term's slope).
    assert (a + b) / 2 == pytest.approx(phi(v), abs=PROX)
