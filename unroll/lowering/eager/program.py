"""A printed step, loaded once: `eager_step(ir) -> EagerStep`.

The source from `unroll.lowering.eager.printer` goes through the content-addressed cache
(`unroll.lowering.cache`: written once, imported from a real file) and is memoised per IR, so
each scheme's step is printed and loaded once per process and every network of a scheme calls
the same function object (torch.compile compiles it once for all of them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unroll import __version__
from unroll.errors import UnrollError
from unroll.ir.names import identifier
from unroll.ir.step import StepIR
from unroll.lowering import cache
from unroll.lowering.eager.printer import TEMPLATE_VERSION, module_source


@dataclass(frozen=True, eq=False)
class EagerStep:
    """One step of ``ir`` as a PyTorch function: ``step(history, parameters, t, k, ops,
    gain=None) -> next history``, every sequence in the layout its names give (``history``,
    ``parameters``, ``operators``, as the IR orders them)."""

    ir: StepIR
    step: Callable[..., tuple]
    step_numbers: Callable[..., tuple]  # `step` for parameters that are Python numbers
    step_into: Callable[..., tuple]  # `step_numbers` reusing the memory of dropped values
    outputs: Callable[..., tuple]  # host values, then operator outputs: what a fused update reads
    history: tuple[str, ...]
    parameters: tuple[str, ...]
    operators: tuple[str, ...]
    source: str
    states: tuple[str, ...]  # the state names, in the IR's order
    firsts: tuple[int, ...]  # where each state's newest value sits in the history
    lasts: tuple[int, ...]  # where each state's oldest value (the one a step drops) sits
    fresh: tuple[bool, ...]  # per state: its new value is always a tensor of its own

    def newest(self, history: Sequence[Any]) -> dict[str, Any]:
        """Each state's newest value in ``history`` (this step's layout)."""
        return {s: history[i] for s, i in zip(self.states, self.firsts, strict=True)}

    def ops(self, callables: Mapping[str, Callable]) -> tuple[Callable, ...]:
        """``callables`` (operator name -> callable) in the order ``step`` takes them."""
        return tuple(callables[name] for name in self.operators)


def _firsts(ir: StepIR) -> tuple[int, ...]:
    out, at = [], 0
    for s in ir.states:
        out.append(at)
        at += len(s.history)
    return tuple(out)


@functools.lru_cache(maxsize=512)
def eager_step(ir: StepIR) -> EagerStep:
    """The printed step of ``ir``, loaded from the cache (generated there when missing)."""
    text = module_source(ir)
    digest = cache.key(text, TEMPLATE_VERSION, *_versions())
    stem = f"eager_{identifier(ir.scheme.name or 'scheme')}"
    module = cache.load(stem, digest, lambda: text)
    return EagerStep(
        ir=ir,
        step=module.step,
        step_numbers=module.step_numbers,
        step_into=module.step_into,
        outputs=module.outputs,
        history=module.HISTORY,
        parameters=module.PARAMETERS,
        operators=module.OPERATORS,
        source=text,
        states=tuple(s.name for s in ir.states),
        firsts=_firsts(ir),
        lasts=tuple(f + len(s.history) - 1 for f, s in zip(_firsts(ir), ir.states, strict=True)),
        fresh=module.FRESH,
    )


def _versions() -> tuple[str, str]:
    return __version__, torch.__version__


def advance(ir: StepIR, history: Sequence[Any], new: Mapping[str, Any]) -> tuple:
    """``history`` (``ir``'s layout) moved on by one step whose new values are ``new``
    (state -> value): what `EagerStep.step` returns, for a step computed elsewhere (a start-up
    scheme's, or a fused kernel's)."""
    out: list[Any] = []
    at = 0
    for s in ir.states:
        n = len(s.history)
        if s.name not in new:
            raise UnrollError(f"no new value for state {s.name}")
        out.append(new[s.name])
        out += history[at : at + n - 1]
        at += n
    return tuple(out)
