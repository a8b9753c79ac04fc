"""The activation registry: names, parameters, Lambdas, and torch against SymPy.

Reference layers: each activation's SymPy expression evaluated by mpmath (30 digits) is the
reference for its torch function and for the printed torch function.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tolerances import F64_CLOSED_FORM, F64_DILOG
from unroll import UnrollError
from unroll.ir import activations
from unroll.ir.activations import v
from unroll.lowering.eager.activations import dilog, lambdify_torch, torch_function

# float64 against a 30-digit reference: a few ulps of values of size ≤ 10.
F64 = F64_CLOSED_FORM  # tests/tolerances.py

SPECS = [
    "identity", "relu", "sigmoid", "tanh", "softplus", "hardtanh", "atan", "softsign", "gelu",
    "silu", "leaky_relu", "leaky_relu(0.1)", "elu", "elu(0.5)", "elu(2)",
]  # fmt: skip


def _reference(expr: sp.Expr, xs: torch.Tensor) -> torch.Tensor:
    f = sp.lambdify(v, expr, modules="mpmath")
    with mpmath.workdps(30):
        return torch.tensor([float(f(mpmath.mpf(float(x)))) for x in xs], dtype=torch.float64)


def _points(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Within ±10: torch's softplus returns v itself above 20 (an e⁻²⁰ ≈ 2e-9 approximation).
    return torch.cat([torch.rand(40, generator=g, dtype=torch.float64) * 20 - 10,
                      torch.tensor([0.0, -1.0, 1.0], dtype=torch.float64)])  # fmt: skip


def test_every_fixed_activation_is_in_the_list_tested_here():
    fixed = {n for n in activations.names() if "(" not in n}
    assert fixed <= set(SPECS)


@pytest.mark.parametrize("spec", SPECS)
def test_torch_function_matches_sympy(spec):
    act = activations.get(spec)
    xs = _points(1)
    want = _reference(act.expr, xs)
    torch.testing.assert_close(torch_function(act)(xs), want, **F64)
    torch.testing.assert_close(lambdify_torch(act.expr, v)(xs), want, **F64)


def test_families_by_name_and_keyword_agree():
    a = activations.get("leaky_relu(0.1)")
    b = activations.get("leaky_relu", a=0.1)
    assert a.name == b.name == "leaky_relu(0.1)"
    assert a.expr == b.expr
    assert a.params == (("a", sp.Rational(1, 10)),)  # exact, not the binary float 0.1
    assert activations.get("elu").params == (("alpha", 1),)
    assert activations.get("elu( 5e-1 )").name == "elu(0.5)"
    assert activations.get("leaky_relu").params == (("a", sp.Rational(1, 100)),)
    assert activations.get("arctan") is activations.get("atan")


@given(st.floats(min_value=-5, max_value=5, allow_nan=False).filter(lambda a: a != 0))
@settings(max_examples=25, deadline=None)
def test_family_parameter_round_trips_exactly(a):
    act = activations.get(f"leaky_relu({a!r})")
    assert float(act.params[0][1]) == a
    assert activations.get(act.name).expr == act.expr


@pytest.mark.parametrize(
    "text",
    ["nope", "__import__('os')", "elu(x)", "elu(1)(2)", "relu; import os", "elu(1, 2)", ""],
)
def test_unreadable_or_unknown_names_list_the_known_ones(text):
    with pytest.raises(UnrollError, match="known: .*leaky_relu\\(a\\).*relu"):
        activations.get(text)


def test_parameter_errors():
    with pytest.raises(UnrollError, match="relu takes no parameters"):
        activations.get("relu(2)")
    with pytest.raises(UnrollError, match="relu takes no parameters"):
        activations.get("relu", a=2)
    with pytest.raises(UnrollError, match="one parameter 'alpha', not a"):
        activations.get("elu", a=2)
    with pytest.raises(UnrollError, match="given twice"):
        activations.get("elu(1)", alpha=2)
    with pytest.raises(UnrollError, match="must be finite"):
        activations.get("elu", alpha=math.inf)
    with pytest.raises(UnrollError, match="must be a number"):
        activations.get("elu", alpha="2*x")


def test_from_lambda():
    y = sp.Symbol("y")
    act = activations.from_lambda(sp.Lambda(y, 2 * sp.tanh(y)))
    assert act.expr == 2 * sp.tanh(v)
    xs = _points(2)
    torch.testing.assert_close(torch_function(act)(xs), 2 * torch.tanh(xs), **F64)
    soft = activations.from_lambda(
        sp.Lambda(y, sp.Piecewise((y + 1, y < -1), (0, y <= 1), (y - 1, True))), "soft"
    )
    torch.testing.assert_close(
        torch_function(soft)(xs), torch.sign(xs) * torch.clamp(xs.abs() - 1, min=0), **F64
    )
    assert (
        torch_function(soft)(xs).dtype == torch.float64
    )  # integer branch values do not leak through
    relu = activations.from_lambda(sp.Lambda(y, sp.Max(0, y)))
    torch.testing.assert_close(torch_function(relu)(xs), torch.relu(xs), **F64)
    with pytest.raises(UnrollError, match="free symbols besides y: a"):
        activations.from_lambda(sp.Lambda(y, sp.Symbol("a") * y))
    with pytest.raises(UnrollError, match="one variable"):
        activations.from_lambda(sp.Lambda((y, sp.Symbol("z")), y))
    assert activations.from_spec(sp.Lambda(y, y)).expr == v
    assert activations.from_spec(act) is act
    assert activations.from_spec("elu", alpha=0.5).name == "elu(0.5)"


def test_constant_expression_keeps_shape_and_dtype():
    f = lambdify_torch(sp.log(2) + 0 * v, v)
    xs = torch.zeros(3, 2, dtype=torch.float32)
    out = f(xs)
    assert out.shape == (3, 2) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(xs, math.log(2)))


def test_dilog_against_mpmath():
    zs = torch.tensor(
        [-1e6, -37.5, -1.0, -0.3, 0.0, 1e-9, 0.2, 0.5, 0.5000001, 0.8, 0.999999, 1.0],
        dtype=torch.float64,
    )
    want = torch.tensor([float(mpmath.polylog(2, float(z))) for z in zs], dtype=torch.float64)
    torch.testing.assert_close(dilog(zs), want, **F64_DILOG)
    assert torch.isnan(dilog(torch.tensor([1.5], dtype=torch.float64))).all()
