"""`unroll experiment`: each experiment at a tiny size (the plumbing: table, plot, stored numbers,
its own section of the document), reproducibility from the seeds, and docs/experiments.md
against the numbers stored beside it."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("sklearn")

from tests import ROOT  # noqa: E402
from tests.tolerances import F32_ANGLE
from unroll.cli import cli  # noqa: E402
from unroll.errors import UnrollError  # noqa: E402
from unroll.experiments import catalogue, harness  # noqa: E402
from unroll.experiments.harness import Result  # noqa: E402

# Smaller still than Settings.tiny(): each experiment runs twice here, in about a second.
TINY = {
    "momentum": {"depths": (2,), "inits": ("default", "kaiming")},
    "multistep": {},
    "order": {"points": 32},
    "grow": {},
    "parallel": {"depths": (1, 2)},
}
PNG = b"\x89PNG\r\n\x1a\n"


def _tiny(name: str) -> Result:
    given = dataclasses.replace(catalogue.settings(name, tiny=True), **TINY[name])
    return catalogue.run(name, seeds=2, given=given, progress=False)


@pytest.fixture(scope="module")
def results() -> dict[str, tuple[Result, Result]]:
    """Every experiment run twice with the same seeds."""
    return {name: (_tiny(name), _tiny(name)) for name in catalogue.EXPERIMENTS}


@pytest.mark.parametrize("name", list(catalogue.EXPERIMENTS))
def test_seeds_reproduce_every_number(results, name):
    first, second = results[name]
    assert first.runs == second.runs
    same_clock = dataclasses.replace(
        second, wall_s=first.wall_s, cpu_s=first.cpu_s, machine=first.machine
    )
    assert catalogue.render(first) == catalogue.render(same_clock)


@pytest.mark.parametrize("name", list(catalogue.EXPERIMENTS))
def test_every_configuration_has_every_seed(results, name):
    """The runs cover the experiment's grid, each configuration once per seed."""
    result, _ = results[name]
    seeds = sorted({r["seed"] for r in result.runs})
    assert seeds == [0, 1]
    fields = set(result.runs[0]) - {"seed"}
    assert {"val_accuracy"} <= fields
    for r in result.runs:
        assert 0 <= r["val_accuracy"] <= 1
    per_seed = {s: sum(1 for r in result.runs if r["seed"] == s) for s in seeds}
    assert per_seed[0] == per_seed[1]
    s = result.settings
    expected = {
        # feedforward, ResNet, HB-Net, AGD-Net × depths × tied or not × inits
        "momentum": lambda: 4 * len(s["depths"]) * 2 * len(s["inits"]),
        "multistep": lambda: 2 * 3,  # ResNet, LM-ResNet × no, drop, noise stochastic depth
        "order": lambda: 4 * 3,  # Euler, Heun, midpoint, RK4 × three comparisons
        "grow": lambda: 3 * (s["rounds"] + 1),  # methods × rounds (and the start)
        "parallel": lambda: 2 * len(s["depths"]),  # layouts × depths
    }[name]
    assert per_seed[0] == expected()


def test_written_files_and_sections(results, tmp_path):
    """Each experiment writes its numbers, its plot and its section; writing one again
    replaces its section and leaves the rest of the document as it was."""
    doc = tmp_path / catalogue.DOCUMENT
    doc.write_text("# Experiments\n\nWritten by hand, kept.\n")
    for name in reversed(list(catalogue.EXPERIMENTS)):  # inserted in catalogue order anyway
        result, _ = results[name]
        paths = catalogue.write(result, tmp_path)
        assert paths[1].read_bytes()[:8] == PNG
        assert Result.load(paths[0]) == result
    text = doc.read_text()
    assert text.startswith("# Experiments\n\nWritten by hand, kept.\n")
    starts = [text.index(f"<!-- begin experiment {n}:") for n in catalogue.EXPERIMENTS]
    assert starts == sorted(starts)
    for name in catalogue.EXPERIMENTS:
        assert harness.read_section(text, name) == catalogue.render(results[name][0])

    changed = dataclasses.replace(results["order"][0], wall_s=12345.0)
    catalogue.write(changed, tmp_path)
    after = doc.read_text()
    assert "12345 s" in harness.read_section(after, "order")
    for name in catalogue.EXPERIMENTS:
        if name != "order":
            assert harness.read_section(after, name) == harness.read_section(text, name)
    before_order, _, rest = text.partition("<!-- begin experiment order:")
    assert after.startswith(before_order)
    assert after.endswith(rest.partition("<!-- end experiment order -->")[2])


def test_tables_show_the_stored_numbers(results):
    """A cell of each table is the mean ± sample std of the stored runs, computed here."""
    momentum, _ = results["momentum"]
    cells = [
        r["val_accuracy"]
        for r in momentum.runs
        if (r["network"], r["depth"], r["tied"], r["init"]) == ("HB-Net", 2, True, "kaiming")
    ]
    assert len(cells) == 2
    cell = f"{statistics.mean(cells):.3f} ± {statistics.stdev(cells):.3f}"
    tied = catalogue.render(momentum).split("**Tied**")[1]
    row = next(line for line in tied.splitlines() if line.startswith("| 2 | HB-Net |"))
    assert row.endswith(f"| {cell} |")


def test_docs_tables_are_what_the_code_writes_for_the_stored_numbers():
    """docs/experiments.md holds, for every experiment, the section written from its stored
    results (docs/experiments/NAME.json) — regenerated here without training anything."""
    text = (ROOT / "docs" / catalogue.DOCUMENT).read_text()
    for name in catalogue.EXPERIMENTS:
        result = Result.load(ROOT / "docs" / "experiments" / f"{name}.json")
        assert result.name == name and result.seeds >= 3
        full = json.loads(json.dumps(dataclasses.asdict(catalogue.settings(name))))
        assert result.settings == full, f"{name}: the stored results are not of the full size"
        assert harness.read_section(text, name) == catalogue.render(result), name
        assert (ROOT / "docs" / "experiments" / f"{name}.png").read_bytes()[:8] == PNG


def test_spirals_lie_on_their_arms():
    """Without noise every point is 2t(cos θ, sin θ), θ = 2π·turns·t + π·c: its radius gives
    t, and its angle must then match its class's arm (and not the other's)."""
    data = harness.spirals(200, 100, turns=1.5, noise=0.0, seed=3)
    x = torch.cat([data.x_train, data.x_val]).double()
    y = torch.cat([data.y_train, data.y_val])
    t = x.norm(dim=1) / 2
    angle = torch.atan2(x[:, 1], x[:, 0])
    for c in (0, 1):
        expected = 2 * math.pi * 1.5 * t + math.pi * c
        gap = torch.remainder(angle - expected + math.pi, 2 * math.pi) - math.pi
        mine = gap[y == c].abs()
        other = gap[y != c].abs()
        assert bool((mine < F32_ANGLE).all())  # float32 points: the angle is good to ~1e-6
        assert bool((other > 3.0).all())  # the other arm is π away
    assert 0.4 < float(y.double().mean()) < 0.6
    assert not torch.equal(data.x_train[:100], data.x_val)
    again = harness.spirals(200, 100, turns=1.5, noise=0.0, seed=3)
    assert torch.equal(again.x_train, data.x_train)


def test_stat_and_verdict_words():
    s = harness.stat([0.9, 0.8, 1.0])
    assert (s.mean, s.std, s.n) == (pytest.approx(0.9), pytest.approx(0.1), 3)
    low = harness.stat([0.5, 0.6])
    assert s.versus(low).endswith("(clearly higher)")
    assert low.versus(s).endswith("(clearly lower)")
    assert s.versus(harness.stat([0.85, 0.95])).endswith("(within the spread)")
    assert str(harness.stat([0.25])) == "0.250 ± 0.000"


def test_bad_names_and_seeds_are_one_line_errors(tmp_path):
    with pytest.raises(UnrollError, match="'nosuch'"):
        catalogue.run("nosuch")
    with pytest.raises(UnrollError, match="seeds"):
        catalogue.run("order", seeds=1)
    runner = CliRunner()
    for args, word in ((["nosuch"], "'nosuch'"), (["order", "--seeds", "1"], "seeds")):
        result = runner.invoke(cli, ["experiment", *args, "--out", str(tmp_path)])
        assert result.exit_code == 2 and word in result.output
        assert result.output.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_cli_tiny_prints_and_writes_only_where_told(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    result = CliRunner().invoke(cli, ["experiment", "order", "--tiny", "--seeds", "2"])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads
    assert "rk4" in result.output and "24 runs" in result.output
    assert not any(tmp_path.iterdir())  # --tiny alone writes nothing (docs/ is not touched)
    out = tmp_path / "out"
    args = ["experiment", "order", "--tiny", "--seeds", "2", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (out / "experiments" / "order.png").read_bytes()[:8] == PNG
    stored = Result.load(out / "experiments" / "order.json")
    assert stored.command == "unroll experiment order --seeds 2 --tiny"
    assert harness.read_section((out / "experiments.md").read_text(), "order") == (
        catalogue.render(stored)
    )
    # --stored writes the section and the plot again from the numbers, training nothing.
    (out / "experiments.md").write_text("# Experiments\n")
    (out / "experiments" / "order.png").unlink()
    result = CliRunner().invoke(cli, ["experiment", "order", "--stored", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert harness.read_section((out / "experiments.md").read_text(), "order") == (
        catalogue.render(stored)
    )
    assert (out / "experiments" / "order.png").read_bytes()[:8] == PNG
    missing = CliRunner().invoke(cli, ["experiment", "grow", "--stored", "--out", str(out)])
    assert missing.exit_code == 2 and "grow.json" in missing.output


def test_the_ten_line_classifier_of_the_docs_trains(capsys):
    """The example of docs/experiments.md (and of the README) runs as written and learns the
    digits: its held-out accuracy is far above chance (0.1); three unseeded runs gave 0.940 to
    0.951, so 0.9 leaves room for the seed and nothing for a network that does not train."""
    text = (ROOT / "docs" / catalogue.DOCUMENT).read_text()
    part = text.split("## Train a classifier in ten lines", 1)[1]
    code = part.split("```python\n", 1)[1].split("```", 1)[0]
    torch.manual_seed(0)
    with harness.one_thread():
        exec(compile(code, "docs/experiments.md", "exec"), {})  # noqa: S102 - the docs' own example
    printed = capsys.readouterr().out
    accuracy = float(printed.split("test accuracy")[1])
    assert accuracy > 0.9, printed
