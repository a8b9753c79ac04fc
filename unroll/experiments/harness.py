"""What every experiment shares: data, training, statistics, stored results and the generated
sections of docs/experiments.md.

An experiment (`unroll.experiments.catalogue`) is a list of `Job`s, each one configuration and
seed trained on one thread. Its `Result` (settings, every run's numbers, the machine and the
wall time) is stored as JSON beside its plot, and its Markdown section is written from that
`Result` alone, so the document can be checked against the stored numbers without training
anything again. Everything here is deterministic given the seeds.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from torch import Tensor, nn

from unroll.errors import UnrollError

__all__ = [
    "Data",
    "Job",
    "Result",
    "Stat",
    "bars",
    "count",
    "evaluate",
    "machine",
    "one_thread",
    "paired",
    "provenance",
    "read_section",
    "spirals",
    "stat",
    "table",
    "train",
    "write_section",
]


# -- data ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Data:
    """A train and a validation split: x of shape (n, ...) float32, y of shape (n,) class
    indices."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        return self.x_train, self.y_train


def _spiral_points(n: int, turns: float, noise: float, gen: torch.Generator):
    t = torch.rand(n, generator=gen).sqrt()  # √u: points spread evenly over the disc's area
    y = torch.randint(0, 2, (n,), generator=gen)
    angle = 2 * math.pi * turns * t + math.pi * y
    x = 2 * t[:, None] * torch.stack([angle.cos(), angle.sin()], 1)
    return x + noise * torch.randn(n, 2, generator=gen), y


def spirals(
    n_train: int = 1000, n_val: int = 1000, *, turns: float = 2.0, noise: float = 0.1, seed: int = 0
) -> Data:
    """Two interleaved spirals in the plane, classes 0 and 1 (generated, nothing downloaded).

    A point is drawn as t = √u with u ~ U(0, 1), its class c uniformly, then
    x = 2t (cos θ, sin θ) + noise·N(0, I) with θ = 2π·turns·t + π·c: arm c turns ``turns``
    times around the origin out to radius 2, the other arm is it rotated by π. Train and
    validation points come from one generator seeded with ``seed``. Returns `Data` with x of
    shape (n, 2)."""
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = _spiral_points(n_train, turns, noise, gen)
    x_val, y_val = _spiral_points(n_val, turns, noise, gen)
    return Data(x_train, y_train, x_val, y_val)


# -- training ------------------------------------------------------------------------------------
def train(
    model: nn.Module,
    data: Data,
    *,
    epochs: int,
    lr: float = 1e-2,
    batch_size: int = 128,
    seed: int = 0,
    after_epoch: Callable[[int], None] | None = None,
) -> None:
    """Adam on the cross-entropy, shuffled mini-batches (order fixed by ``seed``).

    A fresh optimiser each call: after `unroll.grow` the parameters are new tensors.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    x, y = data.train
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        if after_epoch is not None:
            after_epoch(epoch)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on ``x``, ``y``, in eval mode."""
    was = model.training
    model.eval()
    out = model(x)
    model.train(was)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())


def count(model: nn.Module) -> int:
    """The number of parameters."""
    return sum(p.numel() for p in model.parameters())


@contextmanager
def one_thread():
    """Run torch on one thread: these networks are so small that intra-op threads only add
    synchronisation (10× slower on a busy 2-core machine). Restores the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def machine() -> str:
    """The date and the machine a result was produced on, for generated documents."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    return (
        f"{datetime.date.today().isoformat()}, {cpu} ({os.cpu_count()} CPUs), "
        f"{platform.system()}, torch {torch.__version__}"
    )


# -- statistics ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of ``n`` runs (std 0 for one run)."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return self.format(3)

    def format(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"

    def above(self, other: Stat) -> bool:
        """Clearly above ``other``: the intervals mean ± std do not overlap."""
        return self.mean - self.std > other.mean + other.std

    def signed(self, digits: int = 3) -> str:
        """A difference: '+a ± s (clearly positive | clearly negative | within the spread of
        0)'."""
        zero = Stat(0.0, 0.0, 1)
        word = (
            "clearly positive"
            if self.above(zero)
            else "clearly negative"
            if zero.above(self)
            else "within the spread of 0"
        )
        return f"{self.mean:+.{digits}f} ± {self.std:.{digits}f} ({word})"

    def versus(self, other: Stat, digits: int = 3) -> str:
        """'a ± s vs b ± t (clearly higher | clearly lower | within the spread)'."""
        word = (
            "clearly higher"
            if self.above(other)
            else "clearly lower"
            if other.above(self)
            else "within the spread"
        )
        return f"{self.format(digits)} vs {other.format(digits)} ({word})"


def stat(values: Iterable[float]) -> Stat:
    """The `Stat` of ``values`` (at least one)."""
    vs = [float(v) for v in values]
    if not vs:
        raise UnrollError("no runs to summarise")
    return Stat(statistics.fmean(vs), statistics.stdev(vs) if len(vs) > 1 else 0.0, len(vs))


def select(runs: Sequence[Mapping[str, Any]], **where: Any) -> list[Mapping[str, Any]]:
    """The runs whose fields equal every ``where`` value."""
    return [r for r in runs if all(r[k] == v for k, v in where.items())]


def of(runs: Sequence[Mapping[str, Any]], metric: str, **where: Any) -> Stat:
    """The `Stat` of ``metric`` over the runs matching ``where`` (over seeds, typically)."""
    chosen = select(runs, **where)
    if not chosen:
        raise UnrollError(f"no runs with {where}")
    return stat(r[metric] for r in chosen)


def paired(
    runs: Sequence[Mapping[str, Any]],
    metric: str,
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    by: str = "seed",
) -> Stat:
    """The `Stat` of the differences a − b of ``metric`` between the runs matching ``a`` and
    those matching ``b`` that share the value of ``by`` (the same seed: the same data,
    initialisation or start), when the two are paired."""
    left = {r[by]: r[metric] for r in select(runs, **a)}
    right = {r[by]: r[metric] for r in select(runs, **b)}
    if not left or set(left) != set(right):
        raise UnrollError(f"runs {dict(a)} and {dict(b)} do not pair by {by}")
    return stat(left[k] - right[k] for k in sorted(left))


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """A Markdown table; ``align`` one letter per column, 'l' or 'r' (default: first l)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- jobs, results and the document -------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One unit of an experiment: ``run(advance)`` trains (calling ``advance()`` after every
    one of its ``epochs`` epochs) and returns its runs, each a flat mapping of JSON values
    (the configuration, the seed and the measured numbers)."""

    label: str
    epochs: int
    run: Callable[[Callable[..., None]], list[dict[str, Any]]]


@dataclass(frozen=True)
class Result:
    """An experiment's stored outcome: what `section` and the plots are written from."""

    name: str
    settings: dict[str, Any]
    seeds: int
    runs: list[dict[str, Any]]
    command: str
    machine: str
    wall_s: float  # seconds on the clock, training and evaluation (what a user waits)
    cpu_s: float  # seconds of CPU time of the process (the clock without the machine's load)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Result:
        return cls(**json.loads(text))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Result:
        return cls.from_json(path.read_text(encoding="utf-8"))


def provenance(result: Result) -> str:
    """The sentence that says how, where and in how long ``result`` was produced."""
    return (
        f"Generated by `{result.command}` on {result.machine}: {result.wall_s:.0f} s on the "
        f"clock, {result.cpu_s:.0f} s of CPU time (torch on one thread)."
    )


DOCUMENT_HEAD = """# Experiments

Each section below is written by `unroll experiment NAME` from the numbers it stores in
`docs/experiments/NAME.json` (every run, the settings, the machine and the wall time); the plot
beside it is `docs/experiments/NAME.png`. Rerunning a command rewrites its own section only.
"""


def _markers(name: str) -> tuple[str, str]:
    return (
        f"<!-- begin experiment {name}: generated by `unroll experiment {name}` -->",
        f"<!-- end experiment {name} -->",
    )


def read_section(document: str, name: str) -> str | None:
    """The generated section ``name`` of ``document`` (between its markers), or None."""
    begin, end = _markers(name)
    m = re.search(re.escape(begin) + r"\n(.*?)\n" + re.escape(end), document, re.S)
    return m.group(1) if m else None


def write_section(path: Path, name: str, text: str, order: Sequence[str]) -> None:
    """Put ``text`` in the section ``name`` of the Markdown file ``path``: replace it when it is
    there, else insert it before the next section of ``order`` that is present (or at the end).
    The rest of the file is kept as it is; a missing file starts with `DOCUMENT_HEAD`."""
    begin, end = _markers(name)
    block = f"{begin}\n{text.strip()}\n{end}"
    document = path.read_text(encoding="utf-8") if path.exists() else DOCUMENT_HEAD
    if read_section(document, name) is not None:
        pattern = re.escape(begin) + r"\n.*?\n" + re.escape(end)
        document = re.sub(pattern, lambda _: block, document, count=1, flags=re.S)
    else:
        later = list(order)[list(order).index(name) + 1 :] if name in order else []
        at = min(
            (document.index(_markers(n)[0]) for n in later if _markers(n)[0] in document),
            default=None,
        )
        if at is None:
            document = document.rstrip("\n") + "\n\n" + block + "\n"
        else:
            document = document[:at] + block + "\n\n" + document[at:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")


class Tracker:
    """What `bars` yields: `job` shows a job's bar while it trains, `advance` moves it by one
    epoch."""

    def __init__(self, progress: Any, jobs_task: Any):
        self.progress, self.jobs_task, self.epoch_task = progress, jobs_task, None

    @contextmanager
    def job(self, label: str, epochs: int) -> Iterator[None]:
        self.epoch_task = self.progress.add_task(f"  {label}", total=max(epochs, 1))
        try:
            yield
        finally:
            self.progress.remove_task(self.epoch_task)
            self.epoch_task = None
            self.progress.advance(self.jobs_task)

    def advance(self, *_: Any) -> None:
        if self.epoch_task is not None:
            self.progress.advance(self.epoch_task)


@contextmanager
def bars(title: str, jobs: int, *, enabled: bool = True) -> Iterator[Tracker]:
    """Two rich progress bars on stderr: the experiment's jobs, and the current job's epochs
    (hidden when stderr is no terminal or ``enabled`` is false)."""
    err = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err, transient=True,
        disable=not (enabled and err.is_terminal),
    ) as progress:  # fmt: skip
        yield Tracker(progress, progress.add_task(title, total=jobs))
