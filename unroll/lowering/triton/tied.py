"""One Triton kernel for a whole weight-tied unrolled network (forward and backward).

When every layer shares its weight W, all ``depth`` layers of a dense network run in one
persistent kernel: each program loads W once, keeps the states of its tile of rows in registers
and never writes them back between layers. The pipeline::

    ir     = build(scheme, layer=True)      # Scheme -> StepIR of its layer form (unroll.ir.step)
    step   = lower(scheme, activation)      # StepIR -> TiedStep: p, z = p Wᵀ, carried updates (SymPy)
    adj    = step.adjoint()                 # TiedStep -> TiedAdjoint: the reverse step (SymPy)
    text   = tied_source.source(step)       # -> Triton source: tied_forward, tied_backward, weight_grad
    why    = tied_reason(scheme, x0, W, activation, coefficients)   # None, or why it cannot run
    x      = tied_network(scheme, x0, W, depth, b=..., β=...)       # launch, with autograd

The state history is carried as backward differences (x_k, x_k − x_{k−1}, ...), the velocity form:
every carried value is recomputed each layer, never renamed (see `tied_source`).

Backward: the forward stores each layer's input states (depth·B·n values per state, the minimum
for an O(depth) reverse sweep: relu is not invertible, so states cannot be rebuilt from the
output) and nothing else; the backward kernel recomputes p_k and z_k = p_k Wᵀ from them (one extra
`tl.dot` per layer instead of another depth·B·n buffer written and read) and runs the adjoint
recursion. dW = Σ_k dZ_kᵀ p_k is one deterministic reduction (the ``weight_grad`` kernel); the
parameters' gradients are summed per program and then over programs, in a fixed order.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sympy as sp
import torch

from unroll.errors import UnrollError
from unroll.frontend.scheme import Scheme, canonical_params
from unroll.ir import activations
from unroll.ir import vocabulary as ir_vocab
from unroll.ir.step import build
from unroll.lowering.eager.run import Stepper, operators
from unroll.lowering.eager.states import initial_states, primary_state
from unroll.lowering.triton import aot, tied_source
from unroll.lowering.triton.tied_step import TiedStep

# The widest network whose W (n × n) the kernels keep on chip, by dtype: every width up to these
# compiles for sm_90a within the 227 KB of shared memory a block may use there, at the launch
# shapes of `launch_config` (docs/kernels.md, `unroll kernels --target sm_90a`).
MAX_WIDTH = {"bfloat16": 256, "float16": 256, "float32": 128, "float64": 64}
# The most stack (spill) bytes per thread the tied forward may take in 16-bit storage, by BLOCK_N
# (issue 12's targets: nothing up to width 128, at most 512 B at 256). A forward that spills
# more runs, but slowly: on a GPU the network refuses it before launching (`kernel_reason`) and
# falls back. densenet's forward at width 256 is one (its layer carries three states).
FORWARD_STACK_LIMIT = {16: 0, 32: 0, 64: 0, 128: 0, 256: 512}


# -- Scheme -> TiedStep ----------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def lower(scheme: Scheme, activation: str | None = None) -> TiedStep:
    """``scheme``'s layer as a `TiedStep`, read from its step IR
    (`unroll.ir.step.build(scheme, layer=True)`): the one linear call gives the point p (its
    argument) and the product z (its symbol), the updates give G, the coefficients tell scalars
    from per-channel ones. An `UnrollError` says why when the tied kernel cannot run the scheme
    (that message is the fallback reason). Cached: schemes are frozen values."""
    name = scheme.name or str(scheme)
    if scheme.kind == "ode":
        raise UnrollError(
            f"scheme {name!r} is an ode scheme: its branch f is no dense layer W p for the kernel"
        )
    ir = build(scheme, layer=True)
    layer = ir.scheme
    if not ir.is_explicit:
        raise UnrollError(f"scheme {name!r} is implicit ({layer.implicit_reason})")
    if layer.startup:
        raise UnrollError(f"scheme {name!r} takes its first steps with {layer.startup!r}")
    scalar_states = [s.name for s in ir.states if s.scalar]
    if scalar_states:
        raise UnrollError(
            f"scheme {name!r} has the scalar state {scalar_states[0]} (a schedule); "
            "the tied kernel carries tensor states only"
        )
    act_name = activation if activation is not None else layer.activation
    if act_name is None:
        raise UnrollError(f"scheme {name!r} names no activation: pass activation=")
    if not isinstance(act_name, str):
        raise UnrollError("activation= must be the name of a registered activation for the kernel")
    act = activations.get(act_name)

    other = next((c for c in ir.calls if c.kind != "linear"), None)
    if other is not None:
        raise UnrollError(f"scheme {name!r} uses {other.op}, which no dense layer computes")
    linear = [c for c in ir.calls if c.kind == "linear"]
    if not linear:
        raise UnrollError(
            f"scheme {name!r} has no product W(...): nothing for the kernel to multiply"
        )
    if len(linear) > 1:
        raise UnrollError(
            f"scheme {name!r} applies W more than once per layer; "
            "the tied kernel does one product per layer"
        )
    (call,) = linear

    states = tuple(s.name for s in ir.states)
    depths = tuple(len(s.history) for s in ir.states)
    carried = tuple(
        tuple(sp.Symbol(f"c{i}_{j}", real=True) for j in range(d)) for i, d in enumerate(depths)
    )
    params = ir.parameters
    scalars = tuple(c.ref.name for c in params if not c.per_channel)
    channels = tuple(c.ref.name for c in params if c.per_channel)
    q = tuple(sp.Symbol(f"q{m}", real=True) for m in range(len(scalars)))
    ch = tuple(sp.Symbol(f"ch{m}", real=True) for m in range(len(channels)))
    z = sp.Symbol("z", real=True)

    # x_{k-j} = (1 − ∇)^j x_k = Σ_m (−1)^m C(j, m) ∇^m x_k, in the carried differences
    env: dict[sp.Basic, sp.Expr] = {
        h.symbol: sp.Add(
            *((-1) ** m * math.comb(h.lag, m) * carried[i][m] for m in range(h.lag + 1))
        )
        for i, s in enumerate(ir.states)
        for h in s.history
    }
    env.update(
        {c.symbol: sym for c, sym in zip([c for c in params if not c.per_channel], q, strict=True)}
    )
    env.update(
        {c.symbol: sym for c, sym in zip([c for c in params if c.per_channel], ch, strict=True)}
    )
    env[call.symbol] = z
    phi = sp.Lambda(activations.v, act.expr)

    def carried_form(expr: sp.Expr) -> sp.Expr:
        return expr.xreplace(env).replace(ir_vocab.ACT, phi)

    point = carried_form(call.arg)
    new = {u.state: carried_form(u.expr) for u in ir.updates}
    update = []
    for i, s in enumerate(states):
        row = [new[s]]  # ∇^j x_{k+1} = ∇^{j−1} x_{k+1} − ∇^{j−1} x_k
        for j in range(1, depths[i]):
            row.append(row[-1] - carried[i][j - 1])
        update.append(tuple(row))
    allowed = {z, *q, *ch, *(c for row in carried for c in row)}
    leaves = ir.leaves()
    for expr in (point, *(e for row in update for e in row)):
        extra = expr.free_symbols - allowed
        if extra:
            sym = sorted(extra, key=str)[0]
            shown = leaves[sym].ref if sym in leaves else sym
            raise UnrollError(
                f"scheme {name!r} uses {shown} (time, index or an unknown symbol) in its layer; "
                "the tied kernel runs layers that depend only on states and parameters"
            )
    return TiedStep(
        scheme=layer,
        activation=act_name,
        states=states,
        depths=depths,
        scalars=scalars,
        channels=channels,
        carried=carried,
        z=z,
        q=q,
        ch=ch,
        point=point,
        update=tuple(update),
    )


# -- when the kernel runs --------------------------------------------------------------------
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tied_reason(
    scheme: Scheme,
    x0: Any,
    W: Any,
    activation: str | None = None,
    coefficients: Mapping[str, Any] | None = None,
) -> str | None:
    """None when `tied_network` can run ``scheme`` on these tensors with these coefficient
    values (by parameter name; numbers or tensors); else why not, in one line. Checked before
    anything is launched: the scheme, the shapes, dtypes and devices, the widths the kernels
    are known to fit on chip (`MAX_WIDTH`), and on a GPU the compiled kernels' shared memory
    against the device's per-block limit."""
    try:
        step = lower(scheme, activation)
    except UnrollError as e:
        return str(e)
    tensors = list(x0.values()) if isinstance(x0, Mapping) else [x0]
    ref = next((t for t in tensors if isinstance(t, torch.Tensor)), None)
    if ref is None or not isinstance(W, torch.Tensor):
        return "x0 and W must be tensors (W a dense (n, n) matrix)"
    if W.dim() != 2 or W.shape[0] != W.shape[1]:
        return f"W has shape {tuple(W.shape)}; a weight-tied layer needs a square (n, n) matrix"
    n = W.shape[0]
    if ref.shape[-1] != n:
        return f"x0 has width {ref.shape[-1]} but W is {n} × {n}"
    dtype = _dtype_name(ref.dtype)
    if W.dtype != ref.dtype:
        return f"W is {W.dtype} but x0 is {ref.dtype}"
    if dtype not in MAX_WIDTH:
        return f"dtype {dtype} is not supported (supported: {', '.join(MAX_WIDTH)})"
    if n > MAX_WIDTH[dtype]:
        return (
            f"width {n} exceeds {MAX_WIDTH[dtype]}, the widest {dtype} W the kernel keeps on chip"
        )
    if ref.device.type != "cuda" and not (ref.device.type == "cpu" and _interpreting()):
        return (
            f"the tensors are on {ref.device.type}; the kernel runs on CUDA "
            "(or on the CPU under TRITON_INTERPRET=1)"
        )
    if W.device != ref.device:
        return f"W is on {W.device} but x0 is on {ref.device}"
    try:
        _coefficients(step, n, W, coefficients or {})
    except (TypeError, ValueError) as e:  # UnrollError is a ValueError
        return str(e).splitlines()[0]
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed"
    if ref.device.type == "cuda":
        return _device_reason(step, n, ref.dtype, ref.device)
    return None


def _coefficients(
    step: TiedStep, n: int, W: torch.Tensor, given: Mapping[str, Any]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The scalar and per-channel coefficient tensors in kernel order (0-d; (n,)), from
    ``given`` (any spelling `canonical_params` takes) and the scheme's defaults; numbers become
    tensors in W's accumulation dtype on W's device, tensors keep their autograd graph."""
    values: dict[str, Any] = dict(step.scheme.defaults())
    values.update(canonical_params(step.scheme, given))
    acc = torch.float64 if W.dtype == torch.float64 else torch.float32
    qs, chs = [], []
    for p in (*step.scalars, *step.channels):
        if p not in values:
            raise UnrollError(f"missing value for parameter {p} (pass {p}=..., it has no default)")
        v = values[p]
        t = v if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=acc, device=W.device)
        if not t.is_floating_point():
            t = t.to(acc)
        if t.device != W.device:
            raise UnrollError(f"parameter {p} is on {t.device} but W is on {W.device}")
        if p in step.scalars:
            if t.numel() != 1:
                raise UnrollError(
                    f"parameter {p} holds {t.numel()} values (per channel?); the kernel reads it "
                    "as one number"
                )
            qs.append(t.reshape(()))
        else:
            if t.numel() == 1:
                t = t.reshape(()).expand(n)
            if t.shape != (n,):
                raise UnrollError(
                    f"parameter {p} is per channel: shape ({n},), got {tuple(t.shape)}"
                )
            chs.append(t.contiguous())
    return qs, chs


# -- launch ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tile:
    """One kernel's launch shape: rows per program, warps, software-pipelining stages."""

    block_m: int
    num_warps: int
    num_stages: int = 3


@dataclass(frozen=True)
class LaunchConfig:
    """The launch shapes of the forward and the backward kernel; `launch_config` picks one,
    sweeps (`unroll.lowering.triton.resources`, the benchmark) pass others."""

    forward: Tile
    backward: Tile


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def block_width(n: int) -> int:
    """BLOCK_N: the width n padded to a power of two, at least 16 (the smallest tl.dot)."""
    return max(16, 1 << (n - 1).bit_length())


# Launch shapes on a GPU, (forward, backward) per BLOCK_N, for 16-bit storage: chosen by the
# recorded sweep (docs/kernels.md, `unroll kernels --sweep`; `resources.choose`), each kernel
# compiled for sm_90a at every (rows, warps, stages) it tries. 64 rows per program is the least
# that Hopper's wgmma takes; narrower widths take the shapes of 64.
SWEPT = {
    64: (Tile(64, 4, 1), Tile(64, 8, 1)),
    128: (Tile(64, 8, 1), Tile(64, 16, 2)),
    256: (Tile(64, 8, 1), Tile(64, 8, 1)),
}
# float32 (FMA products unless TF32 is allowed) and float64 (mma.sync) run no wgmma: 32 rows
# per program, set from a few compilations at their widest widths (not swept).
NARROW = {"float32": (Tile(32, 8, 1), Tile(32, 8, 1)), "float64": (Tile(32, 4, 1), Tile(32, 4, 1))}


def launch_config(n: int, dtype: torch.dtype) -> LaunchConfig:
    """The launch shapes for width ``n`` in ``dtype`` on a GPU (`SWEPT`, `NARROW`); small
    tiles under the interpreter, where only correctness counts."""
    if _interpreting():
        return LaunchConfig(Tile(16, 4, 1), Tile(16, 4, 1))
    name = _dtype_name(dtype)
    forward, backward = NARROW[name] if name in NARROW else SWEPT[max(block_width(n), 64)]
    return LaunchConfig(forward, backward)


def _tl_types(dtype: torch.dtype) -> tuple[Any, str]:
    import triton.language as tl

    compute = tl.float64 if dtype == torch.float64 else tl.float32
    allow_tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return compute, ("tf32" if allow_tf32 else "ieee")


class _Plan:
    """What one call fixes: the step, its kernels, depth and launch shape (not a tensor)."""

    def __init__(self, step: TiedStep, depth: int, n: int, config: LaunchConfig):
        self.step, self.depth, self.n, self.config = step, depth, n, config
        self.kernels = tied_source.module(step)
        self.block_n = block_width(n)


def _forward_launch(plan: _Plan, x0s, outs, trajs, W, qs, chs, store: bool):
    """(kernel, grid, args, kwargs) of the forward: ``x0s``/``outs`` (B, n) per state, ``trajs``
    (depth, B, n) per state (when ``store``), ``qs`` 0-d, ``chs`` (n,)."""
    B, n = x0s[0].shape
    compute, prec = _tl_types(W.dtype)
    tile = plan.config.forward
    strides = [s for x in x0s for s in x.stride()]
    args = (*x0s, *outs, *trajs, W, *qs, *chs, B, n, plan.depth, *strides, *W.stride())
    kwargs = dict(
        BLOCK_M=tile.block_m, BLOCK_N=plan.block_n, PREC=prec, COMPUTE=compute, STORE=store,
        num_warps=tile.num_warps, num_stages=tile.num_stages,
    )  # fmt: skip
    return plan.kernels.tied_forward, (_cdiv(B, tile.block_m),), args, kwargs


def _backward_launch(plan: _Plan, trajs, gouts, dx0s, W, qs, chs, dz, pt, dq, dc):
    """(kernel, grid, args, kwargs) of the backward: ``dz``/``pt`` (depth, B, n) out, ``dq``
    (programs, scalars) and ``dc`` (programs, channels, n) partial sums out."""
    _, B, n = trajs[0].shape
    compute, prec = _tl_types(W.dtype)
    tile = plan.config.backward
    strides = [s for g in gouts for s in g.stride()]
    args = (*trajs, *gouts, *dx0s, W, *qs, *chs, dz, pt, dq, dc, B, n, plan.depth, *strides,
            *W.stride())  # fmt: skip
    kwargs = dict(
        BLOCK_M=tile.block_m, BLOCK_N=plan.block_n, PREC=prec, COMPUTE=compute,
        STORE_P=plan.step.point_state is None,
        num_warps=tile.num_warps, num_stages=tile.num_stages,
    )  # fmt: skip
    return plan.kernels.tied_backward, (_cdiv(B, tile.block_m),), args, kwargs


def _forward_buffers(plan: _Plan, B: int, dtype: torch.dtype, device: Any, store: bool):
    """The forward's outputs: the final states (B, n) and, per state a layer reads, the
    trajectory (depth, B, n) when ``store`` (else a placeholder the kernel never writes)."""
    n, read = plan.n, plan.step.read
    outs = [torch.empty((B, n), dtype=dtype, device=device) for _ in read]
    rows = plan.depth if store else 1
    trajs = [torch.empty((rows, B, n), dtype=dtype, device=device) for r in read if r]
    return outs, trajs


def _backward_buffers(plan: _Plan, trajs, dtype: torch.dtype, device: Any):
    """The backward's outputs: dL/dx0 (B, n) per state, dL/dz and the points p (depth, B, n;
    p is a stored trajectory when it is a state), the parameters' per-program partial sums."""
    step, n, depth = plan.step, plan.n, plan.depth
    B = trajs[0].shape[1]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    programs = _cdiv(B, plan.config.backward.block_m)
    dx0s = [torch.empty((B, n), dtype=dtype, device=device) for _ in step.states]
    dz = torch.empty((depth, B, n), dtype=dtype, device=device)
    pi = step.point_state  # p is a state a layer reads: its trajectory is stored
    pt = (
        trajs[sum(step.read[:pi])]
        if pi is not None
        else torch.empty((depth, B, n), dtype=dtype, device=device)
    )
    dq = torch.empty((programs, max(len(step.scalars), 1)), dtype=acc, device=device)
    dc = torch.empty((programs, max(len(step.channels), 1), n), dtype=acc, device=device)
    return dx0s, dz, pt, dq, dc


def _forward(plan: _Plan, x0s, W, qs, chs, store: bool):
    outs, trajs = _forward_buffers(plan, x0s[0].shape[0], W.dtype, W.device, store)
    kernel, grid, args, kwargs = _forward_launch(plan, x0s, outs, trajs, W, qs, chs, store)
    kernel[grid](*args, **kwargs)
    return outs, trajs


def _backward(plan: _Plan, trajs, gouts, W, qs, chs):
    _, B, n = trajs[0].shape
    dx0s, dz, pt, dq, dc = _backward_buffers(plan, trajs, W.dtype, W.device)
    kernel, grid, args, kwargs = _backward_launch(
        plan, trajs, gouts, dx0s, W, qs, chs, dz, pt, dq, dc
    )
    kernel[grid](*args, **kwargs)
    # dL/dW_{oi} = Σ dz_o p_i: z = p Wᵀ.
    dW = _weight_grad(plan, dz.view(plan.depth * B, n), pt.view(plan.depth * B, n))
    return dx0s, dW, dq.sum(0)[: len(qs)], dc.sum(0)[: len(chs)]


def _weight_grad_launch(plan: _Plan, dz: torch.Tensor, p: torch.Tensor, part: torch.Tensor | None):
    """(kernel, grid, args, kwargs) of dW = dzᵀ p over R = depth·B rows (``dz``, ``p``: (R, n)),
    and the partial-tile buffer (splits, n, n) it writes (``part``, or a new one when None)."""
    R, n = dz.shape
    compute, prec = _tl_types(dz.dtype)
    interpret = _interpreting()
    block = 16 if interpret or n <= 16 else (32 if n <= 32 else 64)
    block_r = 16 if interpret else 64
    tiles = _cdiv(n, block) ** 2
    # Enough chunks to fill a GPU (a few hundred programs); one chunk under the interpreter.
    splits = 1 if interpret else max(1, min(_cdiv(R, block_r), 512 // tiles))
    rows = _cdiv(_cdiv(R, splits), block_r) * block_r
    splits = _cdiv(R, rows) if R else 1
    if part is None:
        acc = torch.float64 if dz.dtype == torch.float64 else torch.float32
        part = torch.empty((splits, n, n), dtype=acc, device=dz.device)
    grid = (_cdiv(n, block), _cdiv(n, block), splits)
    args = (dz, p, part, R, n, rows)
    kwargs = dict(BLOCK_O=block, BLOCK_I=block, BLOCK_R=block_r, PREC=prec, COMPUTE=compute)
    return plan.kernels.weight_grad, grid, args, kwargs


def _weight_grad(plan: _Plan, dz: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """dW = dzᵀ p (n, n), in the accumulation dtype, from ``dz``, ``p`` (R, n): the generated
    module's ``weight_grad`` kernel, each program one tile of dW over one fixed chunk of rows,
    the chunks' partial tiles then summed in a fixed order (no atomics: the same bits on every
    run)."""
    kernel, grid, args, kwargs = _weight_grad_launch(plan, dz, p, None)
    kernel[grid](*args, **kwargs)
    return args[2].sum(0)  # a fixed-order reduction over the chunks


def launches(
    scheme: Scheme,
    n: int,
    dtype: torch.dtype,
    *,
    activation: str | None = None,
    config: LaunchConfig | None = None,
    batch: int = 8192,
    depth: int = 16,
) -> list[aot.Launch]:
    """The tied network's launches for training at width ``n`` in ``dtype`` (the forward that
    stores the trajectory, the backward, dW) and `fused_layer`'s one, with stand-in tensors on
    the ``meta`` device: what `unroll.lowering.triton.aot` compiles ahead of time. ``config``:
    the tied launch shapes (default `launch_config`)."""
    step = lower(scheme, activation)
    plan = _Plan(step, depth, n, config or launch_config(n, dtype))
    meta = torch.device("meta")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x0s = [torch.empty((batch, n), dtype=dtype, device=meta) for _ in step.states]
    W = torch.empty((n, n), dtype=dtype, device=meta)
    qs = [torch.empty((), dtype=acc, device=meta) for _ in step.scalars]
    chs = [torch.empty((n,), dtype=acc, device=meta) for _ in step.channels]
    outs, trajs = _forward_buffers(plan, batch, dtype, meta, store=True)
    dx0s, dz, pt, dq, dc = _backward_buffers(plan, trajs, dtype, meta)
    fwd = _forward_launch(plan, x0s, outs, trajs, W, qs, chs, True)
    bwd = _backward_launch(plan, trajs, outs, dx0s, W, qs, chs, dz, pt, dq, dc)
    dw = _weight_grad_launch(plan, dz.view(-1, n), pt.view(-1, n), None)
    hist = [x0s[i] for i, d in enumerate(step.depths) for _ in range(d)]
    layer = _layer_launch_args(plan, hist, outs, W, qs, chs)  # fused_layer, untied W (n, n)
    shape = f"width {n}, {_dtype_name(dtype)}"
    name = scheme.name or "scheme"
    return [
        aot.Launch("tied", name, kernel.__name__, shape, kernel, args, kwargs)
        for kernel, _, args, kwargs in (fwd, bwd, dw, layer)
    ]


_DEVICE_REASONS: dict[tuple, str | None] = {}


def _device_reason(step: TiedStep, n: int, dtype: torch.dtype, device: torch.device) -> str | None:
    """On a GPU: compile the forward and the backward for this device (Triton's own cache keeps
    them for the launch) and refuse when one does not compile or asks for more shared memory
    than one block may have there. Remembered per (step, width, dtype, device)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (step, n, dtype, index)
    if key not in _DEVICE_REASONS:
        import triton

        major, minor = torch.cuda.get_device_capability(index)
        props = triton.runtime.driver.active.utils.get_device_properties(index)
        target = aot.Target(f"sm_{major}{minor}", 10 * major + minor, props["max_shared_mem"])
        _DEVICE_REASONS[key] = kernel_reason(step.scheme, n, dtype, target, step.activation)
    return _DEVICE_REASONS[key]


def spill_reason(kernel: str, n: int, dtype: str, stack: int) -> str | None:
    """Why the network refuses a compiled ``kernel`` (its name) at width ``n`` in ``dtype`` (a
    name) that takes ``stack`` bytes per thread, or None: a 16-bit tied forward past
    `FORWARD_STACK_LIMIT`. A pure function of the compiled figures, so that docs/kernels.md
    can say which recorded rows the network refuses."""
    if kernel != "tied_forward" or dtype not in ("bfloat16", "float16"):
        return None
    limit = FORWARD_STACK_LIMIT[block_width(n)]
    if stack <= limit:
        return None
    return (
        f"tied_forward spills {stack} bytes per thread at width {n} in {dtype}, past the "
        f"{limit} the tied kernel allows there (docs/kernels.md)"
    )


def kernel_reason(
    scheme: Scheme, n: int, dtype: torch.dtype, target: aot.Target, activation: str | None = None
) -> str | None:
    """None when the tied network's kernels at width ``n`` in ``dtype`` (its `launch_config`)
    compile for ``target`` within its shared memory per block, and the forward within its
    spill target (`spill_reason`); else why not. Compiles (needs Triton's compiler, not a
    GPU; not under TRITON_INTERPRET=1)."""
    for launch in launches(scheme, n, dtype, activation=activation):
        if launch.name == "layer_forward":  # fused_layer's, not the network's
            continue
        try:
            kernel = aot.compiled(launch, target)
        except Exception as e:  # the compiler's own refusal
            return (
                f"{launch.name} does not compile for {target.name} at width {n}: {e}".splitlines()[
                    0
                ]
            )
        shared = int(kernel.metadata.shared)
        if shared > target.shared_limit:
            return (
                f"{launch.name} needs {shared // aot.KB} KB of shared memory at width {n} in "
                f"{_dtype_name(dtype)}, past the {target.shared_limit // aot.KB} KB one block "
                f"may use on {target.name}"
            )
        if launch.name == "tied_forward" and _dtype_name(dtype) in ("bfloat16", "float16"):
            stack = aot.resource_usage(kernel.asm["cubin"])["STACK"]  # cuobjdump of the cubin
            why = spill_reason(launch.name, n, _dtype_name(dtype), stack)
            if why is not None:
                return why
    return None


class _TiedNetwork(torch.autograd.Function):
    """(plan, n_states, *x0s, W, *scalars, *channels) -> final states; saves the trajectories
    of the states a layer reads."""

    @staticmethod
    def forward(ctx, plan, ns, *tensors):
        x0s, W = tensors[:ns], tensors[ns]
        nq = len(plan.step.scalars)
        qs, chs = tensors[ns + 1 : ns + 1 + nq], tensors[ns + 1 + nq :]
        store = any(ctx.needs_input_grad[2:]) and plan.depth > 0
        outs, trajs = _forward(plan, x0s, W, qs, chs, store)
        ctx.plan, ctx.ns = plan, ns
        if store:
            ctx.save_for_backward(*trajs, W, *qs, *chs)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *gouts):
        plan = ctx.plan
        saved = ctx.saved_tensors
        nr = sum(plan.step.read)
        trajs, W = saved[:nr], saved[nr]
        nq = len(plan.step.scalars)
        qs, chs = saved[nr + 1 : nr + 1 + nq], saved[nr + 1 + nq :]
        gouts = [g if g is not None else torch.zeros_like(trajs[0][0]) for g in gouts]
        dx0s, dW, dq, dc = _backward(plan, trajs, gouts, W, qs, chs)
        grads = [*dx0s, dW.to(W.dtype)]
        grads += [dq[m].to(q.dtype).reshape(q.shape) for m, q in enumerate(qs)]
        grads += [dc[m].to(c.dtype) for m, c in enumerate(chs)]
        return (None, None, *grads)


def tied_network(
    scheme: Scheme,
    x0: Any,
    W: Any,
    depth: int,
    *,
    activation: str | None = None,
    config: LaunchConfig | None = None,
    **params: Any,
) -> Any:
    """``depth`` layers of ``scheme`` sharing the weight W, in one Triton kernel (with autograd).

    ``x0``: (..., n) tensor (or a mapping of state names to tensors); ``W``: (n, n), applied as
    ``x @ Wᵀ``; ``params``: the layer's coefficients by name (``b`` per channel, shape (n,) or a
    number; ``β``/``beta`` a number or 0-dim tensor; trainable tensors get gradients), defaults
    from the scheme file. Optimizer schemes run their layer (`unroll.ir.layer_form`). Returns
    the final state, shaped like ``x0`` (a mapping for a mapping), equal to
    ``layer_form(scheme).run(x0, depth, W=W, ...)``. Raises `UnrollError` with the
    `tied_reason` when the kernel cannot run.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise UnrollError(f"depth must be a non-negative int, not {depth!r}")
    reason = tied_reason(scheme, x0, W, activation, params)
    if reason is not None:
        raise UnrollError(f"the tied kernel cannot run this network: {reason}")
    step = lower(scheme, activation)
    starts, single = initial_states(step.scheme, x0)
    n = W.shape[0]
    shape = next(iter(starts.values())).shape
    for s in step.states:
        if starts[s].shape != shape:
            raise UnrollError(
                f"x0[{s!r}] has shape {tuple(starts[s].shape)}, expected {tuple(shape)}"
            )
    if depth == 0:  # the kernels run at least one layer
        final = {s: starts[s].clone() for s in step.states}
        return final[single] if single else final
    x0s = [starts[s].reshape(-1, n) for s in step.states]
    qs, chs = _coefficients(step, n, W, params)
    plan = _Plan(step, depth, n, config or launch_config(n, W.dtype))
    outs = _TiedNetwork.apply(plan, len(x0s), *x0s, W, *qs, *chs)
    final = {s: o.reshape(shape) for s, o in zip(step.states, outs, strict=True)}
    return final[single] if single else final


# -- one layer, its own W --------------------------------------------------------------------
class _FusedLayer(torch.autograd.Function):
    """(plan, slots, *history, W, *scalars, *channels) -> new states. The backward recomputes
    the layer with the eager lowering and differentiates it with autograd."""

    @staticmethod
    def forward(ctx, plan, slots, *tensors):
        hist, W = tensors[:slots], tensors[slots]
        nq = len(plan.step.scalars)
        qs, chs = tensors[slots + 1 : slots + 1 + nq], tensors[slots + 1 + nq :]
        ctx.plan, ctx.slots = plan, slots
        ctx.save_for_backward(*tensors)
        return tuple(_layer_launch(plan, hist, W, qs, chs))

    @staticmethod
    def backward(ctx, *gouts):
        plan, slots = ctx.plan, ctx.slots
        saved = [t.detach().requires_grad_(True) for t in ctx.saved_tensors]
        step = plan.step
        with torch.enable_grad():
            history, at = {}, 0
            for s, d in zip(step.states, step.depths, strict=True):
                history[s] = saved[at : at + d]
                at += d
            W = saved[slots]
            values = dict(zip((*step.scalars, *step.channels), saved[slots + 1 :], strict=True))
            ops = operators(step.scheme, W=W, activation=step.activation)
            new = Stepper(step.scheme, ops, values).step(history, 0, 0.0)
            outs = [new[s] for s in step.states]
            pairs = [(o, g) for o, g in zip(outs, gouts, strict=True) if g is not None]
            grads = torch.autograd.grad(
                [o for o, _ in pairs], saved, [g for _, g in pairs], allow_unused=True
            )
        return (None, None, *grads)


def _layer_launch_args(plan: _Plan, hist, outs, W, qs, chs):
    """(kernel, grid, args, kwargs) of `fused_layer`'s one launch: ``hist`` (B, n_in) per
    history slot, ``outs`` (B, n_out) per state, W (n_out, n_in)."""
    B = hist[0].shape[0]
    n_out, n_in = W.shape
    compute, prec = _tl_types(W.dtype)
    block_m = 16 if _interpreting() else 64
    block_n = 16 if _interpreting() else min(128, block_width(n_out))
    block_k = 16 if _interpreting() else 32
    grid = (_cdiv(B, block_m), _cdiv(n_out, block_n))
    strides = [s for h in hist for s in h.stride()]
    args = (*hist, *outs, W, *qs, *chs, B, n_out, n_in, *strides, *W.stride())
    kwargs = dict(
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, PREC=prec, COMPUTE=compute,
        num_warps=4,
    )  # fmt: skip
    return plan.kernels.layer_forward, grid, args, kwargs


def _layer_launch(plan: _Plan, hist, W, qs, chs):
    B, n_out = hist[0].shape[0], W.shape[0]
    outs = [torch.empty((B, n_out), dtype=W.dtype, device=W.device) for _ in plan.step.states]
    kernel, grid, args, kwargs = _layer_launch_args(plan, hist, outs, W, qs, chs)
    kernel[grid](*args, **kwargs)
    return outs


def fused_layer(
    scheme: Scheme,
    x: Any,
    W: Any,
    *,
    activation: str | None = None,
    **params: Any,
) -> Any:
    """One layer of ``scheme`` with its own weight W (no tying): one kernel, the matrix product
    with the multi-state update fused into its epilogue; the backward recomputes the layer
    eagerly (autograd through `unroll.lowering.eager.run.Stepper`).

    ``x``: the history, newest first: a tensor (B, n_in) for every past value, a sequence
    ``[x_k, x_{k−1}, ...]``, or a mapping of state names to either. ``W``: (n_out, n_in); a
    layer whose update reads the history (a momentum term) needs n_out = n_in. Returns the new
    state (B, n_out), or a mapping of every state's new value when ``x`` was a mapping.
    """
    step = lower(scheme, activation)
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise UnrollError("W must be a (n_out, n_in) tensor")
    single = None
    if not isinstance(x, Mapping):
        single = primary_state(step.scheme)
        x = {single: x}
    history = []
    for s, d in zip(step.states, step.depths, strict=True):
        given = x.get(s)
        if given is None:
            state = step.scheme.states[s]
            if state.init is None and state.depth > 0:
                raise UnrollError(f"x has no value for state {s}, which has no initial value")
            ref = next(iter(x.values()))
            ref = ref[0] if isinstance(ref, (list, tuple)) else ref
            given = torch.full_like(ref, state.init or 0.0)  # a state never read starts at 0
        vals = list(given) if isinstance(given, (list, tuple)) else [given] * d
        if len(vals) < d:
            raise UnrollError(f"x[{s!r}]: the layer reads {d} past values, got {len(vals)}")
        history += [v.to(W.dtype) for v in vals[:d]]
    n_out, n_in = W.shape
    reads = {sym for row in step.update for sym in row[0].free_symbols}
    carried = {c for row in step.carried for c in row}
    if n_out != n_in and (reads & carried or step.point.free_symbols & set(step.ch)):
        raise UnrollError(
            f"W is {n_out} × {n_in}, but the update reads the states at the output width (or p "
            "a per-channel parameter at the input width): this layer needs a square W"
        )
    for v in history:
        if v.dim() != 2 or v.shape[1] != n_in or v.device != W.device:
            raise UnrollError(f"every history value must be (B, {n_in}) on {W.device}")
    qs, chs = _coefficients(step, n_out, W, params)
    plan = _Plan(step, 1, n_out, LaunchConfig(Tile(16, 4), Tile(16, 4)))
    outs = _FusedLayer.apply(plan, len(history), *history, W, *qs, *chs)
    new = dict(zip(step.states, outs, strict=True))
    return new[single] if single else new
