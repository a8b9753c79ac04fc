"""The options of `Scheme.network` and `Scheme.layer` (`Options`), checked when given, and
`per_block`, a coefficient's initial value per block."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from unroll.errors import UnrollError
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
    the scale and shift of a normalisation after it, is zeroed; refused where that layer would
    get no gradient, as before a ReLU, whose slope 0 at 0 keeps it zero), or a callable applied to every operator module as
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


def names_of(trainable: Iterable[str] | str) -> list[str]:
    """``trainable=`` as names: one name given as a string is that name, not its letters."""
    return [trainable] if isinstance(trainable, str) else list(trainable)
