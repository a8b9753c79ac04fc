"""Benchmark of reversible backpropagation on the CPU: memory against depth, and time overhead.

``python -m benchmarks.reversible`` builds, for each network and depth, the same layers (one
residual branch Linear-tanh-Linear shared by every layer, float32: tied, so that parameter and
gradient memory do not change with the depth and what grows is activations) and runs them two
ways: standard autograd (`unroll.lowering.nn.reversible.standard_unroll`) and reversible
(`SchemeSteps.unroll`; for "momentum_network", the network users build,
``Scheme.network(..., reversible=True)`` against ``reversible=False``), or momentumnet's
``MomentumNet(use_backprop=False)`` against its ``use_backprop=True``. It reports

- the bytes of the tensors autograd saves during the forward pass (saved-tensor hooks, the
  parameters left out: they are not activations);
- the peak resident memory that one forward and backward pass adds, each in a fresh process
  (the resident set sampled during the pass, minus before it): optional, at the depths ``--peak DEPTHS``;
- the time of one forward and backward pass, median and 20/80% quantiles over ``--repeats``
  runs, and the ratio reversible / standard taken within pairs of runs made back to back, all
  in one run (at the depths ``--time DEPTHS``, default all).

It prints a markdown report (machine, date, settings, tables) and, with ``--plot PATH``, draws
memory against depth. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NETWORKS = ("momentum", "momentum_network", "leapfrog", "revnet", "momentumnet")
LABELS = {
    "momentum": "momentum γ = 0.99 (unroll)",
    "momentum_network": "momentum γ = 0.99 (unroll network)",
    "leapfrog": "leapfrog h = 0.1 (unroll)",
    "revnet": "RevNet (unroll)",
    "momentumnet": "momentumnet γ = 0.99",
}
MOMENTUM = "v_<k+1> = γ v_k + (1 - γ) f(x_k)\nx_<k+1> = x_k + v_<k+1>"
GAMMA = 0.99  # float32 admits γ = 0.99 to depth 256 (amplification 1.2e3 ≤ 1/√eps ≈ 2.9e3)


@dataclass(frozen=True)
class Settings:
    width: int = 128
    batch: int = 128
    dtype: str = "float32"
    repeats: int = 5


@dataclass(frozen=True)
class Row:
    network: str
    depth: int
    saved_standard: int  # bytes
    saved_reversible: int
    ms_standard: tuple[float, float, float] | None = None  # median, q20, q80
    ms_reversible: tuple[float, float, float] | None = None
    ratio: tuple[float, float, float] | None = None  # reversible / standard, paired runs
    peak_standard: int | None = None  # bytes added to the resident set by one pass
    peak_reversible: int | None = None


@dataclass
class Report:
    machine: str
    date: str
    settings: Settings
    rows: list[Row] = field(default_factory=list)
    load: tuple[float, float] | None = None  # 1-minute load average at the start and the end

    def markdown(self) -> str:
        s = self.settings
        out = [
            f"Measured on {self.machine}, {self.date}; {s.dtype}, batch {s.batch}, width "
            f"{s.width}, one Linear-tanh-Linear branch shared by every layer (tied), "
            f"{s.repeats} timed forward+backward passes per cell."
            + (
                f" 1-minute load average {self.load[0]:.1f} at the start, {self.load[1]:.1f} "
                "at the end (other processes share the machine)."
                if self.load
                else ""
            ),
            "",
            "| network | depth | saved MiB standard | saved MiB reversible | peak MiB standard "
            "| peak MiB reversible | ms standard (q20-q80) | ms reversible (q20-q80) "
            "| time ratio, median of pairs (q20-q80) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            out.append(
                f"| {LABELS[r.network]} | {r.depth} | {_mib(r.saved_standard)} | "
                f"{_mib(r.saved_reversible)} | {_mib(r.peak_standard)} | "
                f"{_mib(r.peak_reversible)} | {_ms(r.ms_standard)} | {_ms(r.ms_reversible)} | "
                f"{_ratio(r.ratio)} |"
            )
        return "\n".join(out) + "\n"

    def plot(self, path: str | Path) -> Path:
        """Saved bytes (and peak memory where measured) against depth, one line per network
        and mode, log-log; written to ``path`` (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        peaks = any(r.peak_standard is not None for r in self.rows)
        fig, axes = plt.subplots(1, 2 if peaks else 1, figsize=(11 if peaks else 6, 5.6))
        axes = list(axes) if peaks else [axes]
        panels = [("saved", "saved tensors (MiB)")] + (
            [("peak", "peak RSS added (MiB)")] if peaks else []
        )
        for ax, (what, title) in zip(axes, panels, strict=True):
            nets = list(dict.fromkeys(r.network for r in self.rows))
            for i, net in enumerate(nets):
                rows = [r for r in self.rows if r.network == net]
                color, marker = f"C{i}", "osD^v<>"[i % 7]  # one colour and marker per network
                for mode, style in (("standard", "--"), ("reversible", "-")):
                    points = [(r.depth, getattr(r, f"{what}_{mode}")) for r in rows]
                    points = [(d, y) for d, y in points if y is not None and y > 0]
                    if not points:
                        continue
                    kind = mode
                    if net == "momentumnet":
                        kind = f"use_backprop={mode == 'standard'}"
                    ax.plot(
                        [d for d, _ in points],
                        [y / 2**20 for _, y in points],
                        style,
                        color=color,
                        marker=marker,
                        fillstyle="full" if mode == "reversible" else "none",
                        label=f"{LABELS[net]}, {kind}",
                    )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("depth (layers)")
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
        fig.suptitle(f"Memory against depth ({self.machine}, {self.date})", fontsize=9)
        fig.tight_layout(rect=(0, 0.2, 1, 1))
        path = Path(path)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def _mib(n: int | None) -> str:
    return "not measured" if n is None else f"{n / 2**20:.2f}"


def _ms(q: tuple[float, float, float] | None) -> str:
    return "not measured" if q is None else f"{q[0]:.1f} ({q[1]:.1f}-{q[2]:.1f})"


def _ratio(q: tuple[float, float, float] | None) -> str:
    return "not measured" if q is None else f"{q[0]:.2f} ({q[1]:.2f}-{q[2]:.2f})"


def machine() -> str:
    """The CPU model, core count and torch's thread count."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"


# -- one network -------------------------------------------------------------------------------
@dataclass
class Case:
    """One network at one depth: ``standard()`` and ``reversible()`` each run the forward pass
    and return the outputs; ``params`` are the trainable tensors; ``leaves`` what gradients
    are taken for."""

    standard: Callable
    reversible: Callable
    params: list
    leaves: list


def build(network: str, depth: int, settings: Settings, seed: int = 0) -> Case:
    import torch
    from torch import nn

    import unroll
    from unroll.frontend.library import compile as compile_scheme
    from unroll.lowering.nn.reversible import scheme_steps, standard_unroll

    dtype = getattr(torch, settings.dtype)
    torch.manual_seed(seed)
    d = settings.width

    def branch() -> nn.Module:
        return nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d)).to(dtype)

    x0 = torch.randn(settings.batch, d, dtype=dtype, requires_grad=True)
    if network == "momentumnet":
        from momentumnet import MomentumNet

        shared = branch()
        fs = [shared] * depth
        params = list(shared.parameters())
        std, rev = (MomentumNet(fs, gamma=GAMMA, use_backprop=b) for b in (True, False))
        return Case(lambda: (std(x0),), lambda: (rev(x0),), params, [x0, *params])

    if network == "momentum_network":  # what users build: Scheme.network(..., reversible=True)
        shared = branch()
        nets = [
            unroll.schemes["momentum_resnet"].network(
                depth, f=shared, tied=True, params={"γ": GAMMA}, reversible=r
            ).to(dtype)
            for r in (False, True)
        ]
        params = list(shared.parameters())
        return Case(lambda: (nets[0](x0),), lambda: (nets[1](x0),), params, [x0, *params])

    names = ("f", "g") if network == "revnet" else ("f",)
    shared = {n: branch() for n in names}
    modules = [shared] * depth
    params = [p for b in shared.values() for p in b.parameters()]
    if network == "momentum":
        scheme, coefficients = compile_scheme(MOMENTUM), {"γ": GAMMA}
        start = {"x": x0, "v": torch.zeros_like(x0)}
    elif network == "leapfrog":
        scheme, coefficients = unroll.schemes["leapfrog"], {"h": 0.1}
        start = {"x": x0}
    else:
        scheme, coefficients = unroll.schemes["revnet"], {}
        start = {"X": x0, "Y": torch.zeros_like(x0)}

    def layer(n):
        return {k: (lambda t, x, m=m: m(x)) for k, m in modules[n].items()}, coefficients

    steps = scheme_steps(scheme, layer)
    h0 = steps.layout.start(start)
    return Case(
        lambda: standard_unroll(steps.step, h0, depth),
        lambda: steps.unroll(h0, depth, params),
        params,
        [x0, *params],
    )


def saved_bytes(run: Callable, exclude: Sequence = ()) -> tuple[int, Any]:
    """Bytes of the distinct storages autograd saves while ``run()`` builds its graph (the
    tensors in ``exclude``, parameters, are not activations and are left out), and what ``run``
    returned: the graph it holds keeps every counted storage alive, so none is freed and its
    address reused while counting. The measure of the tests and of this benchmark."""
    import torch

    skip = {p.untyped_storage().data_ptr() for p in exclude}
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return sum(storages.values()), out


def _backward(case: Case, mode: str) -> None:
    import torch

    out = getattr(case, mode)()
    loss = sum(t.float().square().mean() for t in out)
    torch.autograd.grad(loss, case.leaves)


def _quantiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=10, method="inclusive")
    return statistics.median(values), q[1], q[7]


def timing(case: Case, repeats: int) -> dict[str, tuple[float, float, float]]:
    """Median, 20% and 80% quantiles in ms of one forward and backward pass, standard and
    reversible, and of their ratio. The two run alternately, ``repeats`` pairs after one
    warm-up pair, and the ratio is taken within each pair, so that a change of load on the
    machine between pairs cancels out."""
    for mode in ("standard", "reversible"):
        _backward(case, mode)
    times: dict[str, list[float]] = {"standard": [], "reversible": []}
    for _ in range(repeats):
        for mode in times:
            t0 = time.perf_counter()
            _backward(case, mode)
            times[mode].append(1e3 * (time.perf_counter() - t0))
    ratios = [r / s for r, s in zip(times["reversible"], times["standard"], strict=True)]
    return {**{m: _quantiles(v) for m, v in times.items()}, "ratio": _quantiles(ratios)}


def peak(network: str, depth: int, mode: str, settings: Settings) -> int:
    """The resident memory one forward and backward pass adds, in a fresh process: bytes."""
    args = [
        sys.executable,
        "-m",
        "benchmarks.reversible",
        "--peak-child",
        network,
        str(depth),
        mode,
    ]
    args += ["--settings", json.dumps(asdict(settings))]
    # A fixed mmap threshold: glibc then maps every buffer of 16 KiB or more on its own and
    # unmaps it when freed, so the resident set follows the live tensors (its default, dynamic
    # threshold would serve them from a heap that never shrinks).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "16384"}
    done = subprocess.run(
        args, capture_output=True, text=True, check=True, env=env,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    return int(done.stdout.strip().splitlines()[-1])


def _resident() -> int:
    """This process's resident set in bytes (/proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _peak_child(network: str, depth: int, mode: str, settings: Settings) -> int:
    """In the child: build, run one warm-up pass (first-call costs: caches, lazily built
    code), then sample the resident set every 0.2 ms during one more pass; the peak above the
    resident set before it."""
    import gc
    import threading

    case = build(network, depth, settings)
    _backward(case, mode)
    gc.collect()
    before = _resident()
    highest = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            highest[0] = max(highest[0], _resident())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        _backward(case, mode)
    finally:
        done.set()
        sampler.join()
    return max(highest[0], _resident()) - before


def run(
    networks: Sequence[str] = NETWORKS,
    depths: Sequence[int] = (8, 16, 32, 64, 128, 256),
    settings: Settings = Settings(),
    peak_depths: Sequence[int] = (),
    time_depths: Sequence[int] | None = None,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Measure every network at every depth (see the module docstring)."""
    report = Report(machine(), datetime.date.today().isoformat(), settings)
    start_load = os.getloadavg()[0]
    for network in networks:
        for depth in depths:
            case = build(network, depth, settings)
            saved = {
                m: saved_bytes(getattr(case, m), case.params)[0] for m in ("standard", "reversible")
            }
            timed = time_depths is None or depth in time_depths
            times = timing(case, settings.repeats) if timed else {}
            peaks = {
                m: peak(network, depth, m, settings) if depth in peak_depths else None
                for m in ("standard", "reversible")
            }
            report.rows.append(
                Row(network, depth, saved["standard"], saved["reversible"], times.get("standard"),
                    times.get("reversible"), times.get("ratio"), peaks["standard"],
                    peaks["reversible"])
            )  # fmt: skip
            report.load = (start_load, os.getloadavg()[0])
            if progress is not None:
                progress(report)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reversible", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--depths", default="8,16,32,64,128,256")
    parser.add_argument("--width", type=int, default=Settings.width)
    parser.add_argument("--batch", type=int, default=Settings.batch)
    parser.add_argument("--repeats", type=int, default=Settings.repeats)
    parser.add_argument(
        "--peak", default="", help="depths at which to measure peak RSS (fresh processes)"
    )
    parser.add_argument("--time", default="", help="depths at which to time (default: all)")
    parser.add_argument("--plot", help="write the memory plot (PNG) here")
    parser.add_argument("--peak-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_child:
        network, depth, mode = args.peak_child
        print(_peak_child(network, int(depth), mode, Settings(**json.loads(args.settings))))
        return
    networks = [n for n in args.networks.split(",") if n]
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown:
        parser.error(f"unknown network {unknown[0]!r}; networks: {', '.join(NETWORKS)}")
    depths = [int(d) for d in args.depths.split(",") if d]
    settings = Settings(args.width, args.batch, "float32", args.repeats)
    peak_depths = [int(d) for d in args.peak.split(",") if d]
    time_depths = [int(d) for d in args.time.split(",") if d] or None
    report = run(
        networks,
        depths,
        settings,
        peak_depths,
        time_depths,
        lambda r: print(f"... {r.rows[-1].network} depth {r.rows[-1].depth}", file=sys.stderr),
    )
    print(report.markdown())
    if args.plot:
        print(f"plot: {report.plot(args.plot)}", file=sys.stderr)


if __name__ == "__main__":
    main()
