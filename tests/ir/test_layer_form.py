"""The layer form (`unroll.ir.layer_form`): optimizer steps as network layers, written out by
hand from the proximal-gradient reading of docs/theory.md section 2 (a gradient step
p − α∇F(p) becomes φ(W p + b))."""

from __future__ import annotations

import pytest
import sympy as sp
import torch

import unroll
from tests.tolerances import F64_ROUNDING
from unroll.ir.layer_form import layer_form


def same(scheme, text):
    want = unroll.compile(text)
    assert len(scheme.equations) == len(want.equations)
    for got, eq in zip(scheme.equations, want.equations, strict=True):
        assert got.lhs == eq.lhs and sp.expand(got.rhs - eq.rhs) == 0, (got, eq)


@pytest.mark.parametrize(
    "text, layer",
    [
        # Nesterov's velocity form: x_<k+1> = (x_k + β v_k) − α∇F(x_k + β v_k) is the gradient
        # step, so φ wraps x's update (AGD-Net), and v is re-derived from it, not wrapped.
        (
            "v_<k+1> = β v_k - α∇F(x_k + β v_k); x_<k+1> = x_k + v_<k+1>",
            "x_<k+1> = φ(W(x_k + β v_k) + b); v_<k+1> = x_<k+1> - x_k",
        ),
        # Heavy ball's velocity form: no state is a plain gradient step; φ wraps the state ∇F
        # is evaluated at, and v is re-derived (HB-Net).
        (
            "v_<k+1> = β v_k - α∇F(x_k); x_<k+1> = x_k + v_<k+1>",
            "x_<k+1> = φ(x_k + β v_k + W x_k + b - x_k); v_<k+1> = x_<k+1> - x_k",
        ),
        # Nesterov with the extrapolated point as a state: x is the gradient step from y.
        (
            "x_<k+1> = y_k - α∇F(y_k); y_<k+1> = x_<k+1> + β(x_<k+1> - x_k)",
            "x_<k+1> = φ(W y_k + b); y_<k+1> = x_<k+1> + β(x_<k+1> - x_k)",
        ),
        ("x_<k+1> = x_k + β(x_k - x_<k-1>) - α∇F", "x_<k+1> = φ(W x_k + b + β(x_k - x_<k-1>))"),
    ],
)
def test_layer_forms_written_by_hand(text, layer):
    same(layer_form(unroll.compile(text)), layer)


def test_nesterov_velocity_layer_runs_as_agd_net():
    # Same W, b and β: the velocity-form network and the bundled AGD-Net layer give the same
    # states (v_k = x_k − x_<k-1> with v_0 = 0, x_<-1> = x_0).
    velocity = unroll.compile("v_<k+1> = β v_k - α∇F(x_k + β v_k); x_<k+1> = x_k + v_<k+1>")
    torch.manual_seed(0)
    W = torch.randn(5, 5, dtype=torch.float64) / 3
    b = torch.randn(5, dtype=torch.float64)
    x0 = torch.randn(5, dtype=torch.float64)
    opts = {"activation": "tanh", "W": W, "β": 0.4, "b": b}
    start = {"x": x0, "v": torch.zeros(5, dtype=torch.float64)}
    got = unroll.layer_form(velocity).run(start, 6, **opts)
    want = unroll.schemes["agd_net"].run(x0, 6, **opts)
    assert torch.allclose(got["x"], want, **F64_ROUNDING)  # the same arithmetic, reordered
