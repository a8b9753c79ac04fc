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

import copy
import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch
from torch import nn

from unroll.analysis.identification import identify
from unroll.analysis.inverse import inverse_amplification
from unroll.analysis.objectives import objective
from unroll.errors import UnrollError
from unroll.frontend.printing import expr_text
from unroll.frontend.scheme import STEP_NAMES, Scheme, canonical_params
from unroll.ir import activations
from unroll.ir.inverse import inverse, without_activation
from unroll.ir.names import GREEK_NAMES
from unroll.ir.step import StepIR, build
from unroll.lowering.eager.activations import torch_function
from unroll.lowering.eager.program import EagerStep, advance, eager_step
from unroll.lowering.eager.states import check_finite, initial_states, primary_state, stack_path
from unroll.lowering.nn.reversible import reversible_unroll
from unroll.lowering.triton import op as triton_op
from unroll.lowering.triton import tied as triton_tied
from unroll.lowering.triton.op import BACKENDS

STOCHASTIC = ("drop", "noise")
INITS = ("default", "kaiming", "xavier", "orthogonal", "zeros")


class per_block:  # noqa: N801 - a value users write inline, as they would a tuple
    """Initial values of one coefficient, one per block: a sequence of ``depth`` values
    (numbers or tensors), or a callable of the block index n (0-based) returning one, e.g.
    ``params={"κ": unroll.per_block(lambda n: torch.empty(()).uniform_(-0.1, 0))}``."""

    def __init__(self, values: Sequence[Any] | Callable[[int], Any]):
        if not (callable(values) or isinstance(values, (Sequence, torch.Tensor))) or isinstance(
            values, str
        ):
            raise UnrollError(
                f"per_block takes a sequence of values or a callable of the block index, "
                f"not {values!r}"
            )
        self.values = values

    def at(self, n: int, depth: int, name: str) -> Any:
        """Block ``n``'s value of the coefficient ``name`` (of ``depth`` blocks)."""
        if callable(self.values):
            return self.values(n)
        if len(self.values) != depth:
            raise UnrollError(
                f"params[{name!r}]: per_block gives {len(self.values)} values for {depth} blocks"
            )
        return self.values[n]

    def __repr__(self) -> str:
        return f"per_block({self.values!r})"


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
    init: how the weights start: "default" (each module's own PyTorch initialisation: nn.Linear
    and nn.Conv2d draw U(−1/√fan_in, 1/√fan_in)), "kaiming" (He: normal, fan_in, gain √2),
    "xavier" (Glorot: uniform), "orthogonal", "zeros" (every residual branch f starts at
    zero, so that a deep residual network starts as the identity: its last Linear/Conv2d, or
    the scale and shift of a normalisation after it, is zeroed; refused before a ReLU, whose
    slope 0 at 0 would keep it zero), or a callable applied to every operator module as
    `torch.nn.Module.apply` does. Biases of the initialised layers start at zero (but with
    "default"). Every value but "default" also initialises the branch modules given as f.
    reversible: train without storing each layer's states: the backward pass rebuilds them with
    the scheme's inverse step (`unroll.ir.inverse`), so activation memory does not grow with the
    depth; refused with the reason when the scheme has no inverse, and with the predicted error
    amplification when rebuilding would cost more digits than the dtype can spare.
    in_dim, out_dim: a stem ``Linear(in_dim, dim)`` before the steps and a head
    ``Linear(dim, out_dim)`` after them (dense networks); in_channels, num_classes: a stem
    conv3×3 → BatchNorm → ReLU from ``in_channels`` and a head average pool → Linear to
    ``num_classes`` (convolutional networks). The network then maps inputs to outputs.

    Parameter values (``params``): a number is the initial value of every block; a tensor of
    ``width`` values is one value per channel, for a parameter listed in ``per_channel`` (or
    marked so by the scheme); `per_block` values (a sequence of ``depth`` values, or a callable
    of the block index returning one) give each block its own initial value.
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
    init: str | Callable = "default"
    reversible: bool = False
    in_dim: int | None = None
    out_dim: int | None = None
    in_channels: int | None = None
    num_classes: int | None = None

    def __post_init__(self):
        for name in (
            "dim",
            "channels",
            "kernel_size",
            "in_dim",
            "out_dim",
            "in_channels",
            "num_classes",
        ):
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
        if not callable(self.init) and self.init not in INITS:
            raise UnrollError(
                f"init must be one of {', '.join(INITS)} or a callable, not {self.init!r}"
            )
        dense = [n for n in ("in_dim", "out_dim") if getattr(self, n) is not None]
        conv = [n for n in ("in_channels", "num_classes") if getattr(self, n) is not None]
        if dense and self.dim is None:
            raise UnrollError(f"{dense[0]}= adds a dense stem or head: it needs dim= (a dense W)")
        if conv and self.channels is None:
            raise UnrollError(f"{conv[0]}= adds a convolutional stem or head: it needs channels=")
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
        """What a built module keeps: the modules' factories, initial values and a callable
        init are spent (and each may be a lambda, which would not pickle). A spent callable
        init is kept as its name, which only says what drew the weights."""
        kept = replace(self, f=None, params={})
        if callable(self.init):
            name = getattr(self.init, "__qualname__", type(self.init).__name__)
            object.__setattr__(kept, "init", f"callable {name} (applied when built)")
        return kept


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
        return torch_function(activations.get(act)) if isinstance(act, str) else act

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
    if ref.device.type != "cuda" or not triton_op.triton_available():
        return False
    # the fused update has no forward-mode rule (torch.func.jvp, forward AD): PyTorch's has
    return not triton_op.forward_mode(list(current.values()))


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
        self.blocks = nn.ModuleList(_block(self.ir, opts, n, count) for n in range(count))
        if opts.survival is not None and not any(c.kind == "branch" for c in self.ir.calls):
            raise UnrollError(
                "stochastic depth scales residual branches: it needs an ODE scheme with f(x)"
            )
        _initialise(self.blocks, opts.init, self.ir, _state_shape(opts))
        self.stem, self.head = _stem(opts), _head(opts)
        if self.stem is not None:
            _one_tensor_start(
                self.form,
                "the stem (in_dim=/in_channels=) gives",
                "build the network without one and pass x0 as a mapping of those states",
            )
        self._linear = next((c.op for c in self.ir.calls if c.kind == "linear"), None)
        if opts.reversible:
            # refuses a scheme without an inverse, here; φ = identity is the one φ whose
            # inverse a scheme can write (itself)
            identity = self.blocks[0].activation == "identity"
            self._reversible = Reversal(self.ir, identity)
            if opts.survival is not None and opts.stochastic == "noise":
                self._reversible.check_gains(exact=False)

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
        per-layer states and F when asked for. With a stem and a head (``in_dim``/``out_dim``,
        ``in_channels``/``num_classes``) the input goes through the stem first and the result
        is the head's output on the final primary state."""
        if self.stem is not None:
            x0 = self.stem(_stem_input(self.options, x0))
        current, single = initial_states(self.form, x0)
        _check_width(self.options, self.form, current)
        if self.options.check_finite:
            check_finite(current, None)
        trace = return_states or return_objective
        out = self._tied_kernel(x0, trace)
        if out is not None:
            return self._headed(out, single)
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
        if self.options.reversible and torch.is_grad_enabled() and not trace:
            gains = [self._gain(n, ref) for n in range(self.depth)]
            history = self._reversible.run(self, history, values, gains, fused)
            final = newest(history)
            return self._headed(final[single] if single else final, single)
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
        out = self._headed(final[single] if single else final, single)
        if path is None:
            return out
        stacked = stack_path(path, final)
        states = (stacked[single] if single else stacked) if return_states else None
        F = self._objective(stacked) if return_objective else None
        return Trace(out, states, F)

    def _headed(self, out: Any, single: str | None) -> Any:
        if self.head is None:
            return out
        return self.head(out if single else out[primary_state(self.form)])

    def _tied_kernel(self, x0: Any, trace: bool) -> Any:
        """The whole network in one Triton kernel when it can run (else None, with
        `fallback_reason` saying why, decided before anything is launched)."""
        reason = self._tied_reason(x0, trace)
        if reason is None:
            block = self.blocks[0]
            W = block.operators[self._linear].weight
            coefficients = block.coefficients.values()
            act = self.options.activation
            reason = triton_tied.tied_reason(self.scheme, x0, W, act, coefficients)
        self.fallback_reason = reason
        if reason is not None:
            return None
        return triton_tied.tied_network(
            self.scheme, x0, W, self.depth, activation=act, **coefficients
        )

    def _tied_reason(self, x0: Any, trace: bool) -> str | None:
        """Why this network does not run as one tied kernel, for reasons of its own (the
        kernel's are `unroll.lowering.triton.tied.tied_reason`'s); None when those allow it."""
        opts = self.options
        if not opts.tied:
            return "the layers do not share their weights (tied=False)"
        if opts.backend == "torch":
            return "backend='torch' was asked for"
        ref = next(iter(x0.values())) if isinstance(x0, Mapping) else x0
        if isinstance(ref, torch.Tensor) and ref.device.type == "cpu" and opts.backend != "triton":
            return "the tensors are on the CPU (the interpreter runs the kernel only for backend='triton')"
        if trace:
            return "return_states/return_objective need every layer's state"
        if opts.dim is None:
            return "W is not a dense matrix (pass dim=; convolutional W runs per layer)"
        if opts.survival is not None:
            return "stochastic depth (survival=) scales branches per layer"
        if opts.check_finite:
            return "check_finite=True checks every layer's states, which one kernel keeps on chip"
        if self._linear is None:
            return f"{self.ir.label!r} has no product W(...): nothing for the kernel to multiply"
        if opts.activation is not None and not isinstance(opts.activation, str):
            return "the activation is a callable; the kernel needs a registered activation by name"
        return None

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


class Reversal:
    """The inverse of a network's step, and `reversible_unroll` around it: the backward pass
    rebuilds each layer's input history from its output instead of storing it."""

    def __init__(self, ir: StepIR, identity: bool = False):
        self.forward, self.identity, scheme = ir, identity, ir.scheme
        if identity:  # the network's φ is the identity: invert the step without it
            scheme = without_activation(scheme)
        self.scheme = scheme  # the step the inverse undoes
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

    def __getstate__(self) -> dict:
        # the printed inverse is resolved again on loading
        return {"forward": self.forward, "identity": self.identity}

    def check_gains(self, exact: bool) -> None:
        """Stochastic depth scales the branch outputs the updates read, but not those a later
        call reads in its argument (RevNet's g(X_k + f(Y_k))). The inverse then rebuilds the
        input exactly only for the gains 0 and 1 (``exact``): those of stochastic="drop" in
        training. Any other gain is refused, rather than rebuilt wrongly."""
        calls = {c.symbol for c in self.forward.calls}
        nested = [c for c in self.forward.calls if c.arg.free_symbols & calls]
        if nested and not exact:
            raise UnrollError(
                f"reversible=True: {self.forward.label!r} with stochastic depth: "
                f"{nested[0].op}({expr_text(self.forward.scheme_form(nested[0].arg))}) reads "
                "another branch's output unscaled, so the step "
                "cannot be inverted for gains other than 0 and 1: use stochastic='drop' "
                "(its training gains are 0 and 1), or reversible=False"
            )

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["forward"], state.get("identity", False))

    def _reversed(self, flat: tuple) -> tuple:
        """Each state's history reversed, in the inverse's state order: its own history."""
        out: list = []
        for at, d in self.order:
            out += flat[at : at + d][::-1]
        return tuple(out)

    def step_back(
        self, block: Block, n: int, flat: tuple, c: tuple, gain: torch.Tensor | None = None
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

    def run(self, net: Network, history: tuple, values: list, gains: list, fused: bool) -> tuple:
        """``net``'s layers from ``history`` by `reversible_unroll`."""
        blocks = net.blocks
        tied = net.options.tied

        def block(n: int) -> Block:
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
        amplification = inverse_amplification(self.scheme, layers) if layers else 1.0
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


def _block(ir: StepIR, opts: Options, n: int = 0, count: int = 1) -> Block:
    """Block ``n`` of ``count`` (the one of a tied network: n = 0, count = 1)."""
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
    coefficients = _coefficients(ir, opts, n, count)
    return Block(ir, operators, coefficients, _activation(opts, ir), opts.kept())


# -- initialisation, stem and head -------------------------------------------------------------
_WEIGHTED = (nn.Linear, nn.Conv2d, SymmetricLinear, SymmetricConv2d)


def _weight(module: nn.Module) -> torch.Tensor:
    return (
        module.raw_weight
        if isinstance(module, (SymmetricLinear, SymmetricConv2d))
        else module.weight
    )


def _initialise(
    blocks: Iterable[Block], init: str | Callable, ir: StepIR, shape: tuple | None = None
) -> None:
    """Apply ``init`` (see `Options`) to every operator module of ``blocks``, each once.
    ``shape``: a state's shape, to probe that a zeroed branch still trains."""
    if init == "default":
        return
    seen: set[int] = set()
    modules = []
    for block in blocks:
        for name, module in block.operators.items():
            if id(module) not in seen:
                seen.add(id(module))
                modules.append((name, module))
    if callable(init):
        for _, module in modules:
            module.apply(init)
        return
    branches = [(n, m) for n, m in modules if ir.operators().get(n, "branch") == "branch"]
    if init == "zeros":
        if not branches:
            raise UnrollError(
                f"init='zeros' starts every residual branch f at zero; {ir.label!r} has no "
                "branch (its layers are W and φ)"
            )
        for name, module in branches:
            _zero_last(name, module)
            _check_trains(name, module, shape or _input_shape(module))
        return
    fill = {
        "kaiming": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
        "xavier": nn.init.xavier_uniform_,
        "orthogonal": nn.init.orthogonal_,
    }[init]
    for _, module in modules:
        for layer in module.modules():
            if isinstance(layer, _WEIGHTED):
                with torch.no_grad():
                    fill(_weight(layer))
                    if getattr(layer, "bias", None) is not None:
                        layer.bias.zero_()


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
_FLAT_AT_ZERO = (nn.ReLU, nn.ReLU6)  # slope 0 at 0 in PyTorch: a zeroed input never trains


def _input_shape(branch: nn.Module) -> tuple | None:
    """A small input for ``branch`` read from its first Linear or Conv2d (None if it has neither)."""
    first = next((m for m in branch.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    if isinstance(first, nn.Linear):
        return (2, first.in_features)
    return None if first is None else (2, first.in_channels, 6, 6)


def _check_trains(name: str, branch: nn.Module, shape: tuple | None) -> None:
    """After init='zeros': refuse a branch whose zeroed parameters get no gradient, as a
    ReLU after the zeroed layer gives (slope 0 at 0), wherever it is written: a Sequential's
    tail is read by `_zero_last`, a module's own forward only by running it. The probe runs on
    a copy, so running statistics are untouched."""
    probe = copy.deepcopy(branch).train()
    zeroed = [p for p in probe.parameters() if p.requires_grad and not p.detach().any()]
    first = next(iter(probe.parameters()), None)
    if not zeroed or first is None or shape is None:
        return
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(first.dtype)
    try:
        out = probe(x)
    except Exception:  # noqa: BLE001 - a branch that cannot take a state fails at forward
        return
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        return
    w = torch.randn(out.shape, generator=g).to(out.dtype)
    grads = torch.autograd.grad((out * w).sum(), zeroed, allow_unused=True)
    if all(gr is None or not gr.any() for gr in grads):
        raise UnrollError(
            f"init='zeros': the branch {name} gets no gradient in the layer it zeroes (a ReLU "
            "or another function flat at 0 after it?), so that layer would never train; "
            "use another init, or end the branch in a layer that can start at zero"
        )


def _zero_last(name: str, branch: nn.Module) -> None:
    """Start ``branch`` at zero: its last Linear/Conv2d (weight and bias), or, when a
    normalisation comes after that layer, the normalisation's scale and shift (the zero-γ
    initialisation of residual networks; zeroing the convolution before a BatchNorm would only
    divide its gradient by √eps)."""
    layers = [m for m in branch.modules() if isinstance(m, (*_WEIGHTED, *_NORMS))]
    if not any(isinstance(m, _WEIGHTED) for m in layers):
        raise UnrollError(f"init='zeros': the branch {name} has no Linear or Conv2d layer to zero")
    last = layers[-1]
    if isinstance(branch, nn.Sequential):
        order = list(branch)
        tail = order[order.index(last) + 1 :] if last in order else []
        flat = [type(m).__name__ for m in tail if isinstance(m, _FLAT_AT_ZERO)]
        if flat:
            raise UnrollError(
                f"init='zeros': the branch {name} ends in {flat[-1]} after its last layer; "
                f"{flat[-1]} has slope 0 at 0, so a zeroed layer before it would never train"
            )
    with torch.no_grad():
        if isinstance(last, _NORMS):
            last.weight.zero_()
            last.bias.zero_()
        else:
            _weight(last).zero_()
            if getattr(last, "bias", None) is not None:
                last.bias.zero_()


def _state_shape(opts: Options) -> tuple | None:
    """A small batch of states of the width the network is built for (None when not given)."""
    if opts.dim is not None:
        return (2, opts.dim)
    if opts.channels is not None:
        return (2, opts.channels, 6, 6)
    return None


def _stem(opts: Options) -> nn.Module | None:
    if opts.in_dim is not None:
        return nn.Linear(opts.in_dim, opts.dim)
    if opts.in_channels is not None:
        return conv_stem(opts.in_channels, opts.channels)
    return None


def _head(opts: Options) -> nn.Module | None:
    if opts.out_dim is not None:
        return nn.Linear(opts.dim, opts.out_dim)
    if opts.num_classes is not None:
        return conv_head(opts.channels, opts.num_classes)
    return None


def conv_stem(in_channels: int, channels: int) -> nn.Module:
    """conv3×3 (no bias) → BatchNorm → ReLU, as the CIFAR ResNets begin."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
    )


def conv_head(channels: int, num_classes: int) -> nn.Module:
    """Global average pooling → Linear, as the CIFAR ResNets end: (B, C, H, W) -> (B, classes)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def _one_tensor_start(form: Scheme, given: str, instead: str) -> None:
    """Refuse, when built, a network that would be handed one tensor while ``form`` has more
    than one state without an initial value (RevNet's X and Y)."""
    try:
        primary_state(form)
    except UnrollError:
        free = [n for n, s in form.states.items() if s.init is None and s.depth > 0]
        raise UnrollError(
            f"{given} one tensor, but {form.name or 'the scheme'!r} starts from "
            f"{len(free)} states ({', '.join(free)}): {instead}"
        ) from None


def _stem_input(opts: Options, x: Any) -> torch.Tensor:
    """The network's input when it has a stem: a tensor of in_dim features or in_channels."""
    if not isinstance(x, torch.Tensor):
        raise UnrollError(
            f"a network with a stem takes a tensor, not a {type(x).__name__} of states"
        )
    width, axis, option = (
        (opts.in_dim, -1, "in_dim")
        if opts.in_dim is not None
        else (opts.in_channels, -3, "in_channels")
    )
    if x.dim() < -axis or x.shape[axis] != width:
        raise UnrollError(
            f"the input has shape {tuple(x.shape)}, but the network was built with "
            f"{option}={width} (axis {axis} must be {width})"
        )
    return x


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


def _coefficients(ir: StepIR, opts: Options, n: int = 0, count: int = 1) -> Coefficients:
    """Block ``n`` of ``count``'s coefficients. An ODE scheme's step h defaults to 1 here (a
    network absorbs the step into its branches, the ResNet convention), whatever the scheme
    file gives `Scheme.run`."""
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
        default = 1 if form.kind == "ode" and spec.name in STEP_NAMES else spec.default
        value = given.get(spec.name, default)
        if isinstance(value, per_block):
            if opts.tied:
                raise UnrollError(
                    f"params[{spec.name!r}]: per_block values need one block per step "
                    "(tied=True shares one)"
                )
            value = value.at(n, count, spec.name)
        elif callable(value) and not isinstance(value, torch.Tensor):
            raise UnrollError(
                f"params[{spec.name!r}] is a callable: wrap an initialiser of the block index "
                "as unroll.per_block(...)"
            )
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
    if not per_channel and t.numel() != 1:
        raise UnrollError(
            f"params[{name!r}] has shape {tuple(t.shape)}: a vector is one value per channel "
            f"only with per_channel=[{name!r}]; one value per block: unroll.per_block([...])"
        )
    t = t.reshape(()) if not per_channel else t
    if per_channel:
        if opts.width is None:
            raise UnrollError(f"parameter {name} is per channel: pass dim= or channels=")
        shape = (opts.width,) if opts.channels is None else (opts.width, 1, 1)
        try:
            t = t.expand(shape).clone() if t.dim() == 0 else t.reshape(shape).clone()
        except RuntimeError:
            raise UnrollError(
                f"params[{name!r}] has shape {tuple(t.shape)}: per channel it needs "
                f"{opts.width} values, shape {shape}"
            ) from None
    lo, hi = bounds
    if (lo is not None and bool((t < lo).any())) or (hi is not None and bool((t > hi).any())):
        raise UnrollError(f"params[{name!r}] = {value!r} lies outside the bounds {bounds}")
    return t


def layer(scheme: Scheme, **options: Any) -> Block:
    """One block of ``scheme``'s network (its layer form; see `Options` for the options)."""
    opts = Options.of(options)
    defaults = Options()
    for key in _NETWORK_ONLY:
        if getattr(opts, key) != getattr(defaults, key):
            raise UnrollError(f"{key}= is an option of a network, not of one layer")
    ir = build(scheme, layer=True)
    block = _block(ir, opts)
    _initialise([block], opts.init, ir, _state_shape(opts))
    return block


# What concerns a stack of layers (stochastic depth, the stem and head, the rebuilt backward,
# the check of every layer's states, tying) and so has no meaning for one layer.
_NETWORK_ONLY = (
    "survival", "reversible", "in_dim", "out_dim", "in_channels", "num_classes", "check_finite",
    "tied",
)  # fmt: skip


def network(scheme: Scheme, depth: int, **options: Any) -> Network:
    """``depth`` unrolled steps of ``scheme`` as a `Network` (see `Options` for the options)."""
    return Network(scheme, depth, Options.of(options))


# -- multi-stage convolutional classifiers ----------------------------------------------------------
def basic_branch(width: int) -> nn.Module:
    """The residual branch of a CIFAR ResNet's basic block: conv3×3 → BatchNorm → ReLU →
    conv3×3 → BatchNorm, ``width`` channels in and out."""
    return nn.Sequential(
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
    )


def transition(in_width: int, out_width: int) -> nn.Module:
    """Between two stages: conv3×3 with stride 2 (half the resolution, new width) → BatchNorm →
    ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_width, out_width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_width),
        nn.ReLU(),
    )


class Staged(nn.Module):
    """stem → stage 1 → transition → stage 2 → ... → head: a convolutional classifier whose
    stages are `Network`s of one scheme. (B, in_channels, H, W) -> (B, num_classes)."""

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[Network],
        transitions: Sequence[nn.Module],
        head: nn.Module,
    ):
        super().__init__()
        self.stem, self.head = stem, head
        self.stages = nn.ModuleList(stages)
        self.transitions = nn.ModuleList(transitions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.stem[0].in_channels
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
            shown = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise UnrollError(
                f"the input is {shown}, but the network was built with in_channels={channels}: "
                f"give (batch, {channels}, height, width)"
            )
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i:
                x = self.transitions[i - 1](x)
            x = stage(x)
        return self.head(x)


def staged(
    scheme: Scheme,
    stages: Sequence[tuple[int, int]],
    *,
    in_channels: int,
    num_classes: int,
    f: Any = None,
    **options: Any,
) -> Staged:
    """A multi-stage convolutional classifier of ``scheme``'s blocks, as the papers' CIFAR
    networks are built: ``stages`` is a sequence of (width, depth), e.g. [(16, 3), (32, 3),
    (64, 3)]; a stride-2 `transition` halves the resolution between stages. ``f``: for an ODE
    scheme, a factory of the width returning a branch module (or a mapping from branch names to
    such factories); default `basic_branch`. Every other option is `network`'s, for every stage.
    """
    if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence) or not stages:
        raise UnrollError(f"stages must be a non-empty sequence of (width, depth), not {stages!r}")
    for i, stage in enumerate(stages):
        ok = isinstance(stage, (tuple, list)) and len(stage) == 2
        if not ok or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in stage):
            raise UnrollError(
                f"stages[{i}] must be (width, depth), two positive ints, not {stage!r}"
            )
    for key in ("channels", "dim", "in_channels", "num_classes", "in_dim", "out_dim"):
        if key in options:
            raise UnrollError(f"staged sets {key}= itself (from stages, in_channels, num_classes)")
    ir = build(scheme, layer=True)
    _one_tensor_start(
        ir.scheme,
        "staged's stem and transitions give each stage",
        "build its stages with network() and pass each x0 as a mapping of those states",
    )
    branches = [n for n, k in ir.operators().items() if k == "branch"]

    def factory(width: int) -> Any:
        if not branches:
            return None
        if f is None:
            return dict.fromkeys(branches, lambda: basic_branch(width))
        if isinstance(f, Mapping):
            return {name: (lambda fac=fac: _of_width(fac, width)) for name, fac in f.items()}
        if callable(f) and not isinstance(f, nn.Module):
            return dict.fromkeys(branches, lambda: _of_width(f, width))
        raise UnrollError(
            "f= for staged must be a factory of the width (or a mapping of such factories): "
            "a module has one width"
        )

    networks = [
        network(scheme, depth, channels=width, f=factory(width), **options)
        for width, depth in stages
    ]
    widths = [w for w, _ in stages]
    transitions = [transition(a, b) for a, b in itertools.pairwise(widths)]
    return Staged(
        conv_stem(in_channels, widths[0]), networks, transitions, conv_head(widths[-1], num_classes)
    )


def _of_width(factory: Callable, width: int) -> nn.Module:
    """``factory(width)``, or an UnrollError saying what staged's f= must take."""
    try:
        inspect.signature(factory).bind(width)
    except (TypeError, ValueError):
        raise UnrollError(
            f"f= for staged must be a factory of the width, called f({width}); "
            f"{getattr(factory, '__name__', factory)!r} does not take one argument"
        ) from None
    return factory(width)
