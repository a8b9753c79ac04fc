"""The experiments of `unroll experiment NAME`, each the claim of a paper or of a pass of unroll
measured on small data, and the runner that writes their sections of docs/experiments.md.

Every experiment module has ``NAME``, ``TITLE``, ``SEEDS`` (its default number of seeds: 3,
more where runs are cheap), a frozen ``Settings`` (the full size by default,
``Settings.tiny()`` for a seconds-long run that checks the plumbing), ``jobs(settings, seeds)``
(the `harness.Job`s to train), ``section(result)`` (its Markdown), ``console(result)`` (the
table printed) and ``plot(result, path)``.

    result = run("momentum")          # trains every job: a `harness.Result`
    write(result, Path("docs"))       # then writes
    #   docs/experiments/momentum.json   every run's numbers (the `Result`)
    #   docs/experiments/momentum.png    the plot
    #   docs/experiments.md              its section (the others kept)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from unroll.errors import UnrollError
from unroll.experiments import deep_parallel, growing, harness, momentum, multistep, orders
from unroll.experiments.harness import Result

__all__ = ["DOCUMENT", "EXPERIMENTS", "console_table", "render", "run", "settings", "write"]

# In the order of the document: (a) to (e).
EXPERIMENTS: Mapping[str, ModuleType] = {
    m.NAME: m for m in (momentum, multistep, orders, growing, deep_parallel)
}
DOCUMENT = "experiments.md"  # in the output folder, beside the folder experiments/


def _module(name: str) -> ModuleType:
    if name not in EXPERIMENTS:
        raise UnrollError(f"no experiment {name!r}; experiments: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def settings(name: str, *, tiny: bool = False) -> Any:
    """The `Settings` of experiment ``name``: full size, or tiny."""
    cls = _module(name).Settings
    return cls.tiny() if tiny else cls()


def run(
    name: str,
    *,
    seeds: int | None = None,
    tiny: bool = False,
    command: str | None = None,
    progress: bool = True,
    given: Any = None,
) -> Result:
    """Train every job of experiment ``name`` (on one thread, with progress bars) and return
    its `Result`. ``seeds``: seeds 0 .. seeds − 1 of every configuration (default: the
    experiment's ``SEEDS``); ``given`` replaces the settings (tests); ``command`` is the
    command line recorded with the result."""
    module = _module(name)
    seeds = module.SEEDS if seeds is None else seeds
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
        raise UnrollError(f"seeds must be an int of at least 2 (a spread needs two), not {seeds!r}")
    chosen = given if given is not None else settings(name, tiny=tiny)
    todo = module.jobs(chosen, seeds)
    runs: list[dict[str, Any]] = []
    start, cpu = time.perf_counter(), time.process_time()
    with (
        harness.one_thread(),
        harness.bars(f"experiment {name}", len(todo), enabled=progress) as bar,
    ):
        for job in todo:
            with bar.job(job.label, job.epochs):
                runs += job.run(bar.advance)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    options = " --tiny" if tiny else ""
    return Result(
        name=name,
        settings=_plain(dataclasses.asdict(chosen)),
        seeds=seeds,
        runs=_plain(runs),
        command=command or f"unroll experiment {name} --seeds {seeds}{options}",
        machine=harness.machine(),
        wall_s=round(wall, 1),
        cpu_s=round(cpu, 1),
    )


def _plain(value: Any) -> Any:
    """Tuples as lists, as JSON gives them back, so a stored result equals a fresh one."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def render(result: Result) -> str:
    """The Markdown section of ``result`` (its experiment's ``section``)."""
    return _module(result.name).section(result)


def write(result: Result, out: Path) -> list[Path]:
    """Store ``result`` under ``out``: experiments/NAME.json, experiments/NAME.png and its
    section of experiments.md (the other sections kept). Returns the paths written."""
    module = _module(result.name)
    folder = out / "experiments"
    folder.mkdir(parents=True, exist_ok=True)
    stored, png, doc = folder / f"{result.name}.json", folder / f"{result.name}.png", out / DOCUMENT
    result.save(stored)
    module.plot(result, png)
    harness.write_section(doc, result.name, render(result), list(EXPERIMENTS))
    return [stored, png, doc]


def console_table(result: Result) -> tuple[tuple[str, ...], list[list[str]]]:
    """The header and rows the command prints for ``result``."""
    return _module(result.name).console(result)
