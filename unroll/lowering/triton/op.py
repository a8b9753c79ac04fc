"""The block update as one call, on the backend asked for: the generated Triton op or PyTorch.

``block_kernel(ir, activation) -> BlockKernel``: the fused update of one step IR, its generated
module loaded once; what `unroll.lowering.nn` calls in every block. The caller computes the
operator calls and host values and passes tensors and coefficients in the kernel's order.

``block_update(scheme, activation, backend) -> BlockUpdate``, for direct use: calling it with
the block's input tensors and coefficient values by name returns the new states.
``backend="triton"`` runs the generated module's ``torch.library`` op (`kernel_module`:
generated once, cached on disk, imported from the file), ``"torch"`` the IR's updates evaluated
by PyTorch (`eager`), ``"auto"`` Triton on CUDA tensors when Triton is installed and PyTorch
elsewhere.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import torch
from torch._C import _functorch
from torch.autograd import forward_ad

from unroll.errors import UnrollError
from unroll.frontend.scheme import Scheme
from unroll.ir import activations
from unroll.ir.step import Assign, Leaf, StepIR, build
from unroll.lowering import cache
from unroll.lowering.eager.activations import lambdify_many, torch_function
from unroll.lowering.triton import runtime
from unroll.lowering.triton.block import KernelBlock, is_per_channel, kernel_view
from unroll.lowering.triton.emit import TEMPLATE_VERSION, module_source, module_stem, scheme_hash

Backend = Literal["auto", "torch", "triton"]
BACKENDS = ("auto", "torch", "triton")


@functools.cache
def view_of(scheme: Scheme, activation: str | None = None) -> KernelBlock:
    """The kernel view of ``scheme``'s step IR (`unroll.lowering.triton.block.kernel_view`)."""
    return kernel_view(build(scheme), activation)


def cache_key(block: KernelBlock) -> str:
    """The disk-cache key of the block's module: the canonical scheme's hash, the template
    version, the host runtime's version (`runtime.VERSION`, which the module calls into) and the
    unroll/torch/triton versions. The dtype is not part of it: one module serves every dtype
    (the kernels take the compute dtype as a compile-time argument)."""
    return cache.key(scheme_hash(block), TEMPLATE_VERSION, runtime.VERSION, *cache.versions())


def _load(block: KernelBlock) -> ModuleType:
    try:
        import triton  # noqa: F401
    except ImportError:  # pragma: no cover - exercised where Triton is absent
        raise UnrollError("backend='triton' needs Triton: pip install 'unroll[triton]'") from None
    return cache.load(module_stem(block), cache_key(block), lambda: module_source(block))


def kernel_module(scheme: Scheme, activation: str | None = None) -> ModuleType:
    """The generated kernel module of ``scheme``: from the disk cache, generated when missing."""
    return _load(view_of(scheme, activation))


@dataclass(frozen=True, eq=False)
class BlockKernel:
    """The fused block update of one step IR with one activation, its module loaded once.

    ``kernel(tensors, coefficients) -> outputs``: ``tensors`` the values of ``inputs`` (IR
    history values and calls; one shape, dtype and device), ``coefficients`` those of
    ``coefficients`` (IR parameters, host values, t, k: numbers, 0-d tensors, or C values for a
    per-channel one), both in that order; returns the new values of ``outputs`` (IR updates),
    in order, shaped like the tensors. Differentiable in every tensor and coefficient;
    forward mode (torch.func.jvp, forward AD) is refused, the op having no rule for it."""

    ir: StepIR
    inputs: tuple[Leaf, ...]
    coefficients: tuple[Leaf, ...]
    outputs: tuple[Assign, ...]
    view: KernelBlock
    op: runtime.BlockOp  # the generated module's OP

    def __call__(
        self, tensors: Sequence[torch.Tensor], coefficients: Sequence[torch.Tensor | float]
    ) -> tuple[torch.Tensor, ...]:
        if forward_mode([*tensors, *coefficients]):
            raise UnrollError(
                "backend='triton' has no forward-mode rule (torch.func.jvp, forward AD): its "
                "tangents would be zero; use backend='auto' or 'torch' there"
            )
        return self.op(tensors, coefficients)


@functools.lru_cache(maxsize=256)
def block_kernel(ir: StepIR, activation: str | None = None) -> BlockKernel:
    """The `BlockKernel` of ``ir`` with ``activation`` as φ (default: the scheme's); memoised,
    so its module is generated, hashed and loaded once per process. Raises `UnrollError` where
    there is no kernel (see `kernel_view`) or no Triton."""
    view = kernel_view(ir, activation)
    op = _load(view).OP
    return BlockKernel(ir, view.inputs, view.coefficients, view.outputs, view, op)


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported here."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_ok(device_type: str) -> bool:
    """Whether the kernels run on tensors of ``device_type``: CUDA, or the CPU under
    ``TRITON_INTERPRET=1`` (Triton's interpreter)."""
    if not triton_available():
        return False
    import triton

    return device_type == "cuda" or bool(triton.knobs.runtime.interpret)


@functools.lru_cache(maxsize=256)
def _eager_update(block: KernelBlock) -> Any:
    symbols = [leaf.symbol for leaf in (*block.inputs, *block.coefficients)]
    phi = {"φ": torch_function(activations.get(block.activation))} if block.activation else {}
    return lambdify_many(symbols, [o.expr for o in block.outputs], phi)


def eager(block: KernelBlock, tensors: Sequence[Any], coefficients: Sequence[Any]) -> tuple:
    """The outputs of ``block`` by PyTorch: its IR updates (φ written out) printed once as
    torch code. ``tensors`` in ``block.inputs`` order (one shape), ``coefficients`` in
    ``block.coefficients`` order: a number, a 0-d tensor, or for a per-channel one C values,
    broadcast over dimension 1 as in NCHW and (N, C)."""
    ref = tensors[0]
    values = []
    for c, value in zip(block.coefficients, coefficients, strict=True):
        if is_per_channel(c) and isinstance(value, torch.Tensor) and ref.dim() > 1:
            value = value.reshape(-1, *([1] * (ref.dim() - 2)))
        values.append(value)
    return _eager_update(block)(*tensors, *values)


@dataclass(frozen=True)
class BlockUpdate:
    """One step's elementwise update of a scheme: ``update(tensors, coefficients)`` -> new
    states by state name. ``tensors`` maps the block's input names (``x_k``, ``x_km1``,
    ``o_0``: see ``view.inputs``) to tensors of one shape; ``coefficients`` maps coefficient
    names (``beta`` or ``β``) to numbers or tensors (per channel: C values); a parameter left
    out takes the scheme's default."""

    view: KernelBlock
    backend: Backend = "auto"

    def backend_for(self, device_type: str) -> str:
        """The backend that runs for tensors on ``device_type``."""
        if self.backend == "auto":
            return "triton" if device_type == "cuda" and _triton_ok(device_type) else "torch"
        return self.backend

    def __call__(
        self, tensors: Mapping[str, Any], coefficients: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        b = self.view
        missing = [i.name for i in b.inputs if i.name not in tensors]
        if missing:
            raise UnrollError(
                f"block update of {b.ir.label!r}: no tensor for input {missing[0]} "
                f"(inputs: {', '.join(i.name for i in b.inputs)})"
            )
        ts = [tensors[i.name] for i in b.inputs]
        cs = _coefficients(b, coefficients or {})
        if self.backend_for(ts[0].device.type) == "torch" or (
            self.backend == "auto" and forward_mode([*ts, *cs])
        ):
            return dict(zip(b.states, eager(b, ts, cs), strict=True))
        if not _triton_ok(ts[0].device.type):
            raise UnrollError(
                "backend='triton' runs on CUDA tensors (or on the CPU with TRITON_INTERPRET=1)"
            )
        kernel = block_kernel(b.ir, b.activation)
        return dict(zip(b.states, kernel(ts, cs), strict=True))


def _coefficients(block: KernelBlock, given: Mapping[str, Any]) -> list[Any]:
    """The value of each coefficient of ``block``, in order: given by its kernel name or its
    scheme name, else the scheme's default."""
    out: list[Any] = []
    defaults = block.ir.scheme.defaults()
    for c in block.coefficients:
        scheme_name = getattr(c.ref, "name", c.name)
        if c.name in given:
            out.append(given[c.name])
        elif scheme_name in given:
            out.append(given[scheme_name])
        elif scheme_name in defaults:
            out.append(defaults[scheme_name])
        else:
            raise UnrollError(
                f"block update of {block.ir.label!r}: no value for coefficient {scheme_name}"
            )
    return out


def block_update(
    scheme: Scheme, activation: str | None = None, backend: Backend = "auto"
) -> BlockUpdate:
    """The block update of ``scheme`` as one call on ``backend`` ('auto', 'torch', 'triton')."""
    if backend not in BACKENDS:
        raise UnrollError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    return BlockUpdate(view_of(scheme, activation), backend)


def forward_mode(values: Sequence[Any]) -> bool:
    """True inside a torch.func transform or with forward-AD dual tensors: the custom op has no
    forward-mode rule there, and torch would give it zero tangents without a word."""
    if torch.compiler.is_compiling():
        return False
    if _functorch.peek_interpreter_stack() is not None:
        return True
    return any(
        isinstance(t, torch.Tensor) and forward_ad.unpack_dual(t).tangent is not None
        for t in values
    )
