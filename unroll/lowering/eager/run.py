"""Running a scheme as an iterative method with PyTorch (optimizer on F, integrator on an ODE).

`run` is the eager execution of a `Scheme`: every equation is compiled once to a closure
(`unroll.lowering.eager.evaluate`) and evaluated in order each step; states keep as many past values as the
scheme reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from unroll.errors import UnrollError
from unroll.frontend.scheme import STEP_NAMES, canonical_params
from unroll.ir import vocabulary as ir
from unroll.lowering.eager.evaluate import StepFrame, execute
from unroll.lowering.eager.states import advance, initial_history, initial_states, stack_path

if TYPE_CHECKING:
    from unroll.frontend.scheme import Scheme

def gradient_of(F: Callable) -> Callable:
    """x -> ∇F(x) by autograd. A non-scalar F(x) (a batch of values) is summed, so each row of a
    batch gets the gradient of its own value."""

    def grad(x: torch.Tensor) -> torch.Tensor:
        keep = torch.is_grad_enabled() and x.requires_grad
        with torch.enable_grad():
            xg = x if keep else x.detach().requires_grad_(True)
            value = F(xg)
            if not isinstance(value, torch.Tensor):
                raise UnrollError("F must return a tensor")
            (g,) = torch.autograd.grad(value.sum(), xg, create_graph=keep)
        return g

    return grad


def operators(
    scheme: Scheme,
    *,
    grad: Callable | None = None,
    F: Callable | None = None,
    f: Callable | Mapping[str, Callable] | None = None,
    W: Any = None,
    activation: Any = None,
) -> dict[str, Callable]:
    """The callables for each operator the scheme uses, from what the user passed to `run`."""
    used = {
        fn.func.__name__: ir.operator_kind(fn)
        for eq in scheme.equations
        for fn in ir.applications(eq.rhs)
    }
    ops: dict[str, Callable] = {}
    for name, kind in used.items():
        if kind == "grad":
            if (grad is None) == (F is None):
                raise UnrollError(
                    "optimizer schemes take exactly one of grad= (x -> ∇F(x)) or F= (x -> F(x))"
                )
            ops[name] = grad if grad is not None else gradient_of(F)
        elif kind == "branch":
            fn = (
                f.get(name)
                if isinstance(f, Mapping)
                else (f if name == "f" or len(_branches(used)) == 1 else None)
            )
            if fn is None:
                raise UnrollError(
                    f"the scheme uses {name}(t, x): pass f= (a callable, or a mapping naming {name})"
                )
            ops[name] = fn
        elif kind == "linear":
            w = W.get(name) if isinstance(W, Mapping) else W
            if w is None:
                raise UnrollError(
                    f"the scheme uses the linear operator {name}: pass W= (a matrix or a callable)"
                )
            ops[name] = _linear(w, name)
        elif kind == "act":
            act = activation if activation is not None else scheme.activation
            if act is None:
                raise UnrollError("the scheme uses φ: pass activation= (a name or a callable)")
            if isinstance(act, str):
                from unroll.ir import activations

                act = activations.get(act).torch
            ops[name] = act
    return ops


def _branches(used: Mapping[str, str]) -> list[str]:
    return [n for n, k in used.items() if k == "branch"]


def _linear(w: Any, name: str) -> Callable:
    if callable(w):
        return w
    if isinstance(w, torch.Tensor) and w.dim() == 2:
        return lambda x: x @ w.transpose(-1, -2)
    raise UnrollError(f"{name} must be a matrix (out, in) or a callable")


class Stepper:
    """One step of a scheme over PyTorch values: ``step(history, k, t) -> new values``.

    ``history[name]`` is the list [x_k, x_{k-1}, ...] (newest first) of each state.
    """

    def __init__(self, scheme: Scheme, ops: Mapping[str, Callable], params: Mapping[str, Any]):
        if not scheme.is_explicit:
            raise UnrollError(
                f"scheme {scheme.name or str(scheme)!r} is implicit ({scheme.implicit_reason}); "
                "running implicit schemes is not supported yet"
            )
        self.scheme, self.ops = scheme, dict(ops)
        missing = [n for n in scheme.parameters if n not in params]
        if missing:
            raise UnrollError(
                f"missing value for parameter {missing[0]} (pass {missing[0]}=..., it has no default)"
            )
        self.params = dict(params)
        self.frame = StepFrame(scheme)
        self.program = self.frame.assign(scheme.equations)

    def step(self, history: Mapping[str, list], k: int, t: Any) -> dict[str, Any]:
        return execute(self.program, self.frame.start(self.params, history, k, t), self.ops)


def run(
    scheme: Scheme,
    x0: torch.Tensor | Mapping[str, torch.Tensor],
    steps: int,
    *,
    grad: Callable | None = None,
    F: Callable | None = None,
    f: Callable | Mapping[str, Callable] | None = None,
    h: float | None = None,
    t0: float = 0.0,
    W: Any = None,
    activation: Any = None,
    trajectory: bool = False,
    **params: Any,
) -> Any:
    """Run ``steps`` steps of ``scheme`` from ``x0``.

    Optimizer schemes take ``grad`` (x -> ∇F(x)) or ``F`` (x -> F(x), differentiated by
    autograd); ODE schemes take ``f(t, x)`` (the torchdiffeq convention) and the step ``h``;
    layer schemes take ``W`` (matrix or callable) and ``activation``. Parameter values come from
    keywords (``α=0.1`` or ``alpha=0.1``), else from the scheme's defaults.

    ``x0`` is a tensor (for the scheme's one state that has no initial value of its own) or a
    mapping from state names to tensors. States older than the initial one start equal to it,
    unless the scheme names a start-up scheme, which then takes the first steps.

    Returns the final state, of ``x0``'s shape (a mapping when ``x0`` was one); with
    ``trajectory=True`` every state from x0 on, stacked along a new first dimension
    (``(steps + 1, *x0.shape)``).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise UnrollError(f"steps must be a non-negative int, not {steps!r}")
    values = dict(scheme.defaults())
    values.update(canonical_params(scheme, params))
    step_name = next((n for n in STEP_NAMES if n in scheme.parameters), None)
    if h is not None:
        if step_name is None and scheme.kind != "ode":
            raise UnrollError("h= is the step of an ODE scheme; this scheme has no step parameter")
        if step_name is not None:
            values[step_name] = h
    dt = values.get(step_name, 1.0) if step_name else (h if h is not None else 1.0)
    ops = operators(scheme, grad=grad, F=F, f=f, W=W, activation=activation)
    stepper = Stepper(scheme, ops, values)
    current, single = initial_states(scheme, x0)

    history = initial_history(scheme, current)
    path = [dict(current)] if trajectory else None
    startup_steps = min(steps, max(s.depth for s in scheme.states.values()) - 1)
    if not scheme.startup:
        startup_steps = 0
    else:
        boot = _startup_stepper(scheme, ops, values)
    ref = next(iter(current.values()))
    for k in range(steps):
        stepper_k = boot if k < startup_steps else stepper
        t = torch.tensor(
            t0 + k * dt, dtype=ref.dtype, device=ref.device
        )  # a tensor, as torchdiffeq
        advance(history, stepper_k.step(history, k, t))
        if path is not None:
            path.append({n: v[0] for n, v in history.items()})
    final = {n: v[0] for n, v in history.items()}
    if path is not None:
        stacked = stack_path(path, final)
        return stacked[single] if single else stacked
    return final[single] if single else final


def _startup_stepper(
    scheme: Scheme, ops: Mapping[str, Callable], values: Mapping[str, Any]
) -> Stepper:
    """The stepper of the scheme that takes a multistep scheme's first steps."""
    from unroll.frontend.library import resolve

    boot = resolve(scheme.startup)
    if set(boot.states) != set(scheme.states) or any(s.depth > 1 for s in boot.states.values()):
        raise UnrollError(
            f"start-up scheme {scheme.startup!r} must be one-step with the states {', '.join(scheme.states)}"
        )
    params = dict(boot.defaults())
    params.update({n: v for n, v in values.items() if n in boot.parameters})
    return Stepper(boot, ops, params)


