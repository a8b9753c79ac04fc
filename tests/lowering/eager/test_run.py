"""`Scheme.run` against code nobody here wrote: torch.optim.SGD and torchdiffeq."""

import math

import pytest
import torch
import torchdiffeq
from torch import nn

import unroll
from tests.tolerances import F64_FEW_ULPS, F64_ONE_ROUNDING, F64_TRAJECTORY


@pytest.fixture(autouse=True)
def float64_by_default():
    """These comparisons are at float64 round-off; restore the default for other test files."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def quadratic(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=g)
    A = q @ q.T / n + 0.5 * torch.eye(n)
    c = torch.randn(n, generator=g)
    return lambda x: 0.5 * x @ A @ x - c @ x


def logsumexp_objective(n=6, seed=1):
    """A smooth, strongly convex, non-quadratic function."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(12, n, generator=g)
    return lambda x: torch.logsumexp(M @ x, 0) + 0.1 * (x**2).sum()


def sgd_trajectory(F, x0, steps, **options):
    p = x0.clone().requires_grad_(True)
    opt = torch.optim.SGD([p], **options)
    path = [p.detach().clone()]
    for _ in range(steps):
        opt.zero_grad()
        F(p).backward()
        opt.step()
        path.append(p.detach().clone())
    return torch.stack(path)


@pytest.mark.parametrize("objective", [quadratic, logsumexp_objective])
@pytest.mark.parametrize("scheme", ["heavy_ball", "heavy_ball_velocity"])
def test_heavy_ball_is_sgd_with_momentum(objective, scheme):
    F = objective()
    x0 = torch.randn(6, generator=torch.Generator().manual_seed(3))
    want = sgd_trajectory(F, x0, 40, lr=0.07, momentum=0.85)
    got = unroll.schemes[scheme].run(x0, 40, F=F, α=0.07, β=0.85, trajectory=True)
    if isinstance(got, dict):
        got = got["x"]
    # float64 round-off over 40 steps of a contraction: a few ulps of |x| ~ 1.
    torch.testing.assert_close(got, want, **F64_TRAJECTORY)


def test_gradient_descent_is_plain_sgd_and_grad_equals_F():
    F = logsumexp_objective()
    x0 = torch.randn(6)
    want = sgd_trajectory(F, x0, 25, lr=0.2)
    gd = unroll.schemes["gradient_descent"]
    got = gd.run(x0, 25, F=F, alpha=0.2, trajectory=True)
    torch.testing.assert_close(got, want, **F64_TRAJECTORY)

    def grad(x):
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(F(x), x)[0]

    torch.testing.assert_close(gd.run(x0, 25, grad=grad, alpha=0.2), want[-1], **F64_TRAJECTORY)


def test_nesterov_is_sgd_with_nesterov_momentum_in_its_look_ahead_variable():
    # torch's Nesterov SGD iterates p_k = y_k, the look-ahead point of our scheme,
    # y_k = x_k + β(x_k - x_{k-1}) with x_{-1} = x_0.
    F = logsumexp_objective()
    x0 = torch.randn(6)
    want = sgd_trajectory(F, x0, 30, lr=0.05, momentum=0.9, nesterov=True)
    xs = unroll.schemes["nesterov"].run(x0, 30, F=F, α=0.05, β=0.9, trajectory=True)
    previous = torch.cat([xs[:1], xs[:-1]])
    ys = xs + 0.9 * (xs - previous)
    torch.testing.assert_close(ys, want, **F64_TRAJECTORY)


def ode(t, x):
    """A nonlinear, non-autonomous test ODE."""
    return torch.stack([x[1], -torch.sin(x[0]) + 0.3 * torch.cos(t)])


@pytest.mark.parametrize(
    "scheme, method", [("forward_euler", "euler"), ("midpoint", "midpoint"), ("rk38", "rk4")]
)
def test_runge_kutta_schemes_match_torchdiffeq_fixed_grid(scheme, method):
    x0 = torch.tensor([1.0, 0.2])
    h, steps = 0.05, 40
    grid = torch.arange(steps + 1) * h + 0.3
    want = torchdiffeq.odeint(ode, x0, grid, method=method)
    got = unroll.schemes[scheme].run(x0, steps, f=ode, h=h, t0=0.3, trajectory=True)
    torch.testing.assert_close(got, want, **F64_TRAJECTORY)


def test_classic_rk4_differs_from_the_three_eighths_rule_by_h5_per_step():
    x0 = torch.tensor([1.0, 0.2])
    hs = [0.2, 0.1, 0.05, 0.025]
    diffs = []
    for h in hs:
        ours = unroll.schemes["rk4"].run(x0, 1, f=ode, h=h)
        theirs = torchdiffeq.odeint(ode, x0, torch.tensor([0.0, h]), method="rk4")[-1]
        diffs.append((ours - theirs).norm().item())
    assert all(d > 0 for d in diffs)
    slope = (math.log(diffs[0]) - math.log(diffs[-1])) / (math.log(hs[0]) - math.log(hs[-1]))
    assert abs(slope - 5) < 0.3, slope


def test_multistep_start_up_takes_the_first_steps():
    x0 = torch.tensor([1.0, 0.2])
    h = 0.1
    ab3 = unroll.schemes["ab3"].run(x0, 2, f=ode, h=h, trajectory=True)
    rk4 = unroll.schemes["rk4"].run(x0, 2, f=ode, h=h, trajectory=True)
    torch.testing.assert_close(ab3, rk4, rtol=0, atol=0)
    # After the start-up, the AB3 formula takes over.
    third = unroll.schemes["ab3"].run(x0, 3, f=ode, h=h)
    xs, ts = rk4, torch.tensor([0.0, h, 2 * h])
    fk = [ode(ts[i], xs[i]) for i in range(3)]
    want = xs[2] + h / 12 * (23 * fk[2] - 16 * fk[1] + 5 * fk[0])
    torch.testing.assert_close(third, want, **F64_ONE_ROUNDING)


def test_older_states_start_equal_to_x0_so_heavy_balls_first_step_is_a_gradient_step():
    F = quadratic()
    x0 = torch.randn(6)
    one = unroll.schemes["heavy_ball"].run(x0, 1, F=F, α=0.1, β=0.9)
    two = unroll.schemes["gradient_descent"].run(x0, 1, F=F, α=0.1)
    torch.testing.assert_close(one, two, rtol=0, atol=0)


def test_several_states_from_a_mapping():
    X0, Y0 = torch.randn(3), torch.randn(3)
    out = unroll.schemes["revnet"].run(
        {"X": X0, "Y": Y0}, 2, f={"f": lambda t, y: y.sin(), "g": lambda t, x: x.cos()}
    )
    X1 = X0 + Y0.sin()
    Y1 = Y0 + X1.cos()
    X2 = X1 + Y1.sin()
    Y2 = Y1 + X2.cos()
    torch.testing.assert_close(out["X"], X2, rtol=0, atol=0)
    torch.testing.assert_close(out["Y"], Y2, rtol=0, atol=0)


def test_admm_layer_states_left_out_start_at_their_initial_value():
    W = torch.eye(4) * 0.5
    z0 = torch.randn(4)
    out = unroll.schemes["admm"].run({"z": z0}, 1, W=W, b=torch.ones(4))
    x1 = 0.5 * z0 + 1  # u starts at 0
    z1 = torch.relu(x1)
    torch.testing.assert_close(out["x"], x1)
    torch.testing.assert_close(out["z"], z1)
    torch.testing.assert_close(out["u"], x1 - z1)


def test_schedule_state_theta():
    F = quadratic()
    xs = unroll.schemes["nesterov_schedule"].run(torch.randn(6), 3, F=F, trajectory=True)
    # θ_0 = 1, so β_0 = 0: the first step is a gradient step.
    first = unroll.schemes["gradient_descent"].run(xs[0], 1, F=F)
    torch.testing.assert_close(xs[1], first, rtol=0, atol=0)
    out = unroll.schemes["nesterov_schedule"].run({"x": torch.randn(6)}, 2, F=F)
    θ1 = (math.sqrt(1 + 4) - 1) / 2
    θ2 = (math.sqrt(θ1**4 + 4 * θ1**2) - θ1**2) / 2
    assert out["θ"].item() == pytest.approx(θ2, rel=F64_FEW_ULPS)


def test_iteration_counter_and_time():
    s = unroll.compile("x_<k+1> = x_k + k + t f(x_k)")
    out = s.run(torch.zeros(1), 3, f=lambda t, x: torch.ones_like(x), h=0.5, trajectory=True)
    # t advances by h (with no step parameter, h only moves time): 0, 0.5, 1.0
    torch.testing.assert_close(out.flatten(), torch.tensor([0.0, 0.0, 1.5, 4.5]))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s, x: s.run(x, 2, F=quadratic()), "missing value for parameter α"),
        (
            lambda s, x: s.run(x, 2, F=quadratic(), α=0.1, β=0.5, gamma=1),
            "unknown parameter 'gamma'",
        ),
        (
            lambda s, x: s.run(x, 2, F=quadratic(), α=0.1, alpha=0.2, β=0.5),
            "'α' and 'alpha' both give α",
        ),
        (lambda s, x: s.run(x, 2, α=0.1, β=0.5), "exactly one of grad="),
        (lambda s, x: s.run(x, -1, F=quadratic(), α=0.1, β=0.5), "steps must be"),
        (lambda s, x: s.run({"y": x}, 1, F=quadratic(), α=0.1, β=0.5), "y is not a state"),
        (lambda s, x: s.run([1, 2], 1, F=quadratic(), α=0.1, β=0.5), "x0 must be a tensor"),
    ],
)
def test_bad_run_arguments(call, message):
    s = unroll.compile("x_<k+1> = x_k + β(x_k - x_<k-1>) - α∇F")
    with pytest.raises(unroll.UnrollError, match=message):
        call(s, torch.randn(6))


def test_missing_state_without_initial_value():
    with pytest.raises(unroll.UnrollError, match="no value for state Y"):
        unroll.schemes["revnet"].run(
            {"X": torch.zeros(2)}, 1, f={"f": lambda t, y: y, "g": lambda t, x: x}
        )
    with pytest.raises(unroll.UnrollError, match="mapping naming the states X, Y"):
        unroll.schemes["revnet"].run(
            torch.zeros(2), 1, f={"f": lambda t, y: y, "g": lambda t, x: x}
        )


def test_run_is_differentiable_and_keeps_dtype():
    x0 = torch.randn(6, dtype=torch.float32, requires_grad=True)
    out = unroll.schemes["heavy_ball"].run(x0, 5, grad=lambda x: 2 * x)
    assert out.dtype == torch.float32
    out.sum().backward()
    # d x_5 / d x0 for x_{k+1} = (1 + β - 2α) x_k - β x_{k-1}: a polynomial in the defaults.
    a, b = 1 + 0.9 - 0.2, -0.9
    prev, cur = 1.0, a + b  # coefficients of x0 in x_0 and x_1 (x_{-1} = x_0)
    for _ in range(4):
        prev, cur = cur, a * cur + b * prev
    torch.testing.assert_close(x0.grad, torch.full((6,), cur, dtype=torch.float32))


def test_an_elementwise_F_is_refused_with_its_shape():
    x0 = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(unroll.UnrollError, match=r"it returned shape \(3, 4\)"):
        unroll.schemes["gradient_descent"].run(x0, 1, F=lambda x: x**2, α=0.1)
    # one value per row of a batch is a batch of problems: each row gets its own gradient
    got = unroll.schemes["gradient_descent"].run(x0, 1, F=lambda x: 0.5 * (x**2).sum(-1), α=0.1)
    torch.testing.assert_close(got, 0.9 * x0, **F64_ONE_ROUNDING)  # x − 0.1 x, one rounding


def test_check_finite_names_the_step_and_the_state_where_the_run_diverges():
    # Gradient descent on ½x² with α = 3 multiplies x by −2 each step: 2^1100 overflows float64
    # at step 1024 or so, long before 2000.
    x0 = torch.ones(2, dtype=torch.float64)
    quiet = unroll.schemes["gradient_descent"].run(x0, 2000, grad=lambda x: x, α=3.0)
    assert not bool(torch.isfinite(quiet).all())  # without the check: silent
    with pytest.raises(unroll.UnrollError, match=r"step 10\d\d: state x holds (an infinity|NaN)"):
        unroll.schemes["gradient_descent"].run(x0, 2000, grad=lambda x: x, α=3.0, check_finite=True)


def test_check_finite_names_the_layer_of_a_network():
    torch.manual_seed(0)
    net = unroll.schemes["forward_euler"].network(5, f=nn.Identity(), params={"h": 1e300})
    net = net.double()
    x0 = torch.ones(1, 3, dtype=torch.float64)
    assert not bool(torch.isfinite(net(x0)).all())  # x(1 + h)^n overflows at the second layer
    net = unroll.schemes["forward_euler"].network(
        5, f=nn.Identity(), params={"h": 1e300}, check_finite=True
    ).double()
    with pytest.raises(unroll.UnrollError, match="layer 2: state x holds an infinity"):
        net(x0)


def _linear(dim: int = 3) -> nn.Linear:
    return nn.Linear(dim, dim, bias=False)


@pytest.mark.parametrize(
    "name, options",
    [
        # the one-kernel tied network (the interpreter runs it for backend="triton") falls back
        ("hb_net", {"dim": 3, "tied": True, "backend": "triton"}),
        # reversible, with gradients on: checked in the forward it runs under no_grad
        ("momentum_resnet", {"f": _linear, "reversible": True}),
        ("leapfrog", {"f": _linear, "reversible": True}),
    ],
)
def test_check_finite_holds_on_every_network_path(name, options):
    def build(**more):
        torch.manual_seed(0)
        net = unroll.schemes[name].network(3, **options, **more)
        for p in net.parameters():
            nn.init.constant_(p, 1e200 if p.dim() == 2 else 0.5)  # W or f's weight; b, β
        return net

    x0, start = torch.ones(2, 3), torch.ones(2, 3)
    start[0, 1] = float("nan")
    # Without the check: silent. The tied kernel carries the NaN through relu, as torch does.
    # (A NaN start, not an overflow: the interpreter makes numpy's overflow warning an error.)
    net = build()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(0.5)
    assert bool(net(start)[0].isnan().all())
    net = build(check_finite=True)  # weights of 1e200: float64 (this file's) overflows at layer 2
    with pytest.raises(unroll.UnrollError, match=r"layer 2: state \w holds (NaN|an infinity)"):
        net(x0)
    if options.get("tied"):
        assert "check_finite=True" in net.fallback_reason
    # a start that is not finite is named as such, not as a divergence
    with pytest.raises(unroll.UnrollError, match=r"x0: state x holds NaN before the first step"):
        net(start)
