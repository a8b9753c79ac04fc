"""The kernel view of a step (`unroll.lowering.triton.block`): read off the step IR, never
walked from the scheme on its own."""

from __future__ import annotations

import pytest
import sympy as sp

import unroll
from unroll import UnrollError
from unroll.ir.step import build
from unroll.lowering.triton.block import is_per_channel, kernel_view


def _leaf(ir, name):
    return ir.leaves()[sp.Symbol(name, real=True)]


@pytest.mark.parametrize("name", sorted(unroll.schemes))
def test_every_leaf_of_the_view_is_the_irs_own(name):
    """Inputs, coefficients and outputs are the IR's leaf objects themselves (not copies built
    by a second walker), and the outputs are all of the IR's tensor-state updates."""
    ir = build(unroll.schemes[name])
    view = kernel_view(ir)
    irs = [*ir.history, *ir.calls, *ir.coefficients, *ir.host]
    for leaf in (*view.inputs, *view.coefficients):
        assert any(leaf is x for x in irs), leaf
    assert view.outputs == tuple(u for u in ir.updates if u.state is not None)
    assert all(a is b for a, b in zip(view.outputs, ir.updates, strict=False))


def test_hb_net_view_written_out_by_hand():
    """x_<k+1> = relu(W x_k + b + β(x_k − x_<k-1>)): reads x_k, x_km1 and o_0 = W(x_k), the
    coefficients β then the per-channel b, and computes max(0, ·) (relu's SymPy form)."""
    ir = build(unroll.schemes["hb_net"])
    view = kernel_view(ir)
    x_k, x_km1, o_0, beta, b = (
        sp.Symbol(n, real=True) for n in ("x_k", "x_km1", "o_0", "beta", "b")
    )
    assert [i.symbol for i in view.inputs] == [x_k, x_km1, o_0]
    assert [c.symbol for c in view.coefficients] == [beta, b]
    assert [is_per_channel(c) for c in view.coefficients] == [False, True]
    assert view.states == ("x",)
    assert sp.simplify(view.expressions[0] - sp.Max(0, o_0 + b + beta * (x_k - x_km1))) == 0


def test_host_values_are_coefficients():
    """nesterov_schedule's β_k (a stage of the scalar θ) and a scalar state read directly
    (θ_k below) are host values: coefficients of the kernel, never tensors it loads."""
    ir = build(unroll.schemes["nesterov_schedule"])
    view = kernel_view(ir)
    assert [c.name for c in view.coefficients] == ["alpha", "beta"]
    assert view.coefficients[1] is _leaf(ir, "beta")
    ir = build(unroll.compile("x_<k+1> = x_k - θ_k ∇F(x_k); θ_<k+1> = θ_k/2"))
    view = kernel_view(ir)
    assert [i.name for i in view.inputs] == ["x_k", "o_0"]
    assert [c.name for c in view.coefficients] == ["theta_k"]


def test_the_view_reads_only_what_the_update_reads():
    """AGD-Net's update φ(W y + b) reads o_0 and b; x_k and β only feed the call's argument."""
    view = kernel_view(build(unroll.schemes["agd_net"]))
    assert [i.name for i in view.inputs] == ["o_0"]
    assert [c.name for c in view.coefficients] == ["b"]


def test_an_explicit_activation_replaces_phi_and_a_step_without_phi_drops_it():
    view = kernel_view(build(unroll.schemes["hb_net"]), "tanh")
    assert view.activation == "tanh" and view.expressions[0].has(sp.tanh)
    assert kernel_view(build(unroll.schemes["heavy_ball"]), "tanh").activation is None


def test_refusals_name_the_reason():
    with pytest.raises(UnrollError, match="implicit"):
        kernel_view(build(unroll.compile("x_<k+1> = x_k - α ∇F(x_<k+1>)")))
    with pytest.raises(UnrollError, match="names no activation"):
        kernel_view(build(unroll.compile("x_<k+1> = φ(W x_k)")))
