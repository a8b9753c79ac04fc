"""The front end's table of activation names agrees with `unroll.ir.activations`."""

import pytest

import unroll
from unroll.frontend import activation_names
from unroll.ir import activations


def test_the_same_names():
    assert activation_names.names() == activations.names()


@pytest.mark.parametrize(
    "spec",
    [
        "relu", "tanh", "arctan", "linear", "gelu", "leaky_relu(0.1)", "elu( 1e-1 )", "elu",
        "leaky_relu", "relu(2)", "gelu_fast", "Relu", "leaky relu", "elu(x)", "", "1relu",
    ],
)  # fmt: skip
def test_the_same_specs_are_accepted(spec):
    try:
        activations.get(spec)
        accepted = True
    except unroll.UnrollError:
        accepted = False
    if accepted:
        assert activation_names.check(spec) == spec
    else:
        with pytest.raises(unroll.UnrollError):
            activation_names.check(spec)
