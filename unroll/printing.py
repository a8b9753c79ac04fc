"""Printing equations back as scheme text and as LaTeX.

Both printers subclass SymPy's and only change how unroll's own objects look: state values
(``x_<k+1>``), operators (``∇F(x_k)``, ``f(x_k)``) and the time symbol. `str` output parses back
to the same equations (a property test holds us to it).
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from . import ir
from .parse import GREEK


def _offset_text(ref: sp.Indexed) -> tuple[str, int]:
    index = ref.indices[0]
    letter = next(iter(index.free_symbols))
    return letter.name, int(index - letter)


class SchemePrinter(StrPrinter):
    """Prints in the scheme language: ``x_<k+1> = x_k - α*∇F(x_k)``."""

    def _print(self, expr, **kwargs) -> str:
        # Indexed carries its own _sympystr, which SymPy would prefer to ours.
        if isinstance(expr, sp.Indexed):
            return self._print_Indexed(expr)
        return super()._print(expr, **kwargs)

    def _print_Indexed(self, expr: sp.Indexed) -> str:
        letter, off = _offset_text(expr)
        name = expr.base.label.name
        return f"{name}_{letter}" if off == 0 else f"{name}_<{letter}{off:+d}>"

    def _print_Function(self, expr: sp.Function) -> str:
        kind = ir.operator_kind(expr)
        name = expr.func.__name__
        if kind == "branch" and expr.args[0] == ir.T:
            return f"{name}({self._print(expr.args[1])})"
        if kind in ("grad", "branch", "act", "linear"):
            return f"{name}({', '.join(self._print(a) for a in expr.args)})"
        return super()._print_Function(expr)

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        return expr.name

    def _print_Float(self, expr: sp.Float) -> str:  # never produced by the parser
        return repr(float(expr))


_LATEX_GREEK = {g: "\\" + name for name, g in GREEK.items()} | {"ε": r"\varepsilon"}


class SchemeLatexPrinter(LatexPrinter):
    """LaTeX with ``x_{k+1}``, ``\\nabla F(x_k)`` and ``\\varphi``."""

    def _print(self, expr, **kwargs) -> str:
        if isinstance(expr, sp.Indexed):
            return self._print_Indexed(expr, **kwargs)
        return super()._print(expr, **kwargs)

    def _print_Symbol(self, expr: sp.Symbol, style="plain") -> str:
        head, sep, tail = expr.name.partition("_")
        name = _LATEX_GREEK.get(head, head)
        return f"{name}_{{{tail}}}" if sep else name

    def _print_Indexed(self, expr: sp.Indexed, exp=None) -> str:
        letter, off = _offset_text(expr)
        sub = letter if off == 0 else f"{letter}{off:+d}"
        out = f"{self._print(expr.base.label)}_{{{sub}}}"
        return f"{out}^{{{exp}}}" if exp else out

    def _print_Function(self, expr: sp.Function, exp=None) -> str:
        kind = ir.operator_kind(expr)
        if kind is None or kind == "elementary":
            return super()._print_Function(expr, exp)
        name = expr.func.__name__
        head = {"∇F": r"\nabla F", "φ": r"\varphi"}.get(name, name)
        args = expr.args[1:] if kind == "branch" and expr.args[0] == ir.T else expr.args
        body = rf"{head}\left({', '.join(self._print(a) for a in args)}\right)"
        return f"{body}^{{{exp}}}" if exp else body


def equation_text(eq: sp.Eq) -> str:
    p = SchemePrinter()
    return f"{p.doprint(eq.lhs)} = {p.doprint(eq.rhs)}"


def equation_latex(eq: sp.Eq) -> str:
    p = SchemeLatexPrinter()
    return f"{p.doprint(eq.lhs)} = {p.doprint(eq.rhs)}"


def expr_text(expr: sp.Basic) -> str:
    return SchemePrinter().doprint(expr)
