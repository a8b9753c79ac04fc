"""`Scheme.network(..., tied=True)` runs the one-kernel tied network when it can, and says why
not when it cannot (``net.fallback_reason``). References: the same module on backend='torch'
(its per-layer eager path) and autograd through it."""

from __future__ import annotations

import os

import pytest
import torch

from tests.tolerances import F64_TIED

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import unroll  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
F64 = F64_TIED  # float64 both ways: rounding only (tests/tolerances.py)


@pytest.mark.parametrize("name", ["hb_net", "heavy_ball"])
def test_tied_network_module_uses_the_kernel_and_matches_the_per_layer_path(name):
    scheme = unroll.schemes[name]
    act = None if scheme.activation else "relu"
    torch.manual_seed(0)
    fast = scheme.network(4, tied=True, dim=16, backend="triton", activation=act).double().to(DEV)
    slow = scheme.network(4, tied=True, dim=16, backend="torch", activation=act).double().to(DEV)
    slow.load_state_dict(fast.state_dict())
    x0 = torch.randn(12, 16, dtype=torch.float64, device=DEV)
    out = fast(x0)
    assert fast.fallback_reason is None
    ref = slow(x0)
    assert slow.fallback_reason == "backend='torch' was asked for"
    torch.testing.assert_close(out, ref, **F64)
    upstream = torch.randn_like(ref)
    got = torch.autograd.grad(out, list(fast.parameters()), upstream)
    want = torch.autograd.grad(ref, list(slow.parameters()), upstream)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **F64)


def test_fallback_reasons_are_readable():
    scheme = unroll.schemes["hb_net"]
    x0 = torch.randn(4, 16, dtype=torch.float64, device=DEV)
    untied = scheme.network(3, tied=False, dim=16).double().to(DEV)
    untied(x0)
    assert "tied=False" in untied.fallback_reason
    traced = scheme.network(3, tied=True, dim=16, backend="triton").double().to(DEV)
    traced(x0, return_states=True)
    assert "every layer's state" in traced.fallback_reason
    wide = unroll.schemes["hb_net"].network(2, tied=True, dim=300, backend="triton").to(DEV)
    wide(torch.randn(2, 300, device=DEV))
    assert "exceeds 128" in wide.fallback_reason
