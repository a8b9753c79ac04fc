"""Block update -> a Triton kernel module (source text), and writing it.

``module_source(block) -> str``. A generated module holds only what its scheme decides:

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
from unroll.ir.step import Leaf, build
from unroll.lowering.cache import import_file, write_atomic
from unroll.lowering.triton.block import (
    KernelBlock,
    is_per_channel,
    kernel_view,
    leaf_text,
    origin,
)
from unroll.lowering.triton.printer import TritonPrinter, helper_source, prepare

# Bump when the generated text changes for the same block (part of every cache key).
TEMPLATE_VERSION = 6  # 6: tl.maximum/minimum propagate NaN, as torch does
DTYPE = "_CDT"  # the compute dtype constexpr in every kernel
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
    """Common subexpressions of ``exprs`` (after `prepare`) as temporaries ``_t0``, ``_t1``..."""
    temps, reduced = sp.cse(
        [prepare(e) for e in exprs], symbols=sp.numbered_symbols("_t", real=True), order="none"
    )
    return temps, reduced


def _grad(leaf: Leaf) -> str:
    """The name of dL/d``leaf``: a value (an output's upstream gradient) or, with ``_ptr``,
    where the backward reads or writes it."""
    return f"{leaf.name}__grad"


def _derivatives(block: KernelBlock) -> list[tuple[Leaf, sp.Expr]]:
    """(leaf, Σ_i ḡ_i ∂F_i/∂leaf) for every input and coefficient, ḡ_i the upstream gradient
    of output i (the symbol `_grad` names): per element for an input, the per-element
    contribution that is then reduced for a coefficient."""
    upstream = [sp.Symbol(_grad(o), real=True) for o in block.outputs]
    out: list[tuple[Leaf, sp.Expr]] = []
    for leaf in (*block.inputs, *block.coefficients):
        total = sp.S.Zero
        for o, e, g in zip(block.outputs, block.expressions, upstream, strict=True):
            d = sp.diff(e, leaf.symbol)
            if d.has(sp.Derivative, sp.Subs):
                raise UnrollError(
                    f"cannot differentiate {expr_text(o.expr)} by {leaf.name} in closed form"
                )
            total += g * d
        out.append((leaf, total))
    return out


def _loads(block: KernelBlock, tensors: Sequence[tuple[str, str]]) -> list[str]:
    """Load each tensor (value name, pointer name) and every coefficient ``c`` (from
    ``c__ptr``), in the compute dtype."""
    lines = [f"    {n} = tl.load({p} + _offs, mask=_mask).to({DTYPE})" for n, p in tensors]
    for c in block.coefficients:
        n = c.name
        if is_per_channel(c):
            lines += [
                "    if _CHANNEL_ROWS:",
                f"        {n} = tl.load({n}__ptr + _rows % _C, mask=_rows < _M)[:, None].to({DTYPE})",
                "    else:",
                f"        {n} = tl.load({n}__ptr + _cols, mask=_cols < _K)[None, :].to({DTYPE})",
            ]
        else:
            lines.append(f"    {n} = tl.load({n}__ptr).to({DTYPE})")
    return lines


_PROLOGUE = """\
    _pid = tl.program_id(0)  # one program per _BLOCK_M x _BLOCK_K tile; a 1-D grid
    _rows = (_pid // _GRID_K).to(tl.int64) * _BLOCK_M + tl.arange(0, _BLOCK_M)
    _cols = (_pid % _GRID_K).to(tl.int64) * _BLOCK_K + tl.arange(0, _BLOCK_K)
    _mask = (_rows < _M)[:, None] & (_cols < _K)[None, :]
    _offs = _rows[:, None] * _K + _cols[None, :]  # 64-bit: tensors over 2**31 elements work
"""

_VIEW_ARGS = """\
    _M, _K, _C, _GRID_K,  # the view (runtime.layout): _M rows of _K elements, _C channels; tiles per row
    _CHANNEL_ROWS: tl.constexpr,  # per-channel values: channel = row % _C (NCHW), else the column
    _BLOCK_M: tl.constexpr, _BLOCK_K: tl.constexpr,  # the tile (runtime.tiles)
    _CDT: tl.constexpr,  # compute dtype: float32 (for 16- and 32-bit storage) or float64
"""


def _arg(name: str, comment: str) -> str:
    """A kernel argument on its own line, with its comment (made safe by `_comment`)."""
    return f"    {name},  # {_comment(comment)}"


def _coef_arg(c: Leaf) -> str:
    shape = "C elements, one per channel" if is_per_channel(c) else "1 element"
    return _arg(f"{c.name}__ptr", f"in: {expr_text(c.ref)} ({origin(c)}), {shape}")


def _full(expr: sp.Expr, tensors: set[sp.Symbol], code: str) -> str:
    """Make a value that reads no tensor a full tile (a store or reduction needs the shape)."""
    if expr.free_symbols & tensors:
        return code
    return f"({code}) + tl.zeros([_BLOCK_M, _BLOCK_K], {DTYPE})"


def _body(temps, printer: TritonPrinter, tensors: set[sp.Symbol]) -> list[str]:
    """One line per CSE temporary; ``tensors`` gains those that read a tensor."""
    lines = []
    for sym, e in temps:
        lines.append(f"    {sym} = {printer.doprint(e)}")
        if e.free_symbols & tensors:
            tensors.add(sym)
    return lines


def _kernel(name: str, sig: list[str], flags: list[str], body: list[str]) -> str:
    head = f"@triton.jit\ndef {name}(\n" + "\n".join(sig) + "\n" + _VIEW_ARGS
    return head + "".join(f"{f}\n" for f in flags) + "):\n" + _PROLOGUE + "\n".join(body) + "\n"


def _forward_kernel(block: KernelBlock, stem: str, printer: TritonPrinter) -> str:
    sig = [_arg(f"{i.name}__ptr", f"in: {leaf_text(i)}") for i in block.inputs]
    sig += [_coef_arg(c) for c in block.coefficients]
    sig += [_arg(f"{o.name}__ptr", f"out: {expr_text(o.ref)}") for o in block.outputs]
    temps, reduced = _cse(block.expressions)
    tensors = {i.symbol for i in block.inputs}
    body = _loads(block, [(i.name, f"{i.name}__ptr") for i in block.inputs])
    body += _body(temps, printer, tensors)
    for o, e in zip(block.outputs, reduced, strict=True):
        code = _full(e, tensors, printer.doprint(e))
        p = f"{o.name}__ptr"
        body.append(f"    tl.store({p} + _offs, ({code}).to({p}.dtype.element_ty), mask=_mask)")
    return _kernel(f"{stem}_fwd_kernel", sig, [], body)


def _backward_kernel(
    block: KernelBlock, stem: str, printer: TritonPrinter
) -> tuple[str, list[str]]:
    grads = _derivatives(block)
    temps, reduced = _cse([g for _, g in grads])
    read = set().union(*(e.free_symbols for _, e in temps), *(e.free_symbols for e in reduced))
    saved = [i for i in block.inputs if i.symbol in read]
    sig = [_arg(f"{_grad(o)}_ptr", f"in: dL/d{o.name}") for o in block.outputs]
    sig += [_arg(f"{i.name}__ptr", f"in: {leaf_text(i)} (saved)") for i in saved]
    sig += [_coef_arg(c) for c in block.coefficients]
    sig += [_arg(f"{_grad(i)}_ptr", f"out: dL/d{i.name}") for i in block.inputs]
    for c in block.coefficients:
        what = "sums per row or column" if is_per_channel(c) else "one per program"
        sig.append(_arg(f"{_grad(c)}_ptr", f"out: partial sums of dL/d{c.name}, {what}"))
    leaves = (*block.inputs, *block.coefficients)
    flags = [f"    {x.name}__need: tl.constexpr,  # write dL/d{x.name}" for x in leaves]
    tensors = {i.symbol for i in block.inputs} | {
        sp.Symbol(_grad(o), real=True) for o in block.outputs
    }
    loads = [(_grad(o), f"{_grad(o)}_ptr") for o in block.outputs]
    body = _loads(block, loads + [(i.name, f"{i.name}__ptr") for i in saved])
    body += _body(temps, printer, tensors)
    for (leaf, _), e in zip(grads, reduced, strict=True):
        code = _full(e, tensors, printer.doprint(e))
        p = f"{_grad(leaf)}_ptr"
        body.append(f"    if {leaf.name}__need:")
        if leaf in block.inputs:
            body.append(
                f"        tl.store({p} + _offs, ({code}).to({p}.dtype.element_ty), mask=_mask)"
            )
            continue
        body.append(f"        _part = tl.where(_mask, {code}, 0)")
        if is_per_channel(leaf):
            body += [
                "        if _CHANNEL_ROWS:",
                f"            tl.store({p} + (_pid % _GRID_K).to(tl.int64) * _M + _rows, tl.sum(_part, axis=1), mask=_rows < _M)",
                "        else:",
                f"            tl.store({p} + (_pid // _GRID_K).to(tl.int64) * _K + _cols, tl.sum(_part, axis=0), mask=_cols < _K)",
            ]
        else:
            body.append(f"        tl.store({p} + _pid, tl.sum(tl.sum(_part, axis=1), axis=0))")
    return _kernel(f"{stem}_bwd_kernel", sig, flags, body), [i.name for i in saved]


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


def module_source(block: KernelBlock) -> str:
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
    host = "".join(f"\n    {a.name} = {expr_text(a.expr)}" for a in block.ir.host)
    if host:
        host = "\nand the caller has computed the host values (scalars) it passes:" + host
    returns = ", ".join(f"{s!r}: {o}" for s, o in zip(block.states, outs, strict=True))
    doc = f"""Fused block update of scheme {name!r}: one Triton kernel forward, one backward.

Per element (a coefficient is one value for every element, or one per channel):
{implements}
once PyTorch has computed the operator outputs:
{calls}{host}
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
    block = kernel_view(build(scheme), activation)
    return block, module_source(block)


def write(scheme, directory: str | Path, activation: str | None = None) -> tuple[KernelBlock, Path]:
    """Write the kernel module of ``scheme`` to ``directory/<stem>.py`` (atomically) and check
    it: it compiles, and (where Triton is installed) it imports. Returns the block and the path;
    raises `UnrollError` naming the file when the check fails."""
    block, text = emit(scheme, activation)
    path = Path(directory) / f"{module_stem(block)}.py"
    label = block.ir.label
    try:
        compile(text, str(path), "exec")
    except (SyntaxError, ValueError) as e:
        raise UnrollError(
            f"the kernel module of {label!r} does not compile ({e}); nothing was written "
            "(a bug in unroll: please report it with the scheme)"
        ) from None
    write_atomic(path, text)
    try:
        import triton  # noqa: F401
    except ImportError:  # pragma: no cover - the module imports Triton: nothing more to check
        return block, path
    try:
        import_file(path, f"unroll_emitted.{path.stem}_{scheme_hash(block)[:12]}")
    except Exception as e:  # noqa: BLE001 - whatever stops the import is what to report
        raise UnrollError(
            f"wrote {path}, but it does not import: {type(e).__name__}: {e} "
            "(a bug in unroll: please report it with the scheme)"
        ) from None
    return block, path
