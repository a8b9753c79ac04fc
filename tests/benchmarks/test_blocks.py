"""The block benchmark: the byte count of the floor, the report, and the refusal without a GPU."""

from __future__ import annotations

import pytest
import torch

from benchmarks.blocks import Report, Row, run, update_bytes
from unroll import UnrollError


def test_floor_bytes_count_each_tensor_once():
    # heavy ball, float32, 2^20 elements: reads x_k, x_<k-1>, ∇F and writes x_<k+1>.
    assert update_bytes(3, 1, 3, 1 << 20, 4, backward=False) == 4 * 4 * (1 << 20)
    # backward: reads dL/dx_<k+1> and the 3 saved inputs, writes 3 input gradients.
    assert update_bytes(3, 1, 3, 1 << 20, 4, backward=True) == (4 + 7) * 4 * (1 << 20)


def test_report_states_share_of_the_floor():
    r = Row("heavy_ball", 1 << 20, "triton", "fwd", ms=0.01, q20=0.009, q80=0.011, bytes=10**7)
    assert r.gbps() == pytest.approx(1000.0)
    report = Report("GPU", "2026-01-01", "float32", bandwidth=2e12, rows=[r])
    assert r.share(2e12) == pytest.approx(0.5)
    text = report.markdown()
    assert "| heavy_ball | 2^20 | triton | fwd | 0.0100 (0.0090-0.0110) | 1000 | 50% |" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU message")
def test_bench_without_a_gpu_is_a_clear_error():
    """The block benchmark outside the package (`unroll bench` is gone; its command line is
    `python -m benchmarks.blocks`): one clear error without a GPU."""
    with pytest.raises(UnrollError, match="CUDA"):
        run(["heavy_ball"], [20], "float32")
