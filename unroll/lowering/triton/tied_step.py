"""The tied network's view of one layer: `TiedStep` (p = P(c), z = p Wᵀ, c' = G(z, c), in
SymPy) and its reverse `TiedAdjoint`. `unroll.lowering.triton.tied.lower` builds it from the step
IR; `unroll.lowering.triton.tied_source` prints the kernels from it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp

from unroll.frontend.scheme import Scheme


@dataclass(frozen=True)
class TiedAdjoint:
    """One layer backwards, in the symbols of `TiedStep` plus ``adjoints`` (dL/d of each carried
    value after the layer) and ``dp`` (dL/dp = dL/dz @ W, known after the second product)."""

    adjoints: tuple[tuple[sp.Symbol, ...], ...]
    dp: sp.Symbol
    dz: sp.Expr  # dL/dz
    carried: tuple[tuple[sp.Expr, ...], ...]  # dL/d(carried values before the layer)
    scalars: tuple[sp.Expr, ...]  # this layer's dL/dq per element (summed by the kernel)
    channels: tuple[sp.Expr, ...]


@dataclass(frozen=True)
class TiedStep:
    """One layer ``p = P(c)``, ``z = p @ Wᵀ``, ``c' = G(z, c)`` of a weight-tied network.

    ``carried[i][j]`` is the j-th backward difference of state ``states[i]`` (c_0 = the state,
    c_1 = x_k − x_{k−1}, ...); ``point`` is P and ``update[i][j]`` is G for ``carried[i][j]``, in
    the carried symbols, ``z`` and the parameter symbols ``q`` (scalars) and ``ch`` (per
    channel), all real so that SymPy differentiates max as Heaviside."""

    scheme: Scheme
    activation: str
    states: tuple[str, ...]
    depths: tuple[int, ...]
    scalars: tuple[str, ...]
    channels: tuple[str, ...]
    carried: tuple[tuple[sp.Symbol, ...], ...]
    z: sp.Symbol
    q: tuple[sp.Symbol, ...]
    ch: tuple[sp.Symbol, ...]
    point: sp.Expr
    update: tuple[tuple[sp.Expr, ...], ...]

    @property
    def read(self) -> tuple[bool, ...]:
        """Per state: whether a layer reads it. One only ever written (ADMM's x) is neither
        carried nor stored between layers: its value goes out at the last layer."""
        used = self.point.free_symbols.union(*(e.free_symbols for row in self.update for e in row))
        return tuple(any(c in used for c in row) for row in self.carried)

    @property
    def point_state(self) -> int | None:
        """i when p is state i itself (then dW reads the stored states, no p buffer)."""
        for i, row in enumerate(self.carried):
            if self.point == row[0]:
                return i
        return None

    def history_symbols(self) -> tuple[tuple[sp.Symbol, ...], ...]:
        """``h[i][j]`` stands for state i's value j layers back (x_k, x_{k−1}, ...)."""
        return tuple(
            tuple(sp.Symbol(f"h{i}_{j}", real=True) for j in range(len(row)))
            for i, row in enumerate(self.carried)
        )

    def in_history(self) -> dict[sp.Symbol, sp.Expr]:
        """The carried values in history values: c_j = ∇^j x_k = Σ_m (−1)^m C(j, m) x_{k−m}."""
        h = self.history_symbols()
        return {
            c: sp.Add(*((-1) ** m * math.comb(j, m) * h[i][m] for m in range(j + 1)))
            for i, row in enumerate(self.carried)
            for j, c in enumerate(row)
        }

    def adjoint(self) -> TiedAdjoint:
        """The reverse of one layer by symbolic differentiation (the chain rule through P, the
        product and G)."""
        adj = tuple(
            tuple(sp.Symbol(f"a{i}_{j}", real=True) for j in range(len(row)))
            for i, row in enumerate(self.carried)
        )
        dp = sp.Symbol("dp", real=True)
        pairs = [
            (a, g)
            for arow, grow in zip(adj, self.update, strict=True)
            for a, g in zip(arow, grow, strict=True)
        ]

        def through(sym: sp.Symbol) -> sp.Expr:
            return sp.Add(*(a * sp.diff(g, sym) for a, g in pairs)) + dp * sp.diff(self.point, sym)

        return TiedAdjoint(
            adjoints=adj,
            dp=dp,
            dz=sp.Add(*(a * sp.diff(g, self.z) for a, g in pairs)),
            carried=tuple(tuple(through(c) for c in row) for row in self.carried),
            scalars=tuple(through(q) for q in self.q),
            channels=tuple(through(c) for c in self.ch),
        )
