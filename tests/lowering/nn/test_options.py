"""Network options people train with: init, stem and head, stages, one network step h = 1,
coefficient values (per channel, per block, ASCII names)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import unroll
import unroll.nn
from tests.tolerances import F32_COEFFICIENT, F32_ORTHOGONAL, SAMPLE_STD


def mlp(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))


# -- init ------------------------------------------------------------------------------------------
def test_kaiming_init_has_he_scale():
    torch.manual_seed(0)
    n = 256
    net = unroll.schemes["hb_net"].network(2, dim=n, init="kaiming")
    w = net.blocks[0].operators["W"].weight.detach()
    # He normal: std √(2/fan_in); 65536 samples put the sample std within ~0.3% (1σ), 3% is 10σ.
    assert float(w.std()) == pytest.approx(math.sqrt(2 / n), rel=SAMPLE_STD)
    default = unroll.schemes["hb_net"].network(2, dim=n).blocks[0].operators["W"].weight.detach()
    # PyTorch's default, U(−1/√n, 1/√n), has std 1/√(3n): a factor √6 smaller, told apart.
    assert float(default.std()) == pytest.approx(1 / math.sqrt(3 * n), rel=SAMPLE_STD)


def test_xavier_and_orthogonal_inits():
    torch.manual_seed(0)
    n = 64
    w = unroll.schemes["hb_net"].network(1, dim=n, init="xavier").blocks[0].operators["W"]
    w = w.weight.detach()
    bound = math.sqrt(6 / (2 * n))
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.95 * bound
    w = unroll.schemes["hb_net"].network(1, dim=n, init="orthogonal").blocks[0].operators["W"]
    eye = torch.eye(n)
    # float32 QR: orthogonality to a few ulps of the n-term sums, 1e-5 with room
    torch.testing.assert_close(w.weight @ w.weight.T, eye, **F32_ORTHOGONAL)


def test_zeros_init_makes_a_deep_residual_network_the_identity():
    torch.manual_seed(0)
    net = unroll.schemes["forward_euler"].network(16, f=lambda: mlp(), init="zeros")
    x = torch.randn(5, 8)
    assert torch.equal(net(x), x)  # x + 1·0 with the last layer of every branch zero
    first = net.blocks[0].operators["f"][0].weight.detach()
    assert float(first.abs().sum()) > 0  # only the last layer is zeroed
    plain = unroll.schemes["forward_euler"].network(16, f=lambda: mlp())
    assert not torch.equal(plain(x), x)


def test_zeros_init_needs_a_residual_branch_and_names_are_checked():
    with pytest.raises(unroll.UnrollError, match="has no branch"):
        unroll.schemes["hb_net"].network(2, dim=4, init="zeros")
    with pytest.raises(unroll.UnrollError, match="init must be one of"):
        unroll.schemes["hb_net"].network(2, dim=4, init="he")
    with pytest.raises(unroll.UnrollError, match="no Linear or Conv2d"):
        unroll.schemes["forward_euler"].network(2, f=nn.Tanh(), init="zeros")


def test_a_callable_init_is_applied_to_every_operator_module_once():
    seen = []

    def init(module: nn.Module) -> None:
        seen.append(module)
        if isinstance(module, nn.Linear):
            nn.init.constant_(module.weight, 0.25)

    shared = mlp()
    net = unroll.schemes["forward_euler"].network(3, f=shared, init=init)
    assert seen.count(shared) == 1  # shared by the three blocks, initialised once
    assert bool((net.blocks[2].operators["f"][2].weight == 0.25).all())


# -- stem, head, stages ------------------------------------------------------------------------------
def test_dense_stem_and_head_make_a_classifier():
    torch.manual_seed(0)
    net = unroll.schemes["hb_net"].network(4, dim=16, in_dim=64, out_dim=10)
    assert net(torch.randn(5, 64)).shape == (5, 10)
    with pytest.raises(unroll.UnrollError, match="in_dim=64"):
        net(torch.randn(5, 16))
    with pytest.raises(unroll.UnrollError, match="in_dim= adds a dense stem"):
        unroll.schemes["hb_net"].network(4, channels=3, in_dim=64)


def test_conv_stem_and_head():
    torch.manual_seed(0)
    net = unroll.schemes["hb_net"].network(2, channels=8, in_channels=3, num_classes=10)
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    with pytest.raises(unroll.UnrollError, match="num_classes= adds a convolutional"):
        unroll.schemes["hb_net"].network(2, dim=8, num_classes=10)


@pytest.mark.parametrize("name", ["lm_resnet", "forward_euler", "hb_net", "rk4"])
def test_staged_classifier_of_the_papers_shape(name):
    torch.manual_seed(0)
    cnn = unroll.nn.staged(
        unroll.schemes[name], [(4, 2), (8, 1), (16, 2)], in_channels=3, num_classes=10
    )
    assert [s.depth for s in cnn.stages] == [2, 1, 2]
    assert [s.options.channels for s in cnn.stages] == [4, 8, 16]
    assert len(cnn.transitions) == 2
    x = torch.randn(2, 3, 16, 16)
    assert cnn(x).shape == (2, 10)
    # each transition halves the resolution: 16 -> 8 -> 4
    h = cnn.stem(x)
    for i, stage in enumerate(cnn.stages):
        if i:
            h = cnn.transitions[i - 1](h)
        h = stage(h)
    assert h.shape == (2, 16, 4, 4)


def test_staged_passes_every_option_and_checks_its_own():
    cnn = unroll.nn.staged(
        unroll.schemes["lm_resnet"], [(4, 2), (8, 2)], in_channels=3, num_classes=5,
        params={"κ": -0.1}, trainable=[], init="zeros",
    )  # fmt: skip
    assert all(not any("coefficients" in n for n, _ in s.named_parameters()) for s in cnn.stages)
    assert float(cnn.stages[1].blocks[0].coefficients.kappa.detach()) == pytest.approx(-0.1)
    with pytest.raises(unroll.UnrollError, match=r"stages\[1\] must be \(width, depth\)"):
        unroll.nn.staged(unroll.schemes["lm_resnet"], [(4, 2), (8,)], in_channels=3, num_classes=5)
    with pytest.raises(unroll.UnrollError, match="staged sets channels="):
        unroll.nn.staged(
            unroll.schemes["lm_resnet"], [(4, 2)], in_channels=3, num_classes=5, channels=4
        )
    with pytest.raises(unroll.UnrollError, match=r"factory of the width, called f\(4\)"):
        lm = unroll.schemes["lm_resnet"]
        unroll.nn.staged(lm, [(4, 2)], in_channels=3, num_classes=5, f=lambda: nn.Identity())
    with pytest.raises(unroll.UnrollError, match=r"built with in_channels=3: give \(batch, 3,"):
        cnn(torch.randn(2, 1, 8, 8))


def test_a_stem_needs_a_scheme_that_starts_from_one_tensor():
    # RevNet starts from X and Y: a stem's one tensor cannot start it, so it is refused when
    # built, not at the first forward (momentum's v starts at 0: one tensor starts it)
    revnet, f = unroll.schemes["revnet"], {"f": nn.Linear(8, 8), "g": nn.Linear(8, 8)}
    with pytest.raises(unroll.UnrollError, match=r"'revnet' starts from 2 states \(X, Y\)"):
        revnet.network(4, dim=8, in_dim=5, out_dim=3, f=f)
    with pytest.raises(unroll.UnrollError, match=r"'revnet' starts from 2 states \(X, Y\)"):
        unroll.nn.staged(revnet, [(8, 2)], in_channels=3, num_classes=4)
    net = unroll.schemes["momentum_resnet"].network(2, dim=8, in_dim=5, out_dim=3, f=nn.Identity())
    assert net(torch.randn(2, 5)).shape == (2, 3)


# -- one network step --------------------------------------------------------------------------------
ODE_WITH_STEP = [n for n, s in unroll.schemes.items() if s.kind == "ode" and "h" in s.parameters]


@pytest.mark.parametrize("name", ODE_WITH_STEP)
def test_every_ode_scheme_network_uses_h_1_while_run_keeps_its_default(name):
    scheme = unroll.schemes[name]
    branches = {c.op for c in unroll.ir.step.build(scheme).calls if c.kind == "branch"}
    net = scheme.network(2, f={b: mlp() for b in branches})
    assert float(net.blocks[0].coefficients.h.detach()) == 1.0
    assert scheme.defaults()["h"] in (0.1, 1)  # the integrator's default, untouched
    given = scheme.network(2, f={b: mlp() for b in branches}, params={"h": 0.5})
    assert float(given.blocks[0].coefficients.h.detach()) == 0.5


# -- coefficient values -------------------------------------------------------------------------------
def test_a_vector_is_per_channel_only_when_asked():
    with pytest.raises(unroll.UnrollError, match=r"params\['κ'\] has shape \(3,\).*per_channel"):
        unroll.schemes["lm_resnet"].network(2, f=mlp(3), params={"κ": torch.tensor([-0.1] * 3)})
    net = unroll.schemes["lm_resnet"].network(
        2, f=mlp(3), dim=3, per_channel=["kappa"], params={"kappa": torch.tensor([-0.1, 0, 0.1])}
    )
    assert net.blocks[1].coefficients.kappa.shape == (3,)
    with pytest.raises(unroll.UnrollError, match=r"params\['κ'\].*needs 3 values"):
        unroll.schemes["lm_resnet"].network(
            2, f=mlp(3), dim=3, per_channel=["κ"], params={"κ": torch.zeros(4)}
        )


def test_per_block_values_from_a_sequence_or_a_callable():
    torch.manual_seed(0)
    values = [-0.1, -0.05, 0.0, 0.05]
    net = unroll.schemes["lm_resnet"].network(
        4, f=lambda: mlp(), params={"κ": unroll.per_block(values)}
    )
    got = [float(b.coefficients.kappa.detach()) for b in net.blocks]
    # float32 through the bound's logit/sigmoid
    assert got == pytest.approx(values, abs=F32_COEFFICIENT)
    paper = unroll.schemes["lm_resnet"].network(
        6, f=lambda: mlp(), params={"κ": unroll.per_block(lambda n: -0.1 + 0.02 * n)}
    )
    got = [float(b.coefficients.κ.detach()) for b in paper.blocks]
    assert got == pytest.approx([-0.1 + 0.02 * n for n in range(6)], abs=F32_COEFFICIENT)
    with pytest.raises(unroll.UnrollError, match="per_block gives 4 values for 3 blocks"):
        unroll.schemes["lm_resnet"].network(
            3, f=lambda: mlp(), params={"κ": unroll.per_block(values)}
        )
    with pytest.raises(unroll.UnrollError, match="tied=True shares one"):
        unroll.schemes["lm_resnet"].network(
            4, f=mlp(), tied=True, params={"κ": unroll.per_block(values)}
        )
    with pytest.raises(unroll.UnrollError, match="wrap an initialiser"):
        unroll.schemes["lm_resnet"].network(2, f=mlp(), params={"κ": lambda n: 0.0})


def test_ascii_names_work_wherever_greek_ones_do():
    net = unroll.schemes["hb_net"].network(
        2, dim=4, params={"beta": 0.3}, trainable=["beta"], per_channel=[]
    )
    c = net.blocks[0].coefficients
    assert float(c.beta.detach()) == pytest.approx(0.3) and torch.equal(c.beta, c.β)
    c.β = torch.tensor(0.7)
    assert float(c.beta.detach()) == pytest.approx(0.7)
    assert "blocks.0.coefficients.raw_beta" in dict(net.named_parameters())


def test_a_state_dict_loads_into_another_build():
    torch.manual_seed(0)
    a = unroll.nn.staged(
        unroll.schemes["lm_resnet"], [(4, 1), (8, 1)], in_channels=3, num_classes=5
    )
    b = unroll.nn.staged(
        unroll.schemes["lm_resnet"], [(4, 1), (8, 1)], in_channels=3, num_classes=5
    )
    x = torch.randn(2, 3, 8, 8)
    a.eval(), b.eval()
    assert not torch.equal(a(x), b(x))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))


def test_zeros_init_zeroes_the_normalisation_after_the_last_conv_and_refuses_a_dead_relu():
    torch.manual_seed(0)
    net = unroll.schemes["forward_euler"].network(
        2, f=lambda: unroll.nn.basic_branch(3), init="zeros"
    )
    branch = net.blocks[0].operators["f"]
    bn = branch[4]
    assert float(bn.weight.detach().abs().sum()) == 0 and float(bn.bias.detach().abs().sum()) == 0
    assert float(branch[3].weight.detach().abs().sum()) > 0  # the conv before it keeps its init
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(net.train()(x), x)  # identity at the start, BatchNorm in training mode too
    dead = lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU())  # noqa: E731
    with pytest.raises(unroll.UnrollError, match="ends in ReLU.*slope 0 at 0"):
        unroll.schemes["forward_euler"].network(2, f=dead, init="zeros")


class _ReluInForward(nn.Module):
    """A branch whose ReLU after the last layer is in forward(), where no Sequential shows it."""

    def __init__(self, width: int = 8, act=torch.relu):
        super().__init__()
        self.layer, self.act = nn.Linear(width, width), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.layer(x))


def test_zeros_init_refuses_a_dead_branch_found_only_by_running_it():
    fe = unroll.schemes["forward_euler"]
    for options in ({"dim": 8}, {}):  # the width from dim=, or from the branch's first Linear
        with pytest.raises(unroll.UnrollError, match="branch f gets no gradient in the layer"):
            fe.network(2, f=_ReluInForward, init="zeros", **options)
    net = fe.network(2, f=lambda: _ReluInForward(act=torch.tanh), init="zeros", dim=8)  # trains
    x = torch.randn(3, 8)
    assert torch.equal(net(x), x)
    net(x).square().sum().backward()
    assert net.blocks[0].operators["f"].layer.weight.grad.abs().sum() > 0
