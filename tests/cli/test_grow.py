"""``unroll grow`` end to end, with settings small enough for a test (1 round, 2 epochs)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("sklearn")

from unroll.cli import cli  # noqa: E402
from unroll.experiments import digits  # noqa: E402
from unroll.experiments.growing import METHODS, experiment  # noqa: E402
from unroll.experiments.splitting import find_sites  # noqa: E402

TINY = ["--rounds", "1", "--epochs", "2", "--width", "4"]


def test_experiment_grows_each_method_and_not_the_control():
    width = 4
    rows = experiment(
        lambda: digits.scheme_net("forward_euler", depth=2, width=width, hidden=2),
        rounds=2, epochs=1, fraction=0.5, eps=0.01, lr=1e-2, seed=0, exact=True,
    )  # fmt: skip
    assert [(r.method, r.round) for r in rows] == [(m, k) for m in METHODS for k in range(3)]
    start = rows[0]
    assert all(r.params == start.params for r in rows if r.round == 0 or r.method == "none")
    for method in ("positive", "signed"):
        mine = [r for r in rows if r.method == method]
        # a new hidden unit of a branch: W inputs + bias in, W outputs
        assert [r.params - start.params for r in mine] == [
            (2 * width + 1) * sum(r.splits for r in mine[: k + 1]) for k in range(3)
        ]
        assert all(r.splits > 0 and r.predicted_change < 0 for r in mine[1:])
        assert all(0 <= r.val_accuracy <= 1 for r in mine)


def test_cli_prints_the_table_and_writes_the_plot(tmp_path):
    threads = torch.get_num_threads()
    result = CliRunner().invoke(cli, ["grow", *TINY, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads  # the command gives its thread setting back
    for method in METHODS:
        assert method in result.output
    png, md = tmp_path / "grow.png", tmp_path / "grow.md"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "unroll grow --rounds 1 --epochs 2 --scheme forward_euler --depth 2 --width 4" in text
    assert text.count("| signed |") == 2


def test_cli_matrix_free_runs():
    result = CliRunner().invoke(cli, ["grow", *TINY, "--matrix-free"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "args, word",
    [
        (["--fraction", "0"], "fraction"),
        (["--epochs", "0"], "--epochs"),
        (["--eps", "-1"], "eps"),
        (["--scheme", "nosuch"], "'nosuch'"),
        (["--scheme", "heavy_ball"], "'heavy_ball' (optimizer"),  # no branch f to grow
        (["--scheme", "revnet"], "'revnet' (ode, states X, Y)"),  # a tensor is not (X, Y)
    ],
)
def test_cli_bad_settings_are_one_line(args, word):
    result = CliRunner().invoke(cli, ["grow", "--rounds", "1", "--epochs", "1", *args])
    assert result.exit_code == 2
    assert word in result.output and result.output.count("\n") == 1


def test_scheme_with_two_branches_grows_both():
    """FractalNet has branches f_1 and f_2: each block gets one of each, and both grow."""
    model = digits.scheme_net("fractalnet", depth=2, width=4, hidden=2)
    assert [s.name for s in find_sites(model)] == [
        f"1.blocks.{n}.operators.{f}.0" for n in range(2) for f in ("f_1", "f_2")
    ]
    x = torch.zeros(3, digits.FEATURES)
    assert model(x).shape == (3, digits.CLASSES)
