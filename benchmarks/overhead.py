"""What unroll costs on the CPU next to hand-written PyTorch doing the same math.

    python -m benchmarks.overhead [--quick] [-o FILE]

Three measurements, each a ratio to its baseline measured in the same run, on one CPU thread:

1. forward + backward of a depth-16, width-32, batch-64 network: HB-Net tied and untied, and
   LM-ResNet with a Linear-tanh branch (κ bounded in (−1, 1) through a sigmoid, trainable per
   block), against an ``nn.Module`` written by hand with the same parameters (checked to give the
   same output for the same weights before timing);
2. `Scheme.run` of heavy ball with a closed-form gradient on 10^6 float32 elements against
   ``torch.optim.SGD(momentum=β, lr=α)`` taking the same steps;
3. torch.compile's first call on a tied depth-16 HB-Net against the hand-written module's, each
   in a fresh process with empty compile caches (so nothing is reused between them).

Timings alternate between unroll and its baseline (A, B, A, B, ...) so that a load change on the
machine hits both, and report the median of the per-round ratios with the median times. These
are not tests: nothing here asserts a target.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import unroll

DEPTH, WIDTH, BATCH = 16, 32, 64


# -- hand-written baselines ---------------------------------------------------------------------
class HandHB(nn.Module):
    """x_{k+1} = relu(W x_k + b + β(x_k − x_{k−1})), β trainable in (0, 1) through
    sigmoid(raw) as unroll bounds it, b per channel."""

    def __init__(self, depth: int, width: int, tied: bool):
        super().__init__()
        count = 1 if tied else depth
        self.depth, self.tied = depth, tied
        self.W = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(count))
        self.b = nn.ParameterList(nn.Parameter(torch.zeros(width)) for _ in range(count))
        self.raw_beta = nn.ParameterList(nn.Parameter(torch.zeros(())) for _ in range(count))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp = x
        for n in range(self.depth):
            i = 0 if self.tied else n
            beta = torch.sigmoid(self.raw_beta[i])
            x, xp = torch.relu(self.W[i](x) + self.b[i] + beta * (x - xp)), x
        return x


class HandLM(nn.Module):
    """x_{k+1} = (1 − κ) x_k + κ x_{k−1} + h f(x_k), f = Linear → tanh → Linear, κ ∈ (−1, 1)
    trainable per block through −1 + 2·sigmoid(raw), h = 1 fixed."""

    def __init__(self, depth: int, width: int):
        super().__init__()
        self.depth = depth
        self.f = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
            for _ in range(depth)
        )
        self.raw_kappa = nn.ParameterList(nn.Parameter(torch.zeros(())) for _ in range(depth))
        self.register_buffer("h", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp = x
        for n in range(self.depth):
            kappa = 2 * torch.sigmoid(self.raw_kappa[n]) - 1
            x, xp = (1 - kappa) * x + kappa * xp + self.h * self.f[n](x), x
        return x


def _hb(tied: bool) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    net = unroll.schemes["hb_net"].network(DEPTH, dim=WIDTH, tied=tied, backend="torch")
    hand = HandHB(DEPTH, WIDTH, tied)
    with torch.no_grad():
        for i, block in enumerate(net.blocks):
            hand.W[i].weight.copy_(block.operators["W"].weight)
            block.coefficients.beta = torch.sigmoid(hand.raw_beta[i]).detach()
    return net, hand


def _lm() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    hand = HandLM(DEPTH, WIDTH)
    branches = iter(hand.f)
    net = unroll.schemes["lm_resnet"].network(DEPTH, f=lambda: next(branches), backend="torch")
    with torch.no_grad():
        for block in net.blocks:
            block.coefficients.kappa = torch.zeros(())
    return net, hand


def _same(net: nn.Module, hand: nn.Module, x: torch.Tensor) -> None:
    """The two compute the same function (else the comparison would mean nothing)."""
    torch.testing.assert_close(net(x), hand(x), rtol=1e-5, atol=1e-6)


# -- timing ---------------------------------------------------------------------------------------
def _alternate(a: Callable[[], object], b: Callable[[], object], rounds: int, reps: int):
    """Median seconds of ``a`` and ``b`` per call and the median of the per-round ratios a/b."""
    for fn in (a, b, a, b):
        fn()  # warm up
    ta, tb, ratios = [], [], []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            a()
        x = (time.perf_counter() - t) / reps
        t = time.perf_counter()
        for _ in range(reps):
            b()
        y = (time.perf_counter() - t) / reps
        ta.append(x)
        tb.append(y)
        ratios.append(x / y)
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def _fwd_bwd(net: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def go() -> None:
        net.zero_grad(set_to_none=True)
        net(x).square().mean().backward()

    return go


def networks(rounds: int, reps: int) -> list[tuple[str, float, float, float]]:
    x = torch.randn(BATCH, WIDTH)
    rows = []
    for label, (net, hand) in (
        ("hb_net tied", _hb(True)),
        ("hb_net untied", _hb(False)),
        ("lm_resnet, Linear-tanh branch", _lm()),
    ):
        _same(net, hand, x)
        rows.append((label, *_alternate(_fwd_bwd(net, x), _fwd_bwd(hand, x), rounds, reps)))
    return rows


def run_vs_sgd(rounds: int, steps: int = 50, n: int = 10**6) -> tuple[float, float, float]:
    torch.manual_seed(0)
    c = torch.randn(n)
    x0 = torch.randn(n)
    alpha, beta = 0.1, 0.9
    scheme = unroll.schemes["heavy_ball"]

    def grad(x: torch.Tensor) -> torch.Tensor:
        return x - c  # F(x) = ½‖x − c‖²

    def ours() -> torch.Tensor:
        return scheme.run(x0, steps, grad=grad, α=alpha, β=beta)

    def sgd() -> torch.Tensor:
        p = nn.Parameter(x0.clone())
        opt = torch.optim.SGD([p], lr=alpha, momentum=beta)
        with torch.no_grad():
            for _ in range(steps):
                p.grad = grad(p)
                opt.step()
        return p.detach()

    torch.testing.assert_close(ours(), sgd(), rtol=1e-5, atol=1e-5)  # the same iterates
    return _alternate(ours, sgd, rounds, 1)


_FIRST_CALL = """
import os, sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from benchmarks.overhead import HandHB, DEPTH, WIDTH, BATCH
import unroll
torch.manual_seed(0)
net = (unroll.schemes["hb_net"].network(DEPTH, dim=WIDTH, tied=True, backend="torch")
       if {which!r} == "unroll" else HandHB(DEPTH, WIDTH, tied=True))
x = torch.randn(BATCH, WIDTH)
compiled = torch.compile(net)
t = time.perf_counter()
compiled(x).sum().backward()
print(time.perf_counter() - t)
"""


def first_compile(rounds: int) -> tuple[float, float, float]:
    """torch.compile's first call (forward and backward) in fresh processes with empty caches."""
    root = str(Path(__file__).resolve().parents[1])

    def once(which: str) -> float:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, UNROLL_CACHE_DIR=cache)
            env["TRITON_CACHE_DIR"] = cache
            code = _FIRST_CALL.format(root=root, which=which)
            out = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            )
            return float(out.stdout.strip().splitlines()[-1])

    ta, tb, ratios = [], [], []
    for _ in range(rounds):
        a, b = once("unroll"), once("hand")
        ta.append(a)
        tb.append(b)
        ratios.append(a / b)
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def report(quick: bool = False) -> str:
    torch.set_num_threads(1)
    rounds = 3 if quick else 15
    rows = networks(rounds, 3 if quick else 20)
    run = run_vs_sgd(rounds)
    first = first_compile(1 if quick else 3)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# CPU overhead against hand-written PyTorch",
        "",
        f"Measured {when} by `python -m benchmarks.overhead` on {platform.processor() or platform.machine()}"
        f" ({os.cpu_count()} cores, one thread used), torch {torch.__version__}, Python "
        f"{platform.python_version()}. Medians of {rounds} alternating rounds; the ratio is the "
        "median of the per-round ratios.",
        "",
        "| what | unroll | hand-written | ratio |",
        "|---|---|---|---|",
    ]
    for label, a, b, r in rows:
        lines.append(
            f"| fwd+bwd, depth {DEPTH}, width {WIDTH}, batch {BATCH}: {label} | {a * 1e3:.2f} ms "
            f"| {b * 1e3:.2f} ms | {r:.2f}x |"
        )
    a, b, r = run
    lines.append(
        f"| `Scheme.run` heavy ball, 10^6 float32, 50 steps (vs torch.optim.SGD) | {a * 1e3:.1f} ms "
        f"| {b * 1e3:.1f} ms | {r:.2f}x |"
    )
    a, b, r = first
    lines.append(
        f"| torch.compile first call, tied hb_net depth {DEPTH} (fresh process) | {a:.1f} s "
        f"| {b:.1f} s | {r:.2f}x |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("-o", "--output", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    text = report(args.quick)
    print(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
