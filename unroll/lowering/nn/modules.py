"""Torch modules for a scheme's layers: `Block` (one step) and `Network` (``depth`` steps).

A block evaluates a `Program` (`unroll.lowering.nn.program`): first the operator calls (``W`` as a dense
or convolutional module, ``f`` as the user's branch module), then ONE call to
`Block.update(history, outputs, coefficients) -> new states`, the block update. Its inputs:

- ``history``: ``{state: (x_k, x_<k-1>, ...)}``, newest first, each ``(B, n)`` or ``(B, C, H, W)``
  (a scalar state such as θ_k is a 0-d tensor);
- ``outputs``: the operator outputs ``(o_0, o_1, ...)`` in `Program.calls` order (W x + ..., f(x)),
  already scaled by stochastic depth;
- ``coefficients``: ``{parameter: tensor}``, already mapped into their bounds: 0-d, or per
  channel ``(n,)`` / ``(C, 1, 1)``;

and it returns ``{state: new value}``. `Program.updates` is the SymPy it computes. This call is
the hook for fused kernels: with ``backend="triton"`` or ``"auto"`` the block hands the same
arguments to `unroll.lowering.triton.op.network_update` (a generated Triton kernel; None where it has
none, e.g. for CPU tensors under "auto"); ``"torch"``, and every case the kernel declines,
evaluates it with `unroll.lowering.eager.evaluate.compile_expr`, the one eager lowering `Scheme.run` uses too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from unroll.analysis.objectives import objective
from unroll.errors import UnrollError
from unroll.frontend.scheme import Scheme, canonical_params
from unroll.ir import vocabulary as ir
from unroll.ir.layer_form import layer_form
from unroll.lowering.eager.evaluate import StepFrame, compile_expr, execute
from unroll.lowering.eager.states import (
    advance,
    initial_history,
    initial_states,
    primary_state,
    stack_path,
)
from unroll.lowering.nn.program import Program, lower

BACKENDS = ("auto", "torch", "triton")
STOCHASTIC = ("drop", "noise")


# -- options ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    """What `layer` and `network` accept (all keyword arguments).

    activation: φ, a name from `unroll.ir.activations` or a callable (default: the scheme's).
    dim: width of a dense W (states ``(B, dim)``); channels, kernel_size, norm: a convolutional
    W, ``norm(conv(x))`` with ``norm`` "batch" (BatchNorm2d, the AGD paper's relaxation of φ∘W
    to conv + normalisation + activation) or None (states ``(B, C, H, W)``).
    symmetric: keep every W self-adjoint (a symmetric matrix; a kernel equal to its transposed,
    flipped self), so the objective reading of the layer stays exact.
    tied: one block (W, f, coefficients) shared by every step, else one per step.
    f: the branch module of an ODE scheme (shared by every block), a zero-argument factory
    called once per block, or a mapping from branch names (f_1, g, ...) to either.
    params: initial parameter values by name (``kappa`` or ``κ``), numbers or tensors.
    trainable: the parameters to train (default: those the scheme marks trainable).
    per_channel: more parameters to hold one value per channel (dim or channels wide).
    survival: p_L of stochastic depth (ODE schemes): block n of L keeps its branches with
    probability p_n = 1 − (n/L)(1 − p_L); stochastic "drop" (η ~ Bernoulli(p_n) per sample)
    or "noise" (η = p_n + √(p_n(1 − p_n)) ξ, ξ ~ N(0, 1): the SDE of Lu et al.); at evaluation
    η = p_n.
    backend: "auto" (the fused Triton block update on CUDA tensors, PyTorch elsewhere),
    "torch" or "triton" (`unroll.lowering.triton.op.network_update`).
    """

    activation: str | Callable | None = None
    dim: int | None = None
    channels: int | None = None
    kernel_size: int = 3
    norm: str | None = "batch"
    symmetric: bool = False
    tied: bool = False
    f: Any = None
    params: Mapping[str, Any] = field(default_factory=dict)
    trainable: Iterable[str] | None = None
    per_channel: Iterable[str] = ()
    survival: float | None = None
    stochastic: str = "drop"
    backend: str = "auto"

    def __post_init__(self):
        for name in ("dim", "channels", "kernel_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise UnrollError(f"{name} must be a positive int, not {v!r}")
        if self.dim is not None and self.channels is not None:
            raise UnrollError("give dim= (a dense W) or channels= (a convolutional W), not both")
        if self.norm not in ("batch", None):
            raise UnrollError(f"norm must be 'batch' or None, not {self.norm!r}")
        if self.channels is not None and self.symmetric and self.kernel_size % 2 == 0:
            raise UnrollError(
                f"a symmetric convolution needs an odd kernel_size, not {self.kernel_size}"
            )
        if self.backend not in BACKENDS:
            raise UnrollError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.stochastic not in STOCHASTIC:
            raise UnrollError(
                f"stochastic must be one of {', '.join(STOCHASTIC)}, not {self.stochastic!r}"
            )
        p = self.survival
        if p is not None and (
            isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1
        ):
            raise UnrollError(f"survival (p_L) must be a number in (0, 1], not {p!r}")
        if not isinstance(self.params, Mapping):
            raise UnrollError(
                f"params must be a mapping of parameter names to values, not {self.params!r}"
            )

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> Options:
        known = cls.__dataclass_fields__
        for key in options:
            if key not in known:
                raise UnrollError(f"unknown option {key!r}; options: {', '.join(known)}")
        return cls(**options)

    @property
    def width(self) -> int | None:
        return self.dim if self.dim is not None else self.channels


# -- coefficients ------------------------------------------------------------------------------
class Bounded(nn.Module):
    """Parametrization onto the open interval between ``lo`` and ``hi`` (either may be None):
    lo + (hi − lo)·sigmoid(raw), lo + softplus(raw) or hi − softplus(raw), then clamped to the
    representable values strictly inside, so rounding never reaches a bound (LM-ResNet's κ
    stays in the zero-stable interval −1 < κ ≤ 1 in every dtype)."""

    def __init__(self, lo: float | None, hi: float | None):
        super().__init__()
        self.lo, self.hi = lo, hi

    def _inside(self, value: torch.Tensor) -> torch.Tensor:
        lo = (
            None
            if self.lo is None
            else torch.tensor(self.lo, dtype=value.dtype, device=value.device)
        )
        hi = (
            None
            if self.hi is None
            else torch.tensor(self.hi, dtype=value.dtype, device=value.device)
        )
        inf = torch.tensor(math.inf, dtype=value.dtype, device=value.device)
        lo_in = None if lo is None else torch.nextafter(lo, hi if hi is not None else inf)
        hi_in = None if hi is None else torch.nextafter(hi, lo if lo is not None else -inf)
        return torch.clamp(value, min=lo_in, max=hi_in)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            value = lo + (hi - lo) * torch.sigmoid(raw)
        elif lo is not None:
            value = lo + nn.functional.softplus(raw)
        else:
            value = hi - nn.functional.softplus(raw)
        return self._inside(value)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        lo, hi = self.lo, self.hi
        value = self._inside(value.detach())
        if lo is not None and hi is not None:
            return torch.logit((value - lo) / (hi - lo))
        gap = value - lo if lo is not None else hi - value
        return gap + torch.log(-torch.expm1(-gap))  # softplus⁻¹(gap), stable for large gaps


class Coefficients(nn.Module):
    """A block's scheme parameters by name: trainable ones are `nn.Parameter`s (through
    `Bounded` when the scheme bounds them), the others buffers. ``values()`` gives the tensors
    the block update reads."""

    def __init__(self, values: Mapping[str, torch.Tensor], trainable: set[str], bounds: Mapping):
        super().__init__()
        self.names = tuple(values)
        for name, value in values.items():
            if name not in trainable:
                self.register_buffer(name, value)
                continue
            self.register_parameter(name, nn.Parameter(value))
            lo, hi = bounds.get(name, (None, None))
            if lo is not None or hi is not None:
                parametrize.register_parametrization(self, name, Bounded(lo, hi))

    def values(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.names}


# -- operators ---------------------------------------------------------------------------------
class Symmetric(nn.Module):
    """Parametrization of a self-adjoint W: (A + Aᵀ)/2 for a matrix; for a convolution kernel
    (out, in, kh, kw) the mean with its channel-transposed, spatially flipped self (with odd
    kernels and 'same' zero padding the convolution is then its own adjoint)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if w.dim() == 2:
            return (w + w.transpose(0, 1)) / 2
        return (w + w.transpose(0, 1).flip(-2, -1)) / 2


def _linear(opts: Options, name: str) -> nn.Module:
    if opts.dim is not None:
        module: nn.Module = nn.Linear(opts.dim, opts.dim, bias=False)
        target = module
    elif opts.channels is not None:
        c, k = opts.channels, opts.kernel_size
        conv = nn.Conv2d(c, c, k, padding="same", bias=False)
        module = nn.Sequential(conv, nn.BatchNorm2d(c)) if opts.norm == "batch" else conv
        target = conv
    else:
        raise UnrollError(
            f"the layer uses the linear operator {name}: pass dim= (dense) or channels= (convolutional)"
        )
    if opts.symmetric:
        parametrize.register_parametrization(target, "weight", Symmetric())
    return module


def _branch(opts: Options, name: str, count: int) -> nn.Module:
    f = opts.f
    if isinstance(f, Mapping):
        if name not in f:
            raise UnrollError(
                f"f= names no module for the branch {name}; it names {', '.join(map(str, f))}"
            )
        f = f[name]
    elif count > 1:
        raise UnrollError(
            f"the scheme has {count} branches: pass f= as a mapping naming {name} and the others"
        )
    if f is None:
        raise UnrollError(f"the layer uses the branch {name}(x): pass f= (a module or a factory)")
    if isinstance(f, nn.Module):
        return f
    if callable(f):
        module = f()
        if not isinstance(module, nn.Module):
            raise UnrollError(
                f"the factory for {name} returned a {type(module).__name__}, not a torch.nn.Module"
            )
        return module
    raise UnrollError(f"f= for {name} must be a torch.nn.Module or a factory of one, not {f!r}")


def _names(trainable: Iterable[str] | str) -> list[str]:
    """``trainable=`` as names: one name given as a string is that name, not its letters."""
    return [trainable] if isinstance(trainable, str) else list(trainable)


# -- the block ---------------------------------------------------------------------------------
class _Compiled:
    """A program's closures over the slots of one `Frame` (plain Python objects, not module
    state): the calls' arguments, then the updates."""

    def __init__(self, program: Program):
        self.program = program
        self.frame = frame = StepFrame(program.form)
        self.calls = [(c, frame.slot(c.symbol), compile_expr(c.arg, frame)) for c in program.calls]
        self.updates = frame.assign(program.updates)

    def env(self, history, coefficients, n: int) -> list:
        t = n * coefficients["h"] if "h" in coefficients else n
        return self.frame.start(coefficients, history, n, t)


def block_update(
    compiled: _Compiled,
    history: Mapping[str, Sequence[torch.Tensor]],
    outputs: Sequence[torch.Tensor],
    coefficients: Mapping[str, torch.Tensor],
    ops: Mapping[str, Callable],
    n: int = 0,
) -> dict[str, torch.Tensor]:
    """The eager block update: `Program.updates` evaluated in order. Returns ``{state: new}``."""
    env = compiled.env(history, coefficients, n)
    for (_, i, _), value in zip(compiled.calls, outputs, strict=True):
        env[i] = value
    return execute(compiled.updates, env, ops)


class Block(nn.Module):
    """One step of a scheme's layer form. ``block(x)`` with x a tensor (the primary state, its
    older values equal to it) or ``{state: tensor or (x_k, x_<k-1>, ...)}``; returns the new
    primary state, or ``{state: new value}`` for a mapping. See the module docstring for
    `update`, the block update."""

    def __init__(
        self,
        program: Program,
        operators: nn.ModuleDict,
        coefficients: Coefficients,
        activation: Callable | None,
        backend: str = "auto",
        boot: Program | None = None,
    ):
        super().__init__()
        self.operators = operators
        self.coefficients = coefficients
        self.backend = backend
        self.activation_name: str | None = None  # set by the builder when φ has a name
        self.options: Options | None = None  # set by the builder: the width x must have
        self._activation = activation
        self._main = _Compiled(program)
        self._boot = _Compiled(boot) if boot is not None else None

    @property
    def program(self) -> Program:
        return self._main.program

    def _ops(self) -> dict[str, Callable]:
        return {"φ": self._activation} if self._activation is not None else {}

    def step(
        self,
        history: Mapping[str, Sequence[torch.Tensor]],
        n: int = 0,
        gain: torch.Tensor | None = None,
        boot: bool = False,
    ) -> dict[str, torch.Tensor]:
        """One step from ``history`` (newest first); ``gain`` (stochastic depth) scales the branch
        outputs in the update; ``boot`` runs the start-up scheme's program."""
        compiled = self._boot if boot and self._boot is not None else self._main
        coefficients = self.coefficients.values()
        ops = self._ops()
        env = compiled.env(history, coefficients, n)
        outputs = []
        for call, i, arg in compiled.calls:
            value = self.operators[call.op](arg(env, ops))
            env[i] = value
            outputs.append(value * gain if gain is not None and call.kind == "branch" else value)
        return self.update(history, tuple(outputs), coefficients, n=n, boot=boot)

    def update(
        self,
        history: Mapping[str, Sequence[torch.Tensor]],
        outputs: Sequence[torch.Tensor],
        coefficients: Mapping[str, torch.Tensor],
        n: int = 0,
        boot: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The block update (the kernel hook): new states from the history, the operator
        outputs and the coefficients."""
        compiled = self._boot if boot and self._boot is not None else self._main
        if self.backend != "torch":
            from unroll.lowering.triton.op import network_update

            calls = tuple(c.op for c in compiled.program.calls)
            fused = network_update(
                compiled.program.form, self.activation_name, self.backend, calls,
                history, outputs, coefficients, n,
            )  # fmt: skip
            if fused is not None:
                return fused
        return block_update(compiled, history, outputs, coefficients, self._ops(), n)

    def forward(self, x: torch.Tensor | Mapping[str, Any]) -> Any:
        form = self.program.form
        if isinstance(x, torch.Tensor):
            current, single = initial_states(form, x)
            history = initial_history(form, current)
        elif isinstance(x, Mapping):
            firsts = {k: (v[0] if isinstance(v, (tuple, list)) else v) for k, v in x.items()}
            current, single = initial_states(form, firsts)
            history = {}
            for k, v in current.items():
                given = x.get(k, v)
                seq = list(given) if isinstance(given, (tuple, list)) else [v]
                need = max(form.states[k].depth, 1)
                history[k] = (seq + [seq[-1]] * need)[:need]
        else:
            raise UnrollError(
                f"a block takes a tensor or a mapping of states, not {type(x).__name__}"
            )
        if self.options is not None:
            _check_width(self.options, form, current)
        new = self.step(history)
        return new[single] if single else new


# -- the network -------------------------------------------------------------------------------
class Trace(NamedTuple):
    """What a network returns with ``return_states`` / ``return_objective``: the final state,
    every state from x0 on stacked ``(depth + 1, *shape)`` (a mapping for mapping inputs), and
    F at every one of them ``(depth + 1, ...)`` as the objective evaluates it."""

    x: Any
    states: Any = None
    objective: torch.Tensor | None = None


class Network(nn.Module):
    """``depth`` steps of a scheme's layer form, owning the multi-state history: ``net(x0)``
    starts the older states as `Scheme.run` does (equal to x0, or a start-up scheme's steps)."""

    def __init__(self, scheme: Scheme, depth: int, opts: Options):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise UnrollError(f"depth must be a positive int, not {depth!r}")
        self.scheme, self.depth, self.options = scheme, depth, opts
        self.form = layer_form(scheme)
        # Why the last forward ran layer by layer instead of the one-kernel tied network
        # (`unroll.lowering.triton.tied`); None when the kernel ran (or before the first forward).
        self.fallback_reason: str | None = None
        program, boot, self.boot_steps = _programs(self.form, depth)
        count = 1 if opts.tied else depth
        self.blocks = nn.ModuleList(_block(program, boot, opts, self.form) for _ in range(count))
        if opts.survival is not None and not any(c.kind == "branch" for c in program.calls):
            raise UnrollError(
                "stochastic depth scales residual branches: it needs an ODE scheme with f(x)"
            )

    def survival(self, n: int) -> float:
        """p_n of block n (0-based): 1 − ((n + 1)/L)(1 − p_L), so the last block has p_L."""
        p_last = self.options.survival
        return 1.0 if p_last is None else 1.0 - (n + 1) / self.depth * (1.0 - p_last)

    def _gain(self, n: int, like: torch.Tensor) -> torch.Tensor | None:
        if self.options.survival is None:
            return None
        p = self.survival(n)
        if not self.training:
            return torch.tensor(p, dtype=like.dtype, device=like.device)
        shape = (like.shape[0],) + (1,) * (like.dim() - 1) if like.dim() else ()
        if self.options.stochastic == "drop":
            return torch.bernoulli(torch.full(shape, p, dtype=like.dtype, device=like.device))
        noise = torch.randn(shape, dtype=like.dtype, device=like.device)
        return p + math.sqrt(p * (1 - p)) * noise

    def forward(
        self,
        x0: torch.Tensor | Mapping[str, torch.Tensor],
        *,
        return_states: bool = False,
        return_objective: bool = False,
    ) -> Any:
        """The final state (x0's shape; a mapping when x0 is one), or a `Trace` with the
        per-layer states and F when asked for."""
        from unroll.lowering.triton.tied import network_forward

        current, single = initial_states(self.form, x0)
        _check_width(self.options, self.form, current)
        out = network_forward(self, x0, trace=return_states or return_objective)
        if out is not None:
            return out
        history = initial_history(self.form, current)
        path = [dict(current)] if (return_states or return_objective) else None
        ref = next(v for k, v in current.items() if not self.form.states[k].scalar)
        for n in range(self.depth):
            block = self.blocks[0 if self.options.tied else n]
            advance(history, block.step(history, n, self._gain(n, ref), boot=n < self.boot_steps))
            if path is not None:
                path.append({k: v[0] for k, v in history.items()})
        final = {k: v[0] for k, v in history.items()}
        out = final[single] if single else final
        if path is None:
            return out
        stacked = stack_path(path, final)
        states = (stacked[single] if single else stacked) if return_states else None
        objective = self._objective(stacked) if return_objective else None
        return Trace(out, states, objective)

    def _objective(self, stacked: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not _objective_backed(self.scheme):
            raise UnrollError(
                f"scheme {self.scheme.name or str(self.scheme)!r} is not the layer of an objective "
                "(an optimizer scheme, or a feedforward/HB-Net/AGD-Net layer)"
            )
        name = self.options.activation or self.scheme.activation
        if not isinstance(name, str):
            raise UnrollError("return_objective needs the activation by name (activation='relu')")
        if not self.options.tied or self.options.dim is None:
            raise UnrollError(
                "return_objective needs tied=True and a dense W (dim=): F has one W and b"
            )
        block = self.blocks[0]
        linear = [m for m in block.operators.values() if isinstance(m, nn.Linear)]
        coeffs = block.coefficients.values()
        bias = next((coeffs[n] for n in ("b", "b_0", "bias") if n in coeffs), None)
        if len(linear) != 1 or bias is None:
            raise UnrollError("return_objective needs exactly one W and a bias b")
        x = stacked[primary_state(self.form)]
        F = objective(name)
        return torch.stack([F.evaluate(xk, linear[0].weight, bias) for xk in x])


def _check_width(opts: Options, form: Scheme, current: Mapping[str, torch.Tensor]) -> None:
    """Every tensor state has the width W was built for: the last axis for dim=, the channel
    axis of (B, C, H, W) or (C, H, W) for channels=."""
    width, axis = (opts.dim, -1) if opts.dim is not None else (opts.channels, -3)
    if width is None:
        return
    option = "dim" if opts.dim is not None else "channels"
    for name, value in current.items():
        if form.states[name].scalar:
            continue
        if value.dim() < -axis or value.shape[axis] != width:
            raise UnrollError(
                f"x0[{name!r}] has shape {tuple(value.shape)}, but the network was built with "
                f"{option}={width} (axis {axis} must be {width})"
            )


def _objective_backed(scheme: Scheme) -> bool:
    if scheme.kind == "optimizer":
        return True
    from unroll.analysis.identification import identify

    return identify(scheme) in ("feedforward", "HB-Net", "AGD-Net")


def _programs(form: Scheme, depth: int) -> tuple[Program, Program | None, int]:
    program = lower(form)
    if not form.startup:
        return program, None, 0
    from unroll.frontend.library import resolve

    boot_scheme = layer_form(resolve(form.startup))
    if set(boot_scheme.states) != set(form.states) or any(
        s.depth > 1 for s in boot_scheme.states.values()
    ):
        raise UnrollError(
            f"start-up scheme {form.startup!r} must be one-step with the states {', '.join(form.states)}"
        )
    boot = lower(boot_scheme)
    extra = set(boot.operators) - set(program.operators)
    if extra:
        raise UnrollError(
            f"start-up scheme {form.startup!r} uses operators the scheme lacks: {sorted(extra)}"
        )
    steps = min(depth, max(s.depth for s in form.states.values()) - 1)
    return program, boot, steps


def _block(program: Program, boot: Program | None, opts: Options, scheme: Scheme) -> Block:
    form = program.form
    used = dict(program.operators)
    if boot is not None:
        used.update(boot.operators)
    branches = [n for n, k in used.items() if k == "branch"]
    operators = nn.ModuleDict()
    for name, kind in used.items():
        if kind == "linear":
            operators[name] = _linear(opts, name)
        elif kind == "branch":
            operators[name] = _branch(opts, name, len(branches))
        else:  # pragma: no cover - layer_form removes ∇F
            raise UnrollError(f"operator {name} has no module")
    act = _activation(opts, form, program, boot)
    block = Block(program, operators, _coefficients(form, boot, opts), act, opts.backend, boot)
    # The fused kernels know activations by name (a callable has none: PyTorch runs it).
    named = opts.activation if opts.activation is not None else form.activation
    block.activation_name = named if isinstance(named, str) else None
    block.options = opts
    return block


def _activation(opts: Options, form: Scheme, *programs: Program | None) -> Callable | None:
    uses = any(
        ir.operator_kind(a) == "act"
        for p in programs
        if p is not None
        for e in [*(c.arg for c in p.calls), *(u.rhs for u in p.updates)]
        for a in ir.applications(e)
    )
    if not uses:
        return None
    act = opts.activation if opts.activation is not None else form.activation
    if act is None:
        raise UnrollError(
            f"the layer of {form.name or str(form)!r} uses φ: pass activation= (a name or a callable)"
        )
    if isinstance(act, str):
        from unroll.ir import activations

        return activations.get(act).torch
    if not callable(act):
        raise UnrollError(f"activation must be a name or a callable, not {act!r}")
    return act


def _coefficients(form: Scheme, boot: Program | None, opts: Options) -> Coefficients:
    given = canonical_params(form, opts.params)
    trainable = (
        {p.name for p in form.parameters.values() if p.trainable}
        if opts.trainable is None
        else set(canonical_params(form, {n: None for n in _names(opts.trainable)}))
    )
    per_channel = {p.name for p in form.parameters.values() if p.per_channel}
    per_channel |= set(canonical_params(form, {n: None for n in opts.per_channel}))
    values: dict[str, torch.Tensor] = {}
    bounds = {}
    for name, spec in form.parameters.items():
        value = given.get(name, spec.default)
        if value is None:
            raise UnrollError(
                f"missing value for parameter {name} (pass params={{{name!r}: ...}}; it has no default)"
            )
        values[name] = _initial(name, value, spec.bounds, name in per_channel, opts)
        bounds[name] = spec.bounds
    if boot is not None:  # start-up-only parameters: fixed at the start-up scheme's defaults
        for name, spec in boot.form.parameters.items():
            if name not in values:
                if spec.default is None:
                    raise UnrollError(f"start-up parameter {name} has no default")
                values[name] = torch.tensor(float(spec.default))
    return Coefficients(values, trainable, bounds)


def _initial(name: str, value: Any, bounds, per_channel: bool, opts: Options) -> torch.Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.get_default_dtype()).clone()
    except (TypeError, ValueError, RuntimeError):
        raise UnrollError(f"params[{name!r}] must be a number or a tensor, not {value!r}") from None
    if per_channel:
        if opts.width is None:
            raise UnrollError(f"parameter {name} is per channel: pass dim= or channels=")
        shape = (opts.width,) if opts.channels is None else (opts.width, 1, 1)
        try:
            t = t.expand(shape).clone() if t.dim() == 0 else t.reshape(shape).clone()
        except RuntimeError:
            raise UnrollError(f"params[{name!r}] has shape {tuple(t.shape)}, not {shape}") from None
    lo, hi = bounds
    if (lo is not None and bool((t < lo).any())) or (hi is not None and bool((t > hi).any())):
        raise UnrollError(f"params[{name!r}] = {value!r} lies outside the bounds {bounds}")
    return t


def layer(scheme: Scheme, **options: Any) -> Block:
    """One block of ``scheme``'s network (its layer form; see `Options` for the options)."""
    opts = Options.of(options)
    if opts.survival is not None:
        raise UnrollError("survival (stochastic depth) is an option of a network, not of one layer")
    form = layer_form(scheme)
    return _block(lower(form), None, opts, form)


def network(scheme: Scheme, depth: int, **options: Any) -> Network:
    """``depth`` unrolled steps of ``scheme`` as a `Network` (see `Options` for the options)."""
    return Network(scheme, depth, Options.of(options))
