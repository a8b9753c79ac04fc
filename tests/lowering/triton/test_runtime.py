"""The shared host runtime of the generated block-update modules
(`unroll.lowering.triton.runtime`): the view, the tiles, the argument binding and the checks,
tested once here; the launchers and the torch.library ops run in every kernel test
(tests/lowering/triton/test_block_kernels.py)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import unroll  # noqa: E402
from unroll import UnrollError  # noqa: E402
from unroll.lowering.triton import runtime  # noqa: E402
from unroll.lowering.triton.op import cache_key, kernel_module  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UNROLL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kcache"))


def _channel_tensor(shape, fmt=torch.contiguous_format):
    """A tensor whose every element holds its own channel (dimension 1; 0 of a 1-D tensor)."""
    c = shape[0] if len(shape) == 1 else shape[1]
    ch = torch.arange(c, dtype=torch.float64).reshape(
        (c,) if len(shape) == 1 else (1, c, *([1] * (len(shape) - 2)))
    )
    return ch.expand(shape).contiguous(memory_format=fmt)


@pytest.mark.parametrize(
    "shape, fmt",
    [
        ((5,), torch.contiguous_format),
        ((4, 3), torch.contiguous_format),  # (N, C): channels are the columns
        ((2, 3, 4, 5), torch.contiguous_format),  # NCHW: channel = row mod C
        ((2, 3, 4, 5), torch.channels_last),  # channels are the columns
        ((2, 3, 7), torch.contiguous_format),  # (N, C, L)
    ],
)
def test_layout_puts_each_element_in_its_channel(shape, fmt):
    """Read in memory order as (M, K), element (row, col) belongs to channel row % C (channel
    rows) or col (else): checked against the channel PyTorch's own indexing gives it."""
    x = _channel_tensor(shape, fmt)
    view = runtime.layout(x, per_channel=True)
    assert view.memory_format == runtime.memory_format(x)
    flat = x.permute(0, 2, 3, 1).reshape(-1) if fmt == torch.channels_last else x.reshape(-1)
    grid = flat.reshape(view.M, view.K)
    rows = torch.arange(view.M)[:, None].expand(view.M, view.K)
    cols = torch.arange(view.K)[None, :].expand(view.M, view.K)
    channel = rows % view.C if view.channel_rows else cols
    assert view.M * view.K == x.numel()
    torch.testing.assert_close(grid, channel.double(), rtol=0, atol=0)


def test_layout_without_per_channel_values_is_one_row():
    view = runtime.layout(torch.zeros(2, 3, 4, 5), per_channel=False)
    assert (view.M, view.K, view.C, view.channel_rows) == (1, 120, 1, False)
    with pytest.raises(UnrollError, match="channel dimension"):
        runtime.layout(torch.tensor(1.0), per_channel=True)


@pytest.mark.parametrize("M, K", [(1, 1), (1, 7), (3, 4097), (1000, 3), (5, 1 << 20)])
def test_tiles_cover_the_view_and_stay_within_the_tile(M, K):
    block_m, block_k, grid_k, grid_m = runtime.tiles(M, K)
    assert block_m * block_k <= runtime.TILE
    assert grid_k * block_k >= K > (grid_k - 1) * block_k
    assert grid_m * block_m >= M > (grid_m - 1) * block_m
    for b in (block_m, block_k):
        assert b & (b - 1) == 0  # powers of two, as tl.arange needs


def test_update_binds_by_position_and_name_and_names_what_is_wrong():
    op = kernel_module(unroll.schemes["forward_euler"]).OP
    x, o = torch.randn(3), torch.randn(3)
    by_position = op.update(x, o, 0.5)["x"]
    torch.testing.assert_close(op.update(x_k=x, o_0=o, h=0.5)["x"], by_position)
    torch.testing.assert_close(op.update(x, h=0.5, o_0=o)["x"], x + 0.5 * o)
    with pytest.raises(UnrollError, match="no value for h"):
        op.update(x, o)
    with pytest.raises(UnrollError, match="argument 'beta' is unknown"):
        op.update(x, o, 0.5, beta=1.0)
    with pytest.raises(UnrollError, match="argument 'x_k' is given twice"):
        op.update(x, o, 0.5, x_k=x)
    with pytest.raises(UnrollError, match="expected 2 .*x_k, o_0.* and 1 .*h"):
        op([x], [0.5])


def test_checks_name_the_input_at_fault():
    op = kernel_module(unroll.schemes["hb_net"]).OP
    x = torch.randn(2, 3)
    with pytest.raises(UnrollError, match="x_km1: .*inputs share shape"):
        op([x, torch.randn(2, 4), x], [0.5, torch.zeros(3)])
    with pytest.raises(UnrollError, match="o_0: .*float64"):
        op([x, x, x.double()], [0.5, torch.zeros(3)])
    with pytest.raises(UnrollError, match="b: 2 values, expected 3"):
        op([x, x, x], [0.5, torch.zeros(2)])


def test_one_op_per_scheme_however_often_its_module_loads(monkeypatch):
    """A module imported twice (the cache file and kernels/, or a restart of the memo) gets the
    op registered first: torch.library refuses a second registration under the same name."""
    from unroll.lowering import cache

    first = kernel_module(unroll.schemes["heun"])
    monkeypatch.setattr(cache, "_loaded", {})
    second = kernel_module(unroll.schemes["heun"])
    assert first is not second and first.OP is second.OP


def test_the_cache_key_covers_the_runtime(monkeypatch):
    """A module calls into the runtime: a new runtime must not load a module written for the
    old one."""
    from unroll.lowering.triton.op import view_of

    block = view_of(unroll.schemes["heavy_ball"])
    before = cache_key(block)
    monkeypatch.setattr(runtime, "VERSION", "another runtime")
    assert cache_key(block) != before
