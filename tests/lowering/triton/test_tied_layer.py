"""One layer with its own W (unroll.codegen.tied.fused_layer): the matrix product with the
multi-state update in its epilogue, against plain torch formulas and finite differences."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import unroll  # noqa: E402
from tests.tolerances import F64_TIED, TIED_LAYER_GPU
from unroll import UnrollError  # noqa: E402
from unroll.lowering.triton import tied  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# float64 on both sides; the kernel sums the product in 16-wide chunks, torch in another order:
# rounding ~n·eps ≈ 1e-14; a wrong term is O(1e-1).
F64 = F64_TIED  # tests/tolerances.py


def _t(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(DEV)


def test_hb_net_layer_is_the_paper_formula():
    """Tiles over rows, output columns (33 -> 3 tiles) and the reduction (3 chunks)."""
    x, xp, W, b = _t(20, 33, seed=1), _t(20, 33, seed=2), _t(33, 33, seed=3), _t(33, seed=4)
    out = tied.fused_layer(unroll.schemes["hb_net"], {"x": [x, xp]}, W, b=b, β=0.7)
    torch.testing.assert_close(out["x"], torch.relu(x @ W.T + b + 0.7 * (x - xp)), **F64)


def test_rectangular_feedforward_layer():
    x, W, b = _t(20, 40, seed=5), _t(24, 40, seed=6), _t(24, seed=7)
    out = tied.fused_layer(unroll.schemes["proximal_gradient"], x, W, b=b)
    torch.testing.assert_close(out, torch.relu(x @ W.T + b), **F64)
    with pytest.raises(UnrollError, match="square W"):
        tied.fused_layer(unroll.schemes["hb_net"], x, W)


def test_agd_layer_and_admm_states():
    x, xp, W, b = _t(9, 17, seed=8), _t(9, 17, seed=9), _t(17, 17, seed=10), _t(17, seed=11)
    y = x + 0.4 * (x - xp)
    out = tied.fused_layer(unroll.schemes["agd_net"], [x, xp], W, b=b, beta=0.4)
    torch.testing.assert_close(out, torch.relu(y @ W.T + b), **F64)
    z, u = _t(9, 17, seed=12), _t(9, 17, seed=13)
    new = tied.fused_layer(unroll.schemes["admm"], {"z": z, "u": u}, W, b=b, η=0.5)
    xn = (z - u) @ W.T + b
    zn = torch.relu(xn + u)
    for got, want in zip(
        (new["x"], new["z"], new["u"]), (xn, zn, u + 0.5 * (xn - zn)), strict=True
    ):
        torch.testing.assert_close(got, want, **F64)


def test_gradcheck_float64():
    """The eager backward is the derivative of the kernel's forward (finite differences)."""
    x, xp, W, b = _t(8, 16, seed=14), _t(8, 16, seed=15), _t(16, 16, seed=16), _t(16, seed=17)
    beta = torch.tensor(0.3, dtype=torch.float64, device=DEV)
    inputs = [t.clone().requires_grad_(True) for t in (x, xp, W, b, beta)]

    def f(x, xp, W, b, beta):
        return tied.fused_layer(unroll.schemes["hb_net"], [x, xp], W, b=b, β=beta)

    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_layer_against_float64(dtype):
    x, xp, W, b = _t(3000, 256, seed=18), _t(3000, 256, seed=19), _t(256, 256, seed=20), _t(256)
    W = W / 16
    want = torch.relu(x @ W.T + b + 0.5 * (x - xp))
    got = tied.fused_layer(
        unroll.schemes["hb_net"], [x.to(dtype), xp.to(dtype)], W.to(dtype), b=b.float(), β=0.5
    )
    rel = ((got.double() - want).norm() / want.norm()).item()
    assert rel < TIED_LAYER_GPU[dtype]  # one layer's rounding
