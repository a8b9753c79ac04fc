"""TiedStep -> Triton source: the forward and backward kernels of a weight-tied network.

The generated module holds two `@triton.jit` kernels, each one program per tile of rows:

- ``tied_forward`` loads the shared W once, keeps every carried value of the tile in registers and
  runs all layers in one loop: the point p (elementwise), ``z = p @ Wᵀ`` (`tl.dot`), then the
  multi-state update from the scheme's equations. With ``STORE`` it also writes each layer's input
  state (the trajectory the backward needs).
- ``layer_forward`` is one layer with its own W (no weight tying): a tiled matrix product whose
  A operand p is computed from the history tiles as they are loaded, with the multi-state update
  fused into its epilogue.
- ``tied_backward`` runs the adjoint recursion from the last layer to the first: it reloads a
  layer's input states, recomputes p and z (one `tl.dot`), forms dL/dz (written out for dW),
  dL/dp = dL/dz @ W (a second `tl.dot`) and the adjoints of the carried values, and sums the
  parameters' gradients over its rows in a fixed order.

Every expression comes from `unroll.lowering.triton.tied_step.TiedStep` (SymPy), common subexpressions are
eliminated with `sympy.cse`, and every expression is printed by the shared
`unroll.lowering.triton.printer.TritonPrinter`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import ModuleType

import sympy as sp

from unroll import __version__
from unroll.lowering import cache
from unroll.lowering.triton.printer import TritonPrinter, helper_source, prepare
from unroll.lowering.triton.tied_step import TiedStep


# -- expression printing ---------------------------------------------------------------------
def _printer() -> TritonPrinter:
    """The shared SymPy -> Triton printer (issue 5's), making constants in the kernel's compute
    dtype; one per generated module, so that it collects the helpers the module must include."""
    return TritonPrinter(dtype="COMPUTE")


def _assignments(
    pr: TritonPrinter,
    targets: Sequence[tuple[str, sp.Expr]],
    prefix: str,
    late: Sequence[sp.Symbol] = (),
    tiles: frozenset[sp.Symbol] | None = None,
) -> tuple[list[str], list[str]]:
    """Lines computing ``targets`` (numeric rewrites, then `sympy.cse`), split into those that
    can run before any symbol of ``late`` exists and those that need one (e.g. dL/dp after the
    second dot). With ``tiles`` (the symbols holding (BLOCK_M, BLOCK_N) tiles), a target free
    of them (a constant, a scalar or per-channel value) is broadcast to a full tile: a
    loop-carried value must keep its type, which the compiler checks and the interpreter
    does not."""
    if tiles is not None:
        full = sp.Symbol("TILE_ZEROS")
        targets = [(n, e if e.free_symbols & tiles else e + full) for n, e in targets]
    temps, reduced = sp.cse([prepare(e) for _, e in targets], symbols=sp.numbered_symbols(prefix))
    late_set = set(late)
    early: list[str] = []
    after: list[str] = []
    for sym, expr in temps:
        (after if expr.free_symbols & late_set else early).append(f"{sym} = {pr.doprint(expr)}")
        if expr.free_symbols & late_set:
            late_set.add(sym)
    for (name, _), expr in zip(targets, reduced, strict=True):
        (after if expr.free_symbols & late_set else early).append(f"{name} = {pr.doprint(expr)}")
    zeros = "tl.zeros((BLOCK_M, BLOCK_N), COMPUTE)"
    return [line.replace("TILE_ZEROS", zeros) for line in early], [
        line.replace("TILE_ZEROS", zeros) for line in after
    ]


def _indent(lines: Sequence[str], n: int) -> str:
    pad = " " * n
    return "".join(f"{pad}{line}\n" for line in lines)


# -- the kernels -----------------------------------------------------------------------------
def source(step: TiedStep) -> str:
    """The Triton module body (text) for ``step``: the printer's helpers, ``tied_forward``,
    ``tied_backward``, ``weight_grad`` and ``layer_forward``."""
    pr = _printer()
    kernels = "\n\n".join([_forward(pr, step), _backward(pr, step), WEIGHT_GRAD, _layer(pr, step)])
    helpers = helper_source(pr.helpers_used)
    return (helpers + "\n\n" if helpers else "") + kernels


def _param_args(step: TiedStep) -> tuple[list[str], list[str]]:
    """Pointer arguments (with comments) and the lines that load the parameters."""
    args, loads = [], []
    for m, name in enumerate(step.scalars):
        args.append(f"Q{m},  # () scalar parameter {name}")
        loads.append(f"q{m} = tl.load(Q{m}).to(COMPUTE)")
    for m, name in enumerate(step.channels):
        args.append(f"C{m},  # (n,) per-channel parameter {name}")
        loads.append(f"ch{m} = tl.load(C{m} + cols, mask=cols < N, other=0.0).to(COMPUTE)[None, :]")
    return args, loads


_PREAMBLE = """\
    # 64-bit offsets: depth·B·n may pass 2^31 elements.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    wmask = (cols[:, None] < N) & (cols[None, :] < N)
    off = rows[:, None] * N + cols[None, :]  # into the contiguous (B, n) buffers
    layer = tl.cast(M, tl.int64) * N  # elements per layer in the (depth, B, n) buffers
"""

_CONSTEXPRS = """\
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # the width n padded to a power of two (>= 16)
    PREC: tl.constexpr,  # tl.dot input precision ("ieee" or "tf32")
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for float64 inputs
"""


def _forward(pr: TritonPrinter, step: TiedStep) -> str:
    ns = range(len(step.states))
    read = [i for i in ns if step.read[i]]
    params, loads = _param_args(step)
    sig = [f"X0_{i},  # (B, n) initial value of state {s}" for i, s in enumerate(step.states)]
    sig += [
        f"OUT_{i},  # (B, n) out: state {s} after `depth` layers" for i, s in enumerate(step.states)
    ]
    sig += [
        f"TRAJ_{i},  # (depth, B, n) out when STORE: the input of every layer, "
        f"{step.states[i]}_0..{step.states[i]}_(depth-1)"
        for i in read
    ]
    sig += ["W,  # (n, n) the weight every layer shares, (out, in): z = p @ W^T", *params]
    sig += ["M, N, depth,  # rows B, width n, layers (at least 1)"]
    sig += [f"sx{i}m, sx{i}n,  # strides of X0_{i}" for i in ns]
    sig += ["swo, swi,  # strides of W"]

    body = [
        "# W^T as wt[i, o] = W[o, i], loaded once for every layer",
        "wt = tl.load(W + cols[:, None] * swi + cols[None, :] * swo, mask=wmask, other=0.0)",
        *loads,
        "# carried values: c{i}_0 = state i, c{i}_j = its j-th backward difference",
    ]
    for i in read:
        body.append(
            f"c{i}_0 = tl.load(X0_{i} + rows[:, None] * sx{i}m + cols[None, :] * sx{i}n, "
            "mask=mask, other=0.0).to(COMPUTE)"
        )
        for j in range(1, step.depths[i]):
            body.append(f"c{i}_{j} = tl.zeros((BLOCK_M, BLOCK_N), COMPUTE)")
    point, _ = _assignments(pr, [("p", step.point)], "fp")
    new = [(f"n{i}_{j}", e) for i in ns for j, e in enumerate(step.update[i]) if step.read[i]]
    new += [(f"n{i}_0", step.update[i][0]) for i in ns if not step.read[i]]
    tiles = frozenset({step.z, *(c for row in step.carried for c in row)})
    update, _ = _assignments(pr, new, "fu", tiles=tiles)
    carried = [f"c{i}_{j}" for i in read for j in range(len(step.update[i]))]
    loop = [
        "if STORE:",
        *[
            f"    tl.store(TRAJ_{i} + k * layer + off, c{i}_0.to(TRAJ_{i}.dtype.element_ty), mask=mask)"
            for i in read
        ],
        *point,
        "p = tl.where(mask, p, 0.0)  # padded lanes must not reach the product",
        "z = tl.dot(p.to(wt.dtype), wt, input_precision=PREC)",
        *update,
    ]
    # A state no layer reads (ADMM's x) is not carried: its value goes out at the last layer.
    unread = [i for i in ns if not step.read[i]]
    if unread:
        loop.append("if k == depth - 1:")
        loop += [
            f"    tl.store(OUT_{i} + off, n{i}_0.to(OUT_{i}.dtype.element_ty), mask=mask)"
            for i in unread
        ]
    if carried:
        # Every carried value gets a freshly computed one: no plain rename of a loop-carried
        # value (the pattern `xp = x; x = xn` miscompiled on the GPU with Triton 3.6).
        loop.append(f"{', '.join(carried)} = {', '.join('n' + c[1:] for c in carried)}")
    tail = [
        f"tl.store(OUT_{i} + off, c{i}_0.to(OUT_{i}.dtype.element_ty), mask=mask)" for i in read
    ]
    return (
        "@triton.jit\ndef tied_forward(\n"
        + _indent(sig, 4)
        + _CONSTEXPRS
        + "    STORE: tl.constexpr,  # write the trajectory (training)\n):\n"
        + _PREAMBLE
        + _indent(body, 4)
        + "    for k in range(depth):\n"
        + _indent(loop, 8)
        + _indent(tail, 4)
    )


def _backward(pr: TritonPrinter, step: TiedStep) -> str:
    ns = range(len(step.states))
    read = [i for i in ns if step.read[i]]
    params, loads = _param_args(step)
    sig = [
        f"TRAJ_{i},  # (depth, B, n) layer inputs of state {step.states[i]}, from the forward"
        for i in read
    ]
    sig += [f"GOUT_{i},  # (B, n) dL/d(final {s})" for i, s in enumerate(step.states)]
    sig += [f"DX0_{i},  # (B, n) out: dL/d(initial {s})" for i, s in enumerate(step.states)]
    sig += ["W,  # (n, n) the shared weight, (out, in)", *params]
    sig += [
        "DZ,  # (depth, B, n) out: dL/dz_k, z_k = p_k @ W^T (for dW)",
        "PT,  # (depth, B, n) out when STORE_P: the point p_k (for dW)",
        "DQ,  # (programs, scalars) out: this program's share of dL/d(scalar parameters)",
        "DC,  # (programs, channels, n) out: its share of dL/d(per-channel parameters)",
        "M, N, depth,  # rows B, width n, layers (at least 1)",
    ]
    sig += [f"sg{i}m, sg{i}n,  # strides of GOUT_{i}" for i in ns]
    sig += ["swo, swi,  # strides of W"]

    adj = step.adjoint()
    in_history = step.in_history()
    body = [
        "# W once: the product z = p W^T reads it through a transposed view (tl.trans inside",
        "# the dot shares w's shared-memory copy; a separate wt would be a second n x n copy)",
        "w = tl.load(W + cols[:, None] * swo + cols[None, :] * swi, mask=wmask, other=0.0)",
        *loads,
        "# a{i}_j: dL/d(carried value c{i}_j) at the input of the layer being processed",
    ]

    def gout(i: int) -> str:
        return (
            f"a{i}_0 = tl.load(GOUT_{i} + rows[:, None] * sg{i}m + cols[None, :] * sg{i}n, "
            "mask=mask, other=0.0).to(COMPUTE)"
        )

    for i in read:
        body.append(gout(i))
        for j in range(1, step.depths[i]):
            body.append(f"a{i}_{j} = tl.zeros((BLOCK_M, BLOCK_N), COMPUTE)")
    for m in range(len(step.scalars)):
        body.append(f"gq{m} = tl.zeros((BLOCK_N,), COMPUTE)")
    for m in range(len(step.channels)):
        body.append(f"gc{m} = tl.zeros((BLOCK_N,), COMPUTE)")

    loop = ["k = depth - 1 - kk"]
    # A state no layer reads has an adjoint only at the last layer: dL/d(its final value).
    for i in ns:
        if not step.read[i]:
            loop += [f"a{i}_0 = tl.zeros((BLOCK_M, BLOCK_N), COMPUTE)", "if kk == 0:"]
            loop.append("    " + gout(i))
    for i in read:
        d = step.depths[i]
        for j in range(d):
            at = "k" if j == 0 else f"tl.maximum(k - {j}, 0)"  # states before x_0 equal x_0
            loop.append(
                f"h{i}_{j} = tl.load(TRAJ_{i} + {at} * layer + off, mask=mask, other=0.0).to(COMPUTE)"
            )
        for c in step.carried[i]:  # the backward differences of the loaded history
            loop.append(f"{c} = {pr.doprint(in_history[c])}")
    point, _ = _assignments(pr, [("p", step.point)], "bp")
    loop += point
    loop += [
        "p = tl.where(mask, p, 0.0)",
        "z = tl.dot(p.to(w.dtype), tl.trans(w), input_precision=PREC)",
    ]
    targets = [("dz", adj.dz)]
    targets += [(f"na{i}_{j}", e) for i in read for j, e in enumerate(adj.carried[i])]
    targets += [(f"dq{m}", e) for m, e in enumerate(adj.scalars)]
    targets += [(f"dc{m}", e) for m, e in enumerate(adj.channels)]
    tiles = frozenset(
        {
            step.z,
            adj.dp,
            *(c for row in step.carried for c in row),
            *(a for row in adj.adjoints for a in row),
        }
    )
    early, late = _assignments(pr, targets, "bt", late=[adj.dp], tiles=tiles)
    loop += early
    loop += [
        "dz = tl.where(mask, dz, 0.0)",
        "tl.store(DZ + k * layer + off, dz.to(DZ.dtype.element_ty), mask=mask)",
        "if STORE_P:",
        "    tl.store(PT + k * layer + off, p.to(PT.dtype.element_ty), mask=mask)",
        f"{adj.dp} = tl.dot(dz.to(w.dtype), w, input_precision=PREC)",
        *late,
    ]
    loop += [
        f"gq{m} += tl.sum(tl.where(mask, dq{m}, 0.0), axis=0)" for m in range(len(step.scalars))
    ]
    loop += [
        f"gc{m} += tl.sum(tl.where(mask, dc{m}, 0.0), axis=0)" for m in range(len(step.channels))
    ]
    carried = [f"a{i}_{j}" for i in read for j in range(len(adj.carried[i]))]
    loop.append(f"{', '.join(carried)} = {', '.join('n' + a for a in carried)}")
    tail = [
        # x_0 enters only c{i}_0 (its differences start at 0), so dL/dx_0 = a{i}_0; the initial
        # value of a state no layer reads does not reach the output (depth >= 1).
        f"tl.store(DX0_{i} + off, a{i}_0.to(DX0_{i}.dtype.element_ty), mask=mask)"
        if step.read[i]
        else f"tl.store(DX0_{i} + off, tl.zeros((BLOCK_M, BLOCK_N), DX0_{i}.dtype.element_ty), "
        "mask=mask)"
        for i in ns
    ]
    nq, nc = len(step.scalars), len(step.channels)
    tail += [
        f"tl.store(DQ + tl.program_id(0) * {nq} + {m}, tl.sum(gq{m}, axis=0))" for m in range(nq)
    ]
    tail += [
        f"tl.store(DC + (tl.program_id(0) * {nc} + {m}) * N + cols, gc{m}, mask=cols < N)"
        for m in range(nc)
    ]
    return (
        "@triton.jit\ndef tied_backward(\n"
        + _indent(sig, 4)
        + _CONSTEXPRS
        + "    STORE_P: tl.constexpr,  # write p_k (False when p_k is a stored state)\n):\n"
        + _PREAMBLE
        + _indent(body, 4)
        + "    for kk in range(depth):\n"
        + _indent(loop, 8)
        + _indent(tail, 4)
    )


def _layer(pr: TritonPrinter, step: TiedStep) -> str:
    """One layer, one launch: grid (row tiles, output-column tiles), the reduction over the input
    width in BLOCK_K chunks."""
    h = step.history_symbols()
    slots = [(i, j) for i in range(len(step.states)) for j in range(step.depths[i])]
    point = step.point.xreplace(step.in_history())
    news = [row[0].xreplace(step.in_history()) for row in step.update]
    sig = [f"H{i}_{j},  # (B, n) {step.states[i]}_(k-{j}), a history value" for i, j in slots]
    sig += [f"OUT_{i},  # (B, n_out) out: the new {s}" for i, s in enumerate(step.states)]
    sig += ["W,  # (n_out, n_in) this layer's weight: z = p @ W^T"]
    sig += [f"Q{m},  # () scalar parameter {name}" for m, name in enumerate(step.scalars)]
    sig += [f"C{m},  # per-channel parameter {name}" for m, name in enumerate(step.channels)]
    sig += ["M, N, K,  # rows B, output width, input width"]
    sig += [f"sh{i}_{j}m, sh{i}_{j}n,  # strides of H{i}_{j}" for i, j in slots]
    sig += ["swo, swi,  # strides of W"]

    def loads(syms, at: str, m: str) -> list[str]:
        out = []
        for i, j in slots:
            if h[i][j] in syms:
                out.append(
                    f"h{i}_{j} = tl.load(H{i}_{j} + rows[:, None] * sh{i}_{j}m + {at}[None, :] "
                    f"* sh{i}_{j}n, mask={m}, other=0.0).to(COMPUTE)"
                )
        for c, sym in enumerate(step.ch):
            if sym in syms:
                out.append(
                    f"ch{c} = tl.load(C{c} + {at}, mask={at} < {'K' if at == 'kc' else 'N'}, "
                    "other=0.0).to(COMPUTE)[None, :]"
                )
        return out

    body = [f"q{m} = tl.load(Q{m}).to(COMPUTE)" for m in range(len(step.scalars))]
    body += ["acc = tl.zeros((BLOCK_M, BLOCK_N), COMPUTE)"]
    loop = [
        "kc = k0 + tl.arange(0, BLOCK_K)",
        "kmask = (rows[:, None] < M) & (kc[None, :] < K)",
        *loads(point.free_symbols, "kc", "kmask"),
    ]
    p_lines, _ = _assignments(pr, [("p", point)], "lp")
    loop += p_lines
    loop += [
        "p = tl.where(kmask, p, 0.0)",
        "wt = tl.load(W + kc[:, None] * swi + cols[None, :] * swo, "
        "mask=(kc[:, None] < K) & (cols[None, :] < N), other=0.0)",
        "acc = tl.dot(p.to(wt.dtype), wt, acc, input_precision=PREC)",
    ]
    used = set().union(*(e.free_symbols for e in news))
    tail = ["z = acc", *loads(used, "cols", "mask")]
    e_lines, _ = _assignments(pr, [(f"n{i}", e) for i, e in enumerate(news)], "le")
    tail += e_lines
    tail += [
        f"tl.store(OUT_{i} + rows[:, None] * N + cols[None, :], n{i}.to(OUT_{i}.dtype.element_ty), "
        "mask=mask)"
        for i in range(len(step.states))
    ]
    return (
        "@triton.jit\ndef layer_forward(\n"
        + _indent(sig, 4)
        + "    BLOCK_M: tl.constexpr,  # rows per program\n"
        + "    BLOCK_N: tl.constexpr,  # output columns per program\n"
        + "    BLOCK_K: tl.constexpr,  # input columns per step of the reduction\n"
        + "    PREC: tl.constexpr,  # tl.dot input precision\n"
        + "    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for float64 inputs\n):\n"
        + "    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)\n"
        + "    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)\n"
        + "    mask = (rows[:, None] < M) & (cols[None, :] < N)\n"
        + _indent(body, 4)
        + "    for k0 in range(0, K, BLOCK_K):\n"
        + _indent(loop, 8)
        + _indent(tail, 4)
    )


# dW = Σ_k dZ_kᵀ P_k over all depth·B rows: the same for every scheme. Each program owns one
# (BLOCK_O, BLOCK_I) tile of dW and one contiguous chunk of rows, sums its chunk in a fixed order
# and writes its partial tile; the launcher sums the partials in a fixed order. No atomics: the
# same bits on every run.
WEIGHT_GRAD = """\
@triton.jit
def weight_grad(
    DZ,  # (R, n) dL/dz rows, R = depth·B
    P,  # (R, n) the matching points p
    PART,  # (splits, n, n) out: each chunk's share of dW = DZ^T P
    R, N,  # rows, width
    ROWS_PER_SPLIT,  # rows per chunk, a multiple of BLOCK_R
    BLOCK_O: tl.constexpr,  # rows of dW per program
    BLOCK_I: tl.constexpr,  # columns of dW per program
    BLOCK_R: tl.constexpr,  # rows of DZ and P per step of the reduction
    PREC: tl.constexpr,  # tl.dot input precision
    COMPUTE: tl.constexpr,  # the accumulation dtype
):
    o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    split = tl.program_id(2)
    acc = tl.zeros((BLOCK_O, BLOCK_I), COMPUTE)
    for r0 in range(0, ROWS_PER_SPLIT, BLOCK_R):
        r = split.to(tl.int64) * ROWS_PER_SPLIT + r0 + tl.arange(0, BLOCK_R)  # 64-bit rows
        dz = tl.load(
            DZ + r[:, None] * N + o[None, :], mask=(r[:, None] < R) & (o[None, :] < N), other=0.0
        )
        p = tl.load(
            P + r[:, None] * N + i[None, :], mask=(r[:, None] < R) & (i[None, :] < N), other=0.0
        )
        acc = tl.dot(tl.trans(dz), p, acc, input_precision=PREC)
    tl.store(
        PART + (split.to(tl.int64) * N + o[:, None]) * N + i[None, :],
        acc,
        mask=(o[:, None] < N) & (i[None, :] < N),
    )
"""


# -- loading ---------------------------------------------------------------------------------
_MODULES: dict[int, tuple[TiedStep, ModuleType]] = {}


def module(step: TiedStep) -> ModuleType:
    """The generated kernels of ``step`` as a module, through `unroll.lowering.cache` (content-addressed,
    ``$UNROLL_CACHE_DIR``, atomic, loaded from a real file because Triton reads kernel source
    through `inspect`). Memoised by identity (`tied.lower` returns the same step each time):
    generating costs tens of milliseconds of SymPy and hashing a step a fraction of one, both far
    more than a launch of the kernel they serve."""
    hit = _MODULES.get(id(step))
    if hit is not None and hit[0] is step:
        return hit[1]
    _MODULES[id(step)] = (step, _load(step))
    return _MODULES[id(step)][1]


def _load(step: TiedStep) -> ModuleType:
    name = step.scheme.name or "scheme"
    body = source(step)
    digest = cache.key("tied", body, *cache.versions())
    header = (
        f"# Generated by unroll {__version__} from scheme {name!r} (activation "
        f"{step.activation}), the weight-tied network kernels; do not edit.\n"
        "import triton\nimport triton.language as tl\n\n\n"
    )
    stem = "tied_" + re.sub(r"\W", "_", name.encode("ascii", "replace").decode())
    return cache.load(stem, digest, lambda: header + body)
