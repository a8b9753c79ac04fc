"""DistributedDataParallel over unroll networks: 2 processes (gloo, CPU), each with half of a
batch, give the gradients of one process on the whole batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import unroll
import unroll.nn
from tests.tolerances import F64_GRADIENT

BATCH, WIDTH = 8, 6


def _model() -> nn.Module:
    torch.manual_seed(0)
    # trainable bounded κ per block, a stem and a head: every kind of parameter unroll makes
    net = unroll.schemes["lm_resnet"].network(
        3,
        f=lambda: nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH)),
        dim=WIDTH,
        in_dim=4,
        out_dim=3,
        params={"κ": unroll.per_block([-0.1, -0.05, 0.02])},
    )
    return net.double()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 4, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (BATCH,), generator=g
    )


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)  # the mean over the samples given


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = nn.parallel.DistributedDataParallel(_model())
        x, y = _data()
        half = BATCH // world
        _loss(
            model, x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]
        ).backward()
        grads = {n: p.grad for n, p in model.module.named_parameters()}
        torch.save(grads, os.path.join(out, f"grads{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_ddp_gradients_equal_the_single_process_full_batch_ones(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    model = _model()
    x, y = _data()
    _loss(model, x, y).backward()
    want = {n: p.grad for n, p in model.named_parameters()}
    assert any("raw_kappa" in n for n in want)  # the bounded coefficients are among them
    for rank in range(world):
        got = torch.load(tmp_path / f"grads{rank}.pt")
        assert set(got) == set(want)
        for name in want:
            # DDP averages the two half-batch means: the full-batch mean, up to the float64
            # rounding of a different summation order.
            torch.testing.assert_close(got[name], want[name], **F64_GRADIENT)
