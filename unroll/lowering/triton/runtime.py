"""The host side of every generated block-update module, written once.

A generated module (`unroll.lowering.triton.emit`) holds only what its scheme decides: the
``@triton.jit`` forward and backward kernels and the names of what they read and write. It hands
them to `register`, which returns a `BlockOp`; everything else lives here:

- the view (`layout`): tensors are seen as (M, K) with K contiguous; (1, numel) without
  per-channel coefficients, (N·C, H·W) for NCHW (channel = row mod C), (N·H·W, C) for
  channels-last 4-D and (N, C) for 2-D (channel = column);
- block sizes and the 1-D grid (`tiles`), the compute dtype (`compute_dtype`);
- the checks: one shape, dtype and device for every tensor, the size of every coefficient;
- the launchers (`BlockOp.forward`, `BlockOp.backward`) and the fixed-order sums of the
  coefficients' partial gradients (deterministic: no atomics);
- the ``torch.library`` custom ops ``unroll::<name>_fwd`` and ``_bwd`` (lists of tensors in, a
  list out) with fake implementations and the autograd formula, so ``torch.compile`` and
  ``torch.export`` see one op.

The kernels' calling convention (what `emit` writes and this module launches), every pointer
positional, compile-time arguments by keyword::

    forward(*inputs, *coefficients, *outputs, M, K, C, GRID_K,
            _CHANNEL_ROWS=, _BLOCK_M=, _BLOCK_K=, _CDT=)
    backward(*output gradients, *saved inputs, *coefficients, *input gradients,
             *coefficient partial sums, M, K, C, GRID_K, <the same four>, <leaf>__need=)

A coefficient's partial sums are one value per program (``GRID_K·GRID_M``) for a scalar, and for
a per-channel one a (GRID_K, M) array of row sums (channel rows) or a (GRID_M, K) array of
column sums. `VERSION` (a sha256 of this file) is part of every generated module's cache key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from unroll.errors import UnrollError

VERSION = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
TILE = 4096  # elements per program


class Layout(NamedTuple):
    """How a kernel sees tensors shaped like a reference one: ``memory_format`` (contiguous or
    channels-last), ``M`` rows of ``K`` contiguous elements, ``C`` channels, and whether the
    channel is the row index mod C (``channel_rows``) or the column."""

    memory_format: torch.memory_format
    M: int
    K: int
    C: int
    channel_rows: bool


def memory_format(ref: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-D channels-last tensor, else contiguous_format."""
    if ref.dim() == 4 and not ref.is_contiguous():
        if ref.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
    return torch.contiguous_format


def layout(ref: torch.Tensor, per_channel: bool) -> Layout:
    """The (M, K) view of tensors shaped like ``ref`` (see the module docstring); channels are
    dimension 1 (dimension 0 of a 1-D tensor)."""
    fmt = memory_format(ref)
    n = ref.numel()
    if not per_channel:
        return Layout(fmt, 1, n, 1, False)
    if ref.dim() == 0:
        raise UnrollError("per-channel coefficients need a tensor with a channel dimension")
    c = ref.shape[0] if ref.dim() == 1 else ref.shape[1]
    if ref.dim() <= 2 or fmt is torch.channels_last:
        return Layout(fmt, n // max(c, 1), c, c, False)  # channels are the contiguous columns
    return Layout(fmt, ref.shape[0] * c, n // max(ref.shape[0] * c, 1), c, True)


def tiles(M: int, K: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_K, GRID_K, GRID_M): a tile of at most `TILE` elements, as wide as K
    allows (powers of two, as ``tl.arange`` needs), and the number of tiles along each axis
    (the grid is their product)."""
    block_k = min(_next_power_of_2(K), TILE)
    block_m = min(_next_power_of_2(M), max(1, TILE // block_k))
    return block_m, block_k, -(-K // block_k), -(-M // block_m)


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def compute_dtype(dtype: torch.dtype) -> Any:
    """The Triton dtype a kernel computes in: float64 for float64 storage, else float32."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class BlockOp:
    """A generated module's fused block update, registered as ``torch.library`` ops.

    ``op(tensors, coefficients) -> tuple of outputs`` takes the tensors in ``inputs`` order
    (one shape, dtype and device) and the coefficients in ``coefficients`` order (numbers,
    1-element tensors, or C values for a per-channel one); `update` takes them by name and
    returns ``{state: new value}``. ``saved``: the inputs the backward reads."""

    def __init__(
        self,
        name: str,
        scheme: str,
        forward_kernel: Any,
        backward_kernel: Any,
        inputs: Sequence[str],
        coefficients: Sequence[str],
        per_channel: Sequence[bool],
        outputs: Sequence[str],
        states: Sequence[str],
        saved: Sequence[str],
    ):
        self.name, self.scheme = name, scheme
        self.forward_kernel, self.backward_kernel = forward_kernel, backward_kernel
        self.inputs, self.coefficients = tuple(inputs), tuple(coefficients)
        self.per_channel, self.outputs = tuple(per_channel), tuple(outputs)
        self.states, self.saved = tuple(states), tuple(saved)
        self.any_per_channel = any(self.per_channel)
        self._fwd, self._bwd = _custom_ops(self)

    def __repr__(self) -> str:
        return f"BlockOp({self.name!r}: {', '.join(self.inputs + self.coefficients)})"

    # -- entry points ------------------------------------------------------------------------
    def __call__(
        self, tensors: Sequence[torch.Tensor], coefficients: Sequence[torch.Tensor | float]
    ) -> tuple[torch.Tensor, ...]:
        if len(tensors) != len(self.inputs) or len(coefficients) != len(self.coefficients):
            raise UnrollError(
                f"block update of {self.scheme!r}: {len(tensors)} tensors and "
                f"{len(coefficients)} coefficients given, expected {len(self.inputs)} "
                f"({', '.join(self.inputs)}) and {len(self.coefficients)} "
                f"({', '.join(self.coefficients) or 'none'})"
            )
        ref = tensors[0]
        acc = _accumulator(ref.dtype)
        coefs = [
            c if isinstance(c, torch.Tensor) else torch.tensor(c, dtype=acc, device=ref.device)
            for c in coefficients
        ]
        return tuple(self._fwd(list(tensors), coefs))

    def update(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The new states by state name, from the inputs then the coefficients, by position or
        by name (``update(x_k=..., beta=...)``)."""
        names = self.inputs + self.coefficients
        if len(args) > len(names):
            raise UnrollError(f"block update of {self.scheme!r} takes {len(names)} values")
        values = dict(zip(names, args, strict=False))
        for key, value in kwargs.items():
            if key not in names or key in values:
                why = "is unknown" if key not in names else "is given twice"
                raise UnrollError(
                    f"block update of {self.scheme!r}: argument {key!r} {why} "
                    f"(arguments: {', '.join(names)})"
                )
            values[key] = value
        missing = [n for n in names if n not in values]
        if missing:
            raise UnrollError(f"block update of {self.scheme!r}: no value for {missing[0]}")
        outs = self([values[n] for n in self.inputs], [values[n] for n in self.coefficients])
        return dict(zip(self.states, outs, strict=True))

    # -- checks and launchers ----------------------------------------------------------------
    def check(self, tensors: Sequence[torch.Tensor], coefficients: Sequence[torch.Tensor]) -> None:
        """Raise `UnrollError` naming the input or coefficient that does not fit."""
        ref = tensors[0]
        for name, t in zip(self.inputs, tensors, strict=True):
            if t.shape != ref.shape or t.dtype != ref.dtype or t.device != ref.device:
                raise UnrollError(
                    f"block update of {self.scheme!r}: {name}: {tuple(t.shape)} {t.dtype} on "
                    f"{t.device}, but {self.inputs[0]} is {tuple(ref.shape)} {ref.dtype} on "
                    f"{ref.device}: inputs share shape, dtype and device"
                )
        channels = layout(ref, True).C if self.any_per_channel else 1
        for name, per_channel, c in zip(
            self.coefficients, self.per_channel, coefficients, strict=True
        ):
            want = channels if per_channel else 1
            if c.numel() != want:
                raise UnrollError(
                    f"block update of {self.scheme!r}: {name}: {c.numel()} values, expected {want}"
                )
        if ref.device.type != "cuda":
            import triton

            if not triton.knobs.runtime.interpret:
                raise UnrollError(
                    "the Triton kernels run on CUDA tensors; set TRITON_INTERPRET=1 to run them "
                    "in Triton's interpreter on the CPU"
                )

    def forward(
        self, tensors: Sequence[torch.Tensor], coefficients: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Launch the forward kernel: the outputs, laid out like the inputs."""
        self.check(tensors, coefficients)
        view = layout(tensors[0], self.any_per_channel)
        tensors = [t.contiguous(memory_format=view.memory_format) for t in tensors]
        flat = [c.reshape(-1).contiguous() for c in coefficients]
        outs = [torch.empty_like(tensors[0]) for _ in self.outputs]
        if tensors[0].numel() == 0:
            return outs
        block_m, block_k, grid_k, grid_m = tiles(view.M, view.K)
        self.forward_kernel[(grid_k * grid_m,)](
            *tensors, *flat, *outs, view.M, view.K, view.C, grid_k,
            _CHANNEL_ROWS=view.channel_rows, _BLOCK_M=block_m, _BLOCK_K=block_k,
            _CDT=compute_dtype(tensors[0].dtype),
        )  # fmt: skip
        return outs

    def backward(
        self,
        grads: Sequence[torch.Tensor],
        saved: Sequence[torch.Tensor],
        coefficients: Sequence[torch.Tensor],
        need: Sequence[bool],
    ) -> list[torch.Tensor]:
        """Launch the backward kernel: the gradients of the inputs then of the coefficients,
        an empty tensor where ``need`` is False."""
        ref = grads[0]
        view = layout(ref, self.any_per_channel)
        grads = [g.contiguous(memory_format=view.memory_format) for g in grads]
        saved = [s.contiguous(memory_format=view.memory_format) for s in saved]
        flat = [c.reshape(-1).contiguous() for c in coefficients]
        block_m, block_k, grid_k, grid_m = tiles(view.M, view.K)
        acc = _accumulator(ref.dtype)
        need_in, need_c = need[: len(self.inputs)], need[len(self.inputs) :]
        g_in = [torch.empty_like(grads[0]) if n else grads[0].new_empty(0) for n in need_in]
        parts = []
        for per_channel, n in zip(self.per_channel, need_c, strict=True):
            if not n:
                shape: tuple[int, ...] = (0,)
            elif not per_channel:
                shape = (grid_k * grid_m,)
            else:
                shape = (grid_k, view.M) if view.channel_rows else (grid_m, view.K)
            parts.append(torch.empty(shape, dtype=acc, device=ref.device))
        if ref.numel() > 0:
            flags = {
                f"{n}__need": bool(x)
                for n, x in zip(self.inputs + self.coefficients, need, strict=True)
            }
            dummy = grads[0]  # stands in for a gradient nobody asked for: never written
            self.backward_kernel[(grid_k * grid_m,)](
                *grads, *saved, *flat,
                *[g if n else dummy for g, n in zip(g_in, need_in, strict=True)],
                *[p if n else dummy for p, n in zip(parts, need_c, strict=True)],
                view.M, view.K, view.C, grid_k,
                _CHANNEL_ROWS=view.channel_rows, _BLOCK_M=block_m, _BLOCK_K=block_k,
                _CDT=compute_dtype(ref.dtype), **flags,
            )  # fmt: skip
        g_c = []
        for per_channel, n, p, c in zip(self.per_channel, need_c, parts, coefficients, strict=True):
            if not n:
                g_c.append(c.new_empty(0))
                continue
            if ref.numel() == 0:
                total = torch.zeros(c.numel(), dtype=acc, device=c.device)
            elif not per_channel:
                total = p.sum()
            elif view.channel_rows:
                total = p.view(grid_k, -1, view.C).sum(dim=(0, 1))  # rows are (sample, channel)
            else:
                total = p.sum(dim=0)
            g_c.append(total.reshape(c.shape).to(c.dtype))
        return g_in + g_c


# -- torch.library: one op forward, one backward, autograd between them ------------------------
def _custom_ops(op: BlockOp) -> tuple[Any, Any]:
    """Register ``unroll::<op.name>_fwd`` and ``_bwd``; returns their overloads."""

    @torch.library.custom_op(f"unroll::{op.name}_fwd", mutates_args=())
    def fwd(tensors: list[torch.Tensor], coefficients: list[torch.Tensor]) -> list[torch.Tensor]:
        return op.forward(tensors, coefficients)

    @fwd.register_fake
    def _(tensors, coefficients):
        ref = tensors[0].contiguous(memory_format=memory_format(tensors[0]))
        return [torch.empty_like(ref) for _ in op.outputs]

    @torch.library.custom_op(f"unroll::{op.name}_bwd", mutates_args=())
    def bwd(
        grads: list[torch.Tensor],
        saved: list[torch.Tensor],
        coefficients: list[torch.Tensor],
        need: list[bool],
    ) -> list[torch.Tensor]:
        return op.backward(grads, saved, coefficients, need)

    @bwd.register_fake
    def _(grads, saved, coefficients, need):
        ref = grads[0].contiguous(memory_format=memory_format(grads[0]))
        n_in = len(op.inputs)
        out = [torch.empty_like(ref) if n else ref.new_empty(0) for n in need[:n_in]]
        return out + [
            c.new_empty(c.shape if n else (0,))
            for c, n in zip(coefficients, need[n_in:], strict=True)
        ]

    saved_at = [op.inputs.index(n) for n in op.saved]
    bwd_op = bwd._opoverload

    def setup_context(ctx, inputs, output):
        tensors, coefficients = inputs
        ctx.save_for_backward(*[tensors[i] for i in saved_at], *coefficients)

    def backward(ctx, grads):
        need_t, need_c = ctx.needs_input_grad
        need = [bool(n) for n in (*need_t, *need_c)]
        if not any(need):
            return [None] * len(need_t), [None] * len(need_c)
        saved = ctx.saved_tensors
        k = len(saved_at)
        out = bwd_op(list(grads), list(saved[:k]), list(saved[k:]), need)
        g = [x if n else None for x, n in zip(out, need, strict=True)]
        return g[: len(need_t)], g[len(need_t) :]

    fwd.register_autograd(backward, setup_context=setup_context)
    return fwd._opoverload, bwd_op


_registered: dict[str, BlockOp] = {}


def register(
    name: str,
    scheme: str,
    forward_kernel: Any,
    backward_kernel: Any,
    *,
    inputs: Sequence[str],
    coefficients: Sequence[str],
    per_channel: Sequence[bool],
    outputs: Sequence[str],
    states: Sequence[str],
    saved: Sequence[str],
) -> BlockOp:
    """The `BlockOp` of a generated module (``name``: the op name, the scheme's stem and hash;
    ``scheme``: its name, for messages), registered once per process: a second module with the
    same name (the same scheme, hence the same kernels) gets the first one's op."""
    if name not in _registered:
        _registered[name] = BlockOp(
            name, scheme, forward_kernel, backward_kernel,
            inputs, coefficients, per_channel, outputs, states, saved,
        )  # fmt: skip
    return _registered[name]
