"""The weight-tied network kernel (unroll.codegen.tied) against references nobody here wrote.

References, in layers: torch autograd on the eager network (`Scheme.run` of the layer, every
operation a torch op), `torch.autograd.gradcheck` (finite differences) in float64, a torch loop
written here from the papers' formulas, and torch.optim.SGD (heavy ball). On CPU the kernels run
in Triton's interpreter (float64/float32); GPU tests compare float32/bfloat16 against float64.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import unroll  # noqa: E402
from tests.tolerances import F64_TIED, NETWORK_VS_F64, TIED_GPU
from unroll import UnrollError  # noqa: E402
from unroll.api import layer_form  # noqa: E402
from unroll.lowering.triton import tied  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"

# float64 on either side of the comparison: the kernel and eager torch sum the same terms in a
# different order, so they differ by rounding only, ~depth·n·eps ≈ 1e-14 here; 1e-10 leaves
# room for cancellation while any wrong term (O(1e-2) or more at these sizes) fails.
F64 = F64_TIED  # tests/tolerances.py

# Schemes the kernel runs, with an activation for optimizer schemes (they name none).
SCHEMES = {
    "proximal_gradient": None,
    "hb_net": None,
    "agd_net": None,
    "admm": None,
    "gradient_descent": "tanh",
    "heavy_ball": "relu",
    "nesterov": "sigmoid",
    "heavy_ball_velocity": "softplus",
}


def _case(name, act, batch=13, n=17, seed=0, dtype=torch.float64):
    """(scheme, x0, W, params, activation): W scaled so that states stay O(1) over the layers."""
    g = torch.Generator().manual_seed(seed)
    scheme = unroll.schemes[name]
    step = tied.lower(scheme, act)
    x0 = torch.randn(batch, n, generator=g, dtype=dtype)
    W = torch.randn(n, n, generator=g, dtype=dtype) / n**0.5 * 0.8
    params = {}
    for p in step.scalars:
        params[p] = torch.tensor(0.3 + 0.1 * len(params), dtype=dtype)
    for p in step.channels:
        params[p] = torch.randn(n, generator=g, dtype=dtype) * 0.3
    return scheme, x0.to(DEV), W.to(DEV), {k: v.to(DEV) for k, v in params.items()}, act


def _eager(scheme, x0, W, depth, act, params):
    layer = layer_form(scheme)
    return layer.run(x0, depth, W=W, activation=act or layer.activation, **params)


@pytest.mark.parametrize("name", SCHEMES)
def test_forward_and_gradients_match_autograd_on_the_eager_network(name):
    scheme, x0, W, params, act = _case(name, SCHEMES[name])
    leaves = [x0, W, *params.values()]
    for t in leaves:
        t.requires_grad_(True)
    depth = 4
    out = tied.tied_network(scheme, x0, W, depth, activation=act, **params)
    ref = _eager(scheme, x0, W, depth, act, params)
    torch.testing.assert_close(out, ref, **F64)
    upstream = torch.randn_like(ref)  # the same random upstream gradient for both
    got = torch.autograd.grad(out, leaves, upstream)
    want = torch.autograd.grad(ref, leaves, upstream)
    for label, a, b in zip(["x0", "W", *params], got, want, strict=True):
        torch.testing.assert_close(a, b, **F64, msg=lambda m, label=label: f"d{label}: {m}")


@pytest.mark.parametrize("name", ["hb_net", "agd_net", "admm"])
def test_gradcheck_float64(name):
    """Finite differences of the kernel itself: the backward is the forward's derivative."""
    scheme, x0, W, params, act = _case(name, SCHEMES[name], batch=8, n=16, seed=1)
    names = list(params)

    def f(x, w, *ps):
        return tied.tied_network(
            scheme, x, w, 3, activation=act, **dict(zip(names, ps, strict=True))
        )

    inputs = [t.clone().requires_grad_(True) for t in (x0, W, *params.values())]
    # fast mode: finite differences along random directions of every input (a full Jacobian takes
    # ~800 interpreter launches here, a minute and a half).
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


def test_multi_state_mapping_x0_and_every_state_returned():
    """ADMM carries three states; x0 as a mapping returns them all, each like the eager run."""
    scheme, z0, W, params, act = _case("admm", None, batch=9, n=16)
    g = torch.Generator().manual_seed(3)
    x0 = {"z": z0, "u": torch.randn(9, 16, generator=g, dtype=torch.float64).to(DEV)}
    out = tied.tied_network(scheme, x0, W, 3, **params)
    ref = _eager(scheme, x0, W, 3, None, params)
    assert set(out) == {"x", "z", "u"}
    for s in out:
        torch.testing.assert_close(out[s], ref[s], **F64)


def test_hb_net_against_the_paper_formula():
    """x_{k+1} = φ(W x_k + b + β(x_k − x_{k−1})), x_{−1} = x_0, written here in plain torch."""
    _, x0, W, params, _ = _case("hb_net", None, batch=40, n=32, seed=2)
    b, beta = params["b"], params["β"]
    x, prev = x0, x0
    for _ in range(5):
        x, prev = torch.relu(x @ W.T + b + beta * (x - prev)), x
    out = tied.tied_network(unroll.schemes["hb_net"], x0, W, 5, b=b, beta=beta)
    torch.testing.assert_close(out, x, **F64)


def test_heavy_ball_layer_is_sgd_with_momentum_on_the_layer_objective():
    """With φ = identity, the heavy-ball layer x' = W x + b + β(x − x_prev) is heavy ball with
    α = 1 on F(x) = ½xᵀ(I − W)x − bᵀx (W symmetric): torch.optim.SGD(lr=1, momentum=β)."""
    g = torch.Generator().manual_seed(4)
    n, beta = 16, 0.4
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    W = ((A + A.T) / (4 * n**0.5)).to(DEV)
    b = torch.randn(n, generator=g, dtype=torch.float64).to(DEV)
    x0 = torch.randn(10, n, generator=g, dtype=torch.float64).to(DEV)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=1.0, momentum=beta)
    for _ in range(6):
        opt.zero_grad()
        F = 0.5 * ((x @ (torch.eye(n, dtype=x.dtype, device=DEV) - W)) * x).sum() - (x @ b).sum()
        F.backward()
        opt.step()
    out = tied.tied_network(
        unroll.schemes["heavy_ball"], x0, W, 6, activation="identity", b=b, β=beta
    )
    torch.testing.assert_close(out, x.detach(), **F64)


def test_odd_shapes_views_and_every_output_written(monkeypatch):
    """Rows not a multiple of the tile, width padded (17 -> 32), leading batch dimensions,
    non-contiguous x0 and W, and buffers pre-filled with NaN so an unwritten element fails."""

    def nan_empty(*args, **kwargs):
        return torch.full(torch.Size(*args) if args else kwargs.pop("size"), float("nan"), **kwargs)

    scheme, x0, W, params, act = _case("agd_net", None, batch=40, n=17, seed=5)
    x0v = torch.cat([x0, x0], dim=1)[:, ::2].reshape(2, 20, 17)  # strided, two batch dims
    Wt = W.T.contiguous().T  # W's values through a transposed layout
    assert not x0v.is_contiguous() and not Wt.is_contiguous()
    leaves = [x0v.clone().requires_grad_(True), Wt.requires_grad_(True), *params.values()]
    for t in leaves[2:]:
        t.requires_grad_(True)
    monkeypatch.setattr(torch, "empty", nan_empty)
    out = tied.tied_network(scheme, leaves[0], leaves[1], 3, **params)
    got = torch.autograd.grad(out.sum(), leaves)
    monkeypatch.undo()
    ref = _eager(scheme, leaves[0], leaves[1], 3, None, params)
    want = torch.autograd.grad(ref.sum(), leaves)
    assert out.shape == (2, 20, 17)
    torch.testing.assert_close(out, ref, **F64)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("act", ["tanh", "hardtanh", "softplus"])
def test_other_activations(act):
    scheme, x0, W, params, _ = _case("hb_net", None, batch=8, n=16, seed=6)
    x0.requires_grad_(True)
    out = tied.tied_network(scheme, x0 * 3, W, 3, activation=act, **params)
    ref = _eager(scheme, x0 * 3, W, 3, act, params)
    torch.testing.assert_close(out, ref, **F64)
    torch.testing.assert_close(
        torch.autograd.grad(out.sum(), x0)[0], torch.autograd.grad(ref.sum(), x0)[0], **F64
    )


def test_float32_against_float64():
    """float32 in the interpreter: relative error of order float32 eps times the depth."""
    scheme, x0, W, params, _ = _case("hb_net", None, batch=16, n=32, seed=7)
    ref = _eager(scheme, x0, W, 5, None, params)
    out = tied.tied_network(
        scheme, x0.float(), W.float(), 5, **{k: v.float() for k, v in params.items()}
    )
    rel = (out.double() - ref).norm() / ref.norm()
    # ~ 5 layers × 32 terms × 6e-8, with margin; a wrong term gives > 1e-2
    assert rel < NETWORK_VS_F64[torch.float32]


def test_depth_zero_and_parameters_as_numbers():
    scheme, x0, W, _, _ = _case("hb_net", None, batch=8, n=16)
    torch.testing.assert_close(tied.tied_network(scheme, x0, W, 0), x0)
    out = tied.tied_network(scheme, x0, W, 2, b=0.25, beta=0.5)  # b broadcast to every channel
    ref = _eager(scheme, x0, W, 2, None, {"b": 0.25, "β": 0.5})
    torch.testing.assert_close(out, ref, **F64)


def test_coefficient_gradients_are_deterministic():
    scheme, x0, W, params, act = _case("agd_net", None, batch=40, n=17, seed=8)
    leaves = [W.requires_grad_(True), *(p.requires_grad_(True) for p in params.values())]
    runs = [
        torch.autograd.grad(tied.tied_network(scheme, x0, W, 3, **params).sum(), leaves)
        for _ in range(2)
    ]
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("name", "says"),
    [("rk4", "ode scheme"), ("nesterov_schedule", "scalar state θ"), ("heavy_ball", "activation")],
)
def test_unsupported_schemes_say_why(name, says):
    _, x0, W, _, _ = _case("hb_net", None, batch=8, n=16)
    reason = tied.tied_reason(unroll.schemes[name], x0, W)
    assert reason is not None and says in reason
    with pytest.raises(UnrollError, match=says):
        tied.tied_network(unroll.schemes[name], x0, W, 2)


def test_unsupported_tensors_say_why():
    scheme = unroll.schemes["hb_net"]
    x = torch.zeros(4, 300)
    assert "exceeds 128" in tied.tied_reason(scheme, x, torch.zeros(300, 300))
    assert "square" in tied.tied_reason(scheme, x[:, :16], torch.zeros(16, 8))
    assert "W is torch.float64" in tied.tied_reason(
        scheme, x[:, :16], torch.zeros(16, 16, dtype=torch.float64)
    )
    assert tied.tied_reason(scheme, x[:, :16].to(DEV), torch.zeros(16, 16, device=DEV)) is None
    with pytest.raises(UnrollError, match="unknown parameter 'gamma'"):
        tied.tied_network(scheme, x[:, :16].to(DEV), torch.zeros(16, 16, device=DEV), 2, gamma=1)


def test_one_product_read_by_two_equations_is_one_call():
    """The step IR calls W(x_k) once however many equations read it: the tied lowering used to
    walk the equations itself and refused this layer ("applies W more than once")."""
    scheme = unroll.compile("v_<k+1> = W(x_k) + b - x_k\nx_<k+1> = φ(W(x_k) + b)")
    g = torch.Generator().manual_seed(11)
    x0 = torch.randn(9, 16, generator=g, dtype=torch.float64).to(DEV)
    W = (torch.randn(16, 16, generator=g, dtype=torch.float64) / 5).to(DEV)
    out = tied.tied_network(scheme, {"x": x0}, W, 3, activation="tanh", b=0.2)
    x = x0
    for _ in range(3):  # the layer written here in plain torch
        x, v = torch.tanh(x @ W.T + 0.2), x @ W.T + 0.2 - x
    torch.testing.assert_close(out["x"], x, **F64)
    torch.testing.assert_close(out["v"], v, **F64)


def test_tied_reason_reads_the_coefficient_values():
    """What a network passes (its coefficient tensors) is checked before any launch."""
    scheme = unroll.schemes["hb_net"]
    x0, W = torch.zeros(8, 16, device=DEV), torch.zeros(16, 16, device=DEV)
    b = torch.zeros(16, device=DEV)
    wide_beta = {"β": torch.zeros(16, device=DEV), "b": b}
    assert "β holds 16 values" in tied.tied_reason(scheme, x0, W, None, wide_beta)
    assert "per channel: shape (16,), got (3,)" in tied.tied_reason(
        scheme, x0, W, None, {"b": torch.zeros(3, device=DEV)}
    )
    assert "unknown parameter 'gamma'" in tied.tied_reason(scheme, x0, W, None, {"gamma": 1.0})
    assert tied.tied_reason(scheme, x0, W, None, {"beta": 0.3, "b": b}) is None


def test_a_state_no_layer_reads_is_not_carried():
    """ADMM's x is only ever written: the kernels neither carry it (a tile of registers fewer)
    nor store its trajectory, and its adjoint is no loop-carried literal 0, which the
    interpreter ran and the compiler refused ("a0_0 ... re-assigned to int32 in loop"). The
    values themselves: test_multi_state_mapping_x0_and_every_state_returned."""
    from unroll.lowering.triton import tied_source

    step = tied.lower(unroll.schemes["admm"])
    assert step.states == ("x", "z", "u") and step.read == (False, True, True)
    text = tied_source.source(step)
    fwd = text[text.index("def tied_forward") : text.index("def tied_backward")]
    bwd = text[text.index("def tied_backward") : text.index("def weight_grad")]
    assert "TRAJ_0" not in fwd and "c0_0" not in fwd
    assert "TRAJ_0" not in bwd and "na0_0" not in bwd
    assert all(tied.lower(unroll.schemes[n], a).read == (True,) * len(tied.lower(unroll.schemes[n], a).states)
               for n, a in SCHEMES.items() if n != "admm")  # fmt: skip


def test_the_loop_never_renames_a_carried_value():
    """The generator avoids `xp = x; x = xn` (miscompiled on the GPU with Triton 3.6): each
    carried value's new value is an expression of its own, not another carried value."""
    for name, act in SCHEMES.items():
        step = tied.lower(unroll.schemes[name], act)
        carried = {c for row in step.carried for c in row}
        for row in step.update:
            for expr in row:
                assert expr not in carried, (name, expr)


# -- GPU: every generated kernel against float64 (the interpreter is no evidence for the GPU) -----
# bfloat16 keeps 8 bits: one layer's rounding is ~4e-3 relative; errors add over layers, so
# 16 layers stay under ~3e-2 (the prototype: 2e-3). float32 (ieee dot): ~1e-6.
GPU_TOL = TIED_GPU  # tests/tolerances.py


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize(("batch", "n", "depth"), [(1000, 64, 8), (4096, 128, 16), (2048, 256, 16)])
def test_gpu_against_float64(name, dtype, batch, n, depth):
    if n > tied.MAX_WIDTH[str(dtype).removeprefix("torch.")]:
        pytest.skip(f"width {n} is past the {dtype} limit (falls back)")
    scheme, x0, W, params, act = _case(name, SCHEMES[name], batch=batch, n=n, seed=9)
    leaves = [x0, W, *params.values()]
    for t in leaves:
        t.requires_grad_(True)
    ref = _eager(scheme, x0, W, depth, act, params)
    low = [t.detach().to(dtype).requires_grad_(True) for t in (x0, W)]
    lp = {k: v.detach().to(dtype).requires_grad_(True) for k, v in params.items()}
    out = tied.tied_network(scheme, low[0], low[1], depth, activation=act, **lp)
    rel = ((out.double() - ref).norm() / ref.norm()).item()
    assert rel < GPU_TOL[dtype], rel
    upstream = torch.randn_like(ref)
    want = torch.autograd.grad(ref, leaves, upstream)
    got = torch.autograd.grad(out, [*low, *lp.values()], upstream.to(dtype))
    for a, b in zip(got, want, strict=True):
        err = ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()
        assert err < 4 * GPU_TOL[dtype], err  # gradients: twice the products, twice the error


def test_kernels_are_generated_once_and_cached_under_unroll_cache_dir(monkeypatch, tmp_path):
    """The SymPy generation (tens of ms) runs once per step, not on every call (it would dwarf
    a launch), and the module is a sealed file of `unroll.lowering.cache` under $UNROLL_CACHE_DIR."""
    from unroll.lowering import cache
    from unroll.lowering.triton import tied_source

    monkeypatch.setenv("UNROLL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_loaded", {})
    monkeypatch.setattr(tied_source, "_MODULES", {})
    calls = []
    real = tied_source.source
    monkeypatch.setattr(tied_source, "source", lambda step: calls.append(1) or real(step))
    scheme, x0, W, params, _ = _case("hb_net", None, batch=8, n=16)
    first = tied.tied_network(scheme, x0, W, 2, **params)
    second = tied.tied_network(scheme, x0, W, 2, **params)
    assert torch.equal(first, second) and len(calls) == 1
    (path,) = tmp_path.glob("tied_hb_net_*.py")
    assert cache.intact(path.read_text())
