"""The ODE reading of the step IR (`unroll.analysis.ode`), against the schemes' own equations, and
the rule that no analysis walks a scheme's equations itself."""

from __future__ import annotations

import ast

import pytest
import sympy as sp

import unroll
from tests import ROOT
from unroll.analysis.ode import ode_step
from unroll.ir import vocabulary as vocab


def _program_value(step) -> sp.Expr:
    """The new value with every branch written back as an application: the scheme's update."""
    apps: dict = {}
    for b in step.branches:
        arg = b.arg.xreplace(apps)
        apps[b.symbol] = b.gain * sp.Function("f")(arg)
    return step.updates[-1].expr.xreplace(apps)


def test_rk4_reads_as_four_branches_and_one_update():
    step = ode_step(unroll.schemes["rk4"], "test")
    assert step.state == "x" and step.depth == 1 and step.is_explicit
    assert len(step.branches) == 4 and [len(step.updates)] == [1]
    h = step.h
    assert [sp.expand(b.tau) for b in step.branches] == [0, h / 2, h / 2, h]
    assert not step.autonomous and all(b.timed for b in step.branches)
    # the update, written back in the scheme's symbols, is the scheme's substituted equation
    x, k = sp.IndexedBase("x"), vocab.index_symbol("k")
    f, hs = sp.Function("f"), sp.Symbol("h")
    a = f(x[k])
    b = f(x[k] + hs / 2 * a)
    c = f(x[k] + hs / 2 * b)
    d = f(x[k] + hs * c)
    want = x[k] + hs / 6 * (a + 2 * b + 2 * c + d)
    got = step.scheme_form(_program_value(step))
    assert sp.expand(got - want) == 0


def test_autonomous_branches_and_a_stepless_scheme():
    step = ode_step(unroll.compile("a = f(x_k); x_<k+1> = x_k + h/2 (a + f(x_k + h a))"), "t")
    assert step.autonomous and not any(b.timed for b in step.branches)
    poly = ode_step(unroll.schemes["polynet"], "t")
    assert poly.stepless and all(b.gain == poly.h for b in poly.branches)
    assert poly.scheme_form(poly.h) == sp.Symbol("h")


def test_implicit_stages_are_unknowns_before_the_new_value():
    step = ode_step(unroll.compile("a = f(x_k + h/2 a); x_<k+1> = x_k + h a"), "t")
    assert not step.is_explicit
    assert step.unknowns[-1] == step.new and len(step.unknowns) == 2


def test_given_parameters_are_substituted_and_the_step_is_refused():
    step = ode_step(unroll.schemes["lm_resnet"], "t", {"kappa": 0.5})
    assert not any(s.name == "kappa" for s in step.updates[-1].expr.free_symbols)
    with pytest.raises(unroll.UnrollError, match="treats the step h as a symbol"):
        ode_step(unroll.schemes["lm_resnet"], "order", {"h": 0.1})
    with pytest.raises(unroll.UnrollError, match="is an optimizer scheme"):
        ode_step(unroll.schemes["heavy_ball"], "order")


def test_no_analysis_walks_a_schemes_equations():
    # Every analysis reads the step IR: no module of unroll/analysis reads `.equations`.
    readers = []
    for path in sorted((ROOT / "unroll" / "analysis").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "equations":
                readers.append(f"{path.name}:{node.lineno}")
    assert not readers, readers
