"""Benchmark of the block update: eager PyTorch, torch.compile and the generated kernels.

Run it from the repository root::

    python -m benchmarks.blocks [SCHEME...] [--sizes 20,22,24,26,28] [--dtype float32] [-o FILE]

`run(schemes, sizes, dtype) -> Report`: for each scheme and element count, the median time
(``triton.testing.do_bench``, with the 20% and 80% quantiles) of the forward and of the forward
plus backward (gradients returned by ``torch.autograd.grad``, not accumulated), as time, GB/s
and share of the floor: the bytes the update must move over the device's copy bandwidth,
measured in the same run. A benchmark, not a test: it needs a CUDA device.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click

from unroll.errors import UnrollError

VARIANTS = ("eager", "compile", "triton")
CHANNELS = 256  # per-channel schemes run on (n / 256, 256) tensors


@dataclass(frozen=True)
class Row:
    scheme: str
    n: int
    variant: str
    mode: str  # "fwd" or "fwd+bwd"
    ms: float  # median
    q20: float
    q80: float
    bytes: int  # what the update must read and write

    def gbps(self) -> float:
        return self.bytes / (self.ms * 1e-3) / 1e9

    def share(self, bandwidth: float) -> float:
        """The floor time (bytes / copy bandwidth) over the measured time."""
        return (self.bytes / bandwidth) / (self.ms * 1e-3)


@dataclass
class Report:
    device: str
    date: str
    dtype: str
    bandwidth: float  # bytes/s, device copy
    rows: list[Row] = field(default_factory=list)
    first_use: dict[str, float] = field(default_factory=dict)  # seconds

    def markdown(self) -> str:
        out = [
            f"Measured on {self.device}, {self.date}, {self.dtype}; copy bandwidth "
            f"{self.bandwidth / 1e9:.0f} GB/s (read + write, measured in the same run).",
            "",
            "| scheme | elements | variant | mode | median ms (q20-q80) | GB/s | share of floor |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            out.append(
                f"| {r.scheme} | 2^{r.n.bit_length() - 1} | {r.variant} | {r.mode} | "
                f"{r.ms:.4f} ({r.q20:.4f}-{r.q80:.4f}) | {r.gbps():.0f} | "
                f"{100 * r.share(self.bandwidth):.0f}% |"
            )
        if self.first_use:
            out += ["", "First use (seconds): " + ", ".join(
                f"{k} {v:.2f}" for k, v in self.first_use.items()
            )]  # fmt: skip
        return "\n".join(out) + "\n"


def update_bytes(n_inputs: int, n_outputs: int, n_saved: int, n: int, itemsize: int,
                 backward: bool) -> int:  # fmt: skip
    """Bytes the fused update must move for ``n`` elements: the forward reads every input and
    writes every output once; the backward reads every upstream gradient and saved input and
    writes every input gradient once (coefficients are negligible)."""
    fwd = (n_inputs + n_outputs) * n * itemsize
    if not backward:
        return fwd
    return fwd + (n_outputs + n_saved + n_inputs) * n * itemsize


def copy_bandwidth(do_bench: Callable, n_bytes: int = 1 << 30) -> float:
    """Device copy bandwidth in bytes/s, counting the read and the write."""
    import torch

    src = torch.empty(n_bytes // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * n_bytes / (ms * 1e-3)


def run(
    names: Sequence[str],
    sizes: Sequence[int],
    dtype_name: str = "float32",
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Benchmark the block update of each bundled scheme in ``names`` at 2^s elements for s in
    ``sizes`` (see the module docstring). ``progress(report)`` is called after each scheme and
    after the first-use figures, so a run cut short keeps what it measured."""
    import torch

    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UnrollError(f"--dtype: not a float dtype: {dtype_name!r}")
    if not torch.cuda.is_available():
        raise UnrollError("the block benchmark measures on a CUDA device, and there is none here")
    import triton.testing

    from unroll.frontend.library import schemes
    from unroll.lowering.triton.block import is_per_channel
    from unroll.lowering.triton.op import block_update, kernel_module

    do_bench = triton.testing.do_bench
    report = Report(
        device=torch.cuda.get_device_name(),
        date=datetime.date.today().isoformat(),
        dtype=dtype_name,
        bandwidth=copy_bandwidth(do_bench),
    )
    for name in names:
        scheme = schemes[name]
        eager = block_update(scheme, backend="torch")
        fused = block_update(scheme, backend="triton")
        block = eager.view
        module = kernel_module(scheme)
        for s in sizes:
            n = 1 << s
            shape = (n // CHANNELS, CHANNELS) if block.per_channel else (n,)
            ts = {i.name: torch.randn(shape, device="cuda", dtype=dtype) for i in block.inputs}
            cs = {
                c.name: torch.rand(CHANNELS if is_per_channel(c) else (), device="cuda")
                for c in block.coefficients
            }
            leaves = [*ts.values(), *cs.values()]
            for v in leaves:
                v.requires_grad_(True)
            gy = torch.randn(shape, device="cuda", dtype=dtype)
            compiled = torch.compile(lambda t, c, f=eager: f(t, c))
            fns = {"eager": eager, "compile": compiled, "triton": fused}
            saved = len(module.SAVED)
            report.rows += _measure(name, block, fns, ts, cs, leaves, gy, n, saved, do_bench)
        if progress is not None:
            progress(report)
    report.first_use = first_use(names[0] if names else "heavy_ball")
    if progress is not None:
        progress(report)
    return report


def _measure(name, block, fns, ts, cs, leaves, gy, n, saved, do_bench) -> list[Row]:
    """Rows for every variant and mode at one size."""
    import torch

    rows = []
    itemsize = gy.element_size()
    for variant in VARIANTS:
        f = fns[variant]

        def fwd(f=f):
            with torch.no_grad():
                return f(ts, cs)

        def both(f=f):
            out = f(ts, cs)
            return torch.autograd.grad(sum((v * gy).sum() for v in out.values()), leaves)

        for mode, fn, backward in (("fwd", fwd, False), ("fwd+bwd", both, True)):
            med, q20, q80 = do_bench(fn, quantiles=[0.5, 0.2, 0.8])
            nbytes = update_bytes(
                len(block.inputs), len(block.outputs), saved, n, itemsize, backward
            )
            rows.append(Row(name, n, variant, mode, med, q20, q80, nbytes))
    return rows


# Run in a fresh Python process: argv = scheme, device, and what to time ("compile", "unroll").
_FIRST_USE = """
import sys, time, torch
from unroll.lowering.triton import op
from unroll.lowering.triton.block import is_per_channel
from unroll.frontend.library import schemes

name, device, what = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
scheme = schemes[name]
block = op.view_of(scheme)
shape = (4096, 256)  # 2^20 elements; per-channel coefficients index the 256 columns
ts = {i.name: torch.randn(shape, device=device) for i in block.inputs}
cs = {c.name: torch.rand(256 if is_per_channel(c) else (), device=device) for c in block.coefficients}
eager = op.block_update(scheme, backend="torch")
fns = {"compile": lambda: torch.compile(lambda t, c: eager(t, c))(ts, cs),
       "unroll": lambda: op.block_update(scheme, backend="triton")(ts, cs)}
for w in what:
    t0 = time.perf_counter()
    fns[w]()
    if device == "cuda":
        torch.cuda.synchronize()
    print(w, time.perf_counter() - t0)
"""


def first_use(
    name: str, device: str = "cuda", what: Sequence[str] = ("compile", "unroll")
) -> dict[str, float]:
    """Seconds to the first result of ``name``'s block update on 2^20 elements, each measured in
    a new Python process (imports not counted): first with empty caches (torch.compile's and
    Triton's on-disk caches and unroll's, all in a fresh temporary directory: generation, writing,
    import and compilation), then in a second process with those caches on disk."""
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    out: dict[str, float] = {}
    label = {"compile": "torch.compile", "unroll": "unroll"}
    with tempfile.TemporaryDirectory() as d:
        env = {
            **os.environ,
            "UNROLL_CACHE_DIR": os.path.join(d, "unroll"),
            "TRITON_CACHE_DIR": os.path.join(d, "triton"),
            "TORCHINDUCTOR_CACHE_DIR": os.path.join(d, "inductor"),
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        for when in ("empty caches", "caches on disk, new process"):
            cmd = [sys.executable, "-c", _FIRST_USE, name, device, ",".join(what)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
                raise UnrollError(f"first-use measurement of {name!r} failed: {tail[0]}")
            for line in done.stdout.splitlines():
                w, seconds = line.split()
                out[f"{label[w]}, {when}"] = float(seconds)
    return out


# -- the command line: python -m benchmarks.blocks ---------------------------------------------
DEFAULT_SCHEMES = ("heavy_ball", "lm_resnet", "hb_net")
HEADER = "# Benchmarks\n\nGenerated by `python -m benchmarks.blocks`.\n\n"


def exponents(sizes: str) -> list[int]:
    """``"20,24,28"`` -> [20, 24, 28]; an `UnrollError` for anything else."""
    try:
        out = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise UnrollError(f"--sizes: expected exponents like 20,24,28, got {sizes!r}") from None
    if not out or any(not 0 <= s <= 40 for s in out):
        raise UnrollError(f"--sizes: expected exponents between 0 and 40, got {sizes!r}")
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("schemes", nargs=-1)
@click.option(
    "--sizes", default="20,22,24,26,28", show_default=True,
    help="Comma-separated exponents s: 2^s elements.",
)  # fmt: skip
@click.option("--dtype", default="float32", show_default=True)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Also write the report (markdown) to this file, e.g. docs/benchmarks.md.",
)  # fmt: skip
@click.pass_context
def command(
    ctx: click.Context, schemes: tuple[str, ...], sizes: str, dtype: str, output: Path | None
) -> None:
    """Benchmark the block update of SCHEMES (bundled names; default heavy_ball, lm_resnet,
    hb_net) on the CUDA device: median times, GB/s and share of the copy-bandwidth floor."""
    from unroll.frontend.library import schemes as bundled

    try:
        powers = exponents(sizes)
        names = list(schemes) or list(DEFAULT_SCHEMES)
        for name in names:
            bundled[name]  # an unknown name is an UnrollError naming it

        def save(report: Report) -> None:  # after every scheme: a cut-short run keeps its rows
            if output is not None:
                output.write_text(HEADER + report.markdown(), encoding="utf-8")

        report = run(names, powers, dtype, progress=save)
    except UnrollError as e:
        click.echo(f"error: {str(e).splitlines()[0]}", err=True)
        ctx.exit(2)
    click.echo(report.markdown())
    if output is not None:
        click.echo(f"wrote {output}")


if __name__ == "__main__":
    command(prog_name="python -m benchmarks.blocks")
