"""`unroll bench`: the byte count of the floor, the report, and the CLI without a GPU."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from benchmarks.blocks import Report, Row, update_bytes
from unroll.cli import cli


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
    result = CliRunner().invoke(cli, ["bench", "heavy_ball"])
    assert result.exit_code == 2 and "CUDA" in result.output
    result = CliRunner().invoke(cli, ["bench", "no_such_scheme"])
    assert result.exit_code == 2 and "no_such_scheme" in result.output
