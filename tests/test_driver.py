"""The driver: every pass once, every intermediate returned."""

from __future__ import annotations

import torch

import unroll
from unroll.driver import pipeline


def test_every_stage_of_an_optimizer_scheme():
    c = pipeline("x_<k+1> = x_k + β(x_k - x_<k-1>) - α∇F")
    assert c.scheme == unroll.compile("x_<k+1> = x_k + β(x_k - x_<k-1>) - α∇F")
    assert [call.op for call in c.ir.calls] == ["∇F"]
    assert [call.op for call in c.layer.calls] == ["W"]  # the layer form: ∇F realised as W
    assert c.facts["kind"] == "optimizer" and c.notes == {}
    assert "def step(" in c.eager.source and "@triton.jit" in c.kernel
    # the printed step is the one Scheme.run runs: with plain-number coefficients, its variant
    # that accumulates in place, which sums in another order than `step` (one rounding apart)
    x0, grad = torch.randn(4, dtype=torch.float64), (lambda x: 2 * x)
    ran = c.scheme.run(x0, 1, grad=grad, α=0.1, β=0.5)
    h = c.eager.step_numbers((x0, x0), (0.1, 0.5), 0.0, 0, (grad,))
    torch.testing.assert_close(h[0], ran, rtol=0, atol=0)
    h = c.eager.step((x0, x0), (0.1, 0.5), 0.0, 0, (grad,))
    torch.testing.assert_close(h[0], ran)  # float64's default: a few roundings


def test_a_stage_that_does_not_apply_says_why():
    c = pipeline("x_<k+1> = x_k + h f(x_<k+1>)")  # implicit: analysed, not lowered
    assert c.facts["order"] == 1
    assert c.eager is None and c.kernel is None
    assert "implicit" in c.notes["eager"] and "implicit" in c.notes["kernel"]
