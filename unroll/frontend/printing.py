"""Printing equations back as scheme text and as LaTeX.

Both printers subclass SymPy's and only change how unroll's own objects look: state values
(``x_<k+1>``), operators (``∇F(x_k)``, ``f(x_k)``) and the time symbol. `str` output parses back
to the same equations (a property test holds us to it).
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from unroll.frontend.parse import GREEK
from unroll.ir import vocabulary as ir


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
        if kind in ("grad", "branch", "act", "linear"):
            return f"{name}({', '.join(self._print(a) for a in expr.args)})"
        return super()._print_Function(expr)

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        return expr.name

    # SymPy's own spellings (Abs(x), E) would read back as a parameter times (x) and a
    # parameter E: print them as the scheme language writes them.
    def _print_Abs(self, expr: sp.Abs) -> str:
        return f"abs({self._print(expr.args[0])})"

    def _print_Exp1(self, expr) -> str:
        return "exp(1)"

    def _print_Mul(self, expr: sp.Mul) -> str:
        # SymPy writes 2*(a + b)/c and x/(2*(x**2 + 1)), which parse back distributed
        # ((2*a + 2*b)/c, x/(2*x**2 + 2)): a number times a sum is expanded on construction.
        # Put the coefficient last instead, (a + b)/c*2 and x/(x**2 + 1)/2, which parse back
        # to this very product.
        c, rest = expr.as_coeff_Mul()
        factors = sp.Mul.make_args(rest)
        if (
            c.is_Rational
            and abs(c) != 1
            and any(f.is_Add or f.is_Pow and f.base.is_Add for f in factors)
        ):
            p, q = abs(c.p), c.q
            head = self._print(-rest if c < 0 else rest)
            return head + (f"*{p}" if p != 1 else "") + (f"/{q}" if q != 1 else "")
        return super()._print_Mul(expr)

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
        body = rf"{head}\left({', '.join(self._print(a) for a in expr.args)}\right)"
        return f"{body}^{{{exp}}}" if exp else body


def equation_text(eq: sp.Eq) -> str:
    p = SchemePrinter()
    return f"{p.doprint(eq.lhs)} = {p.doprint(eq.rhs)}"


def equation_latex(eq: sp.Eq) -> str:
    p = SchemeLatexPrinter()
    return f"{p.doprint(eq.lhs)} = {p.doprint(eq.rhs)}"


def expr_text(expr: sp.Basic) -> str:
    return SchemePrinter().doprint(expr)
