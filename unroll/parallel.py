"""Deep to parallel: a stack of residual blocks as one wide layer (BACKGROUND.md section 6).

A stack x_k = x_{k−1} + f_k(x_{k−1}), k = 1..K, expands like a Taylor series:

    x_K = x + Σ_k f_k(x) + Σ_{k>j} J_{f_k}(x) f_j(x) + O(|f|³)

`parallelize` keeps the terms up to ``order``: order 1 is the wide shallow form
y = x + Σ_k f_k(x), every branch reading the same input; order 2 adds the cross terms by one
Jacobian-vector product per branch (``torch.func.jvp``), using
Σ_{k>j} J_{f_k}(x) f_j(x) = Σ_k J_{f_k}(x) s_k with s_k = Σ_{j<k} f_j(x).
"""

from __future__ import annotations

import copy

from torch import Tensor, nn
from torch.func import jvp

from .errors import UnrollError

__all__ = ["Parallel", "Residual", "branch", "parallelize"]


class Residual(nn.Module):
    """The residual block x → x + f(x); ``f`` is any module mapping x to x's shape."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, x: Tensor) -> Tensor:
        return x + self.f(x)


def branch(block: nn.Module) -> nn.Module:
    """The residual branch f of ``block``.

    The protocol: a residual block computes x + f(x) and exposes f as the attribute ``f``
    (as `Residual` does) or ``branch``. Nothing else of the block is used, so any extra
    behaviour in its ``forward`` (a scale, a norm around the sum) is not carried over.
    """
    for name in ("f", "branch"):
        f = getattr(block, name, None)
        if isinstance(f, nn.Module):
            return f
    raise UnrollError(
        f"{type(block).__name__} is not a residual block: it exposes neither a module "
        "'.f' nor '.branch' (wrap the branch as unroll.parallel.Residual(f))"
    )


class Parallel(nn.Module):
    """y = x + Σ_k f_k(x), plus Σ_{k>j} J_{f_k}(x) f_j(x) when ``order == 2``.

    ``branches`` are the f_k in the order of the original stack (order 2 depends on it).
    Input and output have the same shape (batch, ...).
    """

    def __init__(self, branches: list[nn.Module], order: int = 1):
        super().__init__()
        if order not in (1, 2):
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
    block in the sense of `branch`. ``order`` 1 or 2 is where the expansion is cut; K = 1 is
    exact at any order. ``share=True`` makes the result use the very branch modules of
    ``model`` (training one trains the other); ``share=False`` deep-copies them.

    Returns a `Parallel` module mapping x of shape (batch, ...) to the same shape.
    """
    if not isinstance(model, nn.Sequential | nn.ModuleList):
        raise UnrollError(
            f"model must be an nn.Sequential of residual blocks, got {type(model).__name__}"
        )
    if len(model) == 0:
        raise UnrollError("model has no residual blocks")
    branches = []
    for i, block in enumerate(model):
        try:
            f = branch(block)
        except UnrollError as e:
            raise UnrollError(f"model[{i}]: {e}") from None
        branches.append(f if share else copy.deepcopy(f))
    return Parallel(branches, order=order)
