"""dW = Σ_k dZ_kᵀ P_k for the weight-tied network: one deterministic Triton reduction.

The backward kernel writes dL/dz_k and p_k of every layer as (depth·B, n) row blocks; the weight's
gradient is then one matrix product over all depth·B rows. Each program owns one (BLOCK_O,
BLOCK_I) tile of dW and one contiguous chunk of rows, sums its chunk in a fixed order and writes
its partial tile; the partials are summed in a fixed order by the launcher. No atomics: the result
is the same bit for bit on every run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def dw_partial(
    DZ,  # (R, n) dL/dz rows, R = depth·B
    P,  # (R, n) the matching points p
    PART,  # (splits, n, n) out: each chunk's share of dW = DZᵀ P
    R,
    N,  # rows, width
    ROWS_PER_SPLIT,  # rows per chunk, a multiple of BLOCK_R
    BLOCK_O: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_R: tl.constexpr,
    PREC: tl.constexpr,
    COMPUTE: tl.constexpr,
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


def weight_grad(dz: torch.Tensor, p: torch.Tensor, *, prec: str, interpret: bool) -> torch.Tensor:
    """dW (n, n), in the accumulation dtype (float32, float64 for float64), from ``dz`` and ``p``
    of shape (R, n) each."""
    R, n = dz.shape
    compute = torch.float64 if dz.dtype == torch.float64 else torch.float32
    block = 16 if interpret or n <= 16 else (32 if n <= 32 else 64)
    block_r = 16 if interpret else 64
    tiles = triton.cdiv(n, block) ** 2
    # Enough chunks to fill a GPU (a few hundred programs); one chunk under the interpreter.
    splits = 1 if interpret else max(1, min(triton.cdiv(R, block_r), 512 // tiles))
    rows = triton.cdiv(triton.cdiv(R, splits), block_r) * block_r
    splits = triton.cdiv(R, rows) if R else 1
    part = torch.empty((splits, n, n), dtype=compute, device=dz.device)
    grid = (triton.cdiv(n, block), triton.cdiv(n, block), splits)
    tl_compute = tl.float64 if compute == torch.float64 else tl.float32
    dw_partial[grid](
        dz, p, part, R, n, rows,
        BLOCK_O=block, BLOCK_I=block, BLOCK_R=block_r, PREC=prec, COMPUTE=tl_compute,
    )  # fmt: skip
    return part.sum(0)  # a fixed-order reduction over the chunks
