"""Reversible backpropagation: train ``depth`` layers while storing no per-layer activations.

The forward pass runs the layers under ``torch.no_grad`` and keeps only the last history; the
backward pass walks back from it, rebuilding each layer's input history from its output with
the inverse step (`unroll.ir.inverse.inverse`), recomputing that one layer under autograd and
backpropagating through it (Gomez et al., "The Reversible Residual Network", 2017; Sander et
al., "Momentum Residual Neural Networks", 2021). Activation memory is then independent of the
depth; the price is one more forward evaluation of every layer and one inverse step.

The building block is `reversible_unroll`; everything it needs is passed in::

    out = reversible_unroll(step, inverse_step, history0, depth, params, amplification=a)

- ``history0``: a tuple of tensors, the input history in a layout of the caller's choosing
  (`HistoryLayout`: each state's values newest first, state after state);
- ``step(n, history) -> history``: layer ``n`` (0-based) as a function of the whole history
  tuple, returning the next whole history in the same layout; it must read its trainable
  tensors from ``params`` (or from modules whose parameters are in ``params``);
- ``inverse_step(n, history) -> history``: the history before layer ``n`` from the history
  after it (for a scheme, `HistoryLayout.inverse` around its inverse's step);
- ``params``: every tensor requiring grad that ``step`` reads: module parameters (tied: once;
  untied: every layer's) and coefficient tensors (a trainable κ, γ, h; a tensor computed from
  a raw parameter, as a bounded parametrization gives, may be passed as it is, and its
  gradient flows on to the raw one);
- ``amplification``: the predicted factor by which rebuilding the layers can multiply an
  error (`unroll.analysis.inverse.inverse_amplification`, 1 for RevNet);
- returns the final history tuple, differentiable in ``history0`` and ``params``.

Never a silently wrong gradient: the unroll is refused (`UnrollError`, with the predicted
amplification) when amplification × eps(dtype) exceeds ``tolerance``, by default √eps (at
least half of the dtype's digits survive the rebuild). LM-ResNet at κ = −0.05 multiplies
errors by 20 per layer: 16 layers in float64 are refused. The exact fixed-point representation
of Maclaurin, Duvenaud and Adams (2015), which momentumnet uses for its velocity, is not
implemented: it keeps the bits a contracting step destroys (log2 20 ≈ 4.3 per element and layer
at κ = −0.05), so its memory grows with depth in exactly these cases. And a tensor requiring
grad that ``step`` reads but ``params`` lacks is an `UnrollError` in the backward pass, found
by walking the recomputed layer's graph, rather than a gradient silently dropped; so is a
layer whose recomputed output differs from the one it had (beyond ``tolerance``, relative to
the output's size or 1): a ``step`` that draws random numbers inside, or an ``inverse_step``
that is not its inverse. ``step`` must be a deterministic function of ``n``, the history and
the parameters: draw stochastic depth or dropout masks before the unroll and index them by
``n``. A module that changes itself when called (BatchNorm's running statistics in training
mode) is called three times per layer: the forward, the inverse and the recomputation.

`scheme_steps` builds ``step``, ``inverse_step`` and the layout for a scheme evaluated eagerly,
with each layer's operators and coefficients from a callable: the path the tests and the
benchmark take, and a reference for the network modules. `Reversal` is what
``Scheme.network(..., reversible=True)`` runs: the inverse of the network's step, printed once,
and the unroll around its blocks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from unroll.analysis.inverse import inverse_amplification
from unroll.errors import UnrollError
from unroll.frontend.library import resolve
from unroll.frontend.printing import expr_text
from unroll.frontend.scheme import STEP_NAMES, Scheme
from unroll.ir.inverse import inverse
from unroll.ir.step import StepIR, build
from unroll.lowering.eager.program import eager_step
from unroll.lowering.eager.states import check_finite

History = tuple[torch.Tensor, ...]
StepFn = Callable[[int, History], History]
# Layer n -> (operator callables by name, as `unroll.lowering.eager.run.operators` gives them:
# a branch takes (t, x); coefficient values by parameter name: numbers or tensors).
LayerFn = Callable[[int], tuple[Mapping[str, Callable], Mapping[str, Any]]]


def default_tolerance(dtype: torch.dtype) -> float:
    """√eps of ``dtype``: the largest predicted relative error of rebuilt states accepted."""
    return math.sqrt(torch.finfo(dtype).eps)


def check_amplification(
    amplification: float, dtype: torch.dtype, tolerance: float | None = None, what: str = ""
) -> None:
    """Raise `UnrollError` when ``amplification`` × eps(``dtype``) exceeds ``tolerance``
    (default `default_tolerance`): the inverse would rebuild the states with errors the
    gradient cannot bear."""
    eps = torch.finfo(dtype).eps
    bound = default_tolerance(dtype) if tolerance is None else tolerance
    if not amplification * eps <= bound:  # also refuses NaN
        raise UnrollError(
            f"reversible backpropagation refused{' for ' + what if what else ''}: the inverse "
            f"step is predicted to amplify errors by {amplification:.3g} over the rebuilt "
            f"layers, so in {str(dtype).removeprefix('torch.')} (eps {eps:.3g}) the rebuilt "
            f"states could be off by {amplification * eps:.3g} relative, beyond the tolerance "
            f"{bound:.3g}; use standard backpropagation (reversible=False)"
            f"{' or fewer layers' if dtype == torch.float64 else ', fewer layers or float64'}"
        )


# -- the autograd function ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Run:
    step: StepFn
    inverse_step: StepFn
    depth: int
    stored: int
    width: int  # tensors in a history
    tolerance: float  # the largest relative mismatch of a recomputed layer's output


def _call(fn: StepFn, n: int, history: History, width: int, what: str) -> History:
    out = tuple(fn(n, history))
    if len(out) != width or not all(isinstance(t, torch.Tensor) for t in out):
        raise UnrollError(
            f"{what}({n}, history) must return a tuple of {width} tensors, the history's layout; "
            f"it returned {len(out)} values"
        )
    return out


def _unique(tensors: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    """The distinct tensors (by identity) and, for each given one, its position among them: a
    history holds x_0 in every slot at the start, which must be saved (and counted) once."""
    distinct: list[torch.Tensor] = []
    where: list[int] = []
    for t in tensors:
        i = next((j for j, d in enumerate(distinct) if d is t), None)
        if i is None:
            distinct.append(t)
            i = len(distinct) - 1
        where.append(i)
    return distinct, where


class _Reversible(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run: _Run, *tensors: torch.Tensor):  # type: ignore[override]
        history = tensors[: run.width]
        kept: list[torch.Tensor] = []
        with torch.no_grad():
            for n in range(run.depth):
                if n < run.stored:
                    kept.extend(history)
                history = _call(run.step, n, history, run.width, "step")
        # Outputs must be tensors of their own: not an input, not twice the same.
        out: list[torch.Tensor] = []
        for t in history:
            seen = any(t is x for x in tensors) or any(t is o for o in out)
            out.append(t.clone() if seen else t)
        distinct, where = _unique([*out, *kept])
        ctx.run, ctx.where = run, where
        ctx.params = tensors[run.width :]
        ctx.save_for_backward(*distinct)
        return tuple(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: torch.Tensor | None):  # type: ignore[override]
        run: _Run = ctx.run
        saved = ctx.saved_tensors
        values = [saved[i] for i in ctx.where]
        history = tuple(values[: run.width])
        kept = values[run.width :]
        params = ctx.params
        needs = ctx.needs_input_grad[1 + run.width :]
        wrt = [p for p, need in zip(params, needs, strict=True) if need]
        grad = [
            g if g is not None else torch.zeros_like(h) for g, h in zip(grads, history, strict=True)
        ]
        param_grads: list[torch.Tensor | None] = [None] * len(wrt)
        for n in reversed(range(run.depth)):
            if n < run.stored:
                before = tuple(kept[n * run.width : (n + 1) * run.width])
            else:
                with torch.no_grad():
                    before = _call(run.inverse_step, n, history, run.width, "inverse_step")
            inputs = tuple(t.detach().requires_grad_(True) for t in before)
            with torch.enable_grad():
                after = _call(run.step, n, inputs, run.width, "step")
            _check_recomputed(n, after, history, run.tolerance)
            live = [(a, g) for a, g in zip(after, grad, strict=True) if a.requires_grad]
            _check_params(n, [a for a, _ in live], inputs, params)
            if live:
                found = torch.autograd.grad(
                    [a for a, _ in live], [*inputs, *wrt], [g for _, g in live], allow_unused=True
                )
            else:
                found = (None,) * (len(inputs) + len(wrt))
            grad = [
                g if g is not None else torch.zeros_like(x)
                for g, x in zip(found[: run.width], inputs, strict=True)
            ]
            for i, g in enumerate(found[run.width :]):
                if g is not None:
                    param_grads[i] = g if param_grads[i] is None else param_grads[i] + g
            history = tuple(t.detach() for t in before)
        it = iter(param_grads)
        out_params = [next(it) if need else None for need in needs]
        return (None, *grad, *out_params)


def _check_recomputed(
    n: int, recomputed: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], tolerance: float
) -> None:
    """Raise `UnrollError` when layer ``n`` recomputed from its rebuilt input does not give back
    its output: ``step`` is not deterministic (random numbers drawn inside it) or
    ``inverse_step`` is not its inverse. One layer's rounding is far below ``tolerance``."""
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(recomputed, expected, strict=True)):
            scale = float(b.abs().max()) if b.numel() else 0.0
            off = float((a - b).abs().max()) if b.numel() else 0.0
            if not off <= tolerance * max(scale, 1.0):
                raise UnrollError(
                    f"layer {n}: recomputed from the input the inverse step rebuilt, it gives "
                    f"history value {i} off by {off:.3g} (scale {scale:.3g}): step must be "
                    "deterministic (draw random numbers, such as stochastic depth, before the "
                    "unroll) and inverse_step must invert it"
                )


def _check_params(
    n: int,
    outputs: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
) -> None:
    """Raise `UnrollError` when layer ``n``'s recomputed graph reaches a tensor that requires
    grad but is neither an input nor in ``params``: its gradient would be dropped silently."""
    allowed = {id(t) for t in (*inputs, *params) if t.grad_fn is None}
    stops = {p.grad_fn for p in params if p.grad_fn is not None}
    stack = [o.grad_fn for o in outputs]
    seen: set = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in stops:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            if id(variable) not in allowed:
                raise UnrollError(
                    f"layer {n} reads a tensor that requires grad but is not in params (shape "
                    f"{tuple(variable.shape)}): reversible backpropagation would drop its "
                    "gradient; pass it in params"
                )
            continue
        stack.extend(fn for fn, _ in node.next_functions)


def reversible_unroll(
    step: StepFn,
    inverse_step: StepFn,
    history0: Sequence[torch.Tensor],
    depth: int,
    params: Sequence[torch.Tensor],
    *,
    amplification: float,
    tolerance: float | None = None,
    stored: int = 0,
) -> History:
    """``depth`` layers from ``history0`` with reversible backpropagation (see the module
    docstring for ``step``, ``inverse_step``, ``params`` and ``amplification``). ``stored``
    leading layers keep their input history instead of rebuilding it (a multistep scheme's
    start-up layers, which have no inverse): saved memory is ``stored + 1`` histories whatever
    the depth. Returns the final history, a tuple like ``history0``. Raises `UnrollError` when
    the predicted amplification × eps exceeds ``tolerance`` (default √eps of the dtype)."""
    history0 = tuple(history0)
    params = tuple(params)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise UnrollError(f"depth must be a positive int, not {depth!r}")
    if isinstance(stored, bool) or not isinstance(stored, int) or not 0 <= stored <= depth:
        raise UnrollError(f"stored must be an int between 0 and the depth {depth}, not {stored!r}")
    if not history0 or not all(isinstance(t, torch.Tensor) for t in (*history0, *params)):
        raise UnrollError("history0 and params must be tensors (history0 at least one)")
    dtype = history0[0].dtype
    if not dtype.is_floating_point:
        raise UnrollError(f"history0 must be floating point, not {dtype}")
    check_amplification(amplification, dtype, tolerance)
    bound = default_tolerance(dtype) if tolerance is None else tolerance
    run = _Run(step, inverse_step, depth, stored, len(history0), bound)
    return tuple(_Reversible.apply(run, *history0, *params))


def standard_unroll(step: StepFn, history0: Sequence[torch.Tensor], depth: int) -> History:
    """The same layers with ordinary autograd (every layer's activations stored): the
    reference `reversible_unroll` is tested and benchmarked against."""
    history = tuple(history0)
    for n in range(depth):
        history = _call(step, n, history, len(history), "step")
    return history


# -- histories of schemes ----------------------------------------------------------------------
@dataclass(frozen=True)
class HistoryLayout:
    """How a scheme's history lies in the flat tuple the unroll carries: ``slots`` gives each
    tensor state's name and number of values, in order; each state's values newest first."""

    slots: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, scheme: Scheme) -> HistoryLayout:
        """The layout of ``scheme``'s history: its states in order, max(depth, 1) values each."""
        scalar = [n for n, s in scheme.states.items() if s.scalar]
        if scalar:
            raise UnrollError(
                f"scheme {scheme.name or str(scheme)!r}: scalar states ({', '.join(scalar)}) are "
                "not carried by a reversible unroll"
            )
        return cls(tuple((n, max(s.depth, 1)) for n, s in scheme.states.items()))

    @property
    def width(self) -> int:
        return sum(d for _, d in self.slots)

    def flatten(self, history: Mapping[str, Sequence[torch.Tensor]]) -> History:
        """``{state: (newest, ...)}`` as the flat tuple."""
        out: list[torch.Tensor] = []
        for name, d in self.slots:
            values = list(history[name])
            if len(values) != d:
                raise UnrollError(f"state {name} needs {d} history values, not {len(values)}")
            out.extend(values)
        return tuple(out)

    def unflatten(self, flat: Sequence[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """The flat tuple as ``{state: [newest, ...]}``."""
        out, i = {}, 0
        for name, d in self.slots:
            out[name] = list(flat[i : i + d])
            i += d
        return out

    def start(self, x0: Mapping[str, torch.Tensor]) -> History:
        """The history at the start: every older value equal to the initial one (as
        `unroll.lowering.eager.run.run` starts it)."""
        return self.flatten({name: [x0[name]] * d for name, d in self.slots})

    def forward(
        self, new_values: Callable[[int, dict[str, list[torch.Tensor]]], Mapping]
    ) -> StepFn:
        """A flat ``step`` from ``new_values(n, history) -> {state: new value}``."""

        def step(n: int, flat: History) -> History:
            history = self.unflatten(flat)
            new = new_values(n, history)
            return self.flatten({s: [new[s], *v[:-1]] for s, v in history.items()})

        return step

    def inverse(
        self, oldest_values: Callable[[int, dict[str, list[torch.Tensor]]], Mapping]
    ) -> StepFn:
        """A flat ``inverse_step`` from the inverse scheme's step ``oldest_values(n,
        reversed history) -> {state: value}``: it is handed each state's history after layer
        n reversed (the inverse's own history, `unroll.ir.inverse`) and returns the values
        that fell out of the window, which go back at its old end."""

        def step(n: int, flat: History) -> History:
            history = self.unflatten(flat)
            oldest = oldest_values(n, {s: v[::-1] for s, v in history.items()})
            return self.flatten({s: [*v[1:], oldest[s]] for s, v in history.items()})

        return step


@dataclass(frozen=True)
class SchemeSteps:
    """``step`` and ``inverse_step`` of a scheme over its flat history (``layout``), and the
    number of leading layers whose inputs are stored (``stored``: a multistep scheme's start-up
    layers)."""

    scheme: Scheme
    layout: HistoryLayout
    step: StepFn
    inverse_step: StepFn
    stored: int
    layer: LayerFn

    def amplification(self, depth: int) -> float:
        """The predicted amplification of rebuilding layers ``stored`` .. ``depth - 1``, from
        each layer's coefficient values (`unroll.analysis.inverse.inverse_amplification`)."""
        values = [
            {name: _numeric(v) for name, v in self.layer(n)[1].items()}
            for n in range(min(self.stored, depth), depth)
        ]
        return inverse_amplification(self.scheme, values)

    def unroll(
        self,
        history0: Sequence[torch.Tensor],
        depth: int,
        params: Sequence[torch.Tensor],
        *,
        tolerance: float | None = None,
    ) -> History:
        """`reversible_unroll` of this scheme, its amplification predicted from the current
        coefficient values."""
        return reversible_unroll(
            self.step,
            self.inverse_step,
            history0,
            depth,
            params,
            amplification=self.amplification(depth),
            tolerance=tolerance,
            stored=min(self.stored, depth),
        )


def _numeric(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64).numpy().reshape(-1)
    return np.float64(value)


class _Eager:
    """One scheme's printed step (`unroll.lowering.eager.program`), run with each layer's
    operators (by name, branches as f(t, x)) and coefficients (by scheme name)."""

    def __init__(self, scheme: Scheme):
        self.scheme = scheme
        self.program = eager_step(build(scheme))
        self.step_name = next((n for n in STEP_NAMES if n in scheme.parameters), None)

    def __call__(self, ops, values, history, n: int, sign: int) -> dict:
        missing = [p for p in self.scheme.parameters if p not in values]
        if missing:
            raise UnrollError(f"layer {n}: no value for parameter {missing[0]}")
        h = values[self.step_name] if self.step_name else 1
        t = sign * n * h  # the time of layer n, t_n = n h; the inverse runs at −t_n
        ir = self.program.ir
        flat = tuple(v for s in ir.states for v in list(history[s.name])[: len(s.history)])
        params = tuple(values[c.spec.name] for c in ir.parameters)
        new = self.program.step(flat, params, t, n, self.program.ops(ops))
        return self.program.newest(new)


def scheme_steps(scheme: Scheme, layer: LayerFn, **params: Any) -> SchemeSteps:
    """``step`` and ``inverse_step`` for ``scheme`` (as given: pass a layer form for a network
    of an optimizer scheme), with layer n's operators and coefficients from ``layer(n)``. A
    scheme with a start-up scheme runs it for its first max(depth) − 1 layers, which are
    stored. ``params`` are checked as `unroll.ir.inverse.inverse` checks them. Raises
    `UnrollError` when the scheme has no inverse."""
    inv = inverse(scheme, **params)
    layout = HistoryLayout.of(scheme)
    main, back = _Eager(scheme), _Eager(inv)
    boot_steps = 0
    boot = None
    if scheme.startup:
        boot = _Eager(resolve(scheme.startup))
        boot_steps = max(s.depth for s in scheme.states.values()) - 1
        defaults = boot.scheme.defaults()

    def new_values(n: int, history: dict) -> dict:
        ops, values = layer(n)
        if n < boot_steps and boot is not None:
            shared = {
                **defaults,
                **{k: v for k, v in values.items() if k in boot.scheme.parameters},
            }
            return boot(ops, shared, history, n, 1)
        return main(ops, values, history, n, 1)

    def oldest_values(n: int, reversed_history: dict) -> dict:
        ops, values = layer(n)
        return back(ops, values, reversed_history, n, -1)

    return SchemeSteps(
        scheme, layout, layout.forward(new_values), layout.inverse(oldest_values), boot_steps, layer
    )


# -- a network's inverse ----------------------------------------------------------------------
class Reversal:
    """The inverse of a network's step, and `reversible_unroll` around it: the backward pass
    rebuilds each layer's input history from its output instead of storing it."""

    def __init__(self, ir: StepIR):
        self.forward, scheme = ir, ir.scheme
        if any(s.scalar for s in ir.states):
            raise UnrollError(
                f"reversible=True: {ir.label!r} has a scalar state (a schedule), which the "
                "reversible unroll does not carry"
            )
        self.inverse = build(inverse(scheme), layer=True)  # an UnrollError says why not
        self.program = eager_step(self.inverse)
        names = [c.name for c in ir.parameters]
        by_spec = {c.spec.name: names.index(c.name) for c in ir.parameters}
        self.take = tuple(by_spec[c.spec.name] for c in self.inverse.parameters)
        self.specs = tuple(c.spec.name for c in ir.parameters)
        self.slots = tuple(len(s.history) for s in ir.states)
        # the inverse's states may come in another order: where each one's history starts
        starts = dict(zip((s.name for s in ir.states), _starts(self.slots), strict=True))
        self.order = tuple((starts[s.name], len(s.history)) for s in self.inverse.states)
        firsts = dict(zip(self.program.states, self.program.firsts, strict=True))
        self.oldest = tuple(firsts[s.name] for s in ir.states)
        h = [i for i, c in enumerate(ir.parameters) if c.spec.name in STEP_NAMES]
        self.h = h[0] if h else None
        # the first operator call whose argument reads another call's output (see check_gains)
        calls = {c.symbol for c in ir.calls}
        self.nested = next((c for c in ir.calls if c.arg.free_symbols & calls), None)

    def __getstate__(self) -> dict:
        return {"forward": self.forward}  # the printed inverse is resolved again on loading

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["forward"])

    def check_gains(self, exact: bool) -> None:
        """Stochastic depth scales the branch outputs the updates read, but not those a later
        call reads in its argument (RevNet's g(X_k + f(Y_k))). The inverse then rebuilds the
        input exactly only for the gains 0 and 1 (``exact``): those of stochastic="drop" in
        training. Any other gain is refused, rather than rebuilt wrongly."""
        if self.nested is not None and not exact:
            call = self.nested
            raise UnrollError(
                f"reversible=True: {self.forward.label!r} with stochastic depth: "
                f"{call.op}({expr_text(self.forward.scheme_form(call.arg))}) reads "
                "another branch's output unscaled, so the step "
                "cannot be inverted for gains other than 0 and 1: use stochastic='drop' "
                "(its training gains are 0 and 1), or reversible=False"
            )

    def _reversed(self, flat: tuple) -> tuple:
        """Each state's history reversed, in the inverse's state order: its own history."""
        out: list = []
        for at, d in self.order:
            out += flat[at : at + d][::-1]
        return tuple(out)

    def step_back(
        self, block: nn.Module, n: int, flat: tuple, c: tuple, gain: torch.Tensor | None = None
    ) -> tuple:
        """The history before layer ``n`` from the history after it (the inverse scheme runs
        on each state's history reversed, at time −t_n). ``gain``: the stochastic-depth factor
        the forward step drew for layer ``n``; it scales the same branch outputs here."""
        params = tuple(c[i] for i in self.take)
        t = -n * c[self.h] if self.h is not None else -n
        ops = block._ops(self.program)
        new = self.program.step(self._reversed(flat), params, t, -n, ops, gain)
        oldest = [new[i] for i in self.oldest]  # the values before the window, forward order
        out, at = [], 0
        for d, value in zip(self.slots, oldest, strict=True):
            out += [*flat[at + 1 : at + d], value]
            at += d
        return tuple(out)

    def run(self, net: nn.Module, history: tuple, values: list, gains: list, fused: bool) -> tuple:
        """``net``'s layers from ``history`` by `reversible_unroll`."""
        blocks = net.blocks
        tied = net.options.tied

        def block(n: int) -> nn.Module:
            return blocks[0 if tied else n]

        check = net.options.check_finite
        newest = net.blocks[0]._program.newest

        def step(n: int, h: tuple) -> tuple:
            new = block(n).step(h, n, gains[n], values[n], boot=n < net.boot_steps, fused=fused)
            if check:  # in the forward pass and again in the backward's recomputation
                check_finite(newest(new), f"layer {n + 1}")
            return new

        def back(n: int, h: tuple) -> tuple:
            return self.step_back(block(n), n, h, values[n], gains[n])

        if gains[-1] is not None:  # eval() with gradients on: the gains are the p_n
            self.check_gains(exact=net.training and net.options.stochastic == "drop")

        seen: dict[int, torch.Tensor] = {}
        for b in blocks:
            for p in b.operators.parameters():
                seen.setdefault(id(p), p)
        for c in values[: 1 if tied else len(values)]:
            for v in c:
                if isinstance(v, torch.Tensor) and v.requires_grad:
                    seen.setdefault(id(v), v)
        layers = [
            {name: _number(v) for name, v in zip(self.specs, values[n], strict=True)}
            for n in range(net.boot_steps, net.depth)
        ]
        amplification = inverse_amplification(self.forward.scheme, layers) if layers else 1.0
        return reversible_unroll(
            step, back, history, net.depth, list(seen.values()),
            amplification=amplification, stored=net.boot_steps,
        )  # fmt: skip


def _starts(sizes: Sequence[int]) -> list[int]:
    return list(itertools.accumulate((0, *sizes[:-1])))


def _number(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64).numpy().reshape(-1)
    return float(value)
