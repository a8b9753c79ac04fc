"""Deep to parallel: a stack of residual blocks as one wide layer (docs/theory.md section 6).

A stack x_k = x_{k−1} + f_k(x_{k−1}), k = 1..K, expands like a Taylor series:

    x_K = x + Σ_k f_k(x) + Σ_{k>j} J_{f_k}(x) f_j(x) + O(|f|³)

`parallelize` keeps the terms up to ``order``: order 1 is the wide shallow form
y = x + Σ_k f_k(x), every branch reading the same input; order 2 adds the cross terms by one
Jacobian-vector product per branch (``torch.func.jvp``), using
Σ_{k>j} J_{f_k}(x) f_j(x) = Σ_k J_{f_k}(x) s_k with s_k = Σ_{j<k} f_j(x).

A network from `Scheme.network` is such a stack when its scheme is one-step with one state
(forward Euler, midpoint, Heun, RK4, ...): block k maps x to x + f_k(x) with f_k(x) the step's
increment (h·f(x) for forward Euler), which `Increment` computes.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn
from torch.func import jvp

from unroll.errors import UnrollError
from unroll.lowering.nn.modules import Block, Network

__all__ = ["Difference", "Increment", "Parallel", "Residual", "branch", "parallelize"]


class Residual(nn.Module):
    """The residual block x → x + f(x); ``f`` is any module mapping x to x's shape."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, x: Tensor) -> Tensor:
        return x + self.f(x)


class Increment(nn.Module):
    """The residual branch of a scheme block (`unroll.lowering.nn.modules.Block`): f(x) = step(x) − x,
    the block's step n (n enters through the time t = n·h of a non-autonomous scheme).

    Only for one-step schemes with one state, where x → x + f(x) is the whole block (see
    `_one_step`). Maps x of shape (batch, ...) to the same shape. The block update runs in
    PyTorch whatever the block's backend: order 2 differentiates it in forward mode
    (``torch.func.jvp``), which the fused Triton update does not support (its tangents come
    out zero, silently).
    """

    def __init__(self, block: Block, n: int = 0):
        super().__init__()
        self.block, self.n = block, n
        self.state = _one_step(block.ir.scheme)

    def forward(self, x: Tensor) -> Tensor:
        (new,) = self.block.step((x,), self.n)  # the PyTorch update (fused=False)
        return new - x

    def extra_repr(self) -> str:
        return f"n={self.n}"


def _one_step(form) -> str:
    """The state of a one-step, one-state scheme (x_{k+1} from x_k alone), else UnrollError."""
    name = form.name or str(form)
    if len(form.states) != 1:
        raise UnrollError(
            f"scheme {name!r} has the states {', '.join(form.states)}; a residual stack "
            "x → x + f_k(x) has one state"
        )
    ((state, spec),) = form.states.items()
    if spec.depth != 1 or spec.scalar:
        raise UnrollError(
            f"scheme {name!r} reads {spec.depth} past values of {state}; a residual block "
            f"x → x + f(x) reads only {state}_k (a one-step scheme)"
        )
    return state


class Difference(nn.Module):
    """The branch of any residual block: f(x) = block(x) − x, for a ``block`` that maps x to a
    tensor of x's shape (an `UnrollError` at the first call otherwise)."""

    def __init__(self, block: nn.Module, where: str = ""):
        super().__init__()
        self.block, self.where = block, where

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        if not isinstance(y, Tensor) or y.shape != x.shape:
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise UnrollError(
                f"{self.where}{type(self.block).__name__} maps x of shape {tuple(x.shape)} to "
                f"{got}: a residual block x -> x + f(x) keeps the shape"
            )
        return y - x


def branch(block: nn.Module, where: str = "") -> nn.Module:
    """The residual branch f of ``block``: its attribute ``f`` or ``branch`` when it exposes one
    (a fast path: then nothing else of the block is used, so any extra behaviour in its
    ``forward``, a scale or a norm around the sum, is not carried over); a block of a one-step
    scheme (`Scheme.layer`) gives its `Increment`; any other module mapping x to x's shape is
    read as x + f(x), f(x) = block(x) − x (`Difference`)."""
    if isinstance(block, Block):
        return Increment(block)
    for name in ("f", "branch"):
        f = getattr(block, name, None)
        if isinstance(f, nn.Module):
            return f
    return Difference(block, where)


class Parallel(nn.Module):
    """y = x + Σ_k f_k(x), plus Σ_{k>j} J_{f_k}(x) f_j(x) when ``order == 2``.

    ``branches`` are the f_k in the order of the original stack (order 2 depends on it).
    Input and output have the same shape (batch, ...).
    """

    def __init__(self, branches: list[nn.Module], order: int = 1):
        super().__init__()
        if isinstance(order, bool) or order not in (1, 2):
            raise UnrollError(f"order must be 1 or 2, got {order!r}")
        self.branches = nn.ModuleList(branches)
        self.order = order

    def forward(self, x: Tensor) -> Tensor:
        y, prefix = x, None  # prefix = Σ_{j<k} f_j(x)
        for k, f in enumerate(self.branches):
            if self.order == 1 or prefix is None:
                out, cross = f(x), None
            else:
                out, cross = jvp(f, (x,), (prefix,))
            if out.shape != x.shape:
                raise UnrollError(
                    f"branch {k} maps shape {tuple(x.shape)} to {tuple(out.shape)}; a residual "
                    "branch must keep the shape"
                )
            y = y + out if cross is None else y + out + cross
            prefix = out if prefix is None else prefix + out
        return y

    def extra_repr(self) -> str:
        return f"order={self.order}"


def parallelize(model: nn.Module, order: int = 1, *, share: bool = True) -> Parallel:
    """The wide form of a stack of residual blocks.

    ``model`` is an ``nn.Sequential`` (or ``nn.ModuleList``) whose every entry is a residual
    block in the sense of `branch`, or a `Scheme.network` of a one-step, one-state scheme
    (forward Euler, midpoint, RK4, ...; not multistep schemes such as LM-ResNet, whose blocks
    read x_{k−1}, nor stochastic depth), whose block k is x → x + f_k(x) with f_k its
    `Increment`. ``order`` 1 or 2 is where the expansion is cut; K = 1 is exact at any order.
    ``share=True`` makes the result use the very branch modules of ``model`` (training one
    trains the other); ``share=False`` deep-copies them, keeping modules that ``model`` shares
    (a weight-tied network) shared.

    Returns a `Parallel` module mapping x of shape (batch, ...) to the same shape.
    """
    if isinstance(model, Network):
        branches = _network_branches(model)
    elif isinstance(model, nn.Sequential | nn.ModuleList):
        if len(model) == 0:
            raise UnrollError("model has no residual blocks")
        branches = []
        for i, block in enumerate(model):
            branches.append(branch(block, f"model[{i}]: "))
    else:
        raise UnrollError(
            "model must be an nn.Sequential of residual blocks or a Scheme.network, "
            f"got {type(model).__name__}"
        )
    # One deep copy of the whole list: a module used by several branches stays one module.
    return Parallel(branches if share else copy.deepcopy(branches), order=order)


def _network_branches(net: Network) -> list[nn.Module]:
    """The increments of a `Network`'s steps, in order."""
    if net.options.survival is not None:
        raise UnrollError(
            "the network uses stochastic depth (survival=...): its blocks are random, not "
            "x → x + f_k(x); build it without survival to parallelize it"
        )
    _one_step(net.form)
    tied = net.options.tied
    return [Increment(net.blocks[0 if tied else n], n) for n in range(net.depth)]
