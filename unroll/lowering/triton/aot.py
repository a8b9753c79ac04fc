"""Ahead-of-time compilation of a Triton kernel for a GPU that is not here.

``compile_launch(launch, target) -> Report``. A `Launch` is what one ``kernel[grid](*args,
**kwargs)`` call would pass (tensors may be stand-ins on the ``meta`` device: only their dtypes
and alignment matter). It is specialised as Triton's own launcher specialises it (the argument
types, the integers equal to 1 made constants, the 16-divisibility hints) and compiled with
``triton.compile`` for ``target``: no GPU, no driver. The report reads the compiled code:

- registers and stack bytes per thread (``cuobjdump --dump-resource-usage`` on the cubin; the
  stack holds what ptxas spilled), static shared memory;
- the shared memory the launch requests (Triton's ``metadata.shared``);
- the tensor-core instructions in the PTX: Hopper's ``wgmma.mma_async`` or ``mma.sync``.

These are static facts about the code, not speed. Compile in a process that never ran a kernel
under ``TRITON_INTERPRET=1``: the interpreter patches ``triton.language`` for the rest of the
process (`unroll.lowering.triton.resources` runs every compilation in a clean subprocess).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

KB = 1024


@dataclass(frozen=True)
class Target:
    """A GPU to compile for: ``capability`` (90 for sm_90a) and the most shared memory one
    block may use there (the opt-in per-block limit, static and dynamic together)."""

    name: str
    capability: int
    shared_limit: int


TARGETS = {
    "sm_90a": Target("sm_90a", 90, 227 * KB),  # H100, H200
    "sm_80": Target("sm_80", 80, 163 * KB),  # A100
}


@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``fn`` (a ``@triton.jit`` function), its positional ``args`` and its
    ``kwargs`` (constexprs, ``num_warps``, ``num_stages``), as ``fn[grid](*args, **kwargs)``
    takes them; ``name`` and ``shape`` say what it is in reports."""

    group: str  # "block" or "tied"
    scheme: str
    name: str  # the kernel
    shape: str  # what it runs on, in words ("width 128, bfloat16")
    fn: Any
    args: tuple
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    """What the compiler made of one `Launch` for one `Target` (bytes are per thread for
    ``stack``, per block for ``shared``); ``error`` holds the compiler's message when it failed."""

    group: str
    scheme: str
    name: str
    shape: str
    target: str
    num_warps: int
    num_stages: int
    constants: dict[str, str]  # the block sizes and flags it was compiled with
    registers: int = 0
    stack: int = 0
    shared: int = 0  # requested at launch (Triton's metadata.shared)
    static_shared: int = 0
    wgmma: int = 0  # wgmma.mma_async instructions in the PTX
    mma_sync: int = 0  # mma.sync instructions in the PTX
    shared_limit: int = 0
    error: str | None = None

    @property
    def tensor_cores(self) -> str:
        if self.error:
            return "—"
        return "wgmma" if self.wgmma else ("mma.sync" if self.mma_sync else "none")

    @property
    def fits(self) -> bool:
        """It compiled and its shared memory is within the target's per-block limit."""
        return self.error is None and self.shared + self.static_shared <= self.shared_limit


def compiled(launch: Launch, target: Target) -> Any:
    """``launch`` compiled for ``target``: Triton's ``CompiledKernel`` (``.asm`` holds the
    PTX and the cubin, ``.metadata.shared`` the shared memory a launch requests). Uses Triton's
    on-disk cache, as a launch does."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.fn
    gpu = GPUTarget("cuda", target.capability, 32)
    backend = make_backend(gpu)
    kwargs = dict(launch.kwargs)
    # What JITFunction.run adds before it specialises (present in Triton 3.6 and 3.9).
    knobs = getattr(triton, "knobs", None)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or bool(knobs and knobs.runtime.debug)
    for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):
        if knobs is not None and hasattr(knobs.compilation, name):
            kwargs[name] = getattr(knobs.compilation, name)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(
        backend, kwargs, bound, specialization, options
    )
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=gpu, options=options.__dict__)


def compile_launch(launch: Launch, target: Target) -> Report:
    """Compile ``launch`` for ``target`` and read what the compiler made (see the module
    docstring); a compiler error becomes ``Report.error`` (one line), not an exception."""
    num_warps = int(launch.kwargs.get("num_warps", 4))
    num_stages = int(launch.kwargs.get("num_stages", 3))
    params = {p.name for p in launch.fn.params if p.is_constexpr}
    constants = {k: _text(v) for k, v in launch.kwargs.items() if k in params}
    head = dict(
        group=launch.group,
        scheme=launch.scheme,
        name=launch.name,
        shape=launch.shape,
        target=target.name,
        num_warps=num_warps,
        num_stages=num_stages,
        constants=constants,
        shared_limit=target.shared_limit,
    )
    try:
        kernel = compiled(launch, target)
    except Exception as e:  # the compiler's own error, reported per kernel
        return Report(**head, error=f"{type(e).__name__}: {_first_error(str(e))}")
    usage = resource_usage(kernel.asm["cubin"])
    ptx = kernel.asm["ptx"]
    return Report(
        **head,
        registers=usage["REG"],
        stack=usage["STACK"],
        shared=int(kernel.metadata.shared),
        static_shared=usage["SHARED"],
        wgmma=len(re.findall(r"\bwgmma\.mma_async\b", ptx)),
        mma_sync=len(re.findall(r"\bmma\.sync\b", ptx)),
    )


def _first_error(text: str) -> str:
    """The line of a compiler message that says what failed (ptxas's 'fatal' line, say, not
    its repro command with a temporary path), at most 300 characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()] or ["(no message)"]
    found = [ln for ln in lines if re.search(r"\bfatal\b", ln, re.I)]
    found += [ln for ln in lines if re.search(r"\berror\b", ln, re.I) and "Repro" not in ln]
    return (found[0] if found else lines[-1])[:300]


def _text(value: Any) -> str:
    return str(value).removeprefix("triton.language.")


def cuobjdump() -> str:
    """The ``cuobjdump`` that ships in Triton's wheel (``backends/nvidia/bin``)."""
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no cuobjdump at {path} (Triton's NVIDIA backend ships one)")
    return path


def resource_usage(cubin: bytes) -> dict[str, int]:
    """``cuobjdump --dump-resource-usage`` of one cubin holding one kernel: REG (registers per
    thread), STACK (stack frame bytes per thread: spills live there), SHARED (static shared
    bytes), LOCAL."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run(
            [cuobjdump(), "--dump-resource-usage", path], capture_output=True, text=True, check=True
        ).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return {k: int(fields.get(k, 0)) for k in ("REG", "STACK", "SHARED", "LOCAL")}
