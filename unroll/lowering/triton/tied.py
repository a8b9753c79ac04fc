"""One Triton kernel for a whole weight-tied unrolled network (forward and backward).

When every layer shares its weight W, all ``depth`` layers of a dense network run in one
persistent kernel: each program loads W once, keeps the states of its tile of rows in registers
and never writes them back between layers. The pipeline::

    step   = lower(scheme, activation)      # Scheme -> TiedStep: p, z = p Wᵀ, carried updates (SymPy),
                                            #   optimizer schemes through unroll.lowering.nn.layer_form
    adj    = step.adjoint()                 # TiedStep -> TiedAdjoint: the reverse step (SymPy)
    text   = tied_source.source(step)       # -> Triton source: tied_forward, tied_backward
    x      = tied_network(scheme, x0, W, depth, b=..., β=...)   # launch, with autograd

The state history is carried as backward differences (x_k, x_k − x_{k−1}, ...), the velocity form:
every carried value is recomputed each layer, never renamed (see `tied_source`).

Backward: the forward stores each layer's input states (depth·B·n values per state, the minimum
for an O(depth) reverse sweep: relu is not invertible, so states cannot be rebuilt from the
output) and nothing else; the backward kernel recomputes p_k and z_k = p_k Wᵀ from them (one extra
`tl.dot` per layer instead of another depth·B·n buffer written and read) and runs the adjoint
recursion. dW = Σ_k dZ_kᵀ p_k is one deterministic reduction (`tied_gemm`); the parameters'
gradients are summed per program and then over programs, in a fixed order.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sympy as sp

from unroll.errors import UnrollError
from unroll.frontend.scheme import Scheme
from unroll.ir import vocabulary as ir
from unroll.ir.layer_form import layer_form

# The widest network whose W (n × n) the kernel keeps on chip, by dtype: W must fit in the
# shared memory of one SM (228 KB on an H100) next to the tiles of the states.
MAX_WIDTH = {"bfloat16": 256, "float16": 256, "float32": 128, "float64": 64}


# -- Scheme -> TiedStep ----------------------------------------------------------------------
@dataclass(frozen=True)
class TiedAdjoint:
    """One layer backwards, in the symbols of `TiedStep` plus ``adjoints`` (dL/d of each carried
    value after the layer) and ``dp`` (dL/dp = dL/dz @ W, known after the second product)."""

    adjoints: tuple[tuple[sp.Symbol, ...], ...]
    dp: sp.Symbol
    dz: sp.Expr  # dL/dz
    carried: tuple[tuple[sp.Expr, ...], ...]  # dL/d(carried values before the layer)
    scalars: tuple[sp.Expr, ...]  # this layer's dL/dq per element (summed by the kernel)
    channels: tuple[sp.Expr, ...]


@dataclass(frozen=True)
class TiedStep:
    """One layer ``p = P(c)``, ``z = p @ Wᵀ``, ``c' = G(z, c)`` of a weight-tied network.

    ``carried[i][j]`` is the j-th backward difference of state ``states[i]`` (c_0 = the state,
    c_1 = x_k − x_{k−1}, ...); ``point`` is P and ``update[i][j]`` is G for ``carried[i][j]``, in
    the carried symbols, ``z`` and the parameter symbols ``q`` (scalars) and ``ch`` (per
    channel), all real so that SymPy differentiates max as Heaviside."""

    scheme: Scheme
    activation: str
    states: tuple[str, ...]
    depths: tuple[int, ...]
    scalars: tuple[str, ...]
    channels: tuple[str, ...]
    carried: tuple[tuple[sp.Symbol, ...], ...]
    z: sp.Symbol
    q: tuple[sp.Symbol, ...]
    ch: tuple[sp.Symbol, ...]
    point: sp.Expr
    update: tuple[tuple[sp.Expr, ...], ...]

    @property
    def point_state(self) -> int | None:
        """i when p is state i itself (then dW reads the stored states, no p buffer)."""
        for i, row in enumerate(self.carried):
            if self.point == row[0]:
                return i
        return None

    def history_symbols(self) -> tuple[tuple[sp.Symbol, ...], ...]:
        """``h[i][j]`` stands for state i's value j layers back (x_k, x_{k−1}, ...)."""
        return tuple(
            tuple(sp.Symbol(f"h{i}_{j}", real=True) for j in range(len(row)))
            for i, row in enumerate(self.carried)
        )

    def in_history(self) -> dict[sp.Symbol, sp.Expr]:
        """The carried values in history values: c_j = ∇^j x_k = Σ_m (−1)^m C(j, m) x_{k−m}."""
        h = self.history_symbols()
        return {
            c: sp.Add(*((-1) ** m * math.comb(j, m) * h[i][m] for m in range(j + 1)))
            for i, row in enumerate(self.carried)
            for j, c in enumerate(row)
        }

    def adjoint(self) -> TiedAdjoint:
        """The reverse of one layer by symbolic differentiation (the chain rule through P, the
        product and G)."""
        adj = tuple(
            tuple(sp.Symbol(f"a{i}_{j}", real=True) for j in range(len(row)))
            for i, row in enumerate(self.carried)
        )
        dp = sp.Symbol("dp", real=True)
        pairs = [
            (a, g)
            for arow, grow in zip(adj, self.update, strict=True)
            for a, g in zip(arow, grow, strict=True)
        ]

        def through(sym: sp.Symbol) -> sp.Expr:
            return sp.Add(*(a * sp.diff(g, sym) for a, g in pairs)) + dp * sp.diff(self.point, sym)

        return TiedAdjoint(
            adjoints=adj,
            dp=dp,
            dz=sp.Add(*(a * sp.diff(g, self.z) for a, g in pairs)),
            carried=tuple(tuple(through(c) for c in row) for row in self.carried),
            scalars=tuple(through(q) for q in self.q),
            channels=tuple(through(c) for c in self.ch),
        )


def _ascii(name: str) -> str:
    return name if name.isascii() and name.isidentifier() else "param"


@functools.lru_cache(maxsize=64)
def lower(scheme: Scheme, activation: str | None = None) -> TiedStep:
    """``scheme``'s layer as a `TiedStep`; an `UnrollError` saying why when the tied kernel cannot
    run it (that message is the fallback reason). Cached: schemes are frozen values."""
    from unroll.ir import activations

    name = scheme.name or str(scheme)
    if scheme.kind == "ode":
        raise UnrollError(
            f"scheme {name!r} is an ode scheme: its branch f is no dense layer W p for the kernel"
        )
    layer = layer_form(scheme)
    if not layer.is_explicit:
        raise UnrollError(f"scheme {name!r} is implicit ({layer.implicit_reason})")
    if layer.startup:
        raise UnrollError(f"scheme {name!r} takes its first steps with {layer.startup!r}")
    scalar_states = [s for s, st in layer.states.items() if st.scalar]
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

    states = tuple(layer.states)
    depths = tuple(max(layer.states[s].depth, 1) for s in states)
    carried = tuple(
        tuple(sp.Symbol(f"c{i}_{j}", real=True) for j in range(d)) for i, d in enumerate(depths)
    )
    scalars = tuple(p for p, spec in layer.parameters.items() if not spec.per_channel)
    channels = tuple(p for p, spec in layer.parameters.items() if spec.per_channel)
    q = tuple(sp.Symbol(f"q{m}", real=True) for m in range(len(scalars)))
    ch = tuple(sp.Symbol(f"ch{m}", real=True) for m in range(len(channels)))
    z = sp.Symbol("z", real=True)

    env: dict[sp.Basic, sp.Expr] = {}
    for i, s in enumerate(states):
        for j in range(depths[i]):  # x_{k-j} = (1 − ∇)^j x_k = Σ_l (−1)^l C(j, l) ∇^l x_k
            env[layer.state_value(s, -j)] = sp.Add(
                *((-1) ** m * math.comb(j, m) * carried[i][m] for m in range(j + 1))
            )
    env.update({sp.Symbol(p): sym for p, sym in zip(scalars, q, strict=True)})
    env.update({sp.Symbol(p): sym for p, sym in zip(channels, ch, strict=True)})
    phi = sp.Lambda(activations.v, act.expr)

    point = None
    new: dict[str, sp.Expr] = {}
    for eq in layer.equations:
        rhs = eq.rhs
        for fn in ir.applications(eq.rhs):
            kind = ir.operator_kind(fn)
            if kind == "linear":
                if point is not None or any(
                    ir.operator_kind(g) == "linear" for g in ir.applications(fn.args[0])
                ):
                    raise UnrollError(
                        f"scheme {name!r} applies W more than once per layer; "
                        "the tied kernel does one product per layer"
                    )
                point = fn.args[0].xreplace(env).replace(ir.ACT, phi)
                rhs = rhs.xreplace({fn: z})
            elif kind in ("grad", "branch"):
                raise UnrollError(f"scheme {name!r} uses {fn.func}, which no dense layer computes")
        value = rhs.xreplace(env).replace(ir.ACT, phi)
        env[eq.lhs] = value  # a stage, or the new value x_<k+1> later equations may read
        if isinstance(eq.lhs, sp.Indexed):
            new[eq.lhs.base.label.name] = value
    if point is None:
        raise UnrollError(
            f"scheme {name!r} has no product W(...): nothing for the kernel to multiply"
        )

    update = []
    for i, s in enumerate(states):
        row = [new[s]]  # ∇^j x_{k+1} = ∇^{j−1} x_{k+1} − ∇^{j−1} x_k
        for j in range(1, depths[i]):
            row.append(row[-1] - carried[i][j - 1])
        update.append(tuple(row))
    allowed = {z, *q, *ch, *(c for row in carried for c in row)}
    for expr in (point, *(e for row in update for e in row)):
        extra = expr.free_symbols - allowed
        if extra:
            sym = sorted(map(str, extra))[0]
            raise UnrollError(
                f"scheme {name!r} uses {sym} (time, index or an unknown symbol) in its layer; "
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


def fallback_reason(scheme: Scheme, x0: Any, W: Any, activation: str | None = None) -> str | None:
    """None when `tied_network` can run ``scheme`` on these tensors; else why not, in one line
    (what `Scheme.network(..., tied=True)` reports when it falls back to the per-layer path)."""
    import torch

    try:
        lower(scheme, activation)
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
    dtype = str(ref.dtype).removeprefix("torch.")
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
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed"
    return None


# -- launch ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchConfig:
    """Rows per program and warps; `launch_config` picks one, the benchmark sweeps others."""

    block_m: int
    num_warps: int


def launch_config(n: int, dtype: Any) -> LaunchConfig:
    """A starting point (not tuned on a GPU yet): fewer rows per program as W grows, so the
    carried tiles stay in registers."""
    if _interpreting():
        return LaunchConfig(16, 4)
    width = max(16, 1 << (n - 1).bit_length())
    block_m = 128 if width <= 64 else (64 if width <= 128 else 32)
    return LaunchConfig(block_m, 4 if width <= 64 else 8)


def _tl_types(dtype):
    import torch
    import triton.language as tl

    compute = tl.float64 if dtype == torch.float64 else tl.float32
    allow_tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return compute, ("tf32" if allow_tf32 else "ieee")


class _Plan:
    """What one call fixes: the step, its kernels, depth and launch shape (not a tensor)."""

    def __init__(self, step: TiedStep, depth: int, n: int, config: LaunchConfig):
        from unroll.lowering.triton import tied_source

        self.step, self.depth, self.n, self.config = step, depth, n, config
        self.kernels = tied_source.module(step)
        self.block_n = max(16, 1 << (n - 1).bit_length())


def _forward(plan: _Plan, x0s, W, qs, chs, store: bool):
    import torch
    import triton

    B, n = x0s[0].shape
    compute, prec = _tl_types(W.dtype)
    outs = [torch.empty((B, n), dtype=W.dtype, device=W.device) for _ in x0s]
    trajs = [
        torch.empty((plan.depth if store else 1, B, n), dtype=W.dtype, device=W.device) for _ in x0s
    ]
    strides = [s for x in x0s for s in x.stride()]
    cfg = plan.config
    plan.kernels.tied_forward[(triton.cdiv(B, cfg.block_m),)](
        *x0s, *outs, *trajs, W, *qs, *chs, B, n, plan.depth, *strides, *W.stride(),
        BLOCK_M=cfg.block_m, BLOCK_N=plan.block_n, PREC=prec, COMPUTE=compute, STORE=store,
        num_warps=cfg.num_warps,
    )  # fmt: skip
    return outs, trajs


def _backward(plan: _Plan, trajs, gouts, W, qs, chs):
    import torch
    import triton

    from unroll.lowering.triton.tied_gemm import weight_grad

    step, depth, cfg = plan.step, plan.depth, plan.config
    _, B, n = trajs[0].shape
    compute, prec = _tl_types(W.dtype)
    acc = torch.float64 if W.dtype == torch.float64 else torch.float32
    programs = triton.cdiv(B, cfg.block_m)
    dx0s = [torch.empty((B, n), dtype=W.dtype, device=W.device) for _ in trajs]
    dz = torch.empty((depth, B, n), dtype=W.dtype, device=W.device)
    pi = step.point_state
    pt = trajs[pi] if pi is not None else torch.empty_like(dz)
    dq = torch.empty((programs, max(len(qs), 1)), dtype=acc, device=W.device)
    dc = torch.empty((programs, max(len(chs), 1), n), dtype=acc, device=W.device)
    strides = [s for g in gouts for s in g.stride()]
    plan.kernels.tied_backward[(programs,)](
        *trajs, *gouts, *dx0s, W, *qs, *chs, dz, pt, dq, dc, B, n, depth, *strides, *W.stride(),
        BLOCK_M=cfg.block_m, BLOCK_N=plan.block_n, PREC=prec, COMPUTE=compute,
        STORE_P=pi is None, num_warps=cfg.num_warps,
    )  # fmt: skip
    dW = weight_grad(
        dz.view(depth * B, n), pt.view(depth * B, n), prec=prec, interpret=_interpreting()
    )
    # dL/dW_{oi} = Σ dz_o p_i: z = p Wᵀ.
    return dx0s, dW, dq.sum(0)[: len(qs)], dc.sum(0)[: len(chs)]


def _function():
    import torch

    class TiedNetwork(torch.autograd.Function):
        """(plan, n_states, *x0s, W, *scalars, *channels) -> final states."""

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
            plan, ns = ctx.plan, ctx.ns
            saved = ctx.saved_tensors
            trajs, W = saved[:ns], saved[ns]
            nq = len(plan.step.scalars)
            qs, chs = saved[ns + 1 : ns + 1 + nq], saved[ns + 1 + nq :]
            gouts = [g if g is not None else torch.zeros_like(trajs[0][0]) for g in gouts]
            dx0s, dW, dq, dc = _backward(plan, trajs, gouts, W, qs, chs)
            grads = [*dx0s, dW.to(W.dtype)]
            grads += [dq[m].to(q.dtype).reshape(q.shape) for m, q in enumerate(qs)]
            grads += [dc[m].to(c.dtype) for m, c in enumerate(chs)]
            return (None, None, *grads)

    return TiedNetwork


_FUNCTION = None


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
    number; ``β``/``beta`` a number or 0-dim tensor), defaults from the scheme file. Optimizer
    schemes run their layer (`unroll.lowering.nn.layer_form`). Returns the final state, shaped like ``x0`` (a
    mapping for a mapping), equal to ``unroll.lowering.nn.layer_form(scheme).run(x0, depth, W=W, ...)``.
    Raises `UnrollError` with `fallback_reason` when the kernel cannot run.
    """
    import torch

    from unroll.frontend.scheme import canonical_params
    from unroll.lowering.eager.states import initial_states

    global _FUNCTION
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise UnrollError(f"depth must be a non-negative int, not {depth!r}")
    reason = fallback_reason(scheme, x0, W, activation)
    if reason is not None:
        raise UnrollError(f"the tied kernel cannot run this network: {reason}")
    step = lower(scheme, activation)
    layer = step.scheme
    starts, single = initial_states(layer, x0)
    n = W.shape[0]
    shape = next(iter(starts.values())).shape
    for s in step.states:
        if starts[s].shape != shape:
            raise UnrollError(
                f"x0[{s!r}] has shape {tuple(starts[s].shape)}, expected {tuple(shape)}"
            )
    x0s = [starts[s].reshape(-1, n) for s in step.states]

    values: dict[str, Any] = dict(layer.defaults())
    values.update(canonical_params(layer, params))
    qs, chs = [], []
    for p in (*step.scalars, *step.channels):
        if p not in values:
            raise UnrollError(f"missing value for parameter {p} (pass {p}=..., it has no default)")
        v = values[p]
        acc = torch.float64 if W.dtype == torch.float64 else torch.float32
        t = v if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=acc, device=W.device)
        if not t.is_floating_point():
            t = t.to(acc)
        if p in step.scalars:
            if t.numel() != 1:
                raise UnrollError(f"parameter {p} is a scalar, got shape {tuple(t.shape)}")
            qs.append(t.reshape(()))
        else:
            if t.dim() == 0 or t.shape == (1,):
                t = t.reshape(()).expand(n)
            if t.shape != (n,):
                raise UnrollError(
                    f"parameter {p} is per channel: shape ({n},), got {tuple(t.shape)}"
                )
            chs.append(t.contiguous())
    if _FUNCTION is None:
        _FUNCTION = _function()
    plan = _Plan(step, depth, n, config or launch_config(n, W.dtype))
    outs = _FUNCTION.apply(plan, len(x0s), *x0s, W, *qs, *chs)
    final = {s: o.reshape(shape) for s, o in zip(step.states, outs, strict=True)}
    return final[single] if single else final


# -- one layer, its own W --------------------------------------------------------------------
def _layer_function():
    import torch

    class FusedLayer(torch.autograd.Function):
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
            from unroll.lowering.eager.run import Stepper, operators

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
                ops = operators(step.scheme, W=W, activation=plan.step.activation)
                new = Stepper(step.scheme, ops, values).step(history, 0, 0.0)
                outs = [new[s] for s in step.states]
                pairs = [(o, g) for o, g in zip(outs, gouts, strict=True) if g is not None]
                grads = torch.autograd.grad(
                    [o for o, _ in pairs], saved, [g for _, g in pairs], allow_unused=True
                )
            return (None, None, *grads)

    return FusedLayer


def _layer_launch(plan: _Plan, hist, W, qs, chs):
    import torch
    import triton

    B = hist[0].shape[0]
    n_out, n_in = W.shape
    compute, prec = _tl_types(W.dtype)
    outs = [torch.empty((B, n_out), dtype=W.dtype, device=W.device) for _ in plan.step.states]
    block_m = 16 if _interpreting() else 64
    block_n = 16 if _interpreting() else min(128, max(16, triton.next_power_of_2(n_out)))
    block_k = 16 if _interpreting() else 32
    grid = (triton.cdiv(B, block_m), triton.cdiv(n_out, block_n))
    strides = [s for h in hist for s in h.stride()]
    plan.kernels.layer_forward[grid](
        *hist, *outs, W, *qs, *chs, B, n_out, n_in, *strides, *W.stride(),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, PREC=prec, COMPUTE=compute,
        num_warps=4,
    )  # fmt: skip
    return outs


_LAYER_FUNCTION = None


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
    import torch

    from unroll.frontend.scheme import canonical_params
    from unroll.lowering.eager.states import primary_state

    global _LAYER_FUNCTION
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
    values: dict[str, Any] = dict(step.scheme.defaults())
    values.update(canonical_params(step.scheme, params))
    acc = torch.float64 if W.dtype == torch.float64 else torch.float32
    qs, chs = [], []
    for p in (*step.scalars, *step.channels):
        if p not in values:
            raise UnrollError(f"missing value for parameter {p} (pass {p}=..., it has no default)")
        v = values[p]
        t = v if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=acc, device=W.device)
        if p in step.channels:
            t = t.reshape(()).expand(n_out) if t.numel() == 1 else t
            if t.shape != (n_out,):
                raise UnrollError(
                    f"parameter {p} is per channel: shape ({n_out},), got {tuple(t.shape)}"
                )
            chs.append(t.contiguous())
        else:
            qs.append(t.reshape(()))
    if _LAYER_FUNCTION is None:
        _LAYER_FUNCTION = _layer_function()
    plan = _Plan(step, 1, n_out, LaunchConfig(16, 4))
    outs = _LAYER_FUNCTION.apply(plan, len(history), *history, W, *qs, *chs)
    new = dict(zip(step.states, outs, strict=True))
    return new[single] if single else new


# -- the hook in `unroll.lowering.nn.Network` ----------------------------------------------------------
def network_reason(net: Any, x0: Any) -> str | None:
    """None when ``net`` (an `unroll.lowering.nn.Network`) can run ``x0`` through `tied_network`, else
    why not: the kernel runs tied, dense networks on CUDA (backend "auto" or "triton"), and
    under TRITON_INTERPRET=1 on the CPU only when backend="triton" is asked for."""
    import torch

    opts = net.options
    if not opts.tied:
        return "the layers do not share their weights (tied=False)"
    if opts.dim is None:
        return "W is not a dense matrix (pass dim=; convolutional W runs per layer)"
    if opts.backend == "torch":
        return "backend='torch' was asked for"
    if opts.survival is not None:
        return "stochastic depth (survival=) scales branches per layer"
    if opts.activation is not None and not isinstance(opts.activation, str):
        return "the activation is a callable; the kernel needs a registered activation by name"
    ref = next(iter(x0.values())) if isinstance(x0, Mapping) else x0
    if isinstance(ref, torch.Tensor) and ref.device.type == "cpu" and opts.backend != "triton":
        return (
            "the tensors are on the CPU (the interpreter runs the kernel only for backend='triton')"
        )
    block = net.blocks[0]
    try:
        step = lower(net.scheme, opts.activation)
    except UnrollError as e:
        return str(e)
    per_channel = [p for p in step.scalars if block.coefficients.values()[p].dim() > 0]
    if per_channel:
        return f"{per_channel[0]} is per channel; the kernel reads it as one number"
    return fallback_reason(net.scheme, x0, _weight(net), opts.activation)


def _weight(net: Any) -> Any:
    names = [
        fn.func.__name__
        for eq in lower(net.scheme, net.options.activation).scheme.equations
        for fn in ir.applications(eq.rhs)
        if ir.operator_kind(fn) == "linear"
    ]
    return net.blocks[0].operators[names[0]].weight


def network_forward(net: Any, x0: Any, trace: bool = False) -> Any:
    """``net(x0)`` through `tied_network` when `network_reason` allows it, else None; sets
    ``net.fallback_reason`` (None when the kernel ran). ``trace``: the caller wants every
    layer's state, which the kernel keeps on chip."""
    reason = (
        "return_states/return_objective need every layer's state"
        if trace
        else network_reason(net, x0)
    )
    net.fallback_reason = reason
    if reason is not None:
        return None
    coefficients = net.blocks[0].coefficients.values()
    return tied_network(
        net.scheme, x0, _weight(net), net.depth, activation=net.options.activation, **coefficients
    )
