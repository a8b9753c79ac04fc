"""Block update -> a Triton kernel module (source text), and writing it.

``source(block) -> str``. A generated module holds only what its scheme decides:

1. a header naming the scheme, its hash and the unroll and template versions, and a docstring
   with the equations it implements;
2. the scheme's names: its inputs, coefficients (and which are per channel), outputs, states
   and the inputs the backward reads;
3. the ``@triton.jit`` helpers the printer used, the forward kernel and the backward kernel,
   every argument commented;
4. the registration call, `unroll.lowering.triton.runtime.register`, which returns ``OP``
   (its ``update`` is the module's entry point). The view, checks, launchers,
   ``torch.library`` ops, fake implementations and autograd formula are the runtime's, once
   for every module.

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
from collections.abc import Sequence
from pathlib import Path

import sympy as sp

from unroll import __version__
from unroll.errors import UnrollError
from unroll.frontend.printing import expr_text
from unroll.ir import activations
from unroll.ir.names import identifier
from unroll.ir.step import build
from unroll.lowering.cache import write_atomic
from unroll.lowering.triton.block import (
    KernelBlock,
    is_per_channel,
    kernel_block,
    leaf_text,
    origin,
)
from unroll.lowering.triton.printer import TritonPrinter, helper_source, prepare

# Bump when the generated text changes for the same block (part of every cache key).
TEMPLATE_VERSION = 3
DTYPE = "CDT"  # the compute dtype constexpr in every kernel
STEM_LENGTH = 40  # a name's share of file names (a file name holds at most 255 bytes)


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
        parts.append(sp.srepr(activations.get(block.activation).expr))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def module_stem(block: KernelBlock) -> str:
    """The file, kernel and op name stem: the scheme's name as an identifier
    (`unroll.ir.names.identifier`), at most `STEM_LENGTH` characters, and the activation's when
    it is not the scheme's own."""
    stem = identifier(block.ir.scheme.name or "scheme")[:STEM_LENGTH].rstrip("_")
    if block.activation and block.activation != block.ir.scheme.activation:
        stem += f"_{identifier(block.activation)[:STEM_LENGTH]}".rstrip("_")
    return stem


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
    M, K, C, GRID_K,  # the view (runtime.layout): M rows of K elements, C channels; tiles per row
    CHANNEL_ROWS: tl.constexpr,  # per-channel values: channel = row % C (NCHW), else the column
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,  # the tile (runtime.tiles)
    CDT: tl.constexpr,  # compute dtype: float32 (for 16- and 32-bit storage) or float64
"""


def _arg(name: str, comment: str) -> str:
    """A kernel argument on its own line, with its comment (made safe by `_comment`)."""
    return f"    {name},  # {_comment(comment)}"


def _coef_arg(c) -> str:
    shape = "C elements, one per channel" if is_per_channel(c) else "1 element"
    return _arg(f"{c.name}_ptr", f"in: {expr_text(c.ref)} ({origin(c)}), {shape}")


def _full(expr: sp.Expr, tensors: set[sp.Symbol], code: str) -> str:
    """Make a value that reads no tensor a full tile (a store or reduction needs the shape)."""
    if expr.free_symbols & tensors:
        return code
    return f"({code}) + tl.zeros([BLOCK_M, BLOCK_K], {DTYPE})"


def _forward_kernel(block: KernelBlock, stem: str, printer: TritonPrinter) -> str:
    names = [i.name for i in block.inputs]
    sig = [_arg(f"{i.name}_ptr", f"in: {leaf_text(i)}") for i in block.inputs]
    sig += [_coef_arg(c) for c in block.coefficients]
    sig += [_arg(f"out_{o.name}_ptr", f"out: {o.state}'s new value") for o in block.outputs]
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
    sig = [_arg(f"gy_{o.name}_ptr", f"in: dL/d {o.state}'s new value") for o in block.outputs]
    sig += [
        _arg(f"{i.name}_ptr", f"in: {leaf_text(i)} (saved)")
        for i in block.inputs
        if i.name in saved
    ]
    sig += [_coef_arg(c) for c in block.coefficients]
    sig += [
        _arg(f"g_{i.name}_ptr", f"out: dL/d {i.name}, when NEED_{i.name}") for i in block.inputs
    ]
    for c in block.coefficients:
        what = (
            "(programs along the other axis, M or K) sums per row (CHANNEL_ROWS) or column"
            if is_per_channel(c)
            else "one sum per program"
        )
        sig.append(_arg(f"c_{c.name}_ptr", f"out: partial sums of dL/d {c.name}: {what}"))
    flags = [
        f"    NEED_{x.name}: tl.constexpr,  # write dL/d{x.name}"
        for x in (*block.inputs, *block.coefficients)
    ]
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


def _comment(text: str) -> str:
    """``text`` fit for a ``#`` comment: a character that is not printable (a newline, a
    carriage return, a form feed, ...) would end the comment, or the line, so it is written as
    its escape (``\\n``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _docstring(text: str) -> str:
    """``text`` as the body of a ``\"\"\"`` docstring that reads back as ``text``: backslashes and
    double quotes escaped, so nothing in it can end the string, and characters that are not
    printable (but the newline) written as their escapes."""
    out = []
    for c in text:
        if c in '\\"':
            out.append("\\" + c)
        elif c == "\n" or c.isprintable():
            out.append(c)
        else:
            out.append(repr(c)[1:-1])
    return "".join(out)


def _tuple(items: Sequence[object]) -> str:
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
    name = block.ir.scheme.name
    implements = "\n".join(f"    {line}" for line in block.equations_text())
    if block.activation:
        implements += f"\n    with φ = {block.activation}"
    calls = "\n".join(f"    {c.text()}" for c in block.ir.calls) or "    (none)"
    returns = ", ".join(f"{s!r}: {o}" for s, o in zip(block.states, outs, strict=True))
    doc = f"""Fused block update of scheme {name!r}: one Triton kernel forward, one backward.

Per element (a coefficient is one value for every element, or one per channel):
{implements}
once PyTorch has computed the operator outputs:
{calls}
``update({", ".join(ins + coefs)})`` returns {{{returns}}}: tensors of one shape and
float dtype, coefficients numbers or 1-element tensors (PER_CHANNEL ones: C values, indexing
dimension 1). ``OP(tensors, coefficients)`` takes them in order and returns the outputs in order.
The host side (view, checks, launchers, torch.library op, autograd) is
unroll.lowering.triton.runtime.
"""
    text = f'''\
# unroll kernel module for scheme {_comment(repr(name))}
# scheme sha256: {h}
# unroll {__version__}, template {TEMPLATE_VERSION}; generated by unroll (`unroll emit`), do not edit.
"""{_docstring(doc)}"""

import triton
import triton.language as tl

from unroll.lowering.triton import runtime

SCHEME = {name!r}
INPUTS = {_tuple(ins)}  # tensors, all of one shape
COEFFICIENTS = {_tuple(coefs)}
PER_CHANNEL = {_tuple([is_per_channel(c) for c in block.coefficients])}  # one value per channel?
OUTPUTS = {_tuple(outs)}  # the new values of STATES
STATES = {_tuple(list(block.states))}
SAVED = {_tuple(saved)}  # the inputs the backward reads

{helpers}

{fwd}

{bwd}

OP = runtime.register(
    {f"{stem}_{h[:12]}"!r}, SCHEME, {stem}_fwd_kernel, {stem}_bwd_kernel,
    inputs=INPUTS, coefficients=COEFFICIENTS, per_channel=PER_CHANNEL,
    outputs=OUTPUTS, states=STATES, saved=SAVED,
)
update = OP.update
'''
    return _tidy(text)


def _tidy(text: str) -> str:
    """No trailing spaces, at most two blank lines in a row, one final newline."""
    lines = [line.rstrip() for line in text.split("\n")]
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
    block, text = emit(scheme, activation)
    path = Path(directory) / f"{module_stem(block)}.py"
    write_atomic(path, text)
    return block, path
