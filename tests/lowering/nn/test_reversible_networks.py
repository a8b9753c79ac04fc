"""scheme.network(..., reversible=True): the backward pass rebuilds each layer's states with
the scheme's inverse step; gradients as standard autograd's, memory flat in the depth."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import unroll
from benchmarks.reversible import saved_bytes
from tests.tolerances import F64_GRADIENT, REVERSIBLE_GRAD_RTOL


def dense(width: int = 4):
    return lambda: nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))


def conv(channels: int = 2):
    return lambda: nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(channels, channels, 3, padding=1),
    )


def _pair(name: str, depth: int, **options):
    torch.manual_seed(0)
    net = unroll.schemes[name].network(depth, **options).double()
    rev = unroll.schemes[name].network(depth, reversible=True, **options).double()
    rev.load_state_dict(net.state_dict())
    return net, rev


def _grads(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = net(x)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    return list(torch.autograd.grad((out * weights).sum(), [x, *net.parameters()]))


CASES = [
    # name, options, input shape
    ("momentum_resnet", {"f": dense(), "params": {"γ": 0.9}, "trainable": ["γ"]}, (3, 4)),
    ("momentum_resnet", {"f": dense(), "tied": True, "trainable": ["γ"]}, (3, 4)),
    ("leapfrog", {"f": dense(), "trainable": ["h"], "params": {"h": 0.5}}, (3, 4)),
    ("leapfrog", {"f": conv(), "tied": True}, (2, 2, 4, 4)),
    ("momentum_resnet", {"f": conv(), "trainable": ["γ"]}, (2, 2, 4, 4)),
]


@pytest.mark.parametrize("depth", [16, 64])
@pytest.mark.parametrize("name, options, shape", CASES)
def test_gradients_equal_standard_autograd_in_float64(name, options, shape, depth):
    net, rev = _pair(name, depth, **options)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(rev(x), net(x), rtol=0, atol=0)  # the forward is the same code
    assert any(p.requires_grad for p in rev.parameters())
    for got, want in zip(_grads(rev, x), _grads(net, x), strict=True):
        # rebuilding 64 layers backwards multiplies rounding by at most (1/γ)^64 ≈ 850 (γ = 0.9)
        # in float64: the bound, 1e-8 relative to the gradient's size
        scale = float(want.abs().max())
        bound = REVERSIBLE_GRAD_RTOL * max(scale, 1e-300)
        assert float((got - want).abs().max()) <= bound, (got, want)


def _saved_bytes(net: nn.Module, x: torch.Tensor) -> int:
    return saved_bytes(lambda: net(x).sum(), exclude=list(net.parameters()))[0]


@pytest.mark.parametrize("name", ["momentum_resnet", "leapfrog"])
def test_activation_memory_does_not_grow_with_depth(name):
    x = torch.randn(8, 4, dtype=torch.float64)
    saved = {}
    for depth in (16, 64):
        net, rev = _pair(name, depth, f=dense(), tied=True)
        saved[depth] = _saved_bytes(net, x), _saved_bytes(rev, x)
    (std16, rev16), (std64, rev64) = saved[16], saved[64]
    assert rev16 == rev64  # flat: the unroll keeps the last history only
    assert std64 > 3.5 * std16  # standard backprop: linear in the depth (4x the layers)
    assert rev64 < std16


def test_an_inverse_that_amplifies_beyond_the_dtype_is_refused_with_the_factor():
    torch.manual_seed(0)
    net = unroll.schemes["lm_resnet"].network(16, f=dense(), params={"κ": -0.05}, reversible=True)
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(unroll.UnrollError, match=r"amplify errors by 9\.7\de\+20"):
        net.double()(x).sum().backward()
    with torch.no_grad():  # nothing is rebuilt without a backward pass: it runs
        assert net(x).shape == (3, 4)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("hb_net", {"dim": 4}, "relu is not invertible"),
        ("heavy_ball_velocity", {"dim": 4, "activation": "tanh"}, "would need the inverse of φ"),
        # φ = identity could be solved for, but the predicted amplification would not cover W:
        # measured, a rebuilt gradient of a tied 64-layer network was off by 16% in float64
        ("heavy_ball_velocity", {"dim": 4, "activation": "identity"}, "would not bound what W"),
        ("forward_euler", {"f": dense()}, "implicit"),
        ("nesterov_schedule", {"dim": 4, "activation": "identity"}, "scalar state"),
    ],
)
def test_a_scheme_without_an_inverse_is_refused_when_built(name, options, message):
    with pytest.raises(unroll.UnrollError, match=message):
        unroll.schemes[name].network(4, reversible=True, **options)


def test_a_reversible_network_saves_and_loads(tmp_path):
    net, rev = _pair("momentum_resnet", 4, f=dense())
    x = torch.randn(2, 4, dtype=torch.float64)
    torch.save(rev, tmp_path / "rev.pt")
    again = torch.load(tmp_path / "rev.pt", weights_only=False)
    for got, want in zip(_grads(again, x), _grads(net, x), strict=True):
        torch.testing.assert_close(got, want, **F64_GRADIENT)


class _Pair(nn.Module):
    """A two-state network (RevNet's X, Y) as a function of one stacked tensor."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        out = self.net({"X": xy[0], "Y": xy[1]})
        return torch.stack([out["X"], out["Y"]])


def _seeded_grads(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    torch.manual_seed(5)  # the same stochastic-depth gains in both networks
    return _grads(net, x)


@pytest.mark.parametrize("stochastic", ["drop", "noise"])
@pytest.mark.parametrize("name", ["momentum_resnet", "leapfrog", "revnet"])
def test_stochastic_depth_is_rebuilt_with_the_gains_the_forward_drew(name, stochastic):
    # The inverse step scales the branch outputs by the forward's gain. RevNet's g reads
    # X_k + f(Y_k) with f's output unscaled, so only the gains 0 and 1 of "drop" invert.
    f = {"f": dense(), "g": dense()} if name == "revnet" else dense()
    options = {"f": f, "survival": 0.5, "stochastic": stochastic}
    if name == "revnet" and stochastic == "noise":
        with pytest.raises(unroll.UnrollError, match=r"g\(f\(Y_k\) \+ X_k\) reads another"):
            unroll.schemes[name].network(8, reversible=True, **options)
        return
    net, rev = _pair(name, 8, **options)
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if name == "revnet":
        x = torch.stack([x, x.flip(0)])  # X and Y
        net, rev = _Pair(net), _Pair(rev)
    for got, want in zip(_seeded_grads(rev, x), _seeded_grads(net, x), strict=True):
        # 8 layers: the rebuild amplifies rounding little, so float64's other-route bound holds
        torch.testing.assert_close(got, want, **F64_GRADIENT)
    if name == "revnet":  # eval() with gradients on: gains p_n, which RevNet cannot invert
        with pytest.raises(unroll.UnrollError, match="gains other than 0 and 1"):
            rev.eval()(x).sum().backward()
