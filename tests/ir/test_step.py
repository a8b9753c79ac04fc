"""The step IR: what `build` makes of a scheme, checked against the scheme's own equations."""

from __future__ import annotations

import pytest
import sympy as sp

import unroll
from unroll.ir import vocabulary as vocab
from unroll.ir.step import build


def _substituted(scheme) -> dict[str, sp.Expr]:
    """Each state's new value with stages and earlier new values substituted, from the
    scheme's equations directly (the reference the IR is held to)."""
    subst: dict = {}
    out = {}
    for eq in scheme.equations:
        value = eq.rhs.xreplace(subst)
        subst[eq.lhs] = value
        if isinstance(eq.lhs, sp.Indexed):
            out[eq.lhs.base.label.name] = value
    return out


@pytest.mark.parametrize("name", sorted(unroll.schemes))
def test_scheme_form_of_every_update_is_the_scheme_substituted(name):
    scheme = unroll.schemes[name]
    ir = build(scheme)
    want = _substituted(scheme)
    got = {u.state: ir.scheme_form(u.expr) for u in ir.updates}
    got.update({a.state: ir.scheme_form(a.expr) for a in ir.host if a.state})
    assert set(got) == set(want)
    for state, value in want.items():
        assert sp.simplify(got[state] - value) == 0, (state, got[state], value)


def test_heavy_ball_is_one_gradient_call_and_one_update():
    ir = build(unroll.schemes["heavy_ball"])
    assert [h.name for h in ir.history] == ["x_k", "x_km1"]
    assert [c.text() for c in ir.calls] == ["o_0 = ∇F(x_k)"]
    (update,) = ir.updates
    x_k, x_km1, alpha, beta, o_0 = sp.symbols("x_k x_km1 alpha beta o_0", real=True)
    assert sp.expand(update.expr - (x_k + beta * (x_k - x_km1) - alpha * o_0)) == 0


def test_a_repeated_application_is_called_once_and_autonomous_f_has_no_time():
    ir = build(unroll.compile("a = f(x_k); x_<k+1> = x_k + h/2 (a + f(x_k + h a)) + 0 f(x_k)"))
    assert [c.text() for c in ir.calls] == ["o_0 = f(x_k)", "o_1 = f(h*o_0 + x_k)"]
    assert all(c.time is None for c in ir.calls)
    timed = build(unroll.compile("x_<k+1> = x_k + h f(t + h, x_k)"))
    assert timed.calls[0].time == sp.Symbol("h", real=True) + sp.Symbol("t", real=True)


def test_scalar_states_and_their_stages_are_host_values():
    ir = build(unroll.schemes["nesterov_schedule"])
    assert [(a.name, a.state) for a in ir.host] == [("beta", None), ("theta_kp1", "θ")]
    assert [u.state for u in ir.updates] == ["x"]
    assert sp.Symbol("beta", real=True) in ir.calls[0].arg.free_symbols


def test_start_up_scheme_is_resolved_and_checked_once():
    assert build(unroll.schemes["ab2"]).startup.scheme.name == "heun"
    bad = unroll.compile("x_<k+1> = x_<k-1> + 2h f(x_k)")
    bad = type(bad)(bad.equations, startup="heavy_ball")
    with pytest.raises(unroll.UnrollError, match="start-up scheme 'heavy_ball' must be one-step"):
        build(bad)


def test_implicit_unknowns_are_leaves_and_map_back():
    ir = build(unroll.compile("x_<k+1> = x_k + h f(x_<k+1>)"))
    (update,) = ir.updates
    assert update.symbol in ir.calls[0].arg.free_symbols  # f reads the unknown x_kp1
    x, k = sp.IndexedBase("x"), vocab.index_symbol("k")
    assert ir.scheme_form(update.expr) == x[k] + sp.Symbol("h") * sp.Function("f")(x[k + 1])


def test_names_are_identifiers_even_for_hostile_parameter_names():
    ir = build(unroll.compile("x_<k+1> = x_k - λ mask tl ∇F + lambda_v"))
    names = [c.name for c in ir.parameters]
    assert all(n.isidentifier() and not n.startswith("_") for n in names)
    assert len(set(names)) == len(names)
    assert "lambda" not in names and "mask" not in names and "tl" not in names


def test_layer_build_reads_the_layer_form():
    ir = build(unroll.schemes["heavy_ball"], layer=True)
    assert ir.layer and [c.op for c in ir.calls] == ["W"]
    assert ir.uses_activation
