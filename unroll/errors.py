"""The exception users see for input unroll cannot accept, and the warning for input it accepts
but suspects (a likely typo)."""

from __future__ import annotations


class UnrollError(ValueError):
    """A user input that unroll cannot accept.

    The message names what is wrong and where: the symbol, the YAML key, or the column of
    the scheme text (shown with a caret under it).
    """


class UnrollWarning(UserWarning):
    """Input unroll accepts but suspects, such as a new parameter one edit away from a Greek
    letter's name (``bta`` for β). The message names the symbol and the likely intent."""


def at(text: str, column: int, message: str) -> UnrollError:
    """An error pointing at ``column`` (0-based) of one line of scheme ``text``."""
    line_start = text.rfind("\n", 0, column) + 1
    line_end = text.find("\n", column)
    line_end = len(text) if line_end < 0 else line_end
    line = text[line_start:line_end]
    col = column - line_start
    lineno = text.count("\n", 0, column) + 1
    where = f"line {lineno}, column {col + 1}" if "\n" in text else f"column {col + 1}"
    # A long line is shown as a window around the column, so the message stays readable.
    lo = max(0, col - _WINDOW)
    shown = line[lo : col + _WINDOW]
    caret = col - lo
    if lo:
        shown, caret = "…" + shown, caret + 1
    if col + _WINDOW < len(line):
        shown += "…"
    return UnrollError(f"{message} (at {where})\n  {shown}\n  {' ' * caret}^")


_WINDOW = 60  # characters of context either side of the column
