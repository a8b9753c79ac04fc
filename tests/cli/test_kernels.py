"""`unroll kernels` and `unroll emit --target`: kernels compiled for a GPU on this machine, the
report as JSON, and bad input as one line. The figures themselves: test_aot.py."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from unroll.cli import cli

pytest.importorskip("triton")


def test_emit_target_reports_the_modules_kernels_as_json(tmp_path):
    result = CliRunner().invoke(
        cli, ["emit", "heavy_ball", "-o", str(tmp_path), "--target", "sm_90a", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)  # "wrote ..." went to stderr
    names = {(r["name"], r["shape"]) for r in rows}
    assert names == {
        (f"heavy_ball_{k}_kernel", f"(8192, 256), {dt}")
        for k in ("fwd", "bwd")
        for dt in ("float32", "bfloat16")
    }
    for r in rows:
        assert r["error"] is None and r["fits"] and r["registers"] > 0 and r["target"] == "sm_90a"
    assert (tmp_path / "heavy_ball.py").exists()


def test_kernels_for_one_scheme_prints_a_table():
    result = CliRunner().invoke(
        cli, ["kernels", "--scheme", "forward_euler", "--only", "block", "--target", "sm_80"]
    )
    assert result.exit_code == 0, result.output
    assert "forward_euler_fwd_kernel" in result.output and "sm_80" in result.output


def test_an_unknown_target_is_one_line():
    result = CliRunner().invoke(cli, ["kernels", "--target", "sm_70"])
    assert result.exit_code == 2
    assert "unknown target 'sm_70'" in result.output and "sm_90a" in result.output
