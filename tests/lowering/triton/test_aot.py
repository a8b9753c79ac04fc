"""The kernels compiled ahead of time for Hopper (sm_90a) on this machine, without a GPU: each
compiles, and fits the shared memory one block may use there (227 KB). The reference is the
real compiler (Triton's, then ptxas and cuobjdump from its wheel), not the interpreter, which
never sees registers or shared memory.

Every compilation runs in a fresh subprocess (`resources.compile_items`): this test process
runs kernels under TRITON_INTERPRET=1, which patches triton.language for good. On two CPU
cores the module takes about a minute, mostly the tied backward at width 256.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

from unroll import UnrollError  # noqa: E402
from unroll.lowering.triton import aot, resources  # noqa: E402


@pytest.fixture(scope="module")
def compiled():
    """hb_net's block update (forward and backward, float32) and the tied network's forward and
    backward at width 256 in bfloat16, the widest the network accepts, for sm_90a."""
    items = [
        dict(group="block", scheme="hb_net", dtype="float32", shape=[8192, 256]),
        dict(
            group="tied",
            scheme="hb_net",
            width=256,
            dtype="bfloat16",
            kernels=["tied_forward", "tied_backward"],
        ),  # fmt: skip
    ]
    return {r.name: r for r in resources.compile_items(items, "sm_90a", jobs=2)}


def test_block_and_tied_kernels_compile_and_fit_on_hopper(compiled):
    assert set(compiled) == {"hb_net_fwd_kernel", "hb_net_bwd_kernel", "tied_forward",
                             "tied_backward"}  # fmt: skip
    for name, r in compiled.items():
        assert r.error is None, (name, r.error)
        assert r.registers > 0, name  # cuobjdump read the cubin
        assert r.shared + r.static_shared <= 227 * 1024, (name, r.shared)
        assert r.fits, name


def test_the_tied_kernels_use_hoppers_tensor_cores_and_spill_little(compiled):
    """Issue 12's targets at width 256 in bfloat16: wgmma in both kernels; the forward spills
    at most 512 bytes per thread."""
    fwd, bwd = compiled["tied_forward"], compiled["tied_backward"]
    assert fwd.wgmma > 0 and bwd.wgmma > 0, (fwd.tensor_cores, bwd.tensor_cores)
    assert fwd.stack <= 512, fwd.stack


def test_a_kernel_past_the_limit_is_reported_as_not_fitting():
    """The check is not vacuous: the same tied backward with 128 rows per program and three
    pipeline stages asks for more than 227 KB, and the report says so."""
    item = dict(
        group="tied", scheme="hb_net", width=256, dtype="bfloat16", kernels=["tied_backward"],
        config={"forward": [64, 8, 1], "backward": [128, 8, 3]},
    )  # fmt: skip
    (r,) = resources.compile_items([item], "sm_90a")
    assert r.error is None and r.shared > 227 * 1024 and not r.fits


def _clean_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter without TRITON_INTERPRET; its last line of output."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
        check=True,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


def test_kernel_reason_refuses_what_does_not_fit_the_device():
    """What `tied_reason` asks on a GPU before launching (`tied.kernel_reason`): on an A100
    (163 KB per block) the width-256 bfloat16 kernels do not all fit, and the reason gives the
    amount; on Hopper they do."""
    out = _clean_python(
        """
        import json, torch, unroll
        from unroll.lowering.triton import aot, tied
        s = unroll.schemes["hb_net"]
        print(json.dumps([tied.kernel_reason(s, 256, torch.bfloat16, aot.TARGETS["sm_80"]),
                          tied.kernel_reason(s, 256, torch.bfloat16, aot.TARGETS["sm_90a"])]))
        """
    )
    a100, h100 = json.loads(out)
    assert a100 is not None and "past the 163 KB" in a100 and "at width 256" in a100, a100
    assert h100 is None, h100


def test_kernel_reason_refuses_a_forward_past_its_spill_target():
    """densenet's layer carries three states: its bfloat16 forward at width 256 spills past the
    512 bytes per thread the tied forward may take, so the network refuses it before launching
    (the reason names the figure); at width 128 it spills nothing and runs."""
    out = _clean_python(
        """
        import json, torch, unroll
        from unroll.lowering.triton import aot, tied
        s = unroll.schemes["densenet"]
        print(json.dumps([tied.kernel_reason(s, 256, torch.bfloat16, aot.TARGETS["sm_90a"]),
                          tied.kernel_reason(s, 128, torch.bfloat16, aot.TARGETS["sm_90a"])]))
        """
    )
    wide, narrow = json.loads(out)
    assert wide is not None and "tied_forward spills" in wide and "past the 512" in wide, wide
    assert narrow is None, narrow


def test_targets_name_their_limits():
    assert aot.TARGETS["sm_90a"].shared_limit == 227 * 1024
    assert aot.TARGETS["sm_80"].shared_limit == 163 * 1024
    with pytest.raises(UnrollError, match="unknown target 'sm_70'"):
        resources.find_target("sm_70")


def test_a_compiler_failure_is_reported_by_the_line_that_says_what_failed():
    ptxas = """Internal Triton PTX codegen error
`ptxas` stderr:
ptxas info    : (C7511) Potential Performance Loss: wgmma.mma_async instructions are serialized
ptxas fatal   : (C7600) Register allocation failed with register count of '128'.
ptxas fatal   : Ptx assembly aborted due to errors

Repro command: ptxas --gpu-name=sm_90a /tmp/tmp1234.ptx -o /tmp/tmp1234.ptx.o"""
    assert aot._first_error(ptxas) == (
        "ptxas fatal   : (C7600) Register allocation failed with register count of '128'."
    )
    assert aot._first_error("one line") == "one line"
