"""Scheme text -> SymPy equations.

A hand-written tokenizer and recursive-descent parser that builds SymPy objects directly: user
text never reaches ``eval``, ``exec`` or ``sympify``. Every error is an `UnrollError` that names
what is wrong and shows the column with a caret.

Grammar (juxtaposition is multiplication, at the precedence of ``*`` and ``/``)::

    scheme    := equation ((';' | newline) equation)*
    equation  := target '=' sum
    target    := NAME | NAME subscript
    sum       := ['+'|'-'] product (('+'|'-') product)*
    product   := unary (('*'|'/')? unary)*
    unary     := ('+'|'-') unary | power
    power     := atom (('^'|'**') unary)?
    atom      := NUMBER | '(' sum ')' | '∇F' ['(' sum ')'] | 'grad F' [...]
               | NAME subscript? ['(' args ')']
    subscript := '_' ('<' index '>' | '{' index '}' | NAME | DIGITS)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

import sympy as sp

from . import ir
from .errors import UnrollError, at

GREEK = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "varepsilon": "ε",
    "zeta": "ζ", "eta": "η", "theta": "θ", "kappa": "κ", "lambda": "λ", "mu": "μ", "nu": "ν",
    "xi": "ξ", "rho": "ρ", "tau": "τ", "omega": "ω", "Delta": "Δ",
}  # fmt: skip
ACTIVATION_NAMES = {"φ", "ϕ", "σ", "phi", "varphi", "sigma"}
NON_FINITE = {"inf", "nan", "oo", "infinity", "Infinity", "NaN", "∞"}

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r]+)
  | (?P<newline>\n)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<latex>\\[A-Za-z]+)
  | (?P<name>[^\W\d_][^\W_]*)
  | (?P<nabla>∇)
  | (?P<op>\*\*|[-+*/^()=;,<>{}_])
  | (?P<infinity>∞)
    """,
    re.VERBOSE,
)


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
            elif word in GREEK or word in ACTIVATION_NAMES:
                tokens.append(Token("name", word, pos, space))
            elif word in ("cdot", "times"):
                tokens.append(Token("op", "*", pos, space))
            elif word == "frac":
                raise at(text, pos, r"\frac is not supported; write a/b")
            else:
                raise at(text, pos, f"unknown LaTeX command {value}")
            space = False
        else:
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


def _read_subscript(text: str, toks: list[Token], i: int) -> tuple[str, list[Token], int]:
    """At toks[i] == '_': return (form, content tokens, next index). form: 'angle'|'brace'|'word'."""
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
        return ("angle" if close == ">" else "brace"), toks[i + 2 : j], j + 1
    if nxt.kind in ("name", "number") and not nxt.space_before:
        return "word", [nxt], i + 2
    raise at(text, toks[i].col, "expected a subscript after '_' (x_k, x_<k+1> or x_{k-1})")


def _index(text: str, content: list[Token], where: int) -> tuple[str | None, int]:
    """Parse an index: LETTER [(+|-) INT]... or INT. Returns (letter or None, offset)."""
    if not content:
        raise at(text, where, "empty subscript")
    letter, offset, sign, i = None, 0, 1, 0
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
        i += 1
    if expect_term:
        raise at(text, content[-1].col, "subscript ends with an operator")
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
        form, content, j = _read_subscript(text, toks + [Token("end", "", toks[-1].col + 1)], 1)
        if j == len(toks):
            if form == "word" and content[0].kind == "number":
                return Target(f"{name}_{content[0].text}", None, None, first.col)
            letter, off = _index(text, content, toks[1].col)
            if letter is None:
                raise at(
                    text,
                    first.col,
                    "a left-hand side subscript must use the index letter, e.g. x_<k+1>",
                )
            return Target(name, off, letter, first.col)
    raise at(text, first.col, "the left-hand side must be a single state (x_<k+1>) or stage name")


class _Parser:
    def __init__(self, text: str, toks: list[Token], ctx: _Context):
        self.text, self.toks, self.i, self.ctx = text, toks, 0, ctx

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
        return t.kind in ("number", "name", "nabla") or (t.kind == "op" and t.text == "(")

    # -- grammar -------------------------------------------------------------------------
    def parse(self) -> sp.Expr:
        if self.tok.kind == "end":
            raise self.error("missing right-hand side after '='")
        value = self.sum()
        if self.tok.kind != "end":
            raise self.error(f"unexpected {self.tok.text!r}")
        return value

    def sum(self) -> sp.Expr:
        value = self.product()
        while self.is_op("+", "-"):
            op = self.take()
            if self.tok.kind == "end" or self.is_op(")", "*", "/", "^", "**", ","):
                raise self.error(f"expected an expression after {op.text!r}")
            rhs = self.product()
            value = value + rhs if op.text == "+" else value - rhs
        return value

    def product(self) -> sp.Expr:
        value = self.unary()
        while True:
            if self.is_op("*", "/"):
                op = self.take()
                if not (self.starts_atom() or self.is_op("+", "-")):
                    raise self.error(f"expected an expression after {op.text!r}")
                rhs = self.unary()
                if op.text == "/" and rhs == 0:
                    raise self.error("division by zero", op)
                value = value * rhs if op.text == "*" else value / rhs
            elif self.starts_atom():
                value = value * self.power()
            else:
                return value

    def unary(self) -> sp.Expr:
        if self.is_op("-"):
            self.take()
            return -self.unary()
        if self.is_op("+"):
            self.take()
            return self.unary()
        return self.power()

    def power(self) -> sp.Expr:
        base = self.atom()
        if self.is_op("^", "**"):
            op = self.take()
            if not (self.starts_atom() or self.is_op("+", "-")):
                raise self.error(f"expected an exponent after {op.text!r}")
            return base ** self.unary()
        return base

    def atom(self) -> sp.Expr:
        tok = self.tok
        if tok.kind == "number":
            self.take()
            if not math.isfinite(float(tok.text)):
                raise self.error("a non-finite number", tok)
            q = Fraction(tok.text)
            return sp.Rational(q.numerator, q.denominator)
        if self.is_op("("):
            self.take()
            value = self.sum()
            self.expect(")", "')'")
            return value
        if tok.kind == "nabla":
            self.take()
            return self.gradient(tok)
        if tok.kind == "name":
            return self.named()
        if tok.kind == "end":
            raise self.error("expected an expression, found the end")
        raise self.error(f"unexpected {tok.text!r}")

    def gradient(self, start: Token) -> sp.Expr:
        if not (self.tok.kind == "name" and self.tok.text == "F"):
            raise self.error(
                "unknown operator: ∇ applies to the objective F only (∇F or ∇F(y_k))", start
            )
        self.take()
        if self.is_op("(") and not self.tok.space_before:
            self.take()
            point = self.sum()
            self.expect(")", "')' closing ∇F(")
            return ir.GRAD(point)
        return ir.GRAD(self.ctx.current_point(start))

    def call_args(self, name: str) -> list[sp.Expr]:
        self.expect("(", f"'(' after {name}")
        args = [self.sum()]
        while self.is_op(","):
            self.take()
            args.append(self.sum())
        self.expect(")", f"')' closing {name}(")
        return args

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
            form, content, j = _read_subscript(self.text, self.toks, self.i)
            sub_col = self.tok.col
            self.i = j
            if form == "word" and content[0].kind == "number":
                name = f"{name}_{content[0].text}"
            elif form == "word" and content[0].text != self.ctx.letter:
                name = f"{name}_{content[0].text}"
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
            return ir.ELEMENTARY[name](*self.single_arg(name, tok))
        if ir.is_branch_name(name):
            if not self.is_op("("):
                raise self.error(f"{name} is an operator: write {name}(x_k) or {name}(t, x_k)", tok)
            args = self.call_args(name)
            if len(args) == 1:
                args = [ir.T, args[0]]
            if len(args) != 2:
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
        return self.ctx.plain(name, tok, self)

    def single_arg(self, name: str, tok: Token) -> list[sp.Expr]:
        args = self.call_args(name)
        if len(args) != 1:
            raise self.error(f"{name} takes one argument, not {len(args)}", tok)
        return args


class _Context:
    """What the parser knows about the whole scheme while reading one right-hand side."""

    def __init__(self, text: str, targets: list[Target], letter: str):
        self.text, self.letter = text, letter
        self.k = ir.index_symbol(letter)
        self.states = {t.name for t in targets if t.offset == 1}
        self.stages = {t.name for t in targets if t.offset != 1}
        self.lhs: Target | None = None
        self.shift = 0  # added to written offsets so that the newest value sits at k+1

    def current_point(self, tok: Token) -> sp.Expr:
        """Where a bare ∇F is evaluated: the current value of the state being computed."""
        lhs = self.lhs
        if lhs is not None and lhs.name in self.states:
            return sp.IndexedBase(lhs.name)[self.k]
        if len(self.states) == 1:
            return sp.IndexedBase(next(iter(self.states)))[self.k]
        raise at(self.text, tok.col, "a bare ∇F here is ambiguous: write ∇F(x_k) with the point")

    def indexed(self, name: str, off: int, tok: Token, p: _Parser) -> sp.Expr:
        off += self.shift
        shown = f"{name}_{self.letter}" if off == 0 else f"{name}_<{self.letter}{off:+d}>"
        if name in self.stages:
            if off != 0:
                raise p.error(
                    f"{shown}: {name} is a stage, computed anew each step; only {name}_{self.letter} exists",
                    tok,
                )
            return sp.Symbol(name)
        if name not in self.states:
            raise p.error(
                f"{shown}: {name} is not a state (no equation computes {name}_<{self.letter}+1>)",
                tok,
            )
        if off > 1:
            raise p.error(f"{shown} is ahead of the newest value {name}_<{self.letter}+1>", tok)
        return sp.IndexedBase(name)[self.k + off]

    def plain(self, name: str, tok: Token, p: _Parser) -> sp.Expr:
        if name in self.states:
            raise p.error(
                f"{name} is a state: write it with its index, e.g. {name}_{self.letter}", tok
            )
        return sp.Symbol(name)


def parse(text: str) -> list[sp.Eq]:
    """Parse scheme text into SymPy equations, in order.

    States become ``IndexedBase(name)[k + j]``, normalised so that new values sit at ``k + 1``;
    stages and parameters become ``Symbol``s (see `unroll.ir`).
    """
    if not isinstance(text, str):
        raise UnrollError(f"scheme text must be a str, not {type(text).__name__}")
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
        if t.offset is not None and t.offset not in (0, 1):
            raise at(
                text, t.col, f"the left-hand side {t.name} must be a new state value or a stage"
            )
        key = (t.name, t.offset == 1)
        if key in seen:
            raise at(text, t.col, f"{t.name} is computed twice")
        seen[key] = t
    ctx = _Context(text, targets, letter)
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
    return equations
