"""Torch modules for a scheme's layers: `Block` (one step) and `Network` (``depth`` steps).

A block is the step IR of the scheme's layer form (`unroll.ir.step.build(scheme, layer=True)`),
printed once as straight-line PyTorch (`unroll.lowering.eager.program`), with

- ``operators``: the modules of its operator calls, ``W`` dense or convolutional, each branch
  ``f`` the user's module (`unroll.lowering.nn.operators`, with the weight initialisations);
- ``coefficients``: its parameters (`unroll.lowering.nn.coefficients.Coefficients`): trainable
  ones are `nn.Parameter`s, bounded ones stored unconstrained as ``raw_<name>`` and mapped into
  their interval once per forward; the others buffers.

The options both accept are `unroll.lowering.nn.options.Options`; a network's stem and head are
`unroll.lowering.nn.stems`'s, multi-stage classifiers `unroll.lowering.nn.staged`'s, and the
backward pass of ``reversible=True`` is `unroll.lowering.nn.reversible.Reversal`'s.

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from unroll.analysis.identification import identify
from unroll.analysis.objectives import objective
from unroll.errors import UnrollError
from unroll.frontend.scheme import STEP_NAMES, Scheme
from unroll.ir import activations
from unroll.ir.step import StepIR, build
from unroll.lowering.eager.activations import torch_function
from unroll.lowering.eager.program import EagerStep, advance, eager_step
from unroll.lowering.eager.states import (
    check_finite,
    free_states,
    initial_states,
    primary_state,
    stack_path,
)
from unroll.lowering.nn.coefficients import Coefficients, coefficients_of
from unroll.lowering.nn.operators import branch_operator, initialise, linear_operator, state_shape
from unroll.lowering.nn.options import Options
from unroll.lowering.nn.reversible import Reversal
from unroll.lowering.nn.stems import head_of, stem_input, stem_of
from unroll.lowering.triton import op as triton_op
from unroll.lowering.triton import tied as triton_tied


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
        initialise(self.blocks, opts.init, self.ir, state_shape(opts))
        self.stem, self.head = stem_of(opts), head_of(opts)
        if self.stem is not None:
            one_tensor_start(
                self.form,
                "the stem (in_dim=/in_channels=) gives",
                "build the network without one and pass x0 as a mapping of those states",
            )
        self._linear = next((c.op for c in self.ir.calls if c.kind == "linear"), None)
        if opts.reversible:
            try:
                self._reversible = Reversal(self.ir)  # refuses a scheme without an inverse
            except UnrollError as e:
                if "inverse of φ" not in str(e) or self.blocks[0].activation != "identity":
                    raise
                raise UnrollError(
                    f"{e}. With φ = identity the step could be solved for it, but W would then "
                    "enter the inverse unscaled, and the error amplification unroll predicts "
                    "(from the step's coefficients) would not bound what W adds: refused "
                    "rather than risk a wrong gradient"
                ) from None
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
            x0 = self.stem(stem_input(self.options, x0))
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
            operators[name] = linear_operator(opts, name)
        elif kind == "branch":
            operators[name] = branch_operator(opts, name, len(branches))
        else:  # pragma: no cover - the layer form has no ∇F
            raise UnrollError(f"operator {name} has no module")
    coefficients = coefficients_of(ir, opts, n, count)
    return Block(ir, operators, coefficients, _activation(opts, ir), opts.kept())


def one_tensor_start(form: Scheme, given: str, instead: str) -> None:
    """Refuse, when built, a network that would be handed one tensor while ``form`` has more
    than one state without an initial value (RevNet's X and Y)."""
    free = free_states(form)
    if len(free) > 1:
        raise UnrollError(
            f"{given} one tensor, but {form.name or 'the scheme'!r} starts from "
            f"{len(free)} states ({', '.join(free)}): {instead}"
        )


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


def layer(scheme: Scheme, **options: Any) -> Block:
    """One block of ``scheme``'s network (its layer form; see `Options` for the options)."""
    opts = Options.of(options)
    defaults = Options()
    for key in _NETWORK_ONLY:
        if getattr(opts, key) != getattr(defaults, key):
            raise UnrollError(f"{key}= is an option of a network, not of one layer")
    ir = build(scheme, layer=True)
    block = _block(ir, opts)
    initialise([block], opts.init, ir, state_shape(opts))
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
