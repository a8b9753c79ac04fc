"""Benchmark of the weight-tied network kernel against eager PyTorch and torch.compile.

Every mode runs the same network (same scheme, x0, W and coefficients): ``eager`` (the layer's
SymPy equations lambdified to torch, with the history x_k, x_{k−1} as a plain torch loop would
keep it), ``compile`` (torch.compile of that function), ``max-autotune``
(torch.compile(mode="max-autotune-no-cudagraphs")) and ``tied`` (`unroll.lowering.triton.tied`). For each
it reports the median time with the 20%/80% quantiles (`triton.testing.do_bench`), the matrix
throughput in TFLOP/s and as a share of this device's measured bfloat16/float16/float32 matmul
throughput, and the relative error of the output (and of dL/dW for ``backward``) against the
same network in float64.

Counted work: a forward does 2·B·n²·depth flops in its products; forward+backward counts three
times that (the forward, dL/dx and dL/dW products), the useful work, although the tied backward
does a fourth product to recompute z_k (see `unroll.lowering.triton.tied`).

On a machine without a GPU the benchmark runs under ``TRITON_INTERPRET=1`` on the CPU, for
checking the plumbing only: its times say nothing about a GPU. The command refuses to run
without one:

    python -m benchmarks.tied [SCHEME ...] [--dtype bfloat16] [-o FILE]    # default hb_net
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sympy as sp
import torch

from unroll.errors import UnrollError

# The two networks: (batch, width, depth).
CASES = ((8192, 256, 16), (65536, 128, 32))
MODES = ("eager", "compile", "max-autotune", "tied")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class Row:
    """One mode on one network: times in ms (median, 20% and 80% quantiles)."""

    case: tuple[int, int, int]
    mode: str
    backward: bool
    ms: float
    q20: float
    q80: float
    tflops: float
    share: float | None  # of the measured matmul throughput (None on the CPU)
    rel_err: float  # output (forward) or dL/dW (backward) against float64
    note: str = ""


# -- the eager network -----------------------------------------------------------------------
def eager_network(scheme: Any, depth: int, activation: str | None = None) -> Callable:
    """``net(x0, W, *scalars, *channels) -> final state``: the scheme's layer as plain torch
    code (SymPy lambdified, history kept newest first), the function torch.compile gets; x0 is
    the scheme's primary state, the others start as `Scheme.run` starts them."""
    from unroll.lowering.triton.tied import lower

    step = lower(scheme, activation)
    subs = step.in_history()
    h = step.history_symbols()
    args = [step.z, *(s for row in h for s in row), *step.q, *step.ch]
    # SymPy's torch printer turns max(v, 0) into torch.max(v, 0), which torch refuses: the
    # numbers inside max/min become 0-d tensors passed as arguments (torch.max(v, zero)).
    consts: dict[sp.Number, sp.Symbol] = {}

    def tensor_args(e):
        return e.func(*(consts.setdefault(a, sp.Dummy()) if a.is_Number else a for a in e.args))

    def prepare(expr):
        return expr.xreplace(subs).replace(lambda e: isinstance(e, (sp.Max, sp.Min)), tensor_args)

    point_expr = prepare(step.point)
    new_exprs = [prepare(row[0]) for row in step.update]
    extra = list(consts.values())
    point = sp.lambdify([*args[1:], *extra], point_expr, modules="torch")
    news = [sp.lambdify([*args, *extra], e, modules="torch") for e in new_exprs]
    values = [float(c) for c in consts]
    depths = step.depths

    from unroll.lowering.eager.states import primary_state

    single = primary_state(step.scheme)
    out = step.states.index(single)
    inits = [step.scheme.states[s].init or 0.0 for s in step.states]  # as `Scheme.run` starts

    def net(x0, W, *params):
        params = (*params, *(torch.tensor(v, dtype=x0.dtype, device=x0.device) for v in values))
        starts = [x0 if i == out else torch.full_like(x0, inits[i]) for i in range(len(depths))]
        hist = [[v] * d for v, d in zip(starts, depths, strict=True)]
        for _ in range(depth):
            flat = [v for row in hist for v in row]
            z = point(*flat, *params) @ W.T
            new = [f(z, *flat, *params) for f in news]
            hist = [[v, *row[:-1]] for v, row in zip(new, hist, strict=True)]
        return hist[out][0]

    return net


# -- timing ----------------------------------------------------------------------------------
def _time(fn: Callable, device: str) -> tuple[float, float, float]:
    if device == "cuda":
        import triton.testing

        med, q20, q80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        return med, q20, q80
    fn()
    samples = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    q = statistics.quantiles(samples, n=5)
    return statistics.median(samples), q[0], q[-1]


@functools.lru_cache(maxsize=4)
def matmul_peak(dtype: torch.dtype) -> float:
    """This device's measured matrix throughput in TFLOP/s: the best of a few large square
    products (the denominator of the share column)."""
    best = 0.0
    for n in (4096, 8192):
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        ms, _, _ = _time(lambda a=a, b=b: a @ b, "cuda")
        best = max(best, 2 * n**3 / (ms * 1e-3) / 1e12)
    return best


# -- the benchmark ---------------------------------------------------------------------------
def _inputs(step, batch: int, n: int, device: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, n, generator=g, dtype=torch.float64)
    W = torch.randn(n, n, generator=g, dtype=torch.float64) * (0.8 / n**0.5)
    params = [torch.tensor(0.5, dtype=torch.float64) for _ in step.scalars]
    params += [0.1 * torch.randn(n, generator=g, dtype=torch.float64) for _ in step.channels]
    upstream = torch.randn(batch, n, generator=g, dtype=torch.float64)
    return [t.to(device) for t in (x0, W, *params)], upstream.to(device)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-300)).item()


def run(
    scheme: Any = "hb_net",
    cases: Sequence[tuple[int, int, int]] = CASES,
    *,
    dtype: str = "bfloat16",
    modes: Sequence[str] = MODES,
    backward: bool = True,
    activation: str | None = None,
    seed: int = 0,
) -> list[Row]:
    """Time every mode on every (batch, width, depth) network; see the module docstring."""
    from unroll.frontend.library import resolve
    from unroll.lowering.triton import tied

    scheme = resolve(scheme) if isinstance(scheme, str) else scheme
    for m in modes:
        if m not in MODES:
            raise UnrollError(f"unknown mode {m!r}; modes: {', '.join(MODES)}")
    if dtype not in DTYPES:
        raise UnrollError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and "tied" in modes and not tied._interpreting():
        raise UnrollError("no CUDA device: run under TRITON_INTERPRET=1 (plumbing only)")
    low = DTYPES[dtype]
    step = tied.lower(scheme, activation)
    names = (*step.scalars, *step.channels)
    rows: list[Row] = []
    for batch, n, depth in cases:
        net = eager_network(scheme, depth, activation)
        exact, upstream = _inputs(step, batch, n, device, seed)
        ref_in = [t.clone().requires_grad_(True) for t in exact]
        ref = net(*ref_in)
        ref_dw = torch.autograd.grad(ref, ref_in[1], upstream)[0] if backward else None
        # The whole network in the benchmark's dtype, coefficients too: a float32 b would
        # promote the eager state to float32 and its next product with a bfloat16 W fails.
        ins = [t.to(low) for t in exact]

        def tied_fn(*a, depth=depth):
            kw = dict(zip(names, a[2:], strict=True))
            return tied.tied_network(scheme, a[0], a[1], depth, activation=activation, **kw)

        fns = {
            "eager": net,
            "compile": lambda net=net: torch.compile(net),
            "max-autotune": lambda net=net: torch.compile(net, mode="max-autotune-no-cudagraphs"),
            "tied": tied_fn,
        }
        flops = 2 * batch * n * n * depth
        for mode in modes:
            fn = fns[mode] if mode in ("eager", "tied") else fns[mode]()
            note = ""
            if mode == "tied":
                reason = tied.tied_reason(scheme, ins[0], ins[1], activation)
                if reason:
                    rows.append(
                        Row(
                            (batch, n, depth),
                            mode,
                            False,
                            *([float("nan")] * 4),
                            None,
                            float("nan"),
                            reason,
                        )
                    )
                    continue
            for bwd in (False, True) if backward else (False,):
                leaves = [t.clone().requires_grad_(bwd) for t in ins]
                if bwd:
                    g = upstream.to(low)

                    def call(fn=fn, leaves=leaves, g=g):
                        return torch.autograd.grad(fn(*leaves), leaves, g)

                    err = _rel(call()[1], ref_dw)
                else:

                    def call(fn=fn, leaves=leaves):
                        with torch.no_grad():
                            return fn(*leaves)

                    err = _rel(call(), ref.detach())
                ms, q20, q80 = _time(call, device)
                work = flops * (3 if bwd else 1)
                tf = work / (ms * 1e-3) / 1e12
                share = tf / matmul_peak(low) if device == "cuda" else None
                rows.append(Row((batch, n, depth), mode, bwd, ms, q20, q80, tf, share, err, note))
    return rows


COLUMNS = ("batch×width×depth", "pass", "mode", "median ms", "[q20, q80]", "TFLOP/s",
           "of matmul peak", "× best compile", "rel. error vs f64", "note")  # fmt: skip


def _cells(rows: Sequence[Row]) -> list[list[str]]:
    """One list of strings per row (`COLUMNS`), with the speed-up over the best torch.compile."""
    best: dict[tuple, float] = {}
    for r in rows:
        if r.mode in ("compile", "max-autotune") and r.ms == r.ms:
            key = (r.case, r.backward)
            best[key] = min(best.get(key, float("inf")), r.ms)
    out = []
    for r in rows:
        base = best.get((r.case, r.backward))
        out.append([
            "×".join(map(str, r.case)),
            "fwd+bwd" if r.backward else "fwd",
            r.mode,
            f"{r.ms:.3f}",
            f"[{r.q20:.3f}, {r.q80:.3f}]",
            f"{r.tflops:.1f}",
            "—" if r.share is None else f"{100 * r.share:.0f}%",
            "—" if base is None else f"{base / r.ms:.2f}",
            f"{r.rel_err:.1e}",
            r.note,
        ])  # fmt: skip
    return out


def table(rows: Sequence[Row], title: str = "") -> Any:
    """The rows as a rich table, with the speed-up of each mode over the best torch.compile."""
    from rich.table import Table

    t = Table(title=title)
    for col in COLUMNS:
        t.add_column(col)
    for cells in _cells(rows):
        t.add_row(*cells)
    return t


def markdown(rows: Sequence[Row], title: str = "") -> str:
    """The same table as markdown (what ``python -m benchmarks.tied -o FILE`` writes)."""
    lines = [f"## {title}", ""] if title else []
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += [
        "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in _cells(rows)
    ]
    return "\n".join(lines) + "\n"


def main(
    schemes: Sequence[str] = ("hb_net",),
    dtype: str = "bfloat16",
    cases: Sequence[tuple[int, int, int]] = CASES,
    modes: Sequence[str] = MODES,
    backward: bool = True,
    output: Any = None,
) -> list[Row]:
    """Run and print the benchmark for each scheme (what ``python -m benchmarks.tied`` calls);
    with ``output`` (a path), also write the tables as markdown there, headed by device and
    date."""
    import datetime
    from pathlib import Path

    from rich.console import Console

    console = Console()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (interpreter)"
    out: list[Row] = []
    text = [
        "# Weight-tied networks\n",
        f"Generated by `python -m benchmarks.tied` on {device}, "
        f"{datetime.date.today().isoformat()}.\n",
    ]
    if not torch.cuda.is_available():
        text.append("No GPU: these times are the interpreter's and say nothing about a GPU.\n")
        console.print(text[-1])
    for name in schemes:
        for case in cases:  # one network at a time, written at once: a cut-short run keeps it
            rows = run(name, [case], dtype=dtype, modes=modes, backward=backward)
            title = f"{name}, weight-tied, {dtype}, {'×'.join(map(str, case))}, {device}"
            console.print(table(rows, title=title))
            text.append(markdown(rows, title))
            out += rows
            if output is not None:
                Path(output).write_text("\n".join(text), encoding="utf-8")
    if output is not None:
        console.print(f"wrote {output}")
    return out


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.tied`` (an ``argparse`` parser)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tied",
        description="Time whole weight-tied networks: eager, torch.compile, max-autotune and "
        "the one-kernel tied network (needs CUDA).",
    )
    parser.add_argument("schemes", nargs="*", default=["hb_net"], help="default: hb_net")
    parser.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    parser.add_argument(
        "-o", "--output", default=None, help="also write the tables here (markdown)"
    )
    return parser


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.tied [SCHEME ...] [--dtype D] [-o FILE]``: the benchmark on the
    CUDA device; 2 with one line on stderr when there is none or an input is wrong."""
    args = parser().parse_args(argv)
    try:
        if not torch.cuda.is_available():
            raise UnrollError("the tied benchmark needs a CUDA device, and there is none here")
        main(args.schemes, args.dtype, output=args.output)
    except UnrollError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
