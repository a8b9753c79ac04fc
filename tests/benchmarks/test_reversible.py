"""benchmarks/reversible.py: the report a tiny run gives (the figures of docs/reversible.md come
from the full run; here only that the benchmark measures what it says)."""

from __future__ import annotations

from benchmarks.reversible import Report, Row, Settings, run


def test_a_tiny_run_reports_flat_reversible_memory():
    settings = Settings(width=8, batch=2, repeats=1)
    networks = ["momentum", "momentum_network", "momentumnet"]
    report = run(networks, [2, 4, 8], settings, time_depths=[8])
    rows = {(r.network, r.depth): r for r in report.rows}
    for network in networks:
        # Reversible: the same saved bytes at every depth; standard: grows with it.
        assert len({rows[network, d].saved_reversible for d in (2, 4, 8)}) == 1
        assert rows[network, 2].saved_standard < rows[network, 8].saved_standard
        assert rows[network, 8].ratio[0] > 0 and rows[network, 2].ratio is None
    # Ours saves the final (x, v) only; momentumnet x, its integer v and the bit store.
    assert rows["momentum", 8].saved_reversible == 2 * 2 * 8 * 4
    # the network a user builds saves no more than the scheme-level unroll under it
    assert rows["momentum_network", 8].saved_reversible <= rows["momentum", 8].saved_reversible
    assert rows["momentumnet", 8].saved_reversible == 2 * 8 * (4 + 8 + 8)


def test_markdown_states_what_was_not_measured():
    row = Row("revnet", 16, 2**20, 2**19, (2.0, 1.5, 2.5), (5.0, 4.0, 6.0), (2.5, 2.0, 3.0))
    report = Report("CPU", "2026-01-01", Settings(), [row], load=(1.0, 2.0))
    text = report.markdown()
    assert (
        "| RevNet (unroll) | 16 | 1.00 | 0.50 | not measured | not measured | 2.0 (1.5-2.5) "
        in text
    )
    assert "| 2.50 (2.00-3.00) |" in text and "load average 1.0" in text
    untimed = Report("CPU", "2026-01-01", Settings(), [Row("revnet", 8, 1, 1)]).markdown()
    assert "| not measured | not measured | not measured |" in untimed
