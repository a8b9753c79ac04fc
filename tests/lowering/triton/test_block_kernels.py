"""The generated Triton block-update kernels (interpreter on CPU, compiled on a GPU).

Layered references: SymPy (lambdify to NumPy, float64) <- the eager PyTorch lowering <- the
Triton op; gradients against torch.autograd through the eager lowering with one random upstream
gradient, and gradcheck in float64. Outputs and partial sums are pre-filled with NaN, so an
element a kernel fails to write fails the test.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import sympy as sp
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import unroll  # noqa: E402
from tests.tolerances import F64_BLOCK_GRAD, F64_REROUTED, KERNEL
from unroll import UnrollError  # noqa: E402
from unroll.ir.step import build  # noqa: E402
from unroll.lowering.triton.block import is_per_channel  # noqa: E402
from unroll.lowering.triton.op import block_kernel, block_update, kernel_module  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SCHEMES = sorted(unroll.schemes)

TOL = KERNEL  # see tests/tolerances.py


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UNROLL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kcache"))
    with np.errstate(all="ignore"):  # the interpreter computes masked-off lanes too
        yield


@pytest.fixture
def nan_empty(monkeypatch):
    """torch.empty / empty_like that fill with NaN (an unwritten element stays NaN)."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: nan(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan(empty_like(*a, **k)))


def _values(block, shape, dtype, gen, requires_grad=False, coef_dtype=None):
    ts = {
        i.name: torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        for i in block.inputs
    }
    cs = {}
    for c in block.coefficients:
        n = (shape[1] if len(shape) > 1 else shape[0]) if is_per_channel(c) else ()
        cs[c.name] = (0.5 * torch.randn(n, generator=gen, dtype=torch.float64)).to(
            coef_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)
        )
    for v in [*ts.values(), *cs.values()]:
        v.requires_grad_(requires_grad)
    return ts, cs


def _sympy_reference(block, ts, cs):
    """Every output from the block's SymPy expressions (φ written out), float64 NumPy."""
    out = {}
    ref = next(iter(ts.values()))
    syms = [i.symbol for i in block.inputs] + [c.symbol for c in block.coefficients]
    args = [ts[i.name].detach().double().numpy() for i in block.inputs]
    for c in block.coefficients:
        v = cs[c.name].detach().double().numpy()
        if is_per_channel(c) and ref.dim() > 1:
            v = v.reshape(-1, *([1] * (ref.dim() - 2)))
        args.append(v)
    for o, expr in zip(block.outputs, block.expressions, strict=True):
        f = sp.lambdify(syms, expr, modules=["numpy"])
        out[o.state] = torch.as_tensor(np.broadcast_to(f(*args), ref.shape).copy())
    return out


def _shape(block, n=5):
    return (2, 3, n, 2) if block.per_channel else (3, n)


@pytest.mark.parametrize("name", SCHEMES)
def test_forward_and_backward_against_eager_and_sympy_float64(name, nan_empty):
    scheme = unroll.schemes[name]
    triton_op = block_update(scheme, backend="triton")
    eager = block_update(scheme, backend="torch")
    block = triton_op.view
    gen = torch.Generator().manual_seed(len(name))
    ts, cs = _values(block, _shape(block), torch.float64, gen, requires_grad=True)
    ts = {k: v.to(DEVICE) for k, v in ts.items()}
    cs = {k: v.to(DEVICE) for k, v in cs.items()}
    got, want = triton_op(ts, cs), eager(ts, cs)
    sym = _sympy_reference(block, ts, cs)
    tol = TOL[torch.float64]
    for state in want:
        torch.testing.assert_close(want[state].detach().cpu(), sym[state], rtol=tol, atol=tol)
        torch.testing.assert_close(got[state], want[state], rtol=tol, atol=tol)

    upstream = {s: torch.randn_like(v) for s, v in want.items()}
    leaves = [*ts.values(), *cs.values()]
    g_got = torch.autograd.grad(sum((got[s] * upstream[s]).sum() for s in got), leaves)
    g_want = torch.autograd.grad(sum((want[s] * upstream[s]).sum() for s in want), leaves)
    for leaf, a, b in zip([*ts, *cs], g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, n=leaf: f"{n}: {m}")


@pytest.mark.parametrize("name", SCHEMES)
def test_gradcheck_float64(name):
    block = block_update(unroll.schemes[name], backend="triton").view
    gen = torch.Generator().manual_seed(1)
    ts, cs = _values(block, (2, 3, 1, 3) if block.per_channel else (2, 3), torch.float64, gen, True)
    update = kernel_module(block.ir.scheme, block.activation).update
    if block.activation == "relu":  # keep away from the kink: finite differences straddle it
        for v in ts.values():
            v.data = v.data.abs() + 0.5
    tensors = [*ts.values(), *cs.values()]
    names = [*ts, *cs]

    def f(*xs):
        out = update(*xs)
        return tuple(out[o.state] for o in block.outputs)

    assert torch.autograd.gradcheck(f, tensors, fast_mode=True), names


# A multi-output scheme, one with a per-channel bias and a trainable scalar under φ, one with a
# trainable scalar and two history values; sizes 1, 7, 2^k ± 1 and one over a tile (4096).
CASES = ["admm", "hb_net", "lm_resnet"]
SIZES = [1, 7, 31, 33, 4097]


def _compare(name, dtype, shape, layout, gen):
    scheme = unroll.schemes[name]
    op = block_update(scheme, backend="triton")
    block = op.view
    ts, cs = _values(block, shape, dtype, gen)
    if layout == "strided":  # every other element of a larger tensor: not contiguous
        ts = {k: torch.stack([v, v], dim=-1)[..., 0] for k, v in ts.items()}
        assert not next(iter(ts.values())).is_contiguous()
    elif layout == "channels_last":
        ts = {k: v.contiguous(memory_format=torch.channels_last) for k, v in ts.items()}
    for v in [*ts.values(), *cs.values()]:
        v.requires_grad_(True)
    got = op(ts, cs)
    # Reference: the eager lowering in float64 on the same (rounded) values.
    ts64 = {k: v.detach().double().requires_grad_(True) for k, v in ts.items()}
    cs64 = {k: v.detach().double().requires_grad_(True) for k, v in cs.items()}
    want = block_update(scheme, backend="torch")(ts64, cs64)
    tol = TOL[dtype]
    for s in want:
        assert got[s].dtype == dtype and got[s].shape == want[s].shape
        scale = max(1.0, float(want[s].detach().abs().max()))
        torch.testing.assert_close(got[s].double(), want[s], rtol=tol, atol=tol * scale)
    # The upstream gradient reaches the op in the output's dtype: round the reference's too, so
    # both sides differentiate the same numbers.
    upstream = {
        s: torch.randn(v.shape, generator=gen, dtype=torch.float64).to(dtype).double()
        for s, v in want.items()
    }
    leaves = [*ts.values(), *cs.values()]
    g_got = torch.autograd.grad(sum((got[s].double() * upstream[s]).sum() for s in got), leaves)
    g_want = torch.autograd.grad(
        sum((want[s] * upstream[s]).sum() for s in want), [*ts64.values(), *cs64.values()]
    )
    for leaf, a, b in zip([*ts, *cs], g_got, g_want, strict=True):
        # Input gradients are rounded once to the storage dtype; coefficient gradients are
        # float32/64 sums of the same terms (error ~ n * 6e-8 relative): the same tolerance.
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(
            a.double(), b, rtol=tol, atol=tol * scale, msg=lambda m, n=leaf: f"{n}: {m}"
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("name", CASES)
def test_dtypes_sizes_and_layouts(name, dtype, nan_empty):
    gen = torch.Generator().manual_seed(7)
    per_channel = block_update(unroll.schemes[name]).view.per_channel
    for n in SIZES:
        shape = (1, 3, n, 1) if per_channel else (n,)
        _compare(name, dtype, shape, "contiguous", gen)
    shape = (2, 5, 3, 3) if per_channel else (5, 7)
    _compare(name, dtype, shape, "strided", gen)
    if per_channel:
        _compare(name, dtype, shape, "channels_last", gen)  # channels are the columns
        _compare(name, dtype, (9, 5), "contiguous", gen)  # (N, C)


@pytest.mark.gpu
@pytest.mark.parametrize("name", CASES)
def test_bfloat16_on_gpu(name):
    gen = torch.Generator().manual_seed(3)
    _compare(name, torch.bfloat16, (2, 5, 7, 3), "contiguous", gen)


def test_coefficient_values_are_arguments_not_compile_time_constants(monkeypatch):
    """Changing β or b changes no compile-time argument of either kernel, so no recompilation
    (Triton specialises on constexprs and argument types; the coefficients are pointers)."""
    module = kernel_module(unroll.schemes["hb_net"])
    seen: list[tuple] = []

    def spy(kernel):
        class Spy:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    types = tuple(
                        (a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else a
                        for a in args
                    )
                    seen.append((kernel.__name__, types, tuple(sorted(kwargs.items(), key=str))))
                    return kernel[grid](*args, **kwargs)

                return launch

        return Spy()

    for k in ("forward_kernel", "backward_kernel"):  # what the shared runtime launches
        monkeypatch.setattr(module.OP, k, spy(getattr(module.OP, k)))
    x = torch.randn(4, 3, 5, requires_grad=True)
    for beta in (0.5, -0.25):
        b = torch.full((3,), beta, requires_grad=True)
        out = module.update(
            x_k=x, x_km1=x.detach() * 2, o_0=x.detach() + 1, b=b, beta=torch.tensor(beta)
        )["x"]
        out.sum().backward()
    fwd = [s for s in seen if s[0] == "hb_net_fwd_kernel"]
    bwd = [s for s in seen if s[0] == "hb_net_bwd_kernel"]
    assert len(fwd) == 2 and fwd[0] == fwd[1]
    assert len(bwd) == 2 and bwd[0] == bwd[1]


@pytest.mark.gpu
def test_training_coefficients_never_recompiles():
    module = kernel_module(unroll.schemes["lm_resnet"])
    x = torch.randn(1000, device="cuda")
    kappa = torch.tensor(-0.05, device="cuda", requires_grad=True)
    opt = torch.optim.SGD([kappa], lr=0.1)
    counts = []
    for _ in range(3):
        opt.zero_grad()
        one = torch.tensor(1.0, device="cuda")
        module.update(u_n=x, u_nm1=x * 0.9, o_0=x.sin(), h=one, kappa=kappa)["u"].sum().backward()
        opt.step()
        # Triton keeps one compiled binary per specialisation in device_caches[device][0].
        kernel = module.lm_resnet_fwd_kernel
        counts.append(len(kernel.device_caches[torch.cuda.current_device()][0]))
    assert counts[0] == counts[-1]


def test_autograd_saves_only_what_the_backward_reads():
    """forward_euler: x + h o. d/dx = 1 and d/do = h need no tensor; d/dh = o needs o. So the
    op saves o (and the coefficient), never x."""
    module = kernel_module(unroll.schemes["forward_euler"])
    x = torch.randn(6, requires_grad=True)
    o = torch.randn(6, requires_grad=True)
    h = torch.tensor(0.1, requires_grad=True)
    packed = []

    def pack(t):
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module.update(x_k=x, o_0=o, h=h)["x"]
    ptrs = {t.data_ptr() for t in packed}
    assert o.data_ptr() in ptrs and x.data_ptr() not in ptrs
    out.sum().backward()
    torch.testing.assert_close(h.grad, o.detach().sum())  # d/dh Σ(x + h o) = Σ o


def test_torch_compile_sees_one_op_without_graph_breaks():
    module = kernel_module(unroll.schemes["hb_net"])
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def step(x, xp, W, b, beta):
        return module.update(x_k=x, x_km1=xp, o_0=x @ W, b=b, beta=beta)["x"]

    x, xp, W = torch.randn(4, 3), torch.randn(4, 3), torch.randn(3, 3)
    b, beta = torch.zeros(3), torch.tensor(0.5)
    out = torch.compile(step, backend=backend, fullgraph=True)(x, xp, W, b, beta)
    torch.testing.assert_close(out, step(x, xp, W, b, beta))
    ops = [n.target for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    fused = [t for t in ops if "unroll" in str(t)]
    assert len(fused) == 1, ops

    class Step(torch.nn.Module):
        def forward(self, x, xp, W, b, beta):
            return step(x, xp, W, b, beta)

    exported = torch.export.export(Step(), (x, xp, W, b, beta))
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert sum("unroll" in t for t in targets) == 1, targets


def test_bad_inputs_are_clear_errors():
    op = block_update(unroll.schemes["hb_net"], backend="triton")
    x = torch.randn(2, 3)
    with pytest.raises(UnrollError, match="o_0"):
        op({"x_k": x, "x_km1": x}, {"b": torch.zeros(3), "beta": 0.5})
    with pytest.raises(UnrollError, match="b: 4 values, expected 3"):
        op({"x_k": x, "x_km1": x, "o_0": x}, {"b": torch.zeros(4), "beta": 0.5})
    with pytest.raises(UnrollError, match="backend"):
        block_update(unroll.schemes["hb_net"], backend="cuda")


def test_auto_backend_is_torch_off_cuda():
    op = block_update(unroll.schemes["heavy_ball"])
    assert op.backend_for("cpu") == "torch"
    x = torch.randn(5)
    out = op({"x_k": x, "x_km1": x, "o_0": x}, {"alpha": 0.1, "beta": 0.9})
    torch.testing.assert_close(out["x"], x - 0.1 * x)


@pytest.mark.parametrize(
    "name, options",
    [
        ("hb_net", {"dim": 6}),
        ("heavy_ball", {"dim": 6, "activation": "relu"}),  # the layer form of the optimizer
        ("nesterov_schedule", {"dim": 6, "activation": "tanh"}),  # host θ schedule
        ("lm_resnet", {"f": None}),
        ("admm", {"channels": 3, "kernel_size": 3, "norm": None}),
    ],
)
def test_network_backend_triton_matches_torch(name, options):
    """Scheme.network(backend='triton') runs the generated op in every block and agrees with
    backend='torch' (the eager lowering) in outputs and parameter gradients."""
    scheme = unroll.schemes[name]
    if "f" in options:
        options = {**options, "f": torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh())}
    torch.manual_seed(0)
    ref = scheme.network(3, backend="torch", **options).double()
    fused = scheme.network(3, backend="triton", **options).double()
    fused.load_state_dict(ref.state_dict())
    x0 = torch.randn(4, 3, 5, 5) if "channels" in options else torch.randn(4, 6)
    x0 = x0.double()
    y_ref, y = ref(x0), fused(x0)
    tol = TOL[torch.float64]
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    gy = torch.randn_like(y)
    g_ref = torch.autograd.grad((y_ref * gy).sum(), list(ref.parameters()), allow_unused=True)
    g = torch.autograd.grad((y * gy).sum(), list(fused.parameters()), allow_unused=True)
    for a, b in zip(g, g_ref, strict=True):
        if b is None:  # unused by the eager graph; the op receives it and returns 0
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, **F64_BLOCK_GRAD)


def test_forward_mode_is_refused_by_triton_and_eager_under_auto():
    """The custom op has no forward-mode rule: torch.func.jvp would give it zero tangents
    silently. backend='triton' refuses; 'auto' takes the eager update, whose jvp is right."""
    scheme = unroll.schemes["forward_euler"]
    torch.manual_seed(0)
    f = torch.nn.Linear(4, 4).double()
    x0, v = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    eager = scheme.network(3, f=f, backend="torch").double()
    _, want = torch.func.jvp(eager, (x0,), (v,))
    # Reference: the tangent of x -> x + h f(x) three times is (I + h A)^3 v.
    A = torch.eye(4, dtype=torch.float64) + f.weight  # h = 1
    torch.testing.assert_close(want, v @ torch.linalg.matrix_power(A, 3).T)
    fused = scheme.network(3, f=f, backend="triton").double()
    with pytest.raises(unroll.UnrollError, match="no forward-mode rule"):
        torch.func.jvp(fused, (x0,), (v,))
    auto = scheme.network(3, f=f, backend="auto").double()
    _, got = torch.func.jvp(auto, (x0,), (v,))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # The op itself, called directly, refuses too.
    op = block_update(scheme, backend="triton")
    with pytest.raises(unroll.UnrollError, match="no forward-mode rule"):
        torch.func.jvp(lambda o: op({"x_k": x0, "o_0": o}, {"h": 1.0})["x"], (x0,), (v,))


@pytest.mark.gpu
@pytest.mark.slow
def test_more_than_2_to_the_31_elements_on_gpu():
    """64-bit offsets: the elements past 2^31 are written and right (float16, ~13 GB)."""
    module = kernel_module(unroll.schemes["forward_euler"])
    n = (1 << 31) + 7
    x = torch.ones(n, dtype=torch.float16, device="cuda")
    o = torch.full((n,), 2.0, dtype=torch.float16, device="cuda")
    o[-5:] = torch.arange(5, dtype=torch.float16, device="cuda")
    out = module.update(x_k=x, o_0=o, h=0.5)["x"]
    torch.testing.assert_close(out[:3], torch.full((3,), 2.0, dtype=torch.float16, device="cuda"))
    want = 1 + 0.5 * torch.arange(5, dtype=torch.float16, device="cuda")
    torch.testing.assert_close(out[-5:], want)  # exact: small halves and integers in float16


# -- the contract with unroll.lowering.nn: block_kernel(ir, activation) ------------------------
def test_block_kernel_reads_ir_leaves_in_order_and_returns_the_updates():
    """heavy ball: x_<k+1> = x_k + β(x_k − x_<k-1>) − α o_0, written out by hand in float64."""
    ir = build(unroll.schemes["heavy_ball"])
    kernel = block_kernel(ir)
    assert block_kernel(ir) is kernel and kernel.ir is ir
    assert [i.name for i in kernel.inputs] == ["x_k", "x_km1", "o_0"]
    assert [c.name for c in kernel.coefficients] == ["alpha", "beta"]
    assert kernel.outputs == ir.updates
    assert all(any(leaf is x for x in (*ir.history, *ir.calls)) for leaf in kernel.inputs)
    gen = torch.Generator().manual_seed(5)
    x, xp, g = (torch.randn(4, 7, generator=gen, dtype=torch.float64) for _ in range(3))
    (new,) = kernel([x, xp, g], [0.1, torch.tensor(0.9, dtype=torch.float64)])
    torch.testing.assert_close(new, x + 0.9 * (x - xp) - 0.1 * g, **F64_REROUTED)


def test_calling_a_block_kernel_neither_prints_nor_hashes_nor_loads(monkeypatch):
    """Everything a call needs is resolved by block_kernel, once: a call builds no view,
    prints no source, hashes no scheme and touches no cache."""
    from unroll.lowering import cache
    from unroll.lowering.triton import block, emit, op

    kernel = block_kernel(build(unroll.schemes["hb_net"]))

    def boom(*args, **kwargs):
        raise AssertionError("called during a kernel call")

    for module, name in [
        (op, "build"), (op, "kernel_view"), (op, "scheme_hash"), (op, "cache_key"),
        (op, "module_source"), (op, "_load"), (emit, "scheme_hash"), (emit, "module_source"),
        (block, "kernel_view"), (cache, "load"), (cache, "key"), (cache, "versions"),
    ]:  # fmt: skip
        monkeypatch.setattr(module, name, boom)
    x = torch.randn(2, 3)
    for _ in range(3):
        (out,) = kernel([x, x, x], [0.5, torch.zeros(3)])
        torch.testing.assert_close(out, torch.relu(x))  # β(x − x) = 0, b = 0


def test_block_kernel_refuses_forward_mode():
    kernel = block_kernel(build(unroll.schemes["forward_euler"]))
    x, v = torch.randn(2, 4), torch.randn(2, 4)
    with pytest.raises(UnrollError, match="no forward-mode rule"):
        torch.func.jvp(lambda o: kernel([x, o], [1.0])[0], (x,), (v,))


def test_triton_available_says_whether_triton_imports():
    import importlib.util

    from unroll.lowering.triton.op import triton_available

    assert triton_available() is (importlib.util.find_spec("triton") is not None)
