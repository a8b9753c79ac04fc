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
# One or two roundings of an O(1) value (x − 0.1 x; one AB3 step against its formula): half an
# ulp of |x| ≲ 4 is 4.4e-16.
F64_ONE_ROUNDING = dict(rtol=0, atol=1e-15)
# A scalar against the formula it must equal, evaluated in float64 in another order (an RK4
# step, a θ schedule): a few ulps (2.2e-16 each) relative.
F64_FEW_ULPS = 1e-15
# The same float64 operations, or x + Δ − x rounding once at |x|'s ulp per block, on values
# ≲ 10: a few ulps of 10 (1.8e-15 each).
F64_SAME_OPS = dict(rtol=0, atol=1e-14)
# The same sums in another association (a fused step against the plain one): a few roundings
# of O(1) values, relative and absolute.
F64_REASSOCIATED = dict(rtol=1e-14, atol=1e-14)
# A float64 trajectory of 12-40 steps of a contraction against torch.optim, torchdiffeq or the
# plain loop: each step's few ulps of |x| ~ 1 accumulate to well under 1e-13.
F64_TRAJECTORY = dict(rtol=0, atol=1e-13)
# A float64 result reached another way (a kernel or a renamed op against the eager update, a
# convolution's adjoint, a round trip that neither grows nor shrinks): sums of up to ~400 O(1)
# products rounded in another order, relative and absolute.
F64_REROUTED = dict(rtol=1e-12, atol=1e-12)
# A float64 quantity against its closed form or another algorithm (a growth 1/γ, an inverse's
# roots, a 2-norm, an exact reference), relative to its size: four orders over the unit roundoff
# for well-conditioned problems.
F64_RELATIVE = 1e-12
# Float64 gradients reached by another route (DDP's average of half-batch means, a reloaded
# reversible network's rebuild): sums in another order, relative; 1e-14 absolute for entries
# near 0.
F64_GRADIENT = dict(rtol=1e-12, atol=1e-14)
# A generated block op's parameter gradients against autograd of the eager network, float64:
# the backward's sums over the batch and the layers in another order.
F64_BLOCK_GRAD = dict(rtol=1e-10, atol=1e-10)
# Splitting matrices S_j = Σ_n ... x̃ x̃ᵀ through autograd against einsum, or over two chunks of
# the batch against one: sums of 30-40 products in another order; 1e-14 absolute near 0.
F64_SPLITTING_MATRIX = dict(rtol=1e-10, atol=1e-14)
# An objective's g or F in float64 against NumPy or a 30-digit SymPy value (relative and
# absolute): a few elementary operations, or sums of n² terms of size ≲ 10, a few ulps each.
F64_OBJECTIVE = 1e-13
# The dilogarithm's series and reflections against mpmath, from −1e6 to 1: a few ulps
# relative, 1e-14 absolute at its zero.
F64_DILOG = dict(rtol=1e-13, atol=1e-14)
# Eight steps forward then back with a growth of at most 2 per layer: 2^8 · 1.1e-16 · (a few)
# ≈ 1e-13, so 1e-10 with room.
F64_INVERSE_ROUND_TRIP = dict(rtol=1e-10, atol=1e-10)
# ‖A^16‖ of LM-ResNet's inverse at κ = −0.05 (eigenvalues 1 and 20): V diag V⁻¹ against the
# product over the layers, both O(10^20); cancellation in V⁻¹ and 16 products cost a few
# decimal digits of float64's 16.
F64_MATRIX_POWER = 1e-9
# Σ (ε²/2) w_i δ_iᵀ S δ_i read back from a grown model's float64 parameters against the
# report's prediction: δ = (θ_new − θ_old)/ε and w from a ratio of column products lose a few
# digits to cancellation.
SPLIT_READBACK = 1e-9

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
# One tied layer on a GPU against float64, relative norm: float32 rounds a width-256 dot (a few
# ulps of 6e-8 in norm, ~1e-6); bfloat16 rounds the inputs and the result (2^-8 = 3.9e-3 each).
TIED_LAYER_GPU = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
# A network of a few layers (≤ 5, sums of ≤ 32 terms) in a low precision against float64,
# relative norm: float32 ~ layers × terms × 6e-8 ≈ 1e-5 at most; bfloat16 (unit roundoff
# 3.9e-3) over 3 layers stays within a few of those. A wrong network is off by O(1).
NETWORK_VS_F64 = {torch.float32: 1e-5, torch.bfloat16: 3e-2}
# The printed float32 helpers (tanh, expm1, log1p) against float64: unit roundoff 6e-8, a few
# ulps, so 1e-6 relative; a tiny absolute for the zeros.
F32_HELPERS = dict(rtol=1e-6, atol=1e-30)
# A network under torch.compile against eager, float32: Inductor fuses and reorders the
# arithmetic, a few ulps of values of order 1.
F32_COMPILED = dict(rtol=1e-5, atol=1e-6)
# A float32 orthogonal init (QR) times its transpose against I: a few ulps of the n-term sums.
F32_ORTHOGONAL = dict(rtol=0, atol=1e-5)
# A coefficient kept in float32 through its bound's logit and sigmoid, read back against the
# float64 value it was given (|κ| ≲ 1): a few float32 ulps (6e-8 each).
F32_COEFFICIENT = 1e-6
# Spiral points made in float32: their angle is good to ~1e-6 rad; 1e-4 with room (the other
# arm is π away).
F32_ANGLE = 1e-4
# A 3-layer bfloat16 network against float32, absolute on O(1) outputs: each layer rounds its
# inputs and a width-8 product by ~2^-8 relative; 0.1 with room, still far below a wrong formula.
BF16_NETWORK = dict(rtol=0, atol=0.1)

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
# A central difference with step 1e-6 against autograd: O(step²) truncation plus float64
# rounding / step ≈ 1e-10 relative; 1e-7 with room.
FINITE_DIFFERENCE = 1e-7
# A root where two roots meet is determined by float64 only to about √eps·|root| ≈ 1.5e-8
# (rounding ε in the parameters moves a double root by √ε): 1e-7 for roots of size ≲ 1.
DOUBLE_ROOT = 1e-7
# A triple root is found only to about eps^(1/3) ≈ 6e-6 by any method in float64.
TRIPLE_ROOT = 2e-5
# A growth or contraction rate measured from the iterates' sizes over their last steps (4-200)
# against the largest root: subdominant roots' remaining share, a double root's polynomial
# factor (n/(n/2))^(2/n) = 1.0035, and the worst λ between samples: 1%.
MEASURED_RATE = 1e-2
# A rate at parameters 10% off the optimum against the optimal rate: no smaller, up to
# rounding.
RATE_NEARBY = 1e-9
# An independent numerical search for the best parameters: it finds no better rate than the
# closed form, up to the double root's √eps sensitivity (1e-6 below it at most), and lands
# within 2e-3 of it (at a double root the rate moves like √δ in the parameters).
RATE_SEARCH_BELOW = 1e-6
RATE_SEARCH = 2e-3
# A number printed to three digits (docs/theory.md): half a unit in the third digit.
PRINTED_THREE_DIGITS = 5e-4
# Area of a stability region counted in grid cells: errs by about the boundary length (2π)
# times one cell width (0.01), 0.07, so 0.1.
GRID_AREA = 0.1
# Matrix-free Lanczos λ_min, λ_max against eigh: a Ritz value with residual ‖r‖ ≤ 1e-10·scale
# lies within ‖r‖ of an eigenvalue (S symmetric); 1e-8·scale leaves room for the scale
# estimate. Its eigenvector's angle is ≤ ‖r‖/gap, so 1 − |cos| ≈ angle²/2 is far below 1e-6.
LANCZOS_EIGENVALUE = 1e-8
LANCZOS_EIGENVECTOR = 1e-6
# The loss change after splitting at ε = 0.1 against the second-order prediction, as a ratio:
# third-order terms are O(ε) relative; 0.05.
SPLIT_PREDICTION = 0.05
# The sample std of 65536 draws: within ~0.3% of the distribution's (1σ); 3% is 10σ.
SAMPLE_STD = 0.03

# -- separations: how far a wrong result must be -------------------------------------------------
# A wrong inverse (another κ, the field's time run forwards) misses the start by O(1) (1.0 and
# 2.1 measured), a right one by rounding (1e-13): not allclose at 1e-3 tells the two apart.
WRONG_INVERSE = 1e-3
