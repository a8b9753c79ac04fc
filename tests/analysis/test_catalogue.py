"""Orders of classical methods written as scheme text, in both spellings f(x) and f(t, x),
against nodepy (Ketcheson et al.), which computes them independently: the rooted-tree conditions
of each Butcher tableau, the coefficient conditions of each linear multistep method."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import unroll
from tests.analysis.catalogue import MULTISTEP, runge_kutta_text, timed
from unroll.analysis import is_zero_stable, order, stability_function

nodepy = pytest.importorskip("nodepy")  # the test extra installs it; see pyproject.toml
from nodepy import lm, rk  # noqa: E402

MAX_STAGES = 7


def _writable(method) -> bool:
    """Exact coefficients the scheme language can write: rationals and square roots (not the
    floats of some nodepy tableaus, nor SDIRK34's cos(π/18))."""
    values = [*np.ravel(method.A), *method.b, *method.c]
    return all(
        isinstance(v, (sp.Basic, int))
        and not sp.sympify(v).atoms(sp.Function, sp.NumberSymbol, sp.Float)
        for v in values
    )


RUNGE_KUTTA = {
    name: m
    for name, m in sorted(rk.loadRKM("All").items())
    if len(m) <= MAX_STAGES and _writable(m) and name != "Söderlind43"  # a second spelling
}


def test_the_catalogue_is_the_one_meant():
    explicit = [n for n, m in RUNGE_KUTTA.items() if m.is_explicit()]
    implicit = [n for n, m in RUNGE_KUTTA.items() if not m.is_explicit()]
    # nodepy 1.1.1: 24 explicit methods the scheme language can write, with at most 7 stages
    # (orders 1 to 5: FE ... DP5, HH5), and 13 implicit ones (BE, Gauss, Radau, Lobatto, SDIRK).
    assert len(explicit) >= 20 and {"RK44", "DP5", "CK5", "BuRK65"} <= set(explicit)
    assert len(implicit) >= 10 and {"GL3", "RadauIIA3", "SDIRK54"} <= set(implicit)


@pytest.mark.parametrize("spelling", ["f(x)", "f(t, x)"])
@pytest.mark.parametrize("name", sorted(RUNGE_KUTTA))
def test_runge_kutta_order_is_nodepys(name, spelling):
    m = RUNGE_KUTTA[name]
    text = runge_kutta_text(m.A, m.b, m.c, time=spelling == "f(t, x)")
    assert order(unroll.compile(text)) == m.order(), text


@pytest.mark.parametrize("name", sorted(n for n, m in RUNGE_KUTTA.items() if m.is_explicit()))
def test_runge_kutta_stability_function_is_nodepys(name):
    m = RUNGE_KUTTA[name]
    p, q = m.stability_function(mode="exact")  # numerator and denominator, numpy poly1d
    z = sp.Symbol("z")
    want = sp.Poly(list(p.coeffs), z).as_expr() / sp.Poly(list(q.coeffs), z).as_expr()
    got = stability_function(unroll.compile(runge_kutta_text(m.A, m.b, m.c)))
    assert sp.simplify(got - want) == 0


def test_classical_rk4_written_as_users_write_it_has_order_4():
    # The text of the issue; it used to report order 1 (f(x) read as f(t_k, x) in every stage).
    text = (
        "a = f(x_k); b = f(x_k + h/2 a); c = f(x_k + h/2 b); d = f(x_k + h c); "
        "x_<k+1> = x_k + h/6 (a + 2b + 2c + d)"
    )
    assert order(unroll.compile(text)) == 4
    assert rk.loadRKM("RK44").order() == 4


def test_a_timed_stage_at_the_wrong_time_lowers_the_order():
    # Heun with its second stage evaluated at t instead of t + h: first order on f(t, x);
    # with f(x) spelled, the same stages are Heun's and second order.
    assert order(unroll.compile("a = f(t, x_k); x_<k+1> = x_k + h/2 (a + f(t, x_k + h a))")) == 1
    assert order(unroll.compile("a = f(x_k); x_<k+1> = x_k + h/2 (a + f(x_k + h a))")) == 2


def _nodepy_multistep(name: str):
    _, constructor, k = MULTISTEP[name]
    return getattr(lm, constructor)(k)


@pytest.mark.parametrize("spelling", ["f(x)", "f(t, x)"])
@pytest.mark.parametrize("name", list(MULTISTEP))
def test_multistep_order_is_nodepys(name, spelling):
    text = MULTISTEP[name][0]
    text = text if spelling == "f(x)" else timed(text)
    assert order(unroll.compile(text)) == _nodepy_multistep(name).order(), text


@pytest.mark.parametrize("name", list(MULTISTEP))
def test_multistep_zero_stability_is_nodepys(name):
    s = unroll.compile(MULTISTEP[name][0])
    assert is_zero_stable(s) == bool(_nodepy_multistep(name).is_zero_stable())
