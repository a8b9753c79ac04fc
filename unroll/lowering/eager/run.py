"""Running a scheme as an iterative method with PyTorch (optimizer on F, integrator on an ODE).

`run` is the eager execution of a `Scheme`: its step IR (`unroll.ir.step.build`) printed once as
straight-line PyTorch (`unroll.lowering.eager.program.eager_step`) and called once per step on
the flat history (each state's values newest first, as many as the scheme reads).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch

from unroll.errors import UnrollError
from unroll.frontend.scheme import STEP_NAMES, Scheme, canonical_params
from unroll.ir import activations
from unroll.ir.step import StepIR, build
from unroll.lowering.eager.activations import torch_function
from unroll.lowering.eager.program import EagerStep, advance, eager_step
from unroll.lowering.eager.states import check_finite as check_finite_states
from unroll.lowering.eager.states import initial_states, stack_path


def gradient_of(F: Callable) -> Callable:
    """x -> ∇F(x) by autograd. F returns a scalar, or, for a batch of problems x of shape
    (B, ..., n), one value per problem (shape x.shape[:-1]), each row then getting the gradient
    of its own value; any other shape (an elementwise F, say) is an `UnrollError` giving it."""

    def grad(x: torch.Tensor) -> torch.Tensor:
        keep = torch.is_grad_enabled() and x.requires_grad
        with torch.enable_grad():
            xg = x if keep else x.detach().requires_grad_(True)
            value = F(xg)
            if not isinstance(value, torch.Tensor):
                raise UnrollError(f"F must return a tensor, not {type(value).__name__}")
            if value.numel() != 1 and (xg.dim() < 2 or value.shape != xg.shape[:-1]):
                raise UnrollError(
                    f"F must return a scalar (or one value per row of a batch, shape "
                    f"{tuple(xg.shape[:-1])}); it returned shape {tuple(value.shape)}"
                )
            (g,) = torch.autograd.grad(value.sum(), xg, create_graph=keep)
        return g

    return grad


def operators(
    scheme: Scheme | StepIR,
    *,
    grad: Callable | None = None,
    F: Callable | None = None,
    f: Callable | Mapping[str, Callable] | None = None,
    W: Any = None,
    activation: Any = None,
) -> dict[str, Callable]:
    """The callables for each operator the scheme's step uses (and φ), by name, from what the
    user passed to `run`."""
    ir = scheme if isinstance(scheme, StepIR) else build(scheme)
    used = ir.operators()
    branches = [n for n, k in used.items() if k == "branch"]
    ops: dict[str, Callable] = {}
    for name, kind in used.items():
        if kind == "grad":
            if (grad is None) == (F is None):
                raise UnrollError(
                    "optimizer schemes take exactly one of grad= (x -> ∇F(x)) or F= (x -> F(x))"
                )
            ops[name] = grad if grad is not None else gradient_of(F)
        elif kind == "branch":
            if isinstance(f, Mapping):
                fn = f.get(name)
            else:
                fn = f if name == "f" or len(branches) == 1 else None
            if fn is None:
                raise UnrollError(
                    f"the scheme uses {name}(t, x): pass f= (a callable, or a mapping naming {name})"
                )
            if not callable(fn):
                raise UnrollError(f"f= for {name} must be a callable f(t, x), not {fn!r}")
            ops[name] = fn
        elif kind == "linear":
            w = W.get(name) if isinstance(W, Mapping) else W
            if w is None:
                raise UnrollError(
                    f"the scheme uses the linear operator {name}: pass W= (a matrix or a callable)"
                )
            ops[name] = _linear(w, name)
    if ir.uses_activation:
        act = activation if activation is not None else ir.scheme.activation
        if act is None:
            raise UnrollError("the scheme uses φ: pass activation= (a name or a callable)")
        if isinstance(act, str):
            act = torch_function(activations.get(act))
        if not callable(act):
            raise UnrollError(f"activation must be a name or a callable, not {act!r}")
        ops["φ"] = act
    return ops


def _linear(w: Any, name: str) -> Callable:
    if callable(w):
        return w
    if isinstance(w, torch.Tensor) and w.dim() == 2:
        return lambda x: x @ w.transpose(-1, -2)
    raise UnrollError(f"{name} must be a matrix (out, in) or a callable")


def _parameters(program: EagerStep, values: Mapping[str, Any]) -> tuple:
    """The parameter values in the order the step takes them."""
    out = []
    for c in program.ir.parameters:
        name = c.spec.name
        if name not in values:
            raise UnrollError(
                f"missing value for parameter {name} (pass {name}=..., it has no default)"
            )
        out.append(values[name])
    return tuple(out)


def _numbers(values: tuple) -> tuple | None:
    """``values`` as Python numbers when they all are numbers, or one-element tensors that need
    no gradient (then `EagerStep.step_numbers` may take them); else None."""
    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            if v.numel() != 1 or v.requires_grad:
                return None
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        out.append(v)
    return tuple(out)


def _stepper(program: EagerStep, coefficients: tuple) -> tuple[Callable, tuple]:
    """The step function for these coefficients and the coefficients it takes: when they are
    all plain numbers, the one that accumulates sums in place, in the memory of the values the
    step drops where that is safe (`_Recycler`)."""
    numbers = _numbers(coefficients)
    if numbers is None:
        return program.step, coefficients
    recycler = _Recycler(program)
    mode: list[Callable | None] = [None]

    def step(history, c, t, k, ops, gain=None):
        if mode[0] is None:  # the first step decides: in place, or the plain step throughout
            try:
                new = program.step_numbers(history, c, t, k, ops, gain)
                mode[0] = program.step_into
            except RuntimeError:  # e.g. an operator output wider than the state (float64
                mode[0] = program.step  # into float32): the plain step promotes it
                return program.step(history, c, t, k, ops, gain)
            recycler.took(history, new)
            return new
        if mode[0] is program.step:
            return program.step(history, c, t, k, ops, gain)
        new = program.step_into(history, c, t, k, ops, gain, recycler.spares(history))
        recycler.took(history, new)
        return new

    return step, numbers


class _Recycler:
    """Which dropped values a step may overwrite: a state's oldest value that an earlier step
    made as a tensor of its own (never the caller's x0, nor an operator's output), that needs no
    gradient, and that nothing but the history holds (its reference count says so: a
    trajectory, or an operator that kept its input, keeps it)."""

    HELD = 3  # the history tuple, the local name and getrefcount's own argument

    def __init__(self, program: EagerStep):
        self.program = program
        self.owned: set[int] = set()

    def spares(self, history: tuple) -> tuple:
        out = []
        for last in self.program.lasts:
            t = history[last]
            ok = id(t) in self.owned and not t.requires_grad
            out.append(t if ok and sys.getrefcount(t) <= self.HELD else None)
        return tuple(out)

    def took(self, old: tuple, new: tuple) -> None:
        for last in self.program.lasts:
            self.owned.discard(id(old[last]))
        for first, fresh in zip(self.program.firsts, self.program.fresh, strict=True):
            if fresh and isinstance(new[first], torch.Tensor) and not new[first].requires_grad:
                self.owned.add(id(new[first]))


class Stepper:
    """One step of a scheme over PyTorch values: ``step(history, k, t) -> new values``, with
    ``history[name]`` the list [x_k, x_{k-1}, ...] (newest first) of each state, ``ops`` the
    callables by operator name (as `operators` gives them) and ``params`` by parameter name."""

    def __init__(self, scheme: Scheme, ops: Mapping[str, Callable], params: Mapping[str, Any]):
        self.program = eager_step(build(scheme))
        self.ops = self.program.ops(ops)
        self.params = _parameters(self.program, params)

    def step(self, history: Mapping[str, list], k: int, t: Any) -> dict[str, Any]:
        h = tuple(
            v for s in self.program.ir.states for v in list(history[s.name])[: len(s.history)]
        )
        return self.program.newest(self.program.step(h, self.params, t, k, self.ops))


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
    check_finite: bool = False,
    **params: Any,
) -> Any:
    """Run ``steps`` steps of ``scheme`` from ``x0``.

    Optimizer schemes take ``grad`` (x -> ∇F(x)) or ``F`` (x -> F(x), a scalar, differentiated
    by autograd); ODE schemes take ``f(t, x)`` (the torchdiffeq convention, also for a scheme
    that writes an autonomous f(x): it gets the step's time) and the step ``h``; layer schemes
    take ``W`` (matrix or callable) and ``activation``. Parameter values come from keywords
    (``α=0.1`` or ``alpha=0.1``), else from the scheme's defaults.

    ``x0`` is a tensor (for the scheme's one state that has no initial value of its own) or a
    mapping from state names to tensors. States older than the initial one start equal to it,
    unless the scheme names a start-up scheme, which then takes the first steps.
    ``check_finite``: raise an `UnrollError` naming the step and the state as soon as a state
    holds a NaN or an infinity (divergence is otherwise silent).

    Returns the final state, of ``x0``'s shape (a mapping when ``x0`` was one); with
    ``trajectory=True`` every state from x0 on, stacked along a new first dimension
    (``(steps + 1, *x0.shape)``).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise UnrollError(f"steps must be a non-negative int, not {steps!r}")
    finite = check_finite
    ir = build(scheme)
    program = eager_step(ir)  # refuses an implicit scheme, with the reason
    values = dict(scheme.defaults())
    values.update(canonical_params(scheme, params))
    step_name = next((n for n in STEP_NAMES if n in scheme.parameters), None)
    if h is not None:
        if step_name is None and scheme.kind != "ode":
            raise UnrollError("h= is the step of an ODE scheme; this scheme has no step parameter")
        if step_name is not None:
            values[step_name] = h
    dt = values.get(step_name, 1.0) if step_name else (h if h is not None else 1.0)
    callables = operators(ir, grad=grad, F=F, f=f, W=W, activation=activation)
    ops = program.ops(callables)
    coefficients = _parameters(program, values)
    current, single = initial_states(scheme, x0)
    if finite:
        check_finite_states(current, None)
    history = tuple(current[s.name] for s in ir.states for _ in s.history)
    boot, boot_steps = None, 0
    if ir.startup is not None:
        boot = eager_step(ir.startup)
        boot_values = {**ir.startup.scheme.defaults(), **values}
        boot_steps = min(steps, max(s.depth for s in ir.states) - 1)
        boot_ops = boot.ops(callables)
        boot_step, boot_coefficients = _stepper(boot, _parameters(boot, boot_values))
    main_step, coefficients = _stepper(program, coefficients)
    ref = next(v for v in current.values() if isinstance(v, torch.Tensor))
    reads_time = any(_reads_time(p.ir) for p in (program, boot) if p is not None)
    path = [dict(current)] if trajectory else None
    t = t0
    for k in range(steps):
        if reads_time:  # a tensor, as torchdiffeq's
            t = torch.tensor(t0 + k * dt, dtype=ref.dtype, device=ref.device)
        if k < boot_steps:
            now = program.newest(history)
            start = tuple(now[s.name] for s in boot.ir.states)
            new = boot_step(start, boot_coefficients, t, k, boot_ops)
            history = advance(ir, history, boot.newest(new))
        else:
            history = main_step(history, coefficients, t, k, ops)
        if finite:
            check_finite_states(program.newest(history), f"step {k + 1}")
        if path is not None:
            path.append(program.newest(history))
    final = program.newest(history)
    if path is not None:
        stacked = stack_path(path, final)
        return stacked[single] if single else stacked
    return final[single] if single else final


def _reads_time(ir: StepIR) -> bool:
    time = next(c.symbol for c in ir.coefficients if c.source == "time")
    branches = any(c.kind == "branch" for c in ir.calls)  # f(t, x) is handed the time
    return branches or any(time in e.free_symbols for e in ir.expressions())
