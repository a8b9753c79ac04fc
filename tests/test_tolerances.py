"""tests/tolerances.py stays the suite's one table of tolerances: no test writes its own number
where a tolerance goes, and every entry in the table gives its reason."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent
TABLE = TESTS / "tolerances.py"
KEYWORDS = {"atol", "rtol", "rel", "abs"}


def _number(node: ast.AST) -> float | None:
    """The value of a numeric literal (signed or not), else None."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        node = node.operand
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    return None


def literal_tolerances(source: str) -> list[tuple[int, str]]:
    """(line, `keyword=value`) for each call argument atol=/rtol=/rel=/abs= given a non-zero
    number; zero (an exact comparison) is allowed."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                value = _number(kw.value) if kw.arg in KEYWORDS else None
                if value is not None and value != 0:
                    found.append((kw.value.lineno, f"{kw.arg}={ast.unparse(kw.value)}"))
    return found


def test_the_guard_sees_literals_and_allows_exact_and_named():
    source = (
        "assert_close(a, b, rtol=0, atol=1e-12)\n"
        "x == approx(y, rel=0.03)\n"
        "assert_close(a, b, rtol=0, atol=0)\n"
        "assert_close(a, b, **F64_ROUNDING)\n"
        "x == approx(y, abs=PROX)\n"
    )
    assert literal_tolerances(source) == [(1, "atol=1e-12"), (2, "rel=0.03")]


def test_no_test_writes_a_literal_tolerance():
    offenders = [
        f"{path.relative_to(TESTS.parent)}:{line}: {text}"
        for path in sorted(TESTS.rglob("*.py"))
        if path != TABLE
        for line, text in literal_tolerances(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, "name these in tests/tolerances.py:\n" + "\n".join(offenders)


def test_every_entry_gives_its_reason():
    """Each entry follows a comment, directly or through the entries that share it."""
    lines = TABLE.read_text(encoding="utf-8").splitlines()
    entries = [
        node
        for node in ast.parse("\n".join(lines)).body
        if isinstance(node, ast.Assign) and node.col_offset == 0
    ]
    assert entries
    starts = {node.lineno for node in entries}
    for node in entries:
        above = node.lineno - 1  # 1-based line just above the entry
        while above in starts or (above >= 1 and lines[above - 1].startswith((" ", "}"))):
            above -= 1  # an entry sharing the comment, or the body of a multi-line one
        assert above >= 1 and lines[above - 1].startswith("#"), ast.unparse(node.targets[0])
