"""Scheme text -> SymPy equations.

A hand-written tokenizer and recursive-descent parser that builds SymPy objects directly: user
text never reaches ``eval``, ``exec`` or ``sympify``. Every error is an `UnrollError` that names
what is wrong and shows the column with a caret.

Grammar (juxtaposition is multiplication, at the precedence of ``*`` and ``/``)::

    scheme    := equation ((';' | newline) equation)*
    equation  := target '=' sum
    target    := NAME | NAME subscript
    sum       := product (('+'|'-') product)*
    product   := ('+'|'-')* power (('*'|'/') unary | power)*   (the signs negate the product)
    unary     := ('+'|'-') unary | power
    power     := atom (('^'|'**') unary)?
    atom      := NUMBER | '(' sum ')' | '∇F' ['(' sum ')'] | 'grad F' [...]
               | NAME subscript? ['(' args ')']
    subscript := '_' ('<' index '>' | '{' index '}' | NAME | DIGITS)

Names and calls. A name followed by '(' is a call when it names a function of the language:
an elementary function (sin, cos, tanh, exp, log, sqrt, abs), the activation (φ, σ, phi,
sigma), a right-hand side or branch (f, g, f_1, ...), a linear operator (W, W_1, ...) or
∇F / grad F. Otherwise juxtaposition multiplies, as in ``β(x_k − x_<k-1>)``, ``h(a + b)`` or
``c_1(x_k)``, and that is refused where a reader would see a call that does nothing:

- an activation by name (``relu(...)``, ``sigmoid (...)``), with or without a space: the
  language writes it φ(...) and names the activation apart (``activation='relu'``);
- any other name written directly before '(' (no space), unless it reads as a coefficient: a
  name of one letter (with digits or a subscript: ``h``, ``β``, ``c_1``, ``a2``), a Greek
  letter's name (``beta``), a step name (`STEP_NAMES`), a stage of the scheme, or a parameter
  the scheme file declares. So ``lr(x_k)`` and ``sinh(x_k)`` are errors with a suggestion,
  while ``lr (x_k)`` and ``lr*(x_k)`` are the product.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

import sympy as sp

from unroll.errors import UnrollError, UnrollWarning, at
from unroll.ir import activations
from unroll.ir import vocabulary as ir

GREEK = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "varepsilon": "ε",
    "zeta": "ζ", "eta": "η", "theta": "θ", "kappa": "κ", "lambda": "λ", "mu": "μ", "nu": "ν",
    "xi": "ξ", "rho": "ρ", "tau": "τ", "omega": "ω", "Delta": "Δ",
}  # fmt: skip
ACTIVATION_NAMES = {"φ", "ϕ", "σ", "phi", "varphi", "sigma"}
STEP_NAMES = ("h", "Δt", "dt")  # the parameter names an ODE scheme's step goes by
NON_FINITE = {"inf", "nan", "oo", "infinity", "Infinity", "NaN", "∞"}

# Whitespace is any Unicode space but the newline (which ends an equation), and LaTeX's spacing
# commands. Numbers and subscript digits are ASCII; a name is letters and digits (checked below).
_TOKEN = re.compile(
    r"""
    (?P<ws>(?:[^\S\n]|\\[,;:! ])+)
  | (?P<newline>\n)
  | (?P<number>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
  | (?P<latex>\\[A-Za-z]+)
  | (?P<name>[^\W\d_][^\W_]*)
  | (?P<nabla>∇)
  | (?P<op>\*\*|[-+*/^()=;,<>{}_])
  | (?P<unicode_op>[−·×])
  | (?P<infinity>∞)
    """,
    re.VERBOSE,
)
_DELTA_T = re.compile(r"\\Delta[^\S\n]*t(?![^\W_])")
_UNICODE_OPS = {"−": "-", "·": "*", "×": "*"}
_NAME_DIGITS = set("0123456789₀₁₂₃₄₅₆₇₈₉")
_LATEX_SKIPPED = {"left", "right"}  # \left( ... \right): plain parentheses
# Bounds that keep every number exact, printable (Python prints ints of up to 4300 digits) and
# quick to build: a literal or a power past these is refused rather than hanging or overflowing.
MAX_NUMBER_BITS = 4096
MAX_NESTING = 50  # parentheses, calls and exponents, each a level of recursion in the parser
MAX_OFFSET = 1000  # how far back a state value may reach (x_<k-1000>)


def float64_misfit(value: sp.Basic) -> str | None:
    """Why a number in ``value`` cannot be a coefficient, or None if every one can.

    A scheme's numbers are exact rationals, printed as ``p/q`` and run in float64: a number
    beyond float64's largest (1e308 4), below its reciprocal, or whose p or q has more digits
    than float64 can hold would print as a literal that does not parse back, and overflow when
    the scheme runs. Other numeric terms (exp(1000)) must be within float64's range.
    """
    for num in sorted(value.atoms(sp.Rational), key=abs, reverse=True):
        if max(abs(num.p), num.q) <= _FLOAT64_MAX:
            continue
        shown = sp.sstr(sp.N(num, 3))
        if abs(num) > _FLOAT64_MAX:
            return f"the number {shown} overflows float64 (its largest is {_FLOAT64_MAX:.3g})"
        if abs(num) < 1 / _FLOAT64_MAX:
            return f"the number {shown} is too small: below 1/{_FLOAT64_MAX:.3g}"
        return f"the number {shown} takes more than 308 digits to write exactly: round it"
    for part in value.atoms(sp.Pow, sp.Function):
        if part.is_number and not abs(part.evalf(5)) <= _FLOAT64_MAX:
            return f"{sp.sstr(part)} = {sp.sstr(sp.N(part, 3))} overflows float64"
    return None


_FLOAT64_MAX = sys.float_info.max


def _check_name(text: str, pos: int, name: str) -> None:
    """A name is letters, ASCII digits and subscript digits: ``β²`` or ``x½`` is refused, not
    read as a parameter of that name."""
    for i, c in enumerate(name):
        if not (c.isalpha() or c in _NAME_DIGITS):
            hint = "; write a power as β^2" if c in "⁰¹²³⁴⁵⁶⁷⁸⁹" else ""
            raise at(text, pos + i, f"unexpected character {c!r} in the name {name!r}{hint}")


@dataclass(frozen=True)
class Token:
    kind: str  # 'number', 'name', 'nabla', 'op', 'newline', 'end'
    text: str
    col: int
    space_before: bool = False


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos, space = 0, False
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.lastgroup == "infinity":
            char = text[pos]
            if char == "∞":
                what = "a non-finite number"
            elif char in "@%&|!~$#?:.\\[]":
                what = f"unknown operator {char!r}"
            else:
                what = f"unexpected character {char!r}"
            raise at(text, pos, what)
        kind, value = m.lastgroup, m.group()
        if kind == "ws":
            space = True
        elif kind == "latex":
            word = value[1:]
            if word == "nabla":
                tokens.append(Token("nabla", "∇", pos, space))
            elif word == "Delta" and _DELTA_T.match(text, pos):
                # \Delta t is the step Δt, one name (as the unicode spelling Δt is).
                m = _DELTA_T.match(text, pos)
                tokens.append(Token("name", "Δt", pos, space))
            elif word in GREEK or word in ACTIVATION_NAMES or word in ir.ELEMENTARY:
                tokens.append(Token("name", word, pos, space))
            elif word in ("cdot", "times"):
                tokens.append(Token("op", "*", pos, space))
            elif word == "frac":
                tokens.append(Token("frac", value, pos, space))
            elif word not in _LATEX_SKIPPED:
                raise at(text, pos, f"unknown LaTeX command {value}")
            if word not in _LATEX_SKIPPED:
                space = False
        elif kind == "unicode_op":
            tokens.append(Token("op", _UNICODE_OPS[value], pos, space))
            space = False
        else:
            if kind == "name":
                _check_name(text, pos, value)
            if kind == "number" and text[m.end() : m.end() + 1] == ".":
                raise at(text, m.end(), f"malformed number {value}.")
            tokens.append(Token(kind, value, pos, space))
            space = False
        pos = m.end()
    tokens.append(Token("end", "", len(text), space))
    return tokens


@dataclass(frozen=True)
class Target:
    """A parsed left-hand side: a state's new value, an indexed stage, or a bare stage."""

    name: str
    offset: int | None  # None for a bare stage
    letter: str | None
    col: int


class _Statement:
    def __init__(self, lhs: list[Token], rhs: list[Token], eq_col: int):
        self.lhs, self.rhs, self.eq_col = lhs, rhs, eq_col


def _split(text: str, tokens: list[Token]) -> list[_Statement]:
    """Split at ';' and newlines outside parentheses; each statement must have one '='."""
    statements: list[_Statement] = []
    current: list[Token] = []
    depth_stack: list[Token] = []
    for tok in tokens:
        if tok.kind == "op" and tok.text in "({":
            depth_stack.append(tok)
        elif tok.kind == "op" and tok.text in ")}":
            if not depth_stack:
                raise at(
                    text, tok.col, f"unbalanced parentheses: {tok.text!r} without an opening one"
                )
            opening = depth_stack.pop()
            want = {"(": ")", "{": "}"}[opening.text]
            if tok.text != want:
                raise at(
                    text,
                    tok.col,
                    f"{tok.text!r} closes {opening.text!r} (column {opening.col + 1})",
                )
        ends = tok.kind == "end" or (tok.kind == "op" and tok.text == ";")
        ends = ends or (tok.kind == "newline" and not depth_stack)
        if tok.kind == "end" and depth_stack:
            raise at(text, depth_stack[-1].col, "unbalanced parentheses: this one is never closed")
        if not ends:
            if tok.kind != "newline":
                current.append(tok)
            continue
        if current:
            eqs = [i for i, t in enumerate(current) if t.kind == "op" and t.text == "="]
            if not eqs:
                raise at(text, current[0].col, "expected an equation 'LHS = RHS'")
            if len(eqs) > 1:
                raise at(text, current[eqs[1]].col, "a second '=' in one equation")
            i = eqs[0]
            if i == 0:
                raise at(text, current[0].col, "missing left-hand side before '='")
            statements.append(
                _Statement(
                    current[:i], current[i + 1 :] + [Token("end", "", tok.col)], current[i].col
                )
            )
        current = []
    if not statements:
        raise UnrollError("empty scheme: no equation 'LHS = RHS' was given")
    return statements


def _read_subscript(text: str, toks: list[Token], i: int) -> tuple[list[Token], int]:
    """At toks[i] == '_': return (the subscript's tokens, the index after it)."""
    nxt = toks[i + 1]
    if nxt.kind == "op" and nxt.text in "<{":
        close = ">" if nxt.text == "<" else "}"
        j = i + 2
        while not (toks[j].kind == "op" and toks[j].text == close):
            if toks[j].kind == "end" or (toks[j].kind == "op" and toks[j].text in "=;"):
                raise at(
                    text,
                    nxt.col,
                    f"subscript opened with {nxt.text!r} is never closed by {close!r}",
                )
            j += 1
        return toks[i + 2 : j], j + 1
    if nxt.kind in ("name", "number") and not nxt.space_before:
        return [nxt], i + 2
    raise at(text, toks[i].col, "expected a subscript after '_' (x_k, x_<k+1> or x_{k-1})")


def _label(content: list[Token]) -> str | None:
    """The subscript of a plain name (c_1, c_{12}, c_j): one name or one run of digits."""
    if len(content) != 1:
        return None
    tok = content[0]
    return tok.text if tok.kind == "name" or tok.text.isdigit() else None


def _index(text: str, content: list[Token], where: int) -> tuple[str | None, int]:
    """Parse an index: LETTER [(+|-) INT]... or INT. Returns (letter or None, offset)."""
    if not content:
        raise at(text, where, "empty subscript")
    letter, offset, sign = None, 0, 1
    expect_term = True
    for tok in content:
        if expect_term:
            if tok.kind == "name" and letter is None and len(tok.text) == 1:
                letter = tok.text
                if sign != 1:
                    raise at(text, tok.col, "the index letter cannot be negated")
            elif tok.kind == "number" and tok.text.isdigit():
                offset += sign * int(tok.text)
            else:
                raise at(
                    text, tok.col, f"unexpected {tok.text!r} in a subscript; write k, k+1 or k-1"
                )
            expect_term = False
        elif tok.kind == "op" and tok.text in "+-":
            sign = 1 if tok.text == "+" else -1
            expect_term = True
        else:
            raise at(text, tok.col, f"unexpected {tok.text!r} in a subscript; write k, k+1 or k-1")
    if expect_term:
        raise at(text, content[-1].col, "subscript ends with an operator")
    if abs(offset) > MAX_OFFSET:
        raise at(text, content[0].col, f"an index more than {MAX_OFFSET} steps away")
    return letter, offset


def _target(text: str, toks: list[Token]) -> Target:
    """Parse a left-hand side."""
    first = toks[0]
    if first.kind != "name" or first.text in NON_FINITE:
        raise at(text, first.col, "the left-hand side must be a state (x_<k+1>) or a stage name")
    name = GREEK.get(first.text, first.text)
    if len(toks) == 1:
        return Target(name, None, None, first.col)
    if toks[1].kind == "op" and toks[1].text == "_":
        content, j = _read_subscript(text, toks + [Token("end", "", toks[-1].col + 1)], 1)
        if j == len(toks):
            label = _label(content)
            if label is not None and label.isdigit():
                return Target(f"{name}_{label}", None, None, first.col)
            letter, off = _index(text, content, toks[1].col)
            if letter is None:
                raise at(
                    text,
                    first.col,
                    "a left-hand side subscript must use the index letter, e.g. x_<k+1>",
                )
            return Target(name, off, letter, first.col)
    raise at(text, first.col, "the left-hand side must be a single state (x_<k+1>) or stage name")


def _check_target_name(text: str, target: Target, letter: str) -> None:
    """Names the equations cannot assign: the index letter, the time, and (for a stage, which is
    a plain symbol where an operator's name would read as a call) the operators."""
    name = target.name
    if letter == "t":
        why = "t is the time; index the states by another letter, e.g. x_<k+1>"
    elif name == letter:
        why = f"{name} is the index letter and cannot be assigned"
    elif name == "t":
        why = "t is the time and cannot be assigned"
    elif target.offset != 1 and (
        name in ("F", "grad")
        or name in ACTIVATION_NAMES
        or name in ir.ELEMENTARY
        or ir.is_branch_name(name)
        or ir.is_linear_name(name)
    ):
        why = f"{name} names an operator and cannot be assigned"
    else:
        return
    raise at(text, target.col, why)


_OTHER_SPELLINGS = {"ln": "log(...)", "Phi": "φ(...)", "Sigma": "σ(...)"}


def _suggestion(name: str) -> str | None:
    """What ``name(...)`` most likely meant: a function of the language, or φ(...) with an
    activation, when ``name`` is a near miss of one (``sine``, ``Tanh``, ``Relu``); else None."""
    if name in _OTHER_SPELLINGS:
        return _OTHER_SPELLINGS[name]
    greek = _likely_intent(name, ())
    if greek is not None:  # bta(x): the product β(x), misspelt
        letter = greek.split()[-1].strip("()")
        return f"{letter}(...), the product with {letter}"
    candidates = {fn: f"{fn}(...)" for fn in ir.ELEMENTARY}
    for act in activations.SPELLINGS:
        candidates.setdefault(act, f"φ(...) with activation={act!r}")
    word = name.lower()
    # A known name that starts the word (cosine, sinh, relu6) beats a merely similar one.
    prefixes = [c for c in candidates if word.startswith(c) or c.startswith(word)]
    close = sorted(prefixes, key=len)[-1:] or difflib.get_close_matches(
        word, candidates, n=1, cutoff=0.6
    )
    return candidates[close[0]] if close else None


class _Parser:
    def __init__(self, text: str, toks: list[Token], ctx: _Context):
        self.text, self.toks, self.i, self.ctx = text, toks, 0, ctx
        self.depth = 0  # nesting level, bounded by MAX_NESTING

    # -- token helpers -------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def is_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.text in ops

    def take(self) -> Token:
        tok = self.tok
        self.i += 1
        return tok

    def expect(self, op: str, what: str) -> Token:
        if not self.is_op(op):
            shown = repr(self.tok.text) if self.tok.text else "the end"
            raise at(self.text, self.tok.col, f"expected {what}, found {shown}")
        return self.take()

    def error(self, message: str, tok: Token | None = None) -> UnrollError:
        return at(self.text, (tok or self.tok).col, message)

    def starts_atom(self) -> bool:
        t = self.tok
        return t.kind in ("number", "name", "nabla", "frac") or (t.kind == "op" and t.text in "({")

    def nested(self, tok: Token, parse):
        """``parse()`` one level deeper (a group, a call, an exponent); past `MAX_NESTING` levels
        the text is refused at ``tok`` instead of exhausting Python's recursion limit."""
        if self.depth >= MAX_NESTING:
            raise self.error(f"nested more than {MAX_NESTING} levels deep", tok)
        self.depth += 1
        try:
            return parse()
        finally:
            self.depth -= 1

    def checked(self, value: sp.Expr, tok: Token) -> sp.Expr:
        """``value`` if every number in it is finite, real and of a printable size; else an
        error at ``tok``, the operator or function that produced it."""
        if value.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
            raise self.error("a non-finite value (division by zero or log(0))", tok)
        for num in value.atoms(sp.Rational):
            if max(num.p.bit_length(), num.q.bit_length()) > MAX_NUMBER_BITS:
                raise self.error("a number too large (or too long) to hold exactly", tok)
        for part in [value, *value.atoms(sp.Pow, sp.Function)]:
            if part.is_number and part.is_extended_real is False:
                raise self.error("not a real number", tok)
        problem = float64_misfit(value)
        if problem is not None:
            raise self.error(problem, tok)
        return value

    # -- grammar -------------------------------------------------------------------------
    def parse(self) -> sp.Expr:
        if self.tok.kind == "end":
            raise self.error("missing right-hand side after '='")
        first = self.tok
        value = self.sum()
        if self.tok.kind != "end":
            raise self.error(f"unexpected {self.tok.text!r}")
        return self.checked(value, first)

    def sum(self) -> sp.Expr:
        value = self.product()
        while self.is_op("+", "-"):
            op = self.take()
            if self.tok.kind == "end" or self.is_op(")", "}", "*", "/", "^", "**", ","):
                raise self.error(f"expected an expression after {op.text!r}")
            rhs = self.product()
            value = value + rhs if op.text == "+" else value - rhs
        return value

    def product(self) -> sp.Expr:
        # A leading sign negates the whole product, -(a + b)/c = -((a + b)/c), as printing
        # writes it; negating (a + b) first would distribute the sign and not print back alike.
        negate = self.signs()
        value = self.power()
        while True:
            # Each product is checked where its factor is written: 1e308 4 α overflows at 4.
            if self.is_op("*", "/"):
                op = self.take()
                if not (self.starts_atom() or self.is_op("+", "-")):
                    raise self.error(f"expected an expression after {op.text!r}")
                factor = self.tok
                rhs = self.unary()
                value = value * rhs if op.text == "*" else self.divide(value, rhs, op)
                value = self.checked(value, factor)
            elif self.starts_atom():
                factor = self.tok
                value = self.checked(value * self.power(), factor)
            else:
                return -value if negate else value

    def divide(self, num: sp.Expr, den: sp.Expr, op: Token) -> sp.Expr:
        if den == 0:
            raise self.error("division by zero", op)
        return num / den

    def signs(self) -> bool:
        """Take a run of '+' and '-' (a loop: '- - - x' costs no recursion); True if odd '-'s."""
        negate = False
        while self.is_op("-", "+"):
            negate ^= self.take().text == "-"
        return negate

    def unary(self) -> sp.Expr:
        negate = self.signs()
        value = self.power()
        return -value if negate else value

    def power(self) -> sp.Expr:
        base = self.atom()
        if self.is_op("^", "**"):
            op = self.take()
            if not (self.starts_atom() or self.is_op("+", "-")):
                raise self.error(f"expected an exponent after {op.text!r}")
            exponent = self.nested(op, self.unary)
            if base.is_Rational and exponent.is_Rational:
                # Refuse before SymPy multiplies out a huge exact power (10^10^10).
                size = max(base.p.bit_length(), base.q.bit_length()) * abs(exponent)
                if size > MAX_NUMBER_BITS:
                    raise self.error("a number too large to hold exactly", op)
            return self.checked(base**exponent, op)
        return base

    def group(self, close: str) -> sp.Expr:
        """The inside of '(' ... ')' or '{' ... '}' (the opening one already taken)."""
        opening = self.toks[self.i - 1]
        value = self.nested(opening, self.sum)
        self.expect(close, repr(close))
        return value

    def atom(self) -> sp.Expr:
        tok = self.tok
        if tok.kind == "number":
            self.take()
            return self.number(tok)
        if self.is_op("(", "{"):  # braces group, as in LaTeX: x^{2}, {\alpha}
            self.take()
            return self.group(")" if tok.text == "(" else "}")
        if tok.kind == "frac":
            self.take()
            self.expect("{", r"'{' after \frac")
            num = self.group("}")
            self.expect("{", r"'{' for the denominator of \frac")
            return self.divide(num, self.group("}"), tok)
        if tok.kind == "nabla":
            self.take()
            return self.gradient(tok)
        if tok.kind == "name":
            return self.named()
        if tok.kind == "end":
            raise self.error("expected an expression, found the end")
        raise self.error(f"unexpected {tok.text!r}")

    def number(self, tok: Token) -> sp.Rational:
        """The exact value of a literal (0.1 is 1/10), which must be a finite float64."""
        as_float = float(tok.text)
        if not math.isfinite(as_float):
            raise self.error("a non-finite number (too large for float64)", tok)
        mantissa = tok.text.lower().partition("e")[0]
        if as_float == 0 and mantissa.strip("0.") != "":
            raise self.error("a number too small for float64 (it would be 0)", tok)
        q = Fraction(tok.text)
        return self.checked(sp.Rational(q.numerator, q.denominator), tok)

    def gradient(self, start: Token) -> sp.Expr:
        if not (self.tok.kind == "name" and self.tok.text == "F"):
            raise self.error(
                "unknown operator: ∇ applies to the objective F only (∇F or ∇F(y_k))", start
            )
        self.take()
        if self.is_op("("):  # ∇F(y_k) and ∇F (y_k) alike, as f(x) and f (x)
            self.take()
            point = self.group(")")
            return ir.GRAD(point)
        return ir.GRAD(self.ctx.current_point(start))

    def call_args(self, name: str) -> list[sp.Expr]:
        """The arguments of ``name(a, b)``, or the one of ``name{a}`` (LaTeX: \\sqrt{x})."""
        if self.is_op("{"):
            self.take()
            return [self.group("}")]
        opening = self.expect("(", f"'(' after {name}")

        def args() -> list[sp.Expr]:
            out = [self.sum()]
            while self.is_op(","):
                self.take()
                out.append(self.sum())
            return out

        out = self.nested(opening, args)
        self.expect(")", f"')' closing {name}(")
        return out

    def named(self) -> sp.Expr:
        tok = self.take()
        raw = tok.text
        if raw in NON_FINITE:
            raise self.error("a non-finite number", tok)
        if raw == "grad":
            if self.tok.kind == "name" and self.tok.text == "F":
                return self.gradient(tok)
            raise self.error("unknown operator: 'grad' applies to the objective F only", tok)
        name = GREEK.get(raw, raw)
        # A subscript: an indexed state, an indexed stage, or part of a plain name (c_1).
        if self.is_op("_") and not self.tok.space_before:
            content, j = _read_subscript(self.text, self.toks, self.i)
            sub_col = self.tok.col
            self.i = j
            label = _label(content)
            if label is not None and label != self.ctx.letter:
                if not label.isdigit():
                    self.ctx.refuse_foreign_index(name, label, tok, self)
                name = f"{name}_{label}"  # part of a name: c_1, c_{1}, c_j
            else:
                letter, off = _index(self.text, content, sub_col)
                if letter != self.ctx.letter:
                    raise at(
                        self.text,
                        sub_col,
                        f"subscript does not use the index letter {self.ctx.letter!r}",
                    )
                return self.ctx.indexed(name, off, tok, self)
        if raw in ACTIVATION_NAMES:
            return ir.ACT(*self.single_arg(raw, tok))
        if name in ir.ELEMENTARY:
            (arg,) = self.single_arg(name, tok)
            value = ir.ELEMENTARY[name](arg)
            if name == "abs":
                # SymPy leaves Abs(2 Abs(x)) as 2 Abs(Abs(x)) (doit() settles it to 2 Abs(x), the
                # form that printing and parsing again gives), and rewrites Abs(exp(x)) with
                # re(x), which is no operator here: keep that one as written.
                value = value.doit()
                if value.has(sp.re, sp.im):
                    value = sp.Abs(arg, evaluate=False)
            return self.checked(value, tok)
        if ir.is_branch_name(name):
            if not self.is_op("("):
                raise self.error(f"{name} is an operator: write {name}(x_k) or {name}(t, x_k)", tok)
            args = self.call_args(name)  # f(x): an autonomous field; f(t, x): a time-dependent one
            if len(args) not in (1, 2):
                raise self.error(f"{name} takes (x) or (t, x), not {len(args)} arguments", tok)
            return ir.branch(name)(*args)
        if ir.is_linear_name(name):
            if self.is_op("("):
                return ir.linear(name)(*self.single_arg(name, tok))
            if not self.starts_atom():
                raise self.error(
                    f"{name} is a linear operator: write {name} x_k or {name}(x_k)", tok
                )
            return ir.linear(name)(self.atom())
        if name == "F":
            raise self.error("F is the objective: write ∇F or ∇F(y_k) for its gradient", tok)
        if name == self.ctx.letter:
            return ir.index_symbol(name)
        if name == "t":
            return ir.T
        if self.is_op("("):
            self.refuse_call(name, tok)
        return self.ctx.plain(name, tok, self)

    def refuse_call(self, name: str, tok: Token) -> None:
        """``name (...)`` with ``name`` no function: an error where a reader would see a call
        (an activation's name; any name directly before '(' that is not coefficient-like),
        else nothing, and the parser reads a product. See the module docstring."""
        if name in self.ctx.declared:
            return
        if activations.is_name(name.lower()):
            raise self.error(
                f"{name} is not a function of the scheme language: did you mean φ(...) with "
                f"activation={name.lower()!r}?",
                tok,
            )
        if self.tok.space_before or self.ctx.coefficient_like(name):
            return
        hint = _suggestion(name)
        raise self.error(
            f"{name} is not a function of the scheme language"
            + (f": did you mean {hint}?" if hint else "")
            + f" (known: {', '.join(ir.ELEMENTARY)}, φ); for a product write {name}*(...) "
            f"or {name} (...)",
            tok,
        )

    def single_arg(self, name: str, tok: Token) -> list[sp.Expr]:
        args = self.call_args(name)
        if len(args) != 1:
            raise self.error(f"{name} takes one argument, not {len(args)}", tok)
        return args


class _Context:
    """What the parser knows about the whole scheme while reading one right-hand side."""

    def __init__(
        self, text: str, targets: list[Target], letter: str, declared: frozenset[str] = frozenset()
    ):
        self.text, self.letter, self.declared = text, letter, declared
        self.k = ir.index_symbol(letter)
        self.states = {t.name for t in targets if t.offset == 1}
        self.stages = {t.name for t in targets if t.offset != 1}
        self.lhs: Target | None = None
        self.first_use: dict[str, Token] = {}  # parameter -> where the text first writes it
        self.shift = 0  # added to written offsets so that the newest value sits at k+1

    def current_point(self, tok: Token) -> sp.Expr:
        """Where a bare ∇F is evaluated: the current value of the scheme's one state. With
        several (v and x of a velocity form) the point is not guessed: ``v_<k+1> = β v_k − α∇F``
        means ∇F(x_k), while the state being computed is v."""
        if len(self.states) == 1:
            return sp.IndexedBase(next(iter(self.states)))[self.k]
        names = sorted(self.states)
        points = " or ".join(f"∇F({n}_{self.letter})" for n in names)
        raise at(
            self.text,
            tok.col,
            f"a bare ∇F is ambiguous in a scheme with states {', '.join(names)}: write the "
            f"point, {points}",
        )

    def indexed(self, name: str, off: int, tok: Token, p: _Parser) -> sp.Expr:
        """``name`` at the written offset ``off``; messages show offsets as written."""

        def shown(j: int) -> str:
            return f"{name}_{self.letter}" if j == 0 else f"{name}_<{self.letter}{j:+d}>"

        newest, off = 1 - self.shift, off + self.shift
        if name in self.stages:
            if off != 0:
                raise p.error(
                    f"{shown(off - self.shift)}: {name} is a stage, computed anew each step; "
                    f"only {shown(-self.shift)} exists",
                    tok,
                )
            return sp.Symbol(name)
        if name not in self.states:
            raise p.error(
                f"{shown(off - self.shift)}: {name} is not a state (no equation computes "
                f"{shown(newest)})",
                tok,
            )
        if off > 1:
            raise p.error(
                f"{shown(off - self.shift)} is ahead of the newest value {shown(newest)}", tok
            )
        return sp.IndexedBase(name)[self.k + off]

    def coefficient_like(self, name: str) -> bool:
        """True for a name that reads as a coefficient before '(': one letter (digits and a
        subscript aside), a step name, a stage of the scheme or a declared parameter."""
        head = name.partition("_")[0]
        return (
            sum(c.isalpha() for c in head) <= 1
            or name in STEP_NAMES
            or name in self.stages
            or name in self.declared
        )

    def refuse_foreign_index(self, name: str, label: str, tok: Token, p: _Parser) -> None:
        """``x_n`` (or ``x_prev``) with x a state or a stage of a scheme indexed by k would be a
        new parameter ``x_n``: an error saying why."""
        k = self.letter
        if name in self.states:
            raise p.error(
                f"{name}_{label}: {name} is a state of this scheme, indexed by {k} ({name}_{k}, "
                f"{name}_<{k}-1>), and {label!r} is not the index letter",
                tok,
            )
        if name in self.stages:
            raise p.error(
                f"{name}_{label}: {name} is a stage of this scheme, written {name} (or "
                f"{name}_{k}), and {label!r} is not the index letter",
                tok,
            )

    def plain(self, name: str, tok: Token, p: _Parser) -> sp.Expr:
        if name in self.states:
            raise p.error(
                f"{name} is a state: write it with its index, e.g. {name}_{self.letter}", tok
            )
        if name not in self.stages and name != self.letter:
            self.first_use.setdefault(name, tok)
        return sp.Symbol(name)

    def warn_typos(self) -> None:
        """An `UnrollWarning` for each new parameter one letter edit away from a Greek letter's
        name (``bta``: β) or from a parameter written before it (``mon`` after ``mom``).
        Declared parameters, and names that differ in a digit or a subscript (c_1 and c_2,
        beta1), are left alone."""
        seen: list[str] = []
        for name, tok in self.first_use.items():
            intent = None if name in self.declared else _likely_intent(name, seen)
            seen.append(name)
            if intent is not None:
                message = (
                    f"{name} is a new parameter, one letter from {intent}: did you mean "
                    f"{intent.split()[-1].strip('()')}? (declare {name} in the scheme file's "
                    "parameters if it is meant)"
                )
                warnings.warn(str(at(self.text, tok.col, message)), UnrollWarning, stacklevel=3)


def parse(text: str, parameters: Iterable[str] = ()) -> list[sp.Eq]:
    """Parse scheme text into SymPy equations, in order.

    States become ``IndexedBase(name)[k + j]``, normalised so that new values sit at ``k + 1``;
    stages and parameters become ``Symbol``s (see `unroll.ir.vocabulary`). ``parameters``: the
    names a scheme file declares (``alpha`` or ``α``); written before '(' they multiply.
    """
    if not isinstance(text, str):
        raise UnrollError(f"scheme text must be a str, not {type(text).__name__}")
    declared = frozenset(GREEK.get(name, name) for name in parameters)
    tokens = tokenize(text)
    statements = _split(text, tokens)
    targets = [_target(text, s.lhs) for s in statements]

    letters = {t.letter for t in targets if t.letter is not None}
    if not letters:
        raise at(
            text,
            targets[0].col,
            "no state is advanced: one left-hand side must be a new state like x_<k+1>",
        )
    if len(letters) > 1:
        first = next(t for t in targets if t.letter is not None)
        bad = next(t for t in targets if t.letter not in (None, first.letter))
        raise at(
            text, bad.col, f"index letter {bad.letter!r} differs from {first.letter!r} used before"
        )
    letter = letters.pop()
    # Normalise so that the newest state value is at k+1 (x_<k+2> = ... x_<k+1> ... x_k).
    newest = max(t.offset for t in targets if t.offset is not None)
    shift = 1 - newest
    targets = [
        Target(t.name, None if t.offset is None else t.offset + shift, t.letter, t.col)
        for t in targets
    ]
    seen: dict[tuple[str, bool], Target] = {}
    for t in targets:
        _check_target_name(text, t, letter)
        if t.offset is not None and t.offset not in (0, 1):
            raise at(
                text, t.col, f"the left-hand side {t.name} must be a new state value or a stage"
            )
        key = (t.name, t.offset == 1)
        if key in seen:
            raise at(text, t.col, f"{t.name} is computed twice")
        seen[key] = t
    ctx = _Context(text, targets, letter, declared)
    clash = ctx.states & ctx.stages
    if clash:
        name = sorted(clash)[0]
        bad = next(t for t in targets if t.name == name and t.offset != 1)
        raise at(text, bad.col, f"{name} is both a state and a stage")
    ctx.shift = shift

    equations = []
    for statement, target in zip(statements, targets, strict=True):
        ctx.lhs = target
        rhs = _Parser(text, statement.rhs, ctx).parse()
        if target.offset == 1:
            lhs = sp.IndexedBase(target.name)[ctx.k + 1]
        else:
            lhs = sp.Symbol(target.name)
        equations.append(sp.Eq(lhs, rhs, evaluate=False))
    ctx.warn_typos()
    return equations


def _letters(name: str) -> int:
    return sum(c.isalpha() for c in name)


def _likely_intent(name: str, others: Iterable[str]) -> str | None:
    """What a parameter ``name`` of three letters or more is one letter edit away from: a
    Greek letter's name (``"beta (β)"``) or one of ``others`` (``"the parameter mom"``)."""
    if _letters(name) < 3:
        return None
    word = name.lower()
    greek = [g for g in GREEK if g == word] or [g for g in GREEK if _one_letter_edit(word, g)]
    if greek:
        return f"{greek[0]} ({GREEK[greek[0]]})"
    near = [o for o in others if _letters(o) >= 2 and _one_letter_edit(name, o)]
    return f"the parameter {near[0]}" if near else None


def _one_letter_edit(a: str, b: str) -> bool:
    """True if one edit of a letter (insert, delete, replace, swap two neighbours) turns ``a``
    into ``b``; an edit of a digit or '_' does not count (c_1 and c_2 are different names)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if len(diff) == 1:
            i = diff[0]
            return a[i].isalpha() and b[i].isalpha()
        if len(diff) == 2 and diff[1] == diff[0] + 1:
            i = diff[0]
            return a[i] == b[i + 1] and a[i + 1] == b[i] and a[i].isalpha() and b[i].isalpha()
        return False
    long, short = (a, b) if len(a) > len(b) else (b, a)
    i = next((j for j, (x, y) in enumerate(zip(long, short, strict=False)) if x != y), len(short))
    return long[:i] + long[i + 1 :] == short and long[i].isalpha()
