"""The suite's one table of tolerances, each entry with the reason for its size.

Tests import the entry that says what they compare (``assert_close(got, want, **F64_ROUNDING)``)
rather than writing a number; a tolerance that checks nothing has no place here.
"""

from __future__ import annotations

import torch

# -- float64 against float64 ---------------------------------------------------------------------
# The same arithmetic in another order or association: O(1) values through tens of operations,
# each rounding by at most 2^-53 ≈ 1.1e-16 relative; 1e-12 leaves three decimal orders of room.
F64_ROUNDING = dict(rtol=0, atol=1e-12)
# Closed forms of an activation or an objective against SymPy/mpmath in float64: a handful of
# elementary functions, a few ulps each.
F64_CLOSED_FORM = dict(rtol=1e-12, atol=1e-13)
# The tied network's kernel against autograd of the eager network, both float64 in the
# interpreter: dot products of width n summed in another order over up to 16 layers.
F64_TIED = dict(rtol=1e-10, atol=1e-10)

# -- kernels, per storage dtype ------------------------------------------------------------------
# Block kernels against the eager lowering on the same inputs (relative, and absolute scaled by
# the values' size):
# float64: 1e-12 leaves four decimal orders over the unit roundoff for chains of <= ~10 ops;
# float32: unit roundoff 6e-8; 1e-5 allows ~100 ulps for chains of up to ~10 operations;
# float16 / bfloat16: the kernel computes in float32 and rounds once when storing; against
#   float64 on the same (rounded) inputs the error is half an ulp of the result (float16
#   2^-11 = 4.9e-4, bfloat16 2^-8 = 3.9e-3) plus float32 noise: one ulp (2^-10, 2^-7) passes.
KERNEL = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 2.0**-10,
    torch.bfloat16: 2.0**-7,
}
# One printed Triton expression against NumPy: float64 as KERNEL; float32 also runs the Kahan
# helpers (expm1, log1p, tanh: a few ulps each), so 2e-5 relative.
PRINTER = {torch.float64: 1e-12, torch.float32: 2e-5}
# The tied network on a GPU against float64: bfloat16 keeps 8 bits, ~4e-3 relative per layer,
# adding up over 16 layers to under ~3e-2; float32 with an IEEE dot: ~1e-6, so 1e-4 with room.
TIED_GPU = {torch.float32: 1e-4, torch.bfloat16: 3e-2}

# -- analyses and experiments ----------------------------------------------------------------------
# A convergence order measured as the slope of log error against log step, fitted on three step
# sizes that are still slightly pre-asymptotic: within 0.3 of the claimed order.
SLOPE = 0.3
# A numerical argmin of a 1-strongly convex function evaluated with float64 noise ε ≈ 1e-14
# (|values| ≲ 100): an error δ in the argmin costs at least δ²/2, so δ ≲ √(2ε) ≈ 1.4e-7.
PROX = 1e-6
# Reversible against standard backpropagation, float64: the rebuilt states carry eps times the
# inverse's amplification (1.1e-16 · 7.7e3 ≈ 1e-12 for momentum γ = 0.9 over 64 layers); a
# trainable coefficient's gradient sums layers that largely cancel (3.3e-9 measured on a 64-layer
# tied convolution). The bound 1e-8 holds for every leaf.
REVERSIBLE_GRAD_RTOL = 1e-8
