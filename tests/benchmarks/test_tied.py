"""The tied-network benchmark's plumbing (benchmarks/tied.py) on the CPU: its eager network is the
scheme's network, every mode's error against float64 is measured, and `python -m benchmarks.tied`
refuses without a GPU. No time is checked: interpreter times say nothing about a GPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import unroll  # noqa: E402
from benchmarks import tied as bench_tied  # noqa: E402
from tests import ROOT  # noqa: E402
from tests.tolerances import F64_REROUTED, NETWORK_VS_F64
from unroll.api import layer_form  # noqa: E402


@pytest.mark.parametrize(("name", "coeff"), [("hb_net", "β"), ("agd_net", "β"), ("admm", "η")])
def test_eager_network_is_the_schemes_network(name, coeff):
    """The benchmark's eager function against `Scheme.run` of the layer (float64)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 8, generator=g, dtype=torch.float64)
    W = torch.randn(8, 8, generator=g, dtype=torch.float64) / 3
    b = torch.randn(8, generator=g, dtype=torch.float64)
    scheme = unroll.schemes[name]
    got = bench_tied.eager_network(scheme, 4)(x0, W, torch.tensor(0.4, dtype=x0.dtype), b)
    want = layer_form(scheme).run(x0, 4, W=W, b=b, **{coeff: 0.4})
    # The same operations in the same order: equal up to a few roundings.
    torch.testing.assert_close(got, want, **F64_REROUTED)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of the benchmark")
def test_run_on_the_interpreter_reports_every_mode_and_its_error():
    rows = bench_tied.run("hb_net", [(24, 16, 2)], dtype="float32", modes=("eager", "tied"))
    assert [(r.mode, r.backward) for r in rows] == [
        ("eager", False),
        ("eager", True),
        ("tied", False),
        ("tied", True),
    ]
    for r in rows:
        # float32 against float64 over 2 layers of 16-term sums: ~1e-7; a wrong network is O(1).
        assert r.rel_err < NETWORK_VS_F64[torch.float32], r
        assert r.share is None  # no matmul peak is claimed without a GPU
    table = bench_tied.table(rows)
    assert table.row_count == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU refusal")
def test_cli_refuses_without_gpu(capsys):
    """`python -m benchmarks.tied` (what .ci/gpu-check runs): one line and exit 2 without CUDA."""
    assert bench_tied.cli(["--dtype", "bfloat16"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.tied", "--dtype", "bfloat16"], cwd=ROOT,
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and "needs a CUDA device" in done.stderr, done.stderr


def test_bfloat16_network_runs_end_to_end_in_the_eager_modes():
    """The benchmark's default dtype: every input of the network, coefficients included, is
    bfloat16 (a float32 b promoted the eager state to float32, and the next product with the
    bfloat16 W failed). The tied mode is left to the GPU: the interpreter's bfloat16 tl.dot is
    wrong (it multiplies the raw 16-bit patterns), so it proves nothing here."""
    rows = bench_tied.run("hb_net", [(24, 16, 3)], dtype="bfloat16", modes=("eager",))
    assert [r.backward for r in rows] == [False, True]
    for r in rows:
        # bfloat16 keeps 8 bits (unit roundoff 3.9e-3); 3 layers of 16-term sums stay within a
        # few of those; a wrong network is O(1).
        assert r.rel_err < NETWORK_VS_F64[torch.bfloat16], r


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of the benchmark")
def test_main_writes_the_tables_as_markdown(tmp_path):
    """`python -m benchmarks.tied -o FILE` (what .ci/gpu-check runs) writes the report there."""
    path = tmp_path / "tied.md"
    rows = bench_tied.main(
        ["hb_net"], "float32", cases=[(24, 16, 2)], modes=("eager",), backward=False, output=path
    )
    text = path.read_text()
    assert text.startswith("# Weight-tied networks")
    table = [line for line in text.splitlines() if line.startswith("| 24×16×2 |")]
    assert len(table) == len(rows) == 1
    assert f"| {rows[0].ms:.3f} |" in table[0]


def test_gpu_check_fits_one_device_run_gpu_tests_first():
    """.ci/gpu-check: its steps' limits add up to at most 8 minutes (one device call of at most
    10 keeps its logs), the GPU tests run first, the benchmarks then, as modules (`python -m
    benchmarks.tied` with options its parser takes)."""
    import re
    import shlex

    lines = [
        line for line in (ROOT / ".ci" / "gpu-check").read_text().splitlines()
        if re.match(r"timeout \d+ ", line)
    ]  # fmt: skip
    limits = [int(line.split()[1]) for line in lines]
    assert sum(limits) <= 8 * 60, limits
    steps = [line.split()[2:5] for line in lines]
    assert steps[1] == ["$py", "-m", "pytest"] and "-m gpu" in lines[1]
    assert [s[2] for s in steps[2:4]] == ["benchmarks.blocks", "benchmarks.tied"]
    assert "not gpu" in lines[4]
    args = shlex.split(lines[3].split("benchmarks.tied", 1)[1].split("2>&1")[0])
    parsed = bench_tied.parser().parse_args(args)  # an unknown option exits here
    assert (parsed.dtype, parsed.output, parsed.schemes) == ("bfloat16", "$OUT/tied.md", ["hb_net"])
