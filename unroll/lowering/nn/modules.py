"""Torch modules for a scheme's layers: `Block` (one step) and `Network` (``depth`` steps).

A block is the step IR of the scheme's layer form (`unroll.ir.step.build(scheme, layer=True)`),
printed once as straight-line PyTorch (`unroll.lowering.eager.program`), with

- ``operators``: the modules of its operator calls, ``W`` dense or convolutional, each branch
  ``f`` the user's module;
- ``coefficients``: its parameters (`Coefficients`): trainable ones are `nn.Parameter`s, bounded
  ones stored unconstrained as ``raw_<name>`` and mapped into their interval once per forward;
  the others buffers.

A network owns the states' history (each state's values newest first, flat, in the IR's layout)
and calls its blocks' steps in turn, each block's coefficients computed once per forward.

The block update (the step's elementwise work after the operators) has a fused Triton kernel
(`unroll.lowering.triton.op.block_kernel`), used with ``backend="triton"``, and with ``"auto"``
for CUDA tensors when Triton is installed; which one runs is decided once per forward. A tied,
dense network can also run whole in one kernel (`unroll.lowering.triton.tied`), with
`Network.fallback_reason` saying why it did not.

Modules are ordinary PyTorch: plain classes (every network of a scheme compiles once under
torch.compile), ``torch.save``/``copy.deepcopy``-able, state dicts keyed by ASCII names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch
from torch import nn

from unroll.analysis.identification import identify
from unroll.analysis.objectives import objective
from unroll.errors import UnrollError
from unroll.frontend.scheme import STEP_NAMES, Scheme, canonical_params
from unroll.ir import activations
from unroll.ir.names import GREEK_NAMES
from unroll.ir.step import StepIR, build
from unroll.lowering.eager.program import EagerStep, advance, eager_step
from unroll.lowering.eager.states import check_finite, initial_states, primary_state, stack_path
from unroll.lowering.triton import op as triton_op
from unroll.lowering.triton import tied as triton_tied

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
    "torch" or "triton" (`unroll.lowering.triton.op.block_kernel`).
    check_finite: raise an `UnrollError` naming the layer and the state as soon as a state
    holds a NaN or an infinity (a diverging network is otherwise silent).
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
    check_finite: bool = False

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
        if self.activation is not None and not (
            isinstance(self.activation, str) or callable(self.activation)
        ):
            raise UnrollError(f"activation must be a name or a callable, not {self.activation!r}")

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

    def kept(self) -> Options:
        """What a built module keeps: the modules' factories and initial values are spent
        (and a factory may be a lambda, which would not pickle)."""
        return replace(self, f=None, params={})


# -- coefficients ------------------------------------------------------------------------------
class Bound:
    """The map from an unconstrained raw value onto the open interval between ``lo`` and ``hi``
    (either may be None): lo + (hi − lo)·sigmoid(raw), lo + softplus(raw) or hi − softplus(raw),
    clamped to the representable values strictly inside, so rounding never reaches a bound
    (LM-ResNet's κ stays in the zero-stable interval −1 < κ ≤ 1 in every dtype). A plain value:
    it pickles, and the clamp limits are computed once per dtype."""

    def __init__(self, lo: float | None, hi: float | None):
        self.lo, self.hi = lo, hi
        self._inside: dict[torch.dtype, tuple[float | None, float | None]] = {}

    def __getstate__(self) -> dict:
        return {"lo": self.lo, "hi": self.hi}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["lo"], state["hi"])

    def limits(self, dtype: torch.dtype) -> tuple[float | None, float | None]:
        """The representable values of ``dtype`` just inside the bounds."""
        if dtype not in self._inside:
            lo, hi = self.lo, self.hi
            t = lambda v: torch.tensor(v, dtype=dtype)  # noqa: E731
            inf = math.inf
            lo_in = None if lo is None else torch.nextafter(t(lo), t(hi if hi is not None else inf))
            hi_in = (
                None if hi is None else torch.nextafter(t(hi), t(lo if lo is not None else -inf))
            )
            self._inside[dtype] = (
                None if lo_in is None else float(lo_in),
                None if hi_in is None else float(hi_in),
            )
        return self._inside[dtype]

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            value = torch.sigmoid(raw)
            if hi - lo != 1:
                value = value * (hi - lo)
            if lo != 0:
                value = value + lo
        elif lo is not None:
            value = nn.functional.softplus(raw) + lo
        else:
            value = hi - nn.functional.softplus(raw)
        lo_in, hi_in = self.limits(raw.dtype)
        return torch.clamp(value, min=lo_in, max=hi_in)

    def inverse(self, value: torch.Tensor) -> torch.Tensor:
        """The raw value that maps to ``value`` (moved strictly inside the bounds first)."""
        lo, hi = self.lo, self.hi
        lo_in, hi_in = self.limits(value.dtype)
        value = torch.clamp(value.detach(), min=lo_in, max=hi_in)
        if lo is not None and hi is not None:
            return torch.logit((value - lo) / (hi - lo))
        gap = value - lo if lo is not None else hi - value
        return gap + torch.log(-torch.expm1(-gap))  # softplus⁻¹(gap), stable for large gaps


_ASCII = {greek: name for greek, name in GREEK_NAMES.items()}


class Coefficients(nn.Module):
    """A block's scheme parameters, by the identifiers of the step IR (``beta``, ``kappa``,
    ``c_1``). Trainable ones are `nn.Parameter`s (``raw_<name>`` when bounded, mapped into the
    bounds by `values`), the others buffers. ``coefficients.kappa`` and ``coefficients.κ`` read
    the value (bounds applied) and assigning either sets it."""

    def __init__(
        self,
        values: Mapping[str, torch.Tensor],
        trainable: set[str],
        bounds: Mapping[str, tuple[float | None, float | None]],
        aliases: Mapping[str, str],
    ):
        super().__init__()
        self.names = tuple(values)  # in the IR's order
        self.aliases = dict(aliases)  # scheme name (β) -> identifier (beta)
        self.bounds: dict[str, Bound] = {}
        for name, value in values.items():
            lo, hi = bounds.get(name, (None, None))
            if name not in trainable:
                self.register_buffer(name, value)
            elif lo is None and hi is None:
                self.register_parameter(name, nn.Parameter(value))
            else:
                self.bounds[name] = Bound(lo, hi)
                self.register_parameter(
                    f"raw_{name}", nn.Parameter(self.bounds[name].inverse(value))
                )

    def _key(self, name: str) -> str:
        return self.aliases.get(name, name)

    def value(self, name: str) -> torch.Tensor:
        """The value of the parameter ``name`` (identifier or scheme name), bounds applied."""
        key = self._key(name)
        bound = self.bounds.get(key)
        if bound is not None:
            return bound(self._parameters[f"raw_{key}"])
        if key in self._parameters:
            return self._parameters[key]
        if key in self._buffers:
            return self._buffers[key]
        raise AttributeError(name)

    def values(self) -> dict[str, torch.Tensor]:
        """Every parameter's value by its scheme name (``β``, ``κ``)."""
        scheme = {v: k for k, v in self.aliases.items()}
        return {scheme.get(n, n): self.value(n) for n in self.names}

    def ordered(self) -> tuple[torch.Tensor, ...]:
        """The values in the order the block's step takes them (once per forward)."""
        return tuple(self.value(n) for n in self.names)

    @staticmethod
    def stacked(all: Sequence[Coefficients]) -> list[tuple[torch.Tensor, ...]]:
        """`ordered` of every one of ``all`` (blocks of one network, built alike), each bounded
        parameter mapped into its bounds in one operation over all blocks, not one per block."""
        first = all[0]
        columns = []
        for name in first.names:
            bound = first.bounds.get(name)
            if bound is None:
                columns.append([c.value(name) for c in all])
                continue
            raws = torch.stack([c._parameters[f"raw_{name}"] for c in all])
            columns.append(list(bound(raws).unbind(0)))
        return list(zip(*columns, strict=True)) if columns else [() for _ in all]

    def __getattr__(self, name: str) -> Any:
        names = self.__dict__.get("names", ())
        key = self.__dict__.get("aliases", {}).get(name, name)
        if key in names:
            return self.value(key)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        key = self.__dict__.get("aliases", {}).get(name, name)
        if key in self.__dict__.get("names", ()) and isinstance(value, torch.Tensor):
            self.assign(key, value)
            return
        super().__setattr__(name, value)

    def assign(self, name: str, value: torch.Tensor) -> None:
        """Set the parameter ``name`` to ``value`` (through the inverse of its bound)."""
        key = self._key(name)
        with torch.no_grad():
            if key in self.bounds:
                raw = self._parameters[f"raw_{key}"]
                raw.copy_(self.bounds[key].inverse(value.to(raw.dtype)).expand_as(raw))
            else:
                target = self._parameters.get(key)
                target = target if target is not None else self._buffers[key]
                target.copy_(value.to(target.dtype).expand_as(target))

    def extra_repr(self) -> str:
        shown = [
            f"{n} in ({self.bounds[n].lo}, {self.bounds[n].hi})" if n in self.bounds else n
            for n in self.names
        ]
        return ", ".join(shown)


# -- operators ---------------------------------------------------------------------------------
class SymmetricLinear(nn.Module):
    """x ↦ x Wᵀ with W = (A + Aᵀ)/2 self-adjoint; ``raw_weight`` is A, ``weight`` is W."""

    def __init__(self, n: int):
        super().__init__()
        self.raw_weight = nn.Parameter(nn.Linear(n, n, bias=False).weight.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        return (self.raw_weight + self.raw_weight.transpose(0, 1)) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight)


class SymmetricConv2d(nn.Module):
    """A 'same'-padded convolution whose kernel is the mean of A and its channel-transposed,
    spatially flipped self: with an odd kernel the convolution is its own adjoint."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        conv = nn.Conv2d(channels, channels, kernel_size, padding="same", bias=False)
        self.raw_weight = nn.Parameter(conv.weight.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        w = self.raw_weight
        return (w + w.transpose(0, 1).flip(-2, -1)) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.weight, padding="same")


def _linear(opts: Options, name: str) -> nn.Module:
    if opts.dim is not None:
        return (
            SymmetricLinear(opts.dim)
            if opts.symmetric
            else nn.Linear(opts.dim, opts.dim, bias=False)
        )
    if opts.channels is not None:
        c, k = opts.channels, opts.kernel_size
        conv: nn.Module = (
            SymmetricConv2d(c, k)
            if opts.symmetric
            else nn.Conv2d(c, c, k, padding="same", bias=False)
        )
        return nn.Sequential(conv, nn.BatchNorm2d(c)) if opts.norm == "batch" else conv
    raise UnrollError(
        f"the layer uses the linear operator {name}: pass dim= (dense) or channels= (convolutional)"
    )


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
class Block(nn.Module):
    """One step of a scheme's layer form. ``block(x)`` with x a tensor (the primary state, its
    older values equal to it) or ``{state: tensor or (x_k, x_<k-1>, ...)}``; returns the new
    primary state, or ``{state: new value}`` for a mapping. `step` is what a network calls."""

    def __init__(
        self,
        ir: StepIR,
        operators: nn.ModuleDict,
        coefficients: Coefficients,
        activation: str | Callable | None,
        options: Options,
    ):
        super().__init__()
        self.ir = ir
        self.operators = operators
        self.coefficients = coefficients
        self.activation = activation  # a registered name, a callable, or None (no φ)
        self.options = options
        self._resolve()

    # -- what is resolved once, from the IR (and again after unpickling) -----------------------
    def _resolve(self) -> None:
        """The printed steps, the operator tuples and the facts a step needs, computed here so
        that a forward touches no SymPy object (torch.compile traces it whole)."""
        ir = self.ir
        self._program = eager_step(ir)
        self._boot = eager_step(ir.startup) if ir.startup is not None else None
        self._ops_main = self._ops(self._program)
        self._ops_boot = self._ops(self._boot) if self._boot is not None else ()
        names = self.coefficients.names
        steps = [c.name for c in ir.parameters if c.spec.name in STEP_NAMES and c.name in names]
        self._h = names.index(steps[0]) if steps else None
        self._reads_time = _reads_time(ir), ir.startup is not None and _reads_time(ir.startup)
        self._uses_activation = ir.uses_activation
        self._kernels: dict[bool, _KernelCall] = {}
        if ir.startup is not None:
            self._boot_parameters = _boot_parameters(ir, names)

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        for key in ("_program", "_boot", "_ops_main", "_ops_boot", "_kernels"):
            state.pop(key, None)  # functions of generated modules: resolved again on loading
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._resolve()

    def program(self, boot: bool = False) -> EagerStep:
        """The printed step (of the start-up scheme when ``boot``)."""
        return self._boot if boot else self._program

    def _ops(self, program: EagerStep) -> tuple:
        return tuple(
            self._phi() if name == "φ" else self.operators[name] for name in program.operators
        )

    def _phi(self) -> Callable:
        act = self.activation
        return activations.get(act).torch if isinstance(act, str) else act

    def _kernel(self, boot: bool) -> _KernelCall:
        if boot not in self._kernels:
            ir = self.ir.startup if boot else self.ir
            name = self.activation if isinstance(self.activation, str) else None
            self._kernels[boot] = _KernelCall(ir, name, self.program(boot))
        return self._kernels[boot]

    # -- one step ----------------------------------------------------------------------------
    def step(
        self,
        history: tuple,
        n: int = 0,
        gain: torch.Tensor | None = None,
        coefficients: tuple | None = None,
        boot: bool = False,
        fused: bool = False,
    ) -> tuple:
        """The next history (the IR's flat layout: each state's values newest first) after
        step ``n`` from ``history``. ``gain``: the stochastic-depth factor of the branch
        outputs; ``coefficients``: this block's values in order (`Coefficients.ordered`),
        computed here when None; ``boot``: run the start-up scheme's step; ``fused``: the
        block update in the Triton kernel."""
        c = self.coefficients.ordered() if coefficients is None else coefficients
        t = n * c[self._h] if self._h is not None and self._reads_time[boot] else n
        if boot:
            program = self._boot
            params = tuple(c[i] if i >= 0 else v for i, v in self._boot_parameters)
            now = self._program.newest(history)
            start = tuple(now[s] for s in program.states)
            if fused:
                new = self._kernel(True)(start, params, t, n, self._ops_boot, gain)
            else:
                new = program.step(start, params, t, n, self._ops_boot, gain)
            return advance(self.ir, history, program.newest(new))
        if fused:
            return self._kernel(False)(history, c, t, n, self._ops_main, gain)
        return self._program.step(history, c, t, n, self._ops_main, gain)

    def forward(self, x: torch.Tensor | Mapping[str, Any]) -> Any:
        form = self.ir.scheme
        if isinstance(x, torch.Tensor):
            current, single = initial_states(form, x)
            history = tuple(current[s.name] for s in self.ir.states for _ in s.history)
        elif isinstance(x, Mapping):
            firsts = {k: (v[0] if isinstance(v, (tuple, list)) else v) for k, v in x.items()}
            current, single = initial_states(form, firsts)
            values: list[Any] = []
            for s in self.ir.states:
                given = x.get(s.name, current[s.name])
                seq = list(given) if isinstance(given, (tuple, list)) else [current[s.name]]
                need = len(s.history)
                values += (seq + [seq[-1]] * need)[:need]
            history = tuple(values)
        else:
            raise UnrollError(
                f"a block takes a tensor or a mapping of states, not {type(x).__name__}"
            )
        _check_width(self.options, form, current)
        fused = _fused(self.options.backend, self.activation, self._uses_activation, current)
        new = self._program.newest(self.step(history, fused=fused))
        return new[single] if single else new


class _KernelCall:
    """The block update in the fused Triton kernel: the printed step's `outputs` (host values,
    operator outputs) and the history feed `unroll.lowering.triton.op.block_kernel`, resolved
    once; returns the next history as `EagerStep.step` does."""

    def __init__(self, ir: StepIR, activation: str | None, program: EagerStep):
        self.ir, self.program = ir, program
        self.kernel = triton_op.block_kernel(ir, activation)
        where: dict[Any, tuple[str, int]] = {}
        for i, h in enumerate(ir.history):
            where[h.symbol] = ("history", i)
        for i, a in enumerate((*ir.host, *ir.calls)):
            where[a.symbol] = ("outputs", i)
        for i, c in enumerate(ir.parameters):
            where[c.symbol] = ("coefficients", i)
        for c in ir.coefficients:
            if c.source in ("time", "index"):
                where[c.symbol] = (c.source, 0)
        self.inputs = [where[leaf.symbol] for leaf in self.kernel.inputs]
        self.coefficients = [where[leaf.symbol] for leaf in self.kernel.coefficients]
        self.host = len(ir.host)

    def __call__(self, history, c, t, n, ops, gain) -> tuple:
        outs = self.program.outputs(history, c, t, n, ops, gain)
        sources = {
            "history": history,
            "outputs": outs,
            "coefficients": c,
            "time": (t,),
            "index": (n,),
        }
        tensors = [sources[kind][i] for kind, i in self.inputs]
        coefs = [sources[kind][i] for kind, i in self.coefficients]
        new = dict(
            zip((u.state for u in self.kernel.outputs), self.kernel(tensors, coefs), strict=True)
        )
        for a, value in zip(self.ir.host, outs[: self.host], strict=True):
            if a.state is not None:
                new[a.state] = value
        return advance(self.ir, history, new)


def _reads_time(ir: StepIR) -> bool:
    time = next(c.symbol for c in ir.coefficients if c.source == "time")
    return any(time in e.free_symbols for e in ir.expressions())


def _boot_parameters(ir: StepIR, names: Sequence[str]) -> tuple[tuple[int, Any], ...]:
    """Where the start-up step finds each parameter: (i, None) for the block's i-th value,
    (-1, default) for one only the start-up scheme has (fixed at its default)."""
    out = []
    for p in ir.startup.parameters:
        if p.name in names:
            out.append((list(names).index(p.name), None))
        elif p.spec.default is not None:
            out.append((-1, p.spec.default))
        else:
            raise UnrollError(f"start-up parameter {p.spec.name} has no default")
    return tuple(out)


def _fused(
    backend: str, activation: Any, uses_activation: bool, current: Mapping[str, Any]
) -> bool:
    """Whether the block update runs in the Triton kernel for these tensors (decided once per
    forward): always for backend 'triton', on CUDA tensors with Triton installed for 'auto'."""
    if backend == "torch":
        return False
    if uses_activation and not isinstance(activation, str):
        if backend == "triton":
            raise UnrollError(
                "backend='triton' needs the activation by name (a callable has no kernel)"
            )
        return False
    if backend == "triton":
        return True
    ref = next(v for v in current.values() if isinstance(v, torch.Tensor))
    return ref.device.type == "cuda" and triton_op.triton_available()


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
        self.scheme, self.depth, self.options = scheme, depth, opts.kept()
        self.ir = build(scheme, layer=True)
        self.form = self.ir.scheme
        # Why the last forward ran layer by layer instead of the one-kernel tied network
        # (`unroll.lowering.triton.tied`); None when the kernel ran (or before the first forward).
        self.fallback_reason: str | None = None
        self.boot_steps = (
            min(depth, max(s.depth for s in self.ir.states) - 1) if self.ir.startup else 0
        )
        count = 1 if opts.tied else depth
        self.blocks = nn.ModuleList(_block(self.ir, opts) for _ in range(count))
        if opts.survival is not None and not any(c.kind == "branch" for c in self.ir.calls):
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
        current, single = initial_states(self.form, x0)
        _check_width(self.options, self.form, current)
        trace = return_states or return_objective
        out = self._tied_kernel(x0, trace)
        if out is not None:
            return out
        block0 = self.blocks[0]
        fused = _fused(self.options.backend, block0.activation, block0._uses_activation, current)
        history = tuple(current[s.name] for s in self.ir.states for _ in s.history)
        path = [dict(current)] if trace else None
        ref = next(v for k, v in current.items() if not self.form.states[k].scalar)
        tied = self.options.tied
        if tied:
            values = [block0.coefficients.ordered()] * self.depth
        else:
            values = Coefficients.stacked([b.coefficients for b in self.blocks])
        newest = block0._program.newest
        for n in range(self.depth):
            block = block0 if tied else self.blocks[n]
            c = values[n]
            gain = self._gain(n, ref)
            history = block.step(history, n, gain, c, boot=n < self.boot_steps, fused=fused)
            if self.options.check_finite:
                check_finite(newest(history), f"layer {n + 1}")
            if path is not None:
                path.append(newest(history))
        final = newest(history)
        out = final[single] if single else final
        if path is None:
            return out
        stacked = stack_path(path, final)
        states = (stacked[single] if single else stacked) if return_states else None
        F = self._objective(stacked) if return_objective else None
        return Trace(out, states, F)

    def _tied_kernel(self, x0: Any, trace: bool) -> Any:
        """The whole network in one Triton kernel when it can run (else None, with
        `fallback_reason` saying why)."""
        if trace:
            self.fallback_reason = "return_states/return_objective need every layer's state"
            return None
        return triton_tied.network_forward(self, x0, trace=False)

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
        linear = list(block.operators.values())
        coefficients = block.coefficients.values()
        bias = next((coefficients[n] for n in ("b", "b_0", "bias") if n in coefficients), None)
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
    return scheme.kind == "optimizer" or identify(scheme) in ("feedforward", "HB-Net", "AGD-Net")


def _block(ir: StepIR, opts: Options) -> Block:
    used = dict(ir.operators())
    if ir.startup is not None:
        used.update(ir.startup.operators())
    branches = [n for n, k in used.items() if k == "branch"]
    operators = nn.ModuleDict()
    for name, kind in used.items():
        if kind == "linear":
            operators[name] = _linear(opts, name)
        elif kind == "branch":
            operators[name] = _branch(opts, name, len(branches))
        else:  # pragma: no cover - the layer form has no ∇F
            raise UnrollError(f"operator {name} has no module")
    return Block(ir, operators, _coefficients(ir, opts), _activation(opts, ir), opts.kept())


def _activation(opts: Options, ir: StepIR) -> str | Callable | None:
    uses = ir.uses_activation or (ir.startup is not None and ir.startup.uses_activation)
    if not uses:
        return None
    act = opts.activation if opts.activation is not None else ir.scheme.activation
    if act is None:
        raise UnrollError(
            f"the layer of {ir.label!r} uses φ: pass activation= (a name or a callable)"
        )
    if isinstance(act, str):
        activations.get(act)  # an unknown name is an error now, not at the first forward
    return act


def _coefficients(ir: StepIR, opts: Options) -> Coefficients:
    form = ir.scheme
    given = canonical_params(form, opts.params)
    trainable = (
        {p.name for p in form.parameters.values() if p.trainable}
        if opts.trainable is None
        else set(canonical_params(form, {n: None for n in _names(opts.trainable)}))
    )
    per_channel = {p.name for p in form.parameters.values() if p.per_channel}
    per_channel |= set(canonical_params(form, {n: None for n in opts.per_channel}))
    values: dict[str, torch.Tensor] = {}
    bounds: dict[str, tuple] = {}
    train: set[str] = set()
    aliases: dict[str, str] = {}
    for c in ir.parameters:
        spec = c.spec
        value = given.get(spec.name, spec.default)
        if value is None:
            raise UnrollError(
                f"missing value for parameter {spec.name} (pass params={{{spec.name!r}: ...}}; "
                "it has no default)"
            )
        values[c.name] = _initial(spec.name, value, spec.bounds, spec.name in per_channel, opts)
        bounds[c.name] = spec.bounds
        if spec.name in trainable:
            train.add(c.name)
        if spec.name != c.name:
            aliases[spec.name] = c.name
    return Coefficients(values, train, bounds, aliases)


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
    return _block(build(scheme, layer=True), opts)


def network(scheme: Scheme, depth: int, **options: Any) -> Network:
    """``depth`` unrolled steps of ``scheme`` as a `Network` (see `Options` for the options)."""
    return Network(scheme, depth, Options.of(options))
