"""The Python examples in the README and the docs run as written; sessions written with
``>>>`` print what the page shows."""

from __future__ import annotations

import doctest
import re

import pytest

from tests import ROOT

PAGES = ["README.md", "docs/networks.md", "docs/reversible.md"]
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _examples():
    for page in PAGES:
        text = (ROOT / page).read_text(encoding="utf-8")
        for i, block in enumerate(_BLOCK.findall(text)):
            yield pytest.param(block, id=f"{page}#{i}")


@pytest.mark.parametrize("code", list(_examples()))
def test_example_runs(code):
    if code.startswith(">>>"):  # a session: its outputs are checked as written
        test = doctest.DocTestParser().get_doctest(code, {}, "<example>", None, 0)
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        runner.run(test)
        assert runner.summarize(verbose=False).failed == 0
        return
    # Each example is a complete program a reader would paste; run it in its own namespace.
    exec(compile(code, "<example>", "exec"), {"__name__": "__example__"})  # noqa: S102
