"""The compiler on one screen: text -> Scheme -> step IR -> analyses -> lowerings -> cache.

``pipeline(spec)`` runs every pass on a scheme and returns each intermediate, so that a reader
sees the whole compiler here and a test can inspect any stage::

    c = unroll.driver.pipeline("x_<k+1> = x_k + β(x_k - x_<k-1>) - α∇F")
    c.scheme        # the frozen Scheme            (frontend/)
    c.ir            # its step IR                  (ir/step.py)
    c.layer         # the layer form's step IR     (ir/layer_form.py, ir/step.py)
    c.facts         # every analysis               (analysis/)
    c.eager         # the printed PyTorch step     (lowering/eager/, cached)
    c.kernel        # the Triton module's source   (lowering/triton/, cached on first use)

Each line below is one pass; a pass that does not apply to the scheme (an implicit scheme has no
eager step, an ODE scheme no objective) leaves None and says why in ``notes``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from unroll.analysis import report
from unroll.api import wrap
from unroll.errors import UnrollError
from unroll.frontend import library
from unroll.frontend.scheme import Scheme
from unroll.ir.step import StepIR, build
from unroll.lowering.eager.program import EagerStep, eager_step
from unroll.lowering.triton import emit


@dataclass(frozen=True)
class Compilation:
    """Every intermediate of `pipeline`, and why a pass left its stage empty."""

    scheme: Scheme
    ir: StepIR
    layer: StepIR | None
    facts: Mapping[str, Any]
    eager: EagerStep | None
    kernel: str | None
    notes: Mapping[str, str] = field(default_factory=dict)


def pipeline(spec: Any, *, activation: str | None = None, analyses: bool = True) -> Compilation:
    """Compile ``spec`` (scheme text, SymPy equations, a YAML path or a bundled name) through every
    pass; ``activation`` is φ where the scheme leaves it open; ``analyses=False`` skips them."""
    notes: dict[str, str] = {}
    scheme = wrap(library.resolve(spec))                       # str | Eq | YAML -> Scheme
    ir = build(scheme)                                         # Scheme -> StepIR
    layer = _try(notes, "layer", build, scheme, layer=True)    # -> the layer form's StepIR
    facts = report.facts(scheme, activation) if analyses else {}  # StepIR -> facts
    eager = _try(notes, "eager", eager_step, ir)               # StepIR -> PyTorch (cache)
    kernel = _try(notes, "kernel", lambda: emit.emit(scheme, activation)[1])  # -> Triton source
    return Compilation(scheme, ir, layer, facts, eager, kernel, notes)


def _try(notes: dict[str, str], stage: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except UnrollError as e:
        notes[stage] = str(e).splitlines()[0]
        return None
