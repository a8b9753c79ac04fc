"""`unroll.lowering.nn`: the layer form, blocks and networks against hand-written loops, `Scheme.run`,
torch autograd and the definitions of stochastic depth."""

import copy
import math
import subprocess
import sys

import pytest
import sympy as sp
import torch
from torch import nn
from torch.func import functional_call

import unroll
from tests.tolerances import BF16_NETWORK, F32_COEFFICIENT, F32_COMPILED, F64_REROUTED, F64_ROUNDING
from unroll.ir.layer_form import layer_form
from unroll.ir.step import build


def mlp(width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.Tanh())


def as_ode(module: nn.Module):
    """A branch module as the f(t, x) that `Scheme.run` calls."""
    return lambda t, x: module(x)


def parameters(net: nn.Module, block: int = 0) -> dict:
    """The coefficient values block ``block`` uses (bounded ones mapped into their bounds)."""
    return {k: v.detach() for k, v in net.blocks[block].coefficients.values().items()}


# -- the layer form ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "optimizer, layer",
    [("heavy_ball", "hb_net"), ("nesterov", "agd_net"), ("gradient_descent", "proximal_gradient")],
)
def test_layer_form_of_an_optimizer_is_the_bundled_layer(optimizer, layer):
    # The bundled layer schemes were written from the papers, independently of the rewrite.
    got = layer_form(unroll.schemes[optimizer])
    assert got.equations == unroll.schemes[layer].equations
    assert "α" not in got.parameters and got.parameters["b"].per_channel


def test_layer_form_keeps_ode_and_layer_schemes():
    for name in ("lm_resnet", "hb_net", "rk4"):
        assert layer_form(unroll.schemes[name]) is unroll.schemes[name]


def test_velocity_form_is_rederived_after_the_prox():
    form = layer_form(unroll.schemes["heavy_ball_velocity"])
    x, v, k = sp.IndexedBase("x"), sp.IndexedBase("v"), form.index
    assert form.equations[-1] == sp.Eq(v[k + 1], x[k + 1] - x[k])


@pytest.mark.parametrize(
    "text, message",
    [
        ("x_<k+1> = x_k - α∇F(x_k) - γ∇F(x_<k-1>)", "2 gradient terms"),
        ("x_<k+1> = x_k - α∇F(x_k)^2", "nonlinearly"),
        ("v_<k+1> = ∇F(x_k); x_<k+1> = x_k - v_k", "feeds no primal update"),
    ],
)
def test_layer_form_refuses_what_the_prox_reading_cannot_realise(text, message):
    with pytest.raises(unroll.UnrollError, match=message):
        layer_form(unroll.compile(text))


def test_identity_activation_reproduces_the_optimizer_on_a_quadratic():
    # docs/theory.md section 2: with φ = identity, W = I − αA and b = αc, the layer is the optimizer
    # step on F(x) = ½xᵀAx − cᵀx; Scheme.run computes that step with autograd's gradient.
    torch.manual_seed(1)
    n, alpha, beta = 5, 0.1, 0.6
    M = torch.randn(n, n, dtype=torch.float64)
    A = M @ M.T / n + torch.eye(n, dtype=torch.float64)
    c = torch.randn(n, dtype=torch.float64)
    x0 = torch.randn(3, n, dtype=torch.float64)
    for name in ("heavy_ball", "heavy_ball_velocity", "nesterov"):
        scheme = unroll.schemes[name]
        net = scheme.network(6, dim=n, tied=True, activation="identity", params={"β": beta})
        net = net.double()
        with torch.no_grad():
            net.blocks[0].operators["W"].weight.copy_(torch.eye(n, dtype=torch.float64) - alpha * A)
            net.blocks[0].coefficients.b.copy_(alpha * c)
        beta_used = float(parameters(net)["β"])
        F = lambda x: 0.5 * ((x @ A) * x).sum(-1) - x @ c  # noqa: E731
        want = scheme.run(x0, 6, F=F, α=alpha, β=beta_used)
        # float64, six steps of O(1) values: rounding stays near 1e-15; 1e-12 leaves room.
        torch.testing.assert_close(net(x0), want, **F64_ROUNDING)


# -- networks against hand loops and Scheme.run --------------------------------------------------
def test_heavy_ball_network_with_symmetric_W_matches_a_hand_loop():
    torch.manual_seed(0)
    net = unroll.schemes["heavy_ball"].network(
        5, dim=6, tied=True, symmetric=True, activation="relu"
    )
    net = net.double()
    with torch.no_grad():
        net.blocks[0].coefficients.b.normal_()
    W = net.blocks[0].operators["W"].weight
    assert torch.equal(W, W.T)
    b, beta = parameters(net)["b"], parameters(net)["β"]
    x0 = torch.randn(4, 6, dtype=torch.float64)
    x, prev = x0, x0  # the older state starts equal to x0, as in Scheme.run
    for _ in range(5):
        x, prev = torch.relu(x @ W.T + b + beta * (x - prev)), x
    # float64, the same operations in another order: differences are rounding, ~1e-15.
    torch.testing.assert_close(net(x0), x, **F64_ROUNDING)


def test_velocity_network_equals_heavy_ball_network():
    torch.manual_seed(0)
    hb = unroll.schemes["heavy_ball"].network(4, dim=5, tied=True, activation="tanh").double()
    vel = unroll.schemes["heavy_ball_velocity"].network(4, dim=5, tied=True, activation="tanh")
    vel = vel.double()
    with torch.no_grad():
        hb.blocks[0].coefficients.b.normal_()
    vel.load_state_dict(hb.state_dict())  # same parameter names: W, β, b
    x0 = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(vel(x0), hb(x0), **F64_ROUNDING)  # float64 rounding only


def test_lm_network_matches_scheme_run_with_the_same_f():
    torch.manual_seed(0)
    f = mlp().double()
    scheme = unroll.schemes["lm_resnet"]
    net = scheme.network(6, f=f).double()
    kappa = float(parameters(net)["κ"])
    # The module was built in float32 (logit of the default), then made float64: float32 rounding.
    assert kappa == pytest.approx(scheme.parameters["κ"].default, abs=F32_COEFFICIENT)
    x0 = torch.randn(3, 4, dtype=torch.float64)
    want = scheme.run(x0, 6, f=as_ode(f), κ=kappa)
    torch.testing.assert_close(net(x0), want, **F64_ROUNDING)  # float64 rounding only


def test_lm_blocks_train_their_own_kappa():
    torch.manual_seed(0)
    f = mlp().double()
    net = unroll.schemes["lm_resnet"].network(4, f=f).double()
    with torch.no_grad():
        for i, block in enumerate(net.blocks):
            block.coefficients.κ = torch.tensor(-0.5 + 0.3 * i, dtype=torch.float64)
    x0 = torch.randn(2, 4, dtype=torch.float64)
    x, prev = x0, x0
    for i in range(4):
        kappa = -0.5 + 0.3 * i
        x, prev = (1 - kappa) * x + kappa * prev + f(x), x
    torch.testing.assert_close(net(x0), x, **F64_ROUNDING)  # float64 rounding only


@pytest.mark.parametrize("name", ["ab2", "rk4", "revnet", "fractalnet", "polynet", "admm"])
def test_networks_match_scheme_run(name):
    """Start-up schemes (ab2 takes a Heun step), several branches, several states, stages."""
    torch.manual_seed(0)
    scheme = unroll.schemes[name]
    ops = {
        a.func.__name__: unroll.ir.vocabulary.operator_kind(a)
        for eq in scheme.equations
        for a in unroll.ir.vocabulary.applications(eq.rhs)
    }
    branches = {n: mlp().double() for n, kind in ops.items() if kind == "branch"}
    f = branches if len(branches) > 1 else next(iter(branches.values()), None)
    net = scheme.network(5, f=f, dim=4, tied=True).double()  # tied: one W, as Scheme.run has
    x0 = torch.randn(3, 4, dtype=torch.float64)
    x = {"X": x0, "Y": x0.flip(0)} if name == "revnet" else {"z": x0} if name == "admm" else x0
    run_kw = {"f": {n: as_ode(m) for n, m in branches.items()}}
    if "W" in ops:
        run_kw["W"] = net.blocks[0].operators["W"].weight.detach()
    got = net(x)
    coefficients = {k: float(v) if v.dim() == 0 else v for k, v in parameters(net).items()}
    want = scheme.run(x, 5, **run_kw, **coefficients)
    got, want = (got, want) if isinstance(got, dict) else ({"x": got}, {"x": want})
    for key in got:
        torch.testing.assert_close(got[key], want[key], **F64_ROUNDING)  # float64 rounding


# -- parameters, bounds, state ------------------------------------------------------------------
def test_trainable_parameters_and_buffers():
    net = unroll.schemes["lm_resnet"].network(3, f=mlp())
    params = dict(net.named_parameters())
    buffers = dict(net.named_buffers())
    assert "blocks.2.coefficients.raw_kappa" in params  # κ: trainable, bounded (raw value)
    assert "blocks.2.coefficients.h" in buffers  # h: not marked trainable
    frozen = unroll.schemes["lm_resnet"].network(3, f=mlp(), trainable=[])
    assert not any("coefficients" in n for n, _ in frozen.named_parameters())
    both = unroll.schemes["lm_resnet"].network(3, f=mlp(), trainable=["kappa", "h"])
    assert "blocks.0.coefficients.raw_h" in dict(both.named_parameters())
    # One name as a plain string is that name (not its letters k, a, p, ...).
    h_only = unroll.schemes["lm_resnet"].network(3, f=mlp(), trainable="h")
    names = [n for n, _ in h_only.named_parameters() if "coefficients" in n]
    assert names and all(n.endswith(".raw_h") for n in names)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_kappa_stays_zero_stable(dtype):
    net = unroll.schemes["lm_resnet"].network(2, f=mlp(), channels=3, per_channel=["κ"]).to(dtype)
    raw = net.blocks[0].coefficients.raw_kappa
    with torch.no_grad():
        raw.copy_(torch.tensor([-1e4, 0.0, 1e4], dtype=dtype).reshape(3, 1, 1))
    kappa = parameters(net)["κ"]
    assert kappa.shape == (3, 1, 1)
    assert bool((kappa > -1).all()) and bool((kappa < 1).all())


def test_kappa_stays_zero_stable_under_training():
    net = unroll.schemes["lm_resnet"].network(2, f=mlp())
    raws = [b.coefficients.raw_kappa for b in net.blocks]
    for _ in range(50):  # gradient steps on a loss that pushes every κ towards −∞
        loss = sum(b.coefficients.κ for b in net.blocks)
        grads = torch.autograd.grad(loss, raws)
        with torch.no_grad():
            for raw, g in zip(raws, grads, strict=True):
                raw -= 100.0 * g
    for i in range(2):
        kappa = float(parameters(net, i)["κ"])
        # pushed to the edge, and still inside: the roots of ζ² − (1 − κ)ζ − κ are 1 and −κ.
        assert -1 < kappa < -0.99


def test_state_dict_round_trip():
    torch.manual_seed(0)
    make = lambda: unroll.schemes["hb_net"].network(3, dim=4, symmetric=True)  # noqa: E731
    a, b = make(), make()
    x0 = torch.randn(2, 4)
    assert not torch.equal(a(x0), b(x0))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x0), b(x0))


def test_gradcheck_through_a_small_network():
    torch.manual_seed(0)
    net = unroll.schemes["heavy_ball"].network(3, dim=3, tied=True, activation="tanh").double()
    names = [n for n, _ in net.named_parameters()]

    def fn(x0, *values):
        return functional_call(net, dict(zip(names, values, strict=True)), (x0,))

    x0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    values = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    with torch.no_grad():
        values[names.index("blocks.0.coefficients.b")].normal_()
    assert torch.autograd.gradcheck(fn, (x0, *values))


# -- stochastic depth --------------------------------------------------------------------------
class Ones(nn.Module):
    def forward(self, x):
        return torch.ones_like(x)


def test_stochastic_depth_eval_is_the_expected_scaling():
    depth, p_last = 4, 0.5
    net = unroll.schemes["forward_euler"].network(depth, f=Ones(), survival=p_last).eval()
    x0 = torch.zeros(3, 2)
    # Huang et al.: p_n = 1 − (n/L)(1 − p_L), n = 1..L; at evaluation each branch is scaled by p_n.
    expected = sum(1 - n / depth * (1 - p_last) for n in range(1, depth + 1))
    out = net(x0)
    assert torch.equal(out, net(x0))
    torch.testing.assert_close(out, torch.full_like(x0, expected))  # float32 sums of 4 numbers


def test_stochastic_depth_drops_blocks_with_the_configured_probability():
    torch.manual_seed(0)
    depth, p_last, samples = 4, 0.5, 4000
    net = unroll.schemes["forward_euler"].network(depth, f=Ones(), survival=p_last).train()
    states = net(torch.zeros(samples, 1), return_states=True).states
    kept = (states[1:] - states[:-1]).squeeze(-1)  # (depth, samples): 1 kept, 0 dropped
    assert set(kept.unique().tolist()) <= {0.0, 1.0}
    for n in range(depth):
        p = 1 - (n + 1) / depth * (1 - p_last)
        sigma = math.sqrt(p * (1 - p) / samples)
        # 5 standard deviations of a binomial proportion: a false failure has odds ~1e-6.
        assert abs(float(kept[n].mean()) - p) < 5 * sigma + 1e-9


def test_noise_injection_has_the_mean_and_variance_of_the_bernoulli():
    torch.manual_seed(0)
    depth, p_last, samples = 2, 0.5, 8000
    net = (
        unroll.schemes["forward_euler"]
        .network(depth, f=Ones(), survival=p_last, stochastic="noise")
        .train()
    )
    states = net(torch.zeros(samples, 1), return_states=True).states
    eta = (states[-1] - states[-2]).squeeze(-1)  # the last block: p = p_L
    p, var = p_last, p_last * (1 - p_last)
    assert abs(float(eta.mean()) - p) < 5 * math.sqrt(var / samples)  # 5σ of the sample mean
    # The sample variance of 8000 Gaussians has relative standard deviation √(2/8000) ≈ 1.6%.
    assert abs(float(eta.var()) - var) < 5 * var * math.sqrt(2 / samples)


def test_stochastic_depth_needs_branches():
    with pytest.raises(unroll.UnrollError, match="ODE scheme"):
        unroll.schemes["hb_net"].network(3, dim=4, survival=0.5)


# -- modules are ordinary PyTorch ------------------------------------------------------------------
def test_returned_states_and_layer():
    torch.manual_seed(0)
    net = unroll.schemes["agd_net"].network(3, dim=4)
    x0 = torch.randn(2, 4)
    trace = net(x0, return_states=True)
    assert trace.states.shape == (4, 2, 4)
    assert torch.equal(trace.states[0], x0) and torch.equal(trace.states[-1], trace.x)
    block = unroll.schemes["agd_net"].layer(dim=4)
    assert block(x0).shape == (2, 4)
    new = block({"x": (x0, torch.zeros(2, 4))})
    assert set(new) == {"x"}


def test_symmetric_convolution_is_self_adjoint():
    torch.manual_seed(0)
    net = unroll.schemes["hb_net"].network(1, channels=3, symmetric=True, norm=None)
    conv = net.blocks[0].operators["W"]
    a, b = (
        torch.randn(2, 3, 6, 5, dtype=torch.float64),
        torch.randn(2, 3, 6, 5, dtype=torch.float64),
    )
    conv = conv.double()
    # <W a, b> = <a, W b> up to float64 rounding of sums of ~400 products.
    torch.testing.assert_close((conv(a) * b).sum(), (a * conv(b)).sum(), **F64_REROUTED)


def test_bfloat16_forward_runs():
    torch.manual_seed(0)
    net = unroll.schemes["hb_net"].network(3, dim=8, tied=True).float()
    x0 = torch.randn(4, 8, dtype=torch.float32)
    want = net(x0)
    got = net.to(torch.bfloat16)(x0.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16 and bool(torch.isfinite(got).all())
    # bfloat16 keeps 8 bits: each of 3 layers rounds its O(1) inputs and a width-8 product by
    # ~2^-8 relative; 0.1 absolute bounds that with room and still catches a wrong formula.
    torch.testing.assert_close(got.float(), want, **BF16_NETWORK)


COMPILED_NETWORKS = [
    ("lm_resnet", {"f": nn.Linear(4, 4)}),
    ("hb_net", {"dim": 4, "tied": True}),
    ("agd_net", {"dim": 4}),
    ("nesterov_schedule", {"dim": 4, "activation": "tanh"}),
    ("rk4", {"f": nn.Linear(4, 4)}),
]


@pytest.mark.parametrize("name, options", COMPILED_NETWORKS, ids=[n for n, _ in COMPILED_NETWORKS])
def test_torch_compile_traces_the_whole_network_without_graph_breaks(name, options):
    torch.manual_seed(0)
    net = unroll.schemes[name].network(6, **options)
    x0 = torch.randn(2, 4)
    # fullgraph=True raises at the first graph break; "eager" runs the captured graph as is.
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x0), net(x0), rtol=0, atol=0)  # the same eager kernels


def test_torch_compile_with_inductor():
    torch.manual_seed(0)
    net = unroll.schemes["hb_net"].network(4, dim=8, tied=True)
    x0 = torch.randn(3, 8)
    compiled = torch.compile(net, fullgraph=True)
    # Inductor fuses and reorders float32 arithmetic: a few ulps of values of order 1.
    torch.testing.assert_close(compiled(x0), net(x0), **F32_COMPILED)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    net = unroll.schemes["heavy_ball"].network(3, dim=8, activation="relu").double()
    x0 = torch.randn(4, 8, dtype=torch.float64)
    # float64 on both devices; matmuls may sum in another order: 1e-12 absorbs that.
    torch.testing.assert_close(net.cuda()(x0.cuda()).cpu(), net.cpu()(x0), **F64_ROUNDING)


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, options, message",
    [
        ("hb_net", {"dim": 4, "backend": "cuda"}, "backend must be one of"),
        ("hb_net", {"dims": 4}, "unknown option 'dims'"),
        ("hb_net", {}, "pass dim="),
        ("hb_net", {"dim": 4, "channels": 3}, "not both"),
        ("heavy_ball", {"dim": 4}, "pass activation="),
        ("lm_resnet", {}, "pass f="),
        ("fractalnet", {"f": mlp()}, "as a mapping"),
        ("lm_resnet", {"f": mlp(), "params": {"κ": 2.0}}, "outside the bounds"),
        ("lm_resnet", {"f": mlp(), "params": {"q": 2.0}}, "unknown parameter 'q'"),
        ("lm_resnet", {"f": mlp(), "params": {"κ": -0.1, "kappa": -0.2}}, "both give κ"),
        ("lm_resnet", {"f": mlp(), "per_channel": ["κ"]}, "per channel: pass dim="),
        ("lm_resnet", {"f": mlp(), "survival": 1.5}, "survival"),
        ("hb_net", {"dim": 4, "params": {"β": "x"}}, "must be a number or a tensor"),
    ],
)
def test_bad_options_are_unroll_errors(name, options, message):
    with pytest.raises(unroll.UnrollError, match=message):
        unroll.schemes[name].network(2, **options)


@pytest.mark.parametrize(
    "options, x0, message",
    [
        ({"dim": 4}, torch.zeros(2, 5), "shape \\(2, 5\\), but the network was built with dim=4"),
        ({"channels": 3}, torch.zeros(2, 4, 5, 5), "built with channels=3"),
        ({"channels": 3}, torch.zeros(2, 3), "shape \\(2, 3\\)"),
    ],
)
def test_x0_of_the_wrong_width_is_an_unroll_error(options, x0, message):
    net = unroll.schemes["hb_net"].network(2, **options)
    with pytest.raises(unroll.UnrollError, match=message):
        net(x0)
    with pytest.raises(unroll.UnrollError, match=message):
        net.blocks[0](x0)


def test_the_layer_step_has_one_block_update_after_the_operators():
    ir = build(unroll.schemes["nesterov"], layer=True)
    (call,) = ir.calls
    assert call.op == "W" and [u.state for u in ir.updates] == ["x"]


# -- the objective along the layers ---------------------------------------------------------------
def test_objective_descends_along_a_proximal_gradient_network():
    # docs/theory.md section 2: with W symmetric, 0 ⪯ W ⪯ I and φ = prox_g (tanh), F never increases.
    torch.manual_seed(0)
    n = 6
    net = (
        unroll.schemes["gradient_descent"]
        .network(12, dim=n, tied=True, symmetric=True, activation="tanh")
        .double()
    )
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    u = torch.rand(n, dtype=torch.float64)  # eigenvalues in [0, 1)
    with torch.no_grad():
        net.blocks[0].operators["W"].raw_weight.copy_(Q @ torch.diag(u) @ Q.T)
        net.blocks[0].coefficients.b.normal_()
    x0 = 0.9 * torch.tanh(torch.randn(5, n, dtype=torch.float64))  # inside tanh's range
    trace = net(x0, return_objective=True)
    F = trace.objective
    assert F.shape == (13, 5) and bool(torch.isfinite(F).all())
    steps = F[1:] - F[:-1]
    # non-increasing up to float64 rounding of O(1) sums
    assert bool((steps <= F64_ROUNDING["atol"]).all())
    assert bool((F[-1] < F[0]).all())


def test_objective_of_the_identity_layer_is_the_quadratic():
    torch.manual_seed(0)
    n = 4
    net = (
        unroll.schemes["proximal_gradient"]
        .network(2, dim=n, tied=True, symmetric=True, activation="identity")
        .double()
    )
    with torch.no_grad():
        net.blocks[0].coefficients.b.normal_()
    W = net.blocks[0].operators["W"].weight.detach()
    b = parameters(net)["b"]
    x0 = torch.randn(3, n, dtype=torch.float64)
    trace = net(x0, return_states=True, return_objective=True)
    x = trace.states
    # F(x) = ½ xᵀ(I − W)x − bᵀx with g = 0 for φ = identity.
    want = 0.5 * (x * x).sum(-1) - 0.5 * ((x @ W.T) * x).sum(-1) - x @ b
    torch.testing.assert_close(trace.objective, want, **F64_ROUNDING)  # float64 rounding


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("lm_resnet", {"f": mlp()}, "not the layer of an objective"),
        ("hb_net", {"dim": 4}, "tied=True"),
        ("heavy_ball", {"dim": 4, "tied": True, "activation": torch.relu}, "by name"),
    ],
)
def test_objective_needs_an_objective_backed_tied_dense_network(name, options, message):
    net = unroll.schemes[name].network(2, **options).float()
    with pytest.raises(unroll.UnrollError, match=message):
        net(torch.zeros(1, 4, dtype=torch.float32), return_objective=True)


# -- saving, copying, compiling once ------------------------------------------------------------
SAVE_CASES = [
    ("lm_resnet", {"f": lambda: nn.Linear(4, 4)}),  # a bounded trainable κ, a factory lambda
    ("hb_net", {"dim": 4, "symmetric": True}),
    ("rk4", {"f": nn.Linear(4, 4), "tied": True}),
    # a callable init, as nn.Module.apply takes: spent when built, so it need not pickle
    ("forward_euler", {"f": lambda: nn.Linear(4, 4), "init": lambda m: nn.init.zeros_(m.bias)}),
]


@pytest.mark.parametrize("name, options", SAVE_CASES, ids=[n for n, _ in SAVE_CASES])
def test_whole_networks_save_load_in_a_new_process_and_deepcopy(name, options, tmp_path):
    torch.manual_seed(0)
    net = unroll.schemes[name].network(3, **options).double()
    x0 = torch.randn(2, 4, dtype=torch.float64)
    torch.save({"net": net, "x0": x0, "want": net(x0)}, tmp_path / "net.pt")
    torch.testing.assert_close(copy.deepcopy(net)(x0), net(x0), rtol=0, atol=0)
    script = (
        "import sys, torch\n"
        f"d = torch.load({str(tmp_path / 'net.pt')!r}, weights_only=False)\n"
        "got = d['net'](d['x0'])\n"
        "sys.exit(0 if torch.equal(got, d['want']) else 3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_one_compilation_serves_every_network_of_a_scheme():
    torch.manual_seed(0)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    run = torch.compile(lambda net, x: net(x), backend=backend, fullgraph=True)
    x0 = torch.randn(2, 4)
    for _ in range(3):
        net = unroll.schemes["lm_resnet"].network(4, f=nn.Linear(4, 4))  # bounded trainable κ
        torch.testing.assert_close(run(net, x0), net(x0), rtol=0, atol=0)
    assert len(graphs) == 1
