"""docs/schemes.md is generated from the analyses; it must match a fresh generation."""

from __future__ import annotations

from tests import ROOT
from unroll.analysis import report

DOCS = ROOT / "docs"


def test_schemes_page_is_current():
    fresh = report.markdown()
    assert (DOCS / "schemes.md").read_text(encoding="utf-8") == fresh, (
        "docs/schemes.md is out of date: run `unroll docs`"
    )
    assert (DOCS / report.FIGURE).is_file()
