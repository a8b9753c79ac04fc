"""Deep to parallel: the truncated expansion of a residual stack, against the stack itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import unroll
from tests.tolerances import F64_REROUTED, F64_SAME_OPS
from unroll.errors import UnrollError
from unroll.experiments.digits import one_thread
from unroll.experiments.parallel import Parallel, Residual

DT = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """These networks are tiny: intra-op threads only add waiting on a busy machine."""
    with one_thread():
        yield


class Scaled(nn.Module):
    """ε·g: a branch whose size is set by ε."""

    def __init__(self, g: nn.Module, eps: float):
        super().__init__()
        self.g, self.eps = g, eps

    def forward(self, x):
        return self.eps * self.g(x)


class Block(nn.Module):
    """A residual block of another shape: the branch is called ``branch``."""

    def __init__(self, branch: nn.Module):
        super().__init__()
        self.branch = branch

    def forward(self, x):
        return x + self.branch(x)


def _branches(k: int, dim: int = 5, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(dim, 7), nn.Tanh(), nn.Linear(7, dim)).to(DT) for _ in range(k)]


def _x(n: int = 16, dim: int = 5) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(1), dtype=DT)


@pytest.mark.parametrize("order, expected", [(1, 2.0), (2, 3.0)])
def test_truncation_error_has_the_order_of_the_expansion(order, expected):
    """Branches ε·g_k: the first neglected terms are O(ε²) (order 1) and O(ε³) (order 2)."""
    gs, x = _branches(4), _x()
    eps = np.logspace(-3, -1, 5)
    errors = []
    for e in eps:
        deep = nn.Sequential(*[Residual(Scaled(g, float(e))) for g in gs])
        wide = unroll.parallelize(deep, order=order)
        with torch.no_grad():
            errors.append(float((deep(x) - wide(x)).norm()))
    slope = np.polyfit(np.log(eps), np.log(errors), 1)[0]
    assert abs(slope - expected) < 0.3, (errors, slope)


def test_order_two_beats_order_one_at_small_branches():
    gs, x = _branches(3), _x()
    deep = nn.Sequential(*[Residual(Scaled(g, 0.01)) for g in gs])
    with torch.no_grad():
        e1 = (deep(x) - unroll.parallelize(deep, 1)(x)).norm()
        e2 = (deep(x) - unroll.parallelize(deep, 2)(x)).norm()
    assert e2 < 0.05 * e1


def test_cross_terms_are_the_jacobian_products():
    """Order 2 minus order 1 is Σ_{k>j} J_{f_k}(x) f_j(x), built here from full Jacobians."""
    gs, x = _branches(3), _x(n=4)
    deep = nn.Sequential(*[Residual(g) for g in gs])
    with torch.no_grad():
        cross = unroll.parallelize(deep, 2)(x) - unroll.parallelize(deep, 1)(x)
    expected = torch.zeros_like(x)
    for n in range(len(x)):
        for k in range(3):
            J = torch.autograd.functional.jacobian(gs[k], x[n])
            for j in range(k):
                expected[n] += J @ gs[j](x[n]).detach()
    torch.testing.assert_close(cross, expected, **F64_REROUTED)


@pytest.mark.parametrize("order", [1, 2])
def test_exact_for_one_block(order):
    (g,) = _branches(1)
    deep = nn.Sequential(Residual(g))
    x = _x()
    with torch.no_grad():
        assert torch.equal(unroll.parallelize(deep, order)(x), deep(x))


def test_share_or_copy():
    gs = _branches(2)
    deep = nn.Sequential(Residual(gs[0]), Block(gs[1]))
    shared = unroll.parallelize(deep, share=True)
    copied = unroll.parallelize(deep, share=False)
    assert shared.branches[0] is gs[0] and shared.branches[1] is gs[1]
    for a, b in zip(copied.parameters(), deep.parameters(), strict=True):
        assert a is not b and torch.equal(a, b)
    x = _x()
    with torch.no_grad():
        before = copied(x)
        gs[0][0].weight.add_(1.0)
        torch.testing.assert_close(copied(x), before, rtol=0, atol=0)
        assert not torch.equal(shared(x), before)


@pytest.mark.parametrize("order", [1, 2])
def test_trains_by_backprop(order):
    gs, x = _branches(3), _x()
    wide = unroll.parallelize(nn.Sequential(*[Residual(g) for g in gs]), order)
    wide(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in wide.parameters())


def test_bad_inputs_are_named():
    wide = unroll.parallelize(nn.Sequential(Residual(nn.Identity()), nn.Linear(3, 4)))
    with pytest.raises(
        UnrollError, match=r"model\[1\]: Linear maps x of shape \(2, 3\) to \(2, 4\)"
    ):
        wide(torch.zeros(2, 3))
    with pytest.raises(UnrollError, match="nn.Sequential"):
        unroll.parallelize(Residual(nn.Identity()))
    with pytest.raises(UnrollError, match="order"):
        unroll.parallelize(nn.Sequential(Residual(nn.Identity())), order=3)
    with pytest.raises(UnrollError, match="order"):
        unroll.parallelize(nn.Sequential(Residual(nn.Identity())), order=True)
    wide = Parallel([nn.Linear(5, 2)])
    with pytest.raises(UnrollError, match="branch 0"):
        wide(torch.zeros(1, 5))


def test_cli_compares_layouts_from_one_start(tmp_path):
    """K = 1 is the same function in both layouts, so training must give identical numbers;
    for K = 2 the layouts differ from the start (a positive init gap)."""
    pytest.importorskip("sklearn")
    from click.testing import CliRunner

    from unroll.cli import cli
    from unroll.cli.commands.parallel import experiment

    runs = experiment(depths=[1, 2], width=8, hidden=8, epochs=2, seeds=1, lr=1e-2, order=1)
    by = {(r.depth, r.layout): r for r in runs}
    assert by[1, "sequential"].curve == by[1, "parallel"].curve
    assert by[1, "sequential"].init_gap == 0
    assert by[2, "sequential"].init_gap > 0
    assert by[2, "sequential"].curve != by[2, "parallel"].curve
    assert by[2, "sequential"].params == by[2, "parallel"].params

    args = ["parallel", "--depths", "1,2", "--width", "8", "--hidden", "8", "--epochs", "1"]
    result = CliRunner().invoke(cli, [*args, "--seeds", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "parallel.md").read_text()
    assert "unroll parallel --depths 1,2 --width 8" in text
    assert text.count("\n| 1 |") == 1 and text.count("\n| 2 |") == 1
    assert (tmp_path / "parallel.png").read_bytes()[:4] == b"\x89PNG"

    bad = CliRunner().invoke(cli, ["parallel", "--depths", "2,x"])
    assert bad.exit_code == 2 and "--depths" in bad.output


def _scheme_net(scheme: str, depth: int, h: float, **options) -> nn.Module:
    """``depth`` steps of a bundled scheme with branches Linear → tanh → Linear, float64."""
    torch.manual_seed(0)

    def f():
        return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 5))

    opts = {"dim": 5, "f": f, "params": {"h": h}, "backend": "torch", **options}
    return unroll.schemes[scheme].network(depth, **opts).to(DT)


def test_forward_euler_network_order_one_is_the_sum_of_its_branches():
    """Forward Euler's block is x + h f_k(x): the wide form is x + h Σ_k f_k(x), written out
    here from the network's own branch modules."""
    net, x = _scheme_net("forward_euler", 3, 0.3), _x()
    fs = [block.operators["f"] for block in net.blocks]
    h = net.blocks[0].coefficients.values()["h"]  # 0.3 rounded to float32, the default dtype
    with torch.no_grad():
        expected = x + h * sum(f(x) for f in fs)
        # rounding only: (x + h f) − x loses the bits of |x| ≈ 1 at float64 eps, summed 3×
        torch.testing.assert_close(unroll.parallelize(net)(x), expected, **F64_SAME_OPS)


@pytest.mark.parametrize("scheme", ["forward_euler", "midpoint"])
@pytest.mark.parametrize("order, expected", [(1, 2.0), (2, 3.0)])
def test_scheme_network_truncation_order(scheme, order, expected):
    """A network from a one-step scheme is a residual stack with increments O(h): the wide
    form's error against the network shrinks like h² (order 1) and h³ (order 2)."""
    x, hs, errors = _x(), np.logspace(-3, -1, 4), []
    for h in hs:
        net = _scheme_net(scheme, 3, float(h))
        with torch.no_grad():
            errors.append(float((net(x) - unroll.parallelize(net, order)(x)).norm()))
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert abs(slope - expected) < 0.3, (errors, slope)


@pytest.mark.parametrize("order", [1, 2])
def test_scheme_network_of_one_step_is_exact(order):
    net, x = _scheme_net("midpoint", 1, 0.5), _x()
    with torch.no_grad():
        # (x + Δ) − x + x differs from x + Δ by rounding at float64 eps of |x| ≈ 1 only
        torch.testing.assert_close(unroll.parallelize(net, order)(x), net(x), **F64_SAME_OPS)


def test_sequential_of_scheme_layers():
    """Blocks from Scheme.layer in an nn.Sequential are residual blocks too (at step 0)."""
    torch.manual_seed(0)
    layers = [
        unroll.schemes["forward_euler"].layer(
            dim=5, f=nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 5)),
            params={"h": 0.2}, backend="torch",
        ).to(DT)
        for _ in range(2)
    ]  # fmt: skip
    x, h = _x(), layers[0].coefficients.values()["h"]  # 0.2 rounded to float32
    with torch.no_grad():
        expected = x + h * (layers[0].operators["f"](x) + layers[1].operators["f"](x))
        got = unroll.parallelize(nn.Sequential(*layers))(x)
    torch.testing.assert_close(got, expected, **F64_SAME_OPS)  # rounding, as above


def test_copies_keep_shared_modules_shared():
    """A weight-tied stack stays tied under share=False: one copy of the shared module."""
    net = _scheme_net("forward_euler", 4, 0.1, tied=True)
    (g,) = _branches(1)
    stack = nn.Sequential(Residual(g), Residual(g))
    for model in (net, stack):
        params = sum(p.numel() for p in model.parameters())
        for share in (True, False):
            wide = unroll.parallelize(model, share=share)
            assert sum(p.numel() for p in wide.parameters()) == params
            shared = {id(p) for p in wide.parameters()} <= {id(p) for p in model.parameters()}
            assert shared == share
    with torch.no_grad():
        x = _x()
        torch.testing.assert_close(
            unroll.parallelize(net, share=False)(x), unroll.parallelize(net)(x), rtol=0, atol=0
        )


def test_scheme_networks_that_are_not_residual_stacks_are_named():
    def f():
        return nn.Linear(5, 5)

    lm = unroll.schemes["lm_resnet"].network(2, dim=5, f=f, backend="torch")
    with pytest.raises(UnrollError, match="lm_resnet.*one-step"):
        unroll.parallelize(lm)
    rev = unroll.schemes["revnet"].network(2, dim=5, f={"f": f, "g": f}, backend="torch")
    with pytest.raises(UnrollError, match="revnet.*X, Y"):
        unroll.parallelize(rev)
    noisy = unroll.schemes["forward_euler"].network(2, dim=5, f=f, survival=0.5, backend="torch")
    with pytest.raises(UnrollError, match="survival"):
        unroll.parallelize(noisy)


def test_order_two_of_a_triton_backed_network_is_the_eager_one():
    """The fused Triton block update has no forward-mode derivative; the cross terms J_f·s
    must still be those of the PyTorch update (same weights, both float64)."""
    fused = _scheme_net("forward_euler", 2, 0.1, backend="triton")
    eager = _scheme_net("forward_euler", 2, 0.1, backend="torch")
    eager.load_state_dict(fused.state_dict())  # the same weights, the PyTorch block update
    x = _x()
    with torch.no_grad():
        got, want = unroll.parallelize(fused, 2)(x), unroll.parallelize(eager, 2)(x)
    torch.testing.assert_close(got, want, **F64_SAME_OPS)  # the same float64 operations
    assert all(block.options.backend == "triton" for block in fused.blocks)  # left as it was


class PlainBlock(nn.Module):
    """A residual block that exposes nothing: y = x + g(x) inside its forward."""

    def __init__(self, g: nn.Module):
        super().__init__()
        self.g = [g]  # hidden from the .f/.branch protocol (not a registered submodule)
        self.layer = g

    def forward(self, x):
        return x + self.layer(x)


def test_any_module_that_keeps_the_shape_is_a_residual_block():
    torch.manual_seed(0)
    gs = [nn.Sequential(nn.Linear(5, 5), nn.Tanh()).double() for _ in range(3)]
    stack = nn.Sequential(*(PlainBlock(g) for g in gs))
    x = torch.randn(4, 5, dtype=torch.float64)
    got = unroll.parallelize(stack)(x)
    want = x + sum(g(x) for g in gs)  # x + Σ f_k(x), f_k(x) = block_k(x) − x
    torch.testing.assert_close(got, want, **F64_SAME_OPS)  # x + g − x rounds once per block
