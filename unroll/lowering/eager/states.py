"""A run's states: where each starts, its history, and the path of a run (shared by
`Scheme.run` and the network modules)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from unroll.errors import UnrollError
from unroll.frontend.scheme import Scheme


def initial_history(scheme: Scheme, current: Mapping[str, Any]) -> dict[str, list]:
    """Each state's history [x_k, x_<k-1>, ...] at the start: older values equal the initial one."""
    return {n: [current[n]] * max(s.depth, 1) for n, s in scheme.states.items()}


def advance(history: dict[str, list], new: Mapping[str, Any]) -> None:
    """Put each state's new value in front of its history, dropping the oldest."""
    for name, value in new.items():
        history[name] = [value, *history[name][:-1]]


def stack_path(path: list[Mapping[str, Any]], final: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The states of every step stacked along a new first dimension (scalars broadcast to the
    final shape, as a θ that starts as a number)."""
    return {
        n: torch.stack([torch.as_tensor(p[n]).expand_as(final[n]) for p in path]) for n in final
    }


def free_states(scheme: Scheme) -> list[str]:
    """The states x0 must give: those read by the step that have no initial value of their own."""
    return [n for n, s in scheme.states.items() if s.init is None and s.depth > 0]


def primary_state(scheme: Scheme) -> str:
    """The state a plain-tensor x0 stands for: the one without an initial value of its own."""
    free = free_states(scheme)
    if len(free) == 1:
        return free[0]
    if not free:
        return next(iter(scheme.states))
    raise UnrollError(f"x0 must be a mapping naming the states {', '.join(free)}")


def initial_states(scheme: Scheme, x0: Any) -> tuple[dict[str, Any], str | None]:
    """Every state's starting value, and the state name a tensor x0 was given for (else None)."""
    if isinstance(x0, torch.Tensor):
        single = primary_state(scheme)
        given = {single: x0}
    elif isinstance(x0, Mapping):
        single = None
        given = dict(x0)
        for name in given:
            if name not in scheme.states:
                raise UnrollError(
                    f"x0[{name!r}]: {name} is not a state; states: {', '.join(scheme.states)}"
                )
    else:
        raise UnrollError(
            f"x0 must be a tensor or a mapping of state names to tensors, not {type(x0).__name__}"
        )
    ref = next((v for v in given.values() if isinstance(v, torch.Tensor)), None)
    if ref is None:
        raise UnrollError("x0 must hold at least one tensor")
    current: dict[str, Any] = {}
    for name, state in scheme.states.items():
        if name in given:
            current[name] = torch.as_tensor(given[name], dtype=ref.dtype, device=ref.device)
        elif state.init is not None:
            if state.scalar:
                current[name] = torch.tensor(state.init, dtype=ref.dtype, device=ref.device)
            else:
                current[name] = torch.full_like(ref, state.init)
        elif state.depth == 0:
            current[name] = torch.zeros_like(ref)  # never read: only its new value is used
        else:
            raise UnrollError(
                f"x0 has no value for state {name}, and the scheme gives it no initial value"
            )
    return current, single


def check_finite(values: Mapping[str, Any], where: str | None) -> None:
    """An `UnrollError` naming ``where`` (a step, a layer; None for the starting values x0)
    and the state when one of ``values`` (state -> tensor) holds a NaN or an infinity."""
    for name, value in values.items():
        if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all()):
            bad = "NaN" if bool(torch.isnan(value).any()) else "an infinity"
            if where is None:
                raise UnrollError(f"x0: state {name} holds {bad} before the first step")
            raise UnrollError(f"{where}: state {name} holds {bad} (the iteration diverged)")
