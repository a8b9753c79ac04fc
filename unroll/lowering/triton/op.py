"""The block update as one call, on the backend asked for: the generated Triton op or PyTorch.

``block_update(scheme, activation, backend) -> BlockUpdate``; calling it with the block's input
tensors and coefficient values returns the new states. ``backend="triton"`` runs the generated
module's ``torch.library`` op (`kernel_module`: generated once, cached on disk, imported from
the file), ``"torch"`` the eager lowering (`Block.eager`), ``"auto"`` Triton on CUDA tensors
when Triton is installed and PyTorch elsewhere.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import sympy as sp
import torch

from unroll.errors import UnrollError
from unroll.frontend.scheme import Scheme
from unroll.lowering import cache
from unroll.lowering.triton.block import Block, extract
from unroll.lowering.triton.emit import TEMPLATE_VERSION, module_stem, scheme_hash, source

Backend = Literal["auto", "torch", "triton"]
BACKENDS = ("auto", "torch", "triton")


@functools.cache
def block_of(scheme: Scheme, activation: str | None = None) -> Block:
    """`unroll.lowering.triton.block.extract`, memoised (schemes are frozen values)."""
    return extract(scheme, activation)


def cache_key(block: Block) -> str:
    """The disk-cache key of the block's module: the canonical scheme's hash, the template
    version and the unroll/torch/triton versions. The dtype is not part of it: one module
    serves every dtype (the kernels take the compute dtype as a compile-time argument)."""
    return cache.key(scheme_hash(block), TEMPLATE_VERSION, *cache.versions())


def kernel_module(scheme: Scheme, activation: str | None = None) -> ModuleType:
    """The generated kernel module of ``scheme``: from the disk cache, generated when missing."""
    try:
        import triton  # noqa: F401
    except ImportError:  # pragma: no cover - exercised where Triton is absent
        raise UnrollError("backend='triton' needs Triton: pip install 'unroll[triton]'") from None
    block = block_of(scheme, activation)
    return cache.load(module_stem(block), cache_key(block), lambda: source(block))


def _triton_ok(device_type: str) -> bool:
    try:
        import triton
    except ImportError:
        return False
    return device_type == "cuda" or bool(triton.knobs.runtime.interpret)


@dataclass(frozen=True)
class BlockUpdate:
    """One step's elementwise update of a scheme: ``update(tensors, coefficients)`` -> new
    states by state name. ``tensors`` maps the block's input names (``x_k``, ``x_km1``,
    ``o_0``: see ``block.inputs``) to tensors of one shape; ``coefficients`` maps coefficient
    names (``beta`` or ``β``) to numbers or tensors (per channel: C values)."""

    block: Block
    backend: Backend = "auto"

    def resolve(self, device_type: str) -> str:
        """The backend that runs for tensors on ``device_type``."""
        if self.backend == "auto":
            return "triton" if device_type == "cuda" and _triton_ok(device_type) else "torch"
        return self.backend

    def __call__(
        self, tensors: Mapping[str, Any], coefficients: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        b = self.block
        missing = [i.name for i in b.inputs if i.name not in tensors]
        if missing:
            raise UnrollError(
                f"block update of {b.scheme.name!r}: no tensor for input {missing[0]} "
                f"(inputs: {', '.join(i.name for i in b.inputs)})"
            )
        coefs = _coefficients(b, coefficients or {})
        ref = tensors[b.inputs[0].name]
        if self.resolve(ref.device.type) == "torch":
            return b.eager(tensors, coefs)
        if _forward_mode([*tensors.values(), *coefs.values()]):
            if self.backend == "auto":
                return b.eager(tensors, coefs)
            raise UnrollError(
                "backend='triton' has no forward-mode rule (torch.func.jvp, forward AD): its "
                "tangents would be zero; use backend='auto' or 'torch' there"
            )
        if not _triton_ok(ref.device.type):
            raise UnrollError(
                "backend='triton' runs on CUDA tensors (or on the CPU with TRITON_INTERPRET=1)"
            )
        module = kernel_module(b.scheme, b.activation)
        try:
            return module.update(
                *[tensors[i.name] for i in b.inputs], *[coefs[c.name] for c in b.coefficients]
            )
        except UnrollError:
            raise
        except ValueError as e:  # the module's own checks (shapes, coefficient sizes)
            raise UnrollError(f"block update of {b.scheme.name!r}: {e}") from None


def _coefficients(block: Block, given: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    defaults = block.scheme.defaults()
    for c in block.coefficients:
        scheme_name = getattr(c.ref, "name", c.name)
        if c.name in given:
            out[c.name] = given[c.name]
        elif scheme_name in given:
            out[c.name] = given[scheme_name]
        elif scheme_name in defaults:
            out[c.name] = defaults[scheme_name]
        else:
            raise UnrollError(
                f"block update of {block.scheme.name!r}: no value for coefficient {scheme_name}"
            )
    return out


def block_update(
    scheme: Scheme, activation: str | None = None, backend: Backend = "auto"
) -> BlockUpdate:
    """The block update of ``scheme`` as one call on ``backend`` ('auto', 'torch', 'triton')."""
    if backend not in BACKENDS:
        raise UnrollError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    return BlockUpdate(block_of(scheme, activation), backend)


def _forward_mode(tensors: Any) -> bool:
    """True inside a torch.func transform or with forward-AD dual tensors: the custom op has no
    forward-mode rule there, and torch would give it zero tangents without a word."""
    if torch.compiler.is_compiling():
        return False
    from torch._C import _functorch
    from torch.autograd import forward_ad

    if _functorch.peek_interpreter_stack() is not None:
        return True
    return any(
        isinstance(t, torch.Tensor) and forward_ad.unpack_dual(t).tangent is not None
        for t in tensors
    )


def network_update(
    form: Scheme,
    activation: str | None,
    backend: Backend,
    call_ops: tuple[str, ...],
    history: Mapping[str, Any],
    outputs: Any,
    coefficients: Mapping[str, Any],
    n: int = 0,
) -> dict[str, Any] | None:
    """The fused block update for `unroll.lowering.nn` (`Block.update`'s arguments: ``history``
    {state: (x_k, x_<k-1>, ...)}, ``outputs`` in program-call order, ``coefficients``
    {parameter: tensor}); None when ``backend`` resolves to PyTorch for these tensors (the
    caller then runs its eager update). ``call_ops``: the program's operator names in call
    order, checked against the block's so outputs are matched by position."""
    ref = next(iter(outputs), None)
    if ref is None:
        ref = next(v[0] for v in history.values() if v[0].dim() > 0)
    if backend == "auto" and (ref.device.type != "cuda" or activation is None and _uses_act(form)):
        return None
    if backend == "torch":
        return None
    if _uses_act(form) and activation is None:
        raise UnrollError(
            "backend='triton' needs the activation by name (a callable has no kernel)"
        )
    op = block_update(form, activation, backend)
    b = op.block
    if tuple(c.op for c in b.calls) != tuple(call_ops):
        if backend == "auto":
            return None
        raise UnrollError(
            f"scheme {form.name!r}: the kernel's operator calls {[c.op for c in b.calls]} "
            f"differ from the network's {list(call_ops)}"
        )
    from unroll.lowering.eager.evaluate import evaluate

    env: dict[Any, Any] = {}
    for name, values in history.items():
        for j, v in enumerate(values):
            env[form.state_value(name, -j)] = v
    for name, v in coefficients.items():
        env[sp.Symbol(name)] = v
    h = coefficients.get("h")
    env[form.index] = n
    from unroll.ir import vocabulary as ir

    env[ir.T] = n * h if h is not None else n
    new: dict[str, Any] = {}
    for eq in b.host:  # scalar states and their stages, on the host
        env[eq.lhs] = evaluate(eq.rhs, env, {})
        if isinstance(eq.lhs, sp.Indexed):
            new[eq.lhs.base.label.name] = env[eq.lhs]
    by_symbol = {c.symbol: v for c, v in zip(b.calls, outputs, strict=True)}
    tensors = {i.name: by_symbol[i.symbol] if i.kind == "output" else env[i.ref] for i in b.inputs}
    coefs = {c.name: env[c.ref] for c in b.coefficients}
    new.update(op(tensors, coefs))
    return new


def _uses_act(form: Scheme) -> bool:
    from unroll.ir import vocabulary as ir

    return any(
        ir.operator_kind(f) == "act" for eq in form.equations for f in ir.applications(eq.rhs)
    )


# -- the network modules' entry (unroll.lowering.nn) -------------------------------------------
@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported here."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class BlockKernel:
    """The fused block update of a step IR, resolved once: ``kernel(tensors, coefficients)``
    with tensors in ``inputs`` order (IR history values and call outputs) and coefficients in
    ``coefficients`` order (IR coefficients and host values); returns the new values of
    ``outputs`` (the IR updates), in order."""

    def __init__(self, ir, activation: str | None):
        from unroll.ir.step import build  # noqa: F401 - the IR this kernel view matches

        self.ir = ir
        self.op = block_update(ir.scheme, activation, "triton")
        leaves = {leaf.name: leaf for leaf in (*ir.history, *ir.calls, *ir.coefficients, *ir.host)}
        b = self.op.block
        self.inputs = tuple(leaves[i.name] for i in b.inputs)
        self.coefficients = tuple(leaves[c.name] for c in b.coefficients)
        updates = {u.state: u for u in ir.updates}
        self.outputs = tuple(updates[o.state] for o in b.outputs)
        self._names = [i.name for i in b.inputs], [c.name for c in b.coefficients]

    def __call__(self, tensors, coefficients) -> tuple:
        ins, coefs = self._names
        new = self.op(
            dict(zip(ins, tensors, strict=True)), dict(zip(coefs, coefficients, strict=True))
        )
        return tuple(new[o.state] for o in self.outputs)


@functools.lru_cache(maxsize=256)
def block_kernel(ir, activation: str | None) -> BlockKernel:
    """The fused block update of ``ir`` with φ = ``activation``; memoised."""
    return BlockKernel(ir, activation)
