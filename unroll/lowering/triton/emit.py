"""Block update -> a Triton kernel module (source text), and writing it.

``source(block) -> str``. Every generated module has one shape:

1. a header naming the scheme, its hash and the unroll version;
2. ``@triton.jit`` helpers the printer used, the forward kernel and the backward kernel, every
   pointer argument commented;
3. the launchers (``_forward``, ``_backward``): layout, block sizes, grid, partial sums;
4. the ``torch.library`` custom ops ``unroll::<scheme>_<hash>_fwd`` / ``_bwd`` with fake
   (meta) implementations and the autograd formula (``register_autograd``: PyTorch's
   autograd.Function for custom ops), so torch.compile and torch.export see one op;
5. one public entry point, ``update``, whose docstring gives the shapes.

The forward kernel computes the block's outputs after common-subexpression elimination. The
backward kernel is derived here: for outputs y_i = F_i(inputs u, coefficients c) and upstream
gradients ḡ_i, it computes dL/du_j = Σ_i ḡ_i ∂F_i/∂u_j per element and reduces
Σ_elements Σ_i ḡ_i ∂F_i/∂c per program (scalar c) or per program and channel (per-channel c);
the launcher sums those partial sums in a fixed order, so the result is deterministic. It
recomputes everything from the inputs (elementwise work is cheap next to memory traffic), so
the autograd formula saves only the inputs the derivatives read.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import sympy as sp

from unroll import __version__
from unroll.errors import UnrollError
from unroll.frontend.printing import expr_text
from unroll.ir.step import build
from unroll.lowering.triton.block import (
    KernelBlock,
    is_per_channel,
    kernel_block,
    leaf_text,
    origin,
)
from unroll.lowering.triton.printer import TritonPrinter, helper_source, prepare

# Bump when the generated text changes for the same block (part of every cache key).
TEMPLATE_VERSION = 1
DTYPE = "CDT"  # the compute dtype constexpr in every kernel


def scheme_hash(block: KernelBlock) -> str:
    """sha256 over the canonical scheme: its equations, names, parameter shapes, scalar states
    and the activation's expression. Two schemes with equal hashes get the same kernels."""
    s = block.ir.scheme
    parts = [
        s.name,
        str(s),
        repr(sorted((p.name, p.per_channel) for p in s.parameters.values())),
        repr(sorted((n, st.scalar) for n, st in s.states.items())),
        block.activation or "",
    ]
    if block.activation:
        from unroll.ir import activations

        parts.append(sp.srepr(activations.get(block.activation).expr))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def module_stem(block: KernelBlock) -> str:
    """The file and op name stem: the scheme name, made an identifier."""
    name = block.ir.scheme.name or "scheme"
    stem = re.sub(r"\W", "_", name.encode("ascii", "replace").decode())
    if block.activation and block.activation != block.ir.scheme.activation:
        stem += f"_{block.activation}"
    return stem if not stem[0].isdigit() else f"s_{stem}"


def _cse(exprs: Sequence[sp.Expr]) -> tuple[list[tuple[sp.Symbol, sp.Expr]], list[sp.Expr]]:
    temps, reduced = sp.cse(
        [prepare(e) for e in exprs], symbols=sp.numbered_symbols("t", real=True), order="none"
    )
    return temps, reduced


def _derivatives(block: KernelBlock) -> tuple[list[tuple[str, sp.Expr]], dict[str, sp.Symbol]]:
    """(name, expression) of every gradient the backward computes: 'g_<input>' per element and
    'c_<coefficient>' (the per-element contribution that is then reduced); and the upstream
    gradient symbol of each output."""
    upstream = {o.name: sp.Symbol(f"gy_{o.name}", real=True) for o in block.outputs}
    grads: list[tuple[str, sp.Expr]] = []
    for leaf in [*block.inputs, *block.coefficients]:
        total = sp.S.Zero
        for o, e in zip(block.outputs, block.expressions, strict=True):
            d = sp.diff(e, leaf.symbol)
            if d.has(sp.Derivative, sp.Subs):
                raise UnrollError(
                    f"cannot differentiate {expr_text(o.expr)} by {leaf.name} in closed form"
                )
            total += upstream[o.name] * d
        prefix = "g" if leaf in block.inputs else "c"
        grads.append((f"{prefix}_{leaf.name}", total))
    return grads, upstream


def _loads(block: KernelBlock, tensors: Sequence[str], pad: str) -> list[str]:
    lines = [f"{pad}{n} = tl.load({n}_ptr + offs, mask=mask).to({DTYPE})" for n in tensors]
    for c in block.coefficients:
        if is_per_channel(c):
            lines += [
                f"{pad}if CHANNEL_ROWS:",
                f"{pad}    {c.name} = tl.load({c.name}_ptr + rows % C, mask=rows < M)[:, None].to({DTYPE})",
                f"{pad}else:",
                f"{pad}    {c.name} = tl.load({c.name}_ptr + cols, mask=cols < K)[None, :].to({DTYPE})",
            ]
        else:
            lines.append(f"{pad}{c.name} = tl.load({c.name}_ptr).to({DTYPE})")
    return lines


_PROLOGUE = """\
    # One program per BLOCK_M x BLOCK_K tile of the (M, K) view; a 1-D grid (no 65535 limit).
    pid = tl.program_id(0)
    rows = (pid // GRID_K).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (pid % GRID_K).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows < M)[:, None] & (cols < K)[None, :]
    offs = rows[:, None] * K + cols[None, :]  # 64-bit: tensors over 2**31 elements work
"""

_VIEW_ARGS = """\
    M, K, C, GRID_K,  # the view: M rows of K contiguous elements; C channels; tiles per row
    CHANNEL_ROWS: tl.constexpr,  # per-channel values: channel = row % C (NCHW), else the column
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    CDT: tl.constexpr,  # compute dtype: float32 (for 16- and 32-bit storage) or float64
"""


def _coef_comment(c) -> str:
    shape = "C elements, one per channel" if is_per_channel(c) else "1 element"
    return f"{c.name}_ptr,  # in: {expr_text(c.ref)} ({origin(c)}), {shape}"


def _full(expr: sp.Expr, tensors: set[sp.Symbol], code: str) -> str:
    """Make a value that reads no tensor a full tile (a store or reduction needs the shape)."""
    if expr.free_symbols & tensors:
        return code
    return f"({code}) + tl.zeros([BLOCK_M, BLOCK_K], {DTYPE})"


def _forward_kernel(block: KernelBlock, stem: str, printer: TritonPrinter) -> str:
    names = [i.name for i in block.inputs]
    sig = [f"    {i.name}_ptr,  # in: {leaf_text(i)}" for i in block.inputs]
    sig += [f"    {_coef_comment(c)}" for c in block.coefficients]
    sig += [f"    out_{o.name}_ptr,  # out: {o.state}'s new value" for o in block.outputs]
    temps, reduced = _cse(block.expressions)
    tensors = {i.symbol for i in block.inputs}
    body = _loads(block, names, "    ")
    for sym, e in temps:
        body.append(f"    {sym} = {printer.doprint(e)}")
        if e.free_symbols & tensors:
            tensors.add(sym)
    for o, e in zip(block.outputs, reduced, strict=True):
        code = _full(e, tensors, printer.doprint(e))
        body.append(
            f"    tl.store(out_{o.name}_ptr + offs, ({code}).to(out_{o.name}_ptr.dtype.element_ty), mask=mask)"
        )
    return (
        f"@triton.jit\ndef {stem}_fwd_kernel(\n"
        + "\n".join(sig)
        + "\n"
        + _VIEW_ARGS
        + "):\n"
        + _PROLOGUE
        + "\n".join(body)
        + "\n"
    )


def _backward_kernel(
    block: KernelBlock, stem: str, printer: TritonPrinter
) -> tuple[str, list[str]]:
    grads, upstream = _derivatives(block)
    temps, reduced = _cse([g for _, g in grads])
    read = set().union(*(e.free_symbols for _, e in temps), *(e.free_symbols for e in reduced))
    saved = [i.name for i in block.inputs if i.symbol in read]
    sig = [f"    gy_{o.name}_ptr,  # in: dL/d {o.state}'s new value" for o in block.outputs]
    sig += [
        f"    {i.name}_ptr,  # in: {leaf_text(i)} (saved)" for i in block.inputs if i.name in saved
    ]
    sig += [f"    {_coef_comment(c)}" for c in block.coefficients]
    sig += [f"    g_{i.name}_ptr,  # out: dL/d {i.name}, when NEED_{i.name}" for i in block.inputs]
    for c in block.coefficients:
        what = (
            "(programs along the other axis, M or K) sums per row (CHANNEL_ROWS) or column"
            if is_per_channel(c)
            else "one sum per program"
        )
        sig.append(f"    c_{c.name}_ptr,  # out: partial sums of dL/d {c.name}: {what}")
    flags = [f"    NEED_{i.name}: tl.constexpr," for i in block.inputs]
    flags += [f"    NEED_{c.name}: tl.constexpr," for c in block.coefficients]
    loads = _loads(block, [f"gy_{o.name}" for o in block.outputs] + saved, "    ")
    tensors = {i.symbol for i in block.inputs} | set(upstream.values())
    body = list(loads)
    for sym, e in temps:
        body.append(f"    {sym} = {printer.doprint(e)}")
        if e.free_symbols & tensors:
            tensors.add(sym)
    coef = {f"c_{c.name}": c for c in block.coefficients}
    for (name, _), e in zip(grads, reduced, strict=True):
        code = _full(e, tensors, printer.doprint(e))
        leaf = name[2:]
        body.append(f"    if NEED_{leaf}:")
        if name.startswith("g_"):
            body.append(
                f"        tl.store({name}_ptr + offs, ({code}).to({name}_ptr.dtype.element_ty), mask=mask)"
            )
            continue
        body.append(f"        part = tl.where(mask, {code}, 0)")
        if is_per_channel(coef[name]):
            body += [
                "        if CHANNEL_ROWS:",
                f"            tl.store({name}_ptr + (pid % GRID_K).to(tl.int64) * M + rows, tl.sum(part, axis=1), mask=rows < M)",
                "        else:",
                f"            tl.store({name}_ptr + (pid // GRID_K).to(tl.int64) * K + cols, tl.sum(part, axis=0), mask=cols < K)",
            ]
        else:
            body.append(f"        tl.store({name}_ptr + pid, tl.sum(tl.sum(part, axis=1), axis=0))")
    src = (
        f"@triton.jit\ndef {stem}_bwd_kernel(\n"
        + "\n".join(sig)
        + "\n"
        + _VIEW_ARGS
        + "\n".join(flags)
        + "\n):\n"
        + _PROLOGUE
        + "\n".join(body)
        + "\n"
    )
    return src, saved


def _tuple(items: Sequence[str]) -> str:
    return "(" + ", ".join(repr(x) for x in items) + ("," if len(items) == 1 else "") + ")"


def source(block: KernelBlock) -> str:
    """The kernel module of ``block`` as text (see the module docstring for its shape)."""
    stem = module_stem(block)
    h = scheme_hash(block)
    printer = TritonPrinter({}, dtype=DTYPE)
    fwd = _forward_kernel(block, stem, printer)
    bwd, saved = _backward_kernel(block, stem, printer)
    helpers = helper_source(printer.helpers_used)
    ins = [i.name for i in block.inputs]
    coefs = [c.name for c in block.coefficients]
    outs = [o.name for o in block.outputs]
    op = f"{stem}_{h[:12]}"
    implements = "\n".join(f"    {line}" for line in block.equations_text())
    if block.activation:
        implements += f"\n    with φ = {block.activation}"
    calls = "\n".join(f"    {c.text()}" for c in block.ir.calls) or "    (none)"
    shapes = "\n".join(
        f"        {i.name}: the state shape, (N, C, *spatial) or (N, C) or any shape"
        + ("" if block.per_channel else "")
        + f" -- {leaf_text(i)}"
        for i in block.inputs
    )
    cshapes = "\n".join(
        f"        {c.name}: {'C values (a (C,) tensor, or any shape of C elements)' if is_per_channel(c) else 'a number or a 1-element tensor'}"
        f" -- {expr_text(c.ref)}"
        for c in block.coefficients
    )
    sig = ", ".join(ins + coefs)
    tensor_sig = ", ".join(f"{n}: torch.Tensor" for n in ins + coefs)
    gy_sig = ", ".join(f"gy_{n}: torch.Tensor" for n in outs)
    saved_sig = ", ".join(f"{n}: torch.Tensor" for n in saved)
    all_bwd_sig = ", ".join(
        x for x in (gy_sig, saved_sig, ", ".join(f"{n}: torch.Tensor" for n in coefs)) if x
    )
    text = f'''\
# unroll kernel module for scheme {block.ir.scheme.name!r}
# scheme sha256: {h}
# unroll {__version__}, template {TEMPLATE_VERSION}; generated by unroll (`unroll emit`), do not edit.
"""Fused block update of scheme {block.ir.scheme.name!r}: one Triton kernel forward, one backward.

Implements, per element (the coefficients are the same for every element, or every element of
one channel):
{implements}
The operator outputs are computed by PyTorch before the kernel runs:
{calls}
"""

import torch
import triton
import triton.language as tl

SCHEME = {block.ir.scheme.name!r}
SCHEME_HASH = {h!r}
INPUTS = {_tuple(ins)}  # tensors, all of one shape
COEFFICIENTS = {_tuple(coefs)}
PER_CHANNEL = {_tuple([c.name for c in block.coefficients if is_per_channel(c)])}
OUTPUTS = {_tuple(outs)}  # new values of the states {_tuple([o.state for o in block.outputs])}
SAVED = {_tuple(saved)}  # the inputs the backward reads
TILE = 4096  # elements per program

{helpers}

{fwd}

{bwd}

def _view(ref):
    """(memory format, M, K, C, channel-rows) for tensors shaped like ``ref``."""
    fmt = torch.contiguous_format
    if ref.dim() == 4 and not ref.is_contiguous() and ref.is_contiguous(memory_format=torch.channels_last):
        fmt = torch.channels_last
    n = ref.numel()
    if not PER_CHANNEL:
        return fmt, 1, n, 1, False
    if ref.dim() == 0:
        raise ValueError("per-channel coefficients need a tensor with a channel dimension")
    c = ref.shape[0] if ref.dim() == 1 else ref.shape[1]
    if ref.dim() <= 2 or fmt is torch.channels_last:
        return fmt, n // max(c, 1), c, c, False  # channels are the contiguous columns
    return fmt, ref.shape[0] * c, n // max(ref.shape[0] * c, 1), c, True


def _blocks(M, K):
    block_k = min(triton.next_power_of_2(max(K, 1)), TILE)
    block_m = min(triton.next_power_of_2(max(M, 1)), max(1, TILE // block_k))
    return block_m, block_k, triton.cdiv(K, block_k), triton.cdiv(M, block_m)


def _compute_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _check(tensors, coefs):
    ref = tensors[0]
    for name, t in zip(INPUTS, tensors):
        if t.shape != ref.shape or t.dtype != ref.dtype or t.device != ref.device:
            raise ValueError(
                f"{{name}}: {{tuple(t.shape)}} {{t.dtype}} on {{t.device}}, but {{INPUTS[0]}} is "
                f"{{tuple(ref.shape)}} {{ref.dtype}} on {{ref.device}}: inputs share shape, dtype and device"
            )
    for name, c in zip(COEFFICIENTS, coefs):
        want = _view(ref)[3] if name in PER_CHANNEL else 1
        if c.numel() != want:
            raise ValueError(f"{{name}}: {{c.numel()}} values, expected {{want}}")
    if ref.device.type != "cuda" and not triton.knobs.runtime.interpret:
        raise ValueError(
            "the Triton kernels run on CUDA tensors; set TRITON_INTERPRET=1 to run them in "
            "Triton's interpreter on the CPU"
        )


def _forward(tensors, coefs):
    """Launch the forward kernel: new states, laid out like the inputs."""
    _check(tensors, coefs)
    fmt, M, K, C, channel_rows = _view(tensors[0])
    tensors = [t.contiguous(memory_format=fmt) for t in tensors]
    coefs = [c.reshape(-1).contiguous() for c in coefs]
    outs = [torch.empty_like(tensors[0]) for _ in OUTPUTS]
    if tensors[0].numel() == 0:
        return outs
    block_m, block_k, grid_k, grid_m = _blocks(M, K)
    {stem}_fwd_kernel[(grid_k * grid_m,)](
        *tensors, *coefs, *outs, M, K, C, grid_k,
        CHANNEL_ROWS=channel_rows, BLOCK_M=block_m, BLOCK_K=block_k,
        CDT=_compute_dtype(tensors[0].dtype),
    )
    return outs


def _backward(grads, saved, coefs, need):
    """Launch the backward kernel; gradients for INPUTS then COEFFICIENTS, an empty tensor
    where ``need`` is False."""
    ref = grads[0]
    fmt, M, K, C, channel_rows = _view(ref)
    grads = [g.contiguous(memory_format=fmt) for g in grads]
    saved = [s.contiguous(memory_format=fmt) for s in saved]
    flat = [c.reshape(-1).contiguous() for c in coefs]
    block_m, block_k, grid_k, grid_m = _blocks(M, K)
    cdtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
    need_in, need_c = need[: len(INPUTS)], need[len(INPUTS):]
    g_in = [torch.empty_like(grads[0]) if n else grads[0].new_empty(0) for n in need_in]
    parts = []
    for name, n in zip(COEFFICIENTS, need_c):
        if not n:
            shape = (0,)
        elif name not in PER_CHANNEL:
            shape = (grid_k * grid_m,)
        else:
            shape = (grid_k, M) if channel_rows else (grid_m, K)
        parts.append(torch.empty(shape, dtype=cdtype, device=ref.device))
    if ref.numel() > 0:
        dummy = grads[0]
        {stem}_bwd_kernel[(grid_k * grid_m,)](
            *grads, *saved, *flat,
            *[g if n else dummy for g, n in zip(g_in, need_in)],
            *[p if n else dummy for p, n in zip(parts, need_c)],
            M, K, C, grid_k,
            CHANNEL_ROWS=channel_rows, BLOCK_M=block_m, BLOCK_K=block_k,
            CDT=_compute_dtype(ref.dtype),
            **{{f"NEED_{{n}}": bool(x) for n, x in zip(INPUTS + COEFFICIENTS, need)}},
        )
    g_c = []
    for name, n, p, c in zip(COEFFICIENTS, need_c, parts, coefs):
        if not n:
            g_c.append(c.new_empty(0))
            continue
        if ref.numel() == 0:
            total = torch.zeros(c.numel(), dtype=cdtype, device=c.device)
        elif name not in PER_CHANNEL:
            total = p.sum()
        elif channel_rows:
            total = p.view(grid_k, -1, C).sum(dim=(0, 1))  # rows are (sample, channel)
        else:
            total = p.sum(dim=0)
        g_c.append(total.reshape(c.shape).to(c.dtype))
    return g_in + g_c


# -- torch.library: one op forward, one backward, autograd between them ------------------------
_OP = {op!r}


def _register():
    if hasattr(torch.ops.unroll, _OP + "_fwd"):  # registered by an earlier copy of this module
        return

    @torch.library.custom_op("unroll::" + _OP + "_fwd", mutates_args=())
    def fwd({tensor_sig}) -> list[torch.Tensor]:
        return _forward([{", ".join(ins)}], [{", ".join(coefs)}])

    @fwd.register_fake
    def _(*args):
        fmt = _view(args[0])[0]
        return [torch.empty_like(args[0].contiguous(memory_format=fmt)) for _ in OUTPUTS]

    @torch.library.custom_op("unroll::" + _OP + "_bwd", mutates_args=())
    def bwd({all_bwd_sig}, need: list[bool]) -> list[torch.Tensor]:
        return _backward([{", ".join(f"gy_{n}" for n in outs)}], [{", ".join(saved)}], [{", ".join(coefs)}], need)

    @bwd.register_fake
    def _(*args):
        grads, coefs, need = args[: len(OUTPUTS)], args[len(args) - 1 - len(COEFFICIENTS): -1], args[-1]
        fmt = _view(grads[0])[0]
        ref = grads[0].contiguous(memory_format=fmt)
        out = [torch.empty_like(ref) if n else ref.new_empty(0) for n in need[: len(INPUTS)]]
        return out + [c.new_empty(c.shape if n else (0,)) for c, n in zip(coefs, need[len(INPUTS):])]

    def setup_context(ctx, inputs, output):
        named = dict(zip(INPUTS + COEFFICIENTS, inputs))
        ctx.save_for_backward(*[named[n] for n in SAVED + COEFFICIENTS])

    def backward(ctx, grads):
        need = list(ctx.needs_input_grad)
        if not any(need):
            return tuple(None for _ in need)
        saved = ctx.saved_tensors
        out = torch.ops.unroll.{op}_bwd(*grads, *saved, need)
        return tuple(g if n else None for g, n in zip(out, need))

    fwd.register_autograd(backward, setup_context=setup_context)


_register()


def update({sig}):
    """The new states of {block.ir.scheme.name!r}, fused: returns {{{", ".join(f"{o.state!r}: tensor" for o in block.outputs)}}}.

    Shapes (all tensors on one device, of one float dtype; float16 and bfloat16 compute in
    float32; non-contiguous inputs are copied to contiguous, or channels-last, memory):
{shapes}
{cshapes}
    Every output has the inputs' shape and dtype. Per-channel values index dimension 1 (NCHW
    and (N, C)), channels-last 4-D inputs are kept channels-last. Differentiable in every
    tensor and coefficient.
    """
    tensors = [{", ".join(ins)}]
    ref = tensors[0]
    cdtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
    coefs = [
        c if isinstance(c, torch.Tensor) else torch.tensor(c, dtype=cdtype, device=ref.device)
        for c in ({", ".join(coefs)}{"," if len(coefs) == 1 else ""})
    ]
    outs = torch.ops.unroll.{op}_fwd(*tensors, *coefs)
    return dict(zip({_tuple([o.state for o in block.outputs])}, outs))
'''
    return _tidy(text)


def _tidy(text: str) -> str:
    """No trailing spaces, at most two blank lines in a row, one final newline."""
    lines = [line.rstrip() for line in text.splitlines()]
    out: list[str] = []
    for line in lines:
        if not line and len(out) >= 2 and not out[-1] and not out[-2]:
            continue
        out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def emit(scheme, activation: str | None = None) -> tuple[KernelBlock, str]:
    """(block, module source) for ``scheme``."""
    block = kernel_block(build(scheme), activation)
    return block, source(block)


def write(scheme, directory: str | Path, activation: str | None = None) -> tuple[KernelBlock, Path]:
    """Write the kernel module of ``scheme`` to ``directory/<scheme>.py`` (atomically);
    returns the block and the path."""
    from unroll.lowering.cache import write_atomic

    block, text = emit(scheme, activation)
    path = Path(directory) / f"{module_stem(block)}.py"
    write_atomic(path, text)
    return block, path
