"""A block's operator modules (W dense or convolutional, symmetric on request; each branch f
the user's module or factory) and the weight initialisations of `Options.init`."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from unroll.errors import UnrollError
from unroll.ir.step import StepIR
from unroll.lowering.nn.options import Options


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


def linear_operator(opts: Options, name: str) -> nn.Module:
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


def branch_operator(opts: Options, name: str, count: int) -> nn.Module:
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


# -- initialisation, stem and head -------------------------------------------------------------
_WEIGHTED = (nn.Linear, nn.Conv2d, SymmetricLinear, SymmetricConv2d)


def _weight(module: nn.Module) -> torch.Tensor:
    return (
        module.raw_weight
        if isinstance(module, (SymmetricLinear, SymmetricConv2d))
        else module.weight
    )


def initialise(
    blocks: Iterable[nn.Module], init: str | Callable, ir: StepIR, shape: tuple | None = None
) -> None:
    """Apply ``init`` (see `Options`) to every operator module of ``blocks`` (`Block`s), each once.
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


def state_shape(opts: Options) -> tuple | None:
    """A small batch of states of the width the network is built for (None when not given)."""
    if opts.dim is not None:
        return (2, opts.dim)
    if opts.channels is not None:
        return (2, opts.channels, 6, 6)
    return None
