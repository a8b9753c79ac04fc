"""SymPy -> Triton expression source: a SymPy printer subclass and its mapping table.

`TritonPrinter` prints one SymPy expression as a Triton expression over names the caller
chooses (``names``: SymPy leaf -> identifier). Everything it prints runs both compiled and under
``TRITON_INTERPRET=1``, so it uses ``triton.language`` core functions only (``libdevice`` has no
interpreter implementation); the few functions core Triton lacks (tanh, expm1, log1p) are
``@triton.jit`` helpers in `HELPERS`, whose source a generated module must include
(`helper_source` gives it for the helpers a printer used).

Numbers: an integer prints as itself; a rational coefficient as integer multiplication and
division (``3 * x / 8``), exact in every float type; any other constant as
``tl.full([], value, DTYPE)`` so that a float64 kernel sees the float64 value (a bare Python
float literal is a float32 constant in Triton).

Kernel generators (`unroll.lowering.triton.emit`, the whole-network generator) reuse this printer; run
`prepare` (CSE's companion: numeric rewrites) on expressions before printing them.
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p
from sympy.codegen.rewriting import ReplaceOptim, optimize
from sympy.printing.precedence import PRECEDENCE, precedence
from sympy.printing.pycode import PythonCodePrinter

from unroll.errors import UnrollError

# The mapping table: SymPy function class name -> Triton callable.
FUNCTIONS: dict[str, str] = {
    "exp": "tl.exp",
    "log": "tl.log",
    "sqrt": "tl.sqrt",
    "Abs": "tl.abs",
    "erf": "tl.erf",
    "sin": "tl.sin",
    "cos": "tl.cos",
    "floor": "tl.floor",
    "ceiling": "tl.ceil",
    "tanh": "_tanh",
    "expm1": "_expm1",
    "log1p": "_log1p",
}

# Helpers for functions core Triton lacks: name -> (source, helpers it calls).
# expm1 and log1p use Kahan's tricks (exact to a few ulps with exp/log alone); tanh(|x|) is
# -expm1(-2|x|) / (2 + expm1(-2|x|)), which neither overflows nor cancels near 0.
HELPERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "_expm1": (
        '''@triton.jit
def _expm1(x):
    """exp(x) - 1 without cancellation near 0 (Kahan: (u - 1) x / log u, u = exp x)."""
    u = tl.exp(x)
    um1 = u - 1
    safe = tl.where(um1 == 0, 1, um1)
    r = tl.where(um1 == -1, -1, safe * x / tl.log(tl.where(um1 == 0, 2, u)))
    return tl.where(um1 == 0, x, tl.where(u == float("inf"), u, r))
''',
        (),
    ),
    "_log1p": (
        '''@triton.jit
def _log1p(x):
    """log(1 + x) without cancellation near 0 (Kahan: log(u) x / (u - 1), u = 1 + x)."""
    u = 1 + x
    d = u - 1
    r = tl.log(u) * x / tl.where(d == 0, 1, d)
    return tl.where(d == 0, x, tl.where(u == float("inf"), u, r))
''',
        (),
    ),
    "_tanh": (
        '''@triton.jit
def _tanh(x):
    """tanh(x) = sign(x) * -expm1(-2|x|) / (2 + expm1(-2|x|))."""
    e = _expm1(-2 * tl.abs(x))
    t = -e / (2 + e)
    return tl.where(x < 0, -t, t)
''',
        ("_expm1",),
    ),
}


def helper_source(used: set[str] | list[str]) -> str:
    """The source of the helpers in ``used`` and of those they call, dependencies first."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for dep in HELPERS[name][1]:
            visit(dep)
        order.append(name)

    for name in sorted(used):
        visit(name)
    return "\n\n".join(HELPERS[n][0] for n in order)


# Numeric rewrites applied before printing (sympy.codegen.rewriting): log(1 + x) -> log1p(x),
# exp(x) - 1 -> expm1(x), log(1 + exp(x)) (softplus) -> max(x, 0) + log1p(exp(-|x|)) and its
# and the sigmoid's derivatives exp(x)/(exp(x) + 1)^n, which do not overflow for large x.
_w = sp.Wild("w")
_softplus = ReplaceOptim(
    lambda e: isinstance(e, sp.log) and e.args[0].match(1 + sp.exp(_w)) is not None,
    lambda e: (lambda a: sp.Max(a, 0) + log1p(sp.exp(-sp.Abs(a)), evaluate=False))(
        e.args[0].match(1 + sp.exp(_w))[_w]
    ),
)
_log1p = ReplaceOptim(
    lambda e: isinstance(e, sp.log) and e.args[0].is_Add and sp.S.One in e.args[0].args,
    lambda e: log1p(e.args[0] - 1, evaluate=False),
)
_expm1 = ReplaceOptim(
    lambda e: (
        e.is_Add and sp.S.NegativeOne in e.args and any(isinstance(a, sp.exp) for a in e.args)
    ),
    lambda e: _expm1_of(e),
)


def _expm1_of(e: sp.Add) -> sp.Expr:
    rest = list(e.args)
    rest.remove(sp.S.NegativeOne)
    first = next(a for a in rest if isinstance(a, sp.exp))
    rest.remove(first)
    return sp.Add(expm1(first.args[0], evaluate=False), *rest)


def _logistic_factor(e: sp.Basic) -> tuple[sp.Basic, sp.Basic, int] | None:
    """(the factor (1 + exp(a))^-n, a, n) of a product exp(a) (1 + exp(a))^-n, else None.

    Such products are the derivatives of softplus (n = 1) and of the sigmoid (n = 2); written
    so they are inf/inf once exp(a) overflows (a > 88 in float32).
    """
    if not e.is_Mul:
        return None
    for f in e.args:
        if f.is_Pow and f.exp.is_Integer and f.exp < 0:
            m = f.base.match(1 + sp.exp(_w))
            if m is not None and sp.exp(m[_w]) in e.args:
                return f, m[_w], int(-f.exp)
    return None


def _logistic(e: sp.Mul) -> sp.Expr:
    """exp(a) (1 + exp(a))^-n = (1 + exp(a))^-(n-1) / (1 + exp(-a)): finite for every a."""
    f, a, n = _logistic_factor(e)
    rest = [g for g in e.args if g is not f and g != sp.exp(a)]
    return sp.Mul(*rest, (1 + sp.exp(a)) ** (1 - n), 1 / (1 + sp.exp(-a)))


_logistic_optim = ReplaceOptim(lambda e: _logistic_factor(e) is not None, _logistic)

REWRITES = (_softplus, _logistic_optim, _log1p, _expm1)


def prepare(expr: sp.Expr) -> sp.Expr:
    """``expr`` with the numeric rewrites applied (values unchanged, better conditioned)."""
    return optimize(expr, REWRITES)


class TritonPrinter(PythonCodePrinter):
    """Prints a SymPy expression as Triton source.

    ``names`` maps leaves (Symbols, Indexed values) to identifiers; a leaf not in it prints as its
    own name when that is a Python identifier, else an `UnrollError` names it. ``dtype`` is the
    Triton dtype expression non-integer constants are made in (``"CDT"`` in unroll's kernels: the
    compute dtype, a ``tl.constexpr``). ``helpers_used`` collects the `HELPERS` printed.
    """

    printmethod = "_tritoncode"
    language = "Triton"

    def __init__(self, names: Mapping[sp.Basic, str] | None = None, dtype: str = "tl.float32"):
        super().__init__({"fully_qualified_modules": False})
        self.names = dict(names or {})
        self.dtype = dtype
        self.helpers_used: set[str] = set()

    # -- leaves ------------------------------------------------------------------------------
    def _print_Symbol(self, expr: sp.Symbol) -> str:
        return self._leaf(expr)

    def _print_Indexed(self, expr: sp.Indexed) -> str:
        return self._leaf(expr)

    _print_Dummy = _print_Symbol

    def _leaf(self, expr: sp.Basic) -> str:
        if expr in self.names:
            return self.names[expr]
        name = getattr(expr, "name", str(expr))
        if name.isidentifier() and name.isascii():
            return name
        raise UnrollError(f"no kernel name for {expr}: pass it in names=")

    # -- numbers -----------------------------------------------------------------------------
    def _constant(self, value: float) -> str:
        return f"tl.full([], {value!r}, {self.dtype})"

    def _print_Integer(self, expr: sp.Integer) -> str:
        return str(int(expr))

    _print_Zero = _print_Integer
    _print_One = _print_Integer
    _print_NegativeOne = _print_Integer

    def _print_Rational(self, expr: sp.Rational) -> str:
        return self._constant(float(expr))

    _print_Half = _print_Rational

    def _print_Float(self, expr: sp.Float) -> str:
        return self._constant(float(expr))

    def _print_NumberSymbol(self, expr: sp.NumberSymbol) -> str:
        return self._constant(float(expr))

    _print_Pi = _print_NumberSymbol
    _print_Exp1 = _print_NumberSymbol

    def _print_Infinity(self, expr) -> str:
        return 'float("inf")'

    def _print_NegativeInfinity(self, expr) -> str:
        return '-float("inf")'

    def _print_NaN(self, expr) -> str:
        return 'float("nan")'

    def _print_BooleanTrue(self, expr) -> str:
        return "True"

    def _print_BooleanFalse(self, expr) -> str:
        return "False"

    # -- arithmetic --------------------------------------------------------------------------
    def _paren(self, expr: sp.Basic, level: int) -> str:
        s = self._print(expr)
        return f"({s})" if precedence(expr) < level else s

    def _print_Mul(self, expr: sp.Mul) -> str:
        if expr.is_number:
            return self._constant(float(expr))
        coeff, rest = expr.as_coeff_Mul()
        num: list[str] = []
        den: list[str] = []
        for factor in sp.Mul.make_args(rest):
            if factor.is_Pow and factor.exp.is_Integer and factor.exp < 0:
                den.append(self._paren(sp.Pow(factor.base, -factor.exp), PRECEDENCE["Mul"] + 1))
            else:
                num.append(self._paren(factor, PRECEDENCE["Mul"]))
        sign = "-" if coeff < 0 else ""
        coeff = abs(coeff)
        if coeff.is_Rational:
            if coeff.p != 1:
                num.insert(0, str(coeff.p))
            if coeff.q != 1:
                den.append(str(coeff.q))
        else:
            num.insert(0, self._constant(float(coeff)))
        top = " * ".join(num) if num else "1"
        out = top if not den else f"{top} / " + " / ".join(den)
        return sign + out

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        if expr.is_number:
            return self._constant(float(expr))
        base, e = expr.base, expr.exp
        b = self._paren(base, PRECEDENCE["Mul"] + 1)
        if e.is_Integer:
            n = int(e)
            if n == 0:
                return "1"
            prod = " * ".join([b] * abs(n))
            prod = f"({prod})" if abs(n) > 1 else prod
            return prod if n > 0 else f"1 / {prod}"
        if e == sp.S.Half:
            return f"tl.sqrt({self._print(base)})"
        if e == -sp.S.Half:
            return f"1 / tl.sqrt({self._print(base)})"
        # General power, defined for a positive base: exp(e log b).
        return f"tl.exp({self._print(e)} * tl.log({self._print(base)}))"

    # NaN propagates, as torch.maximum and torch.relu propagate it: the hardware's max returns the
    # other operand, so relu(NaN) would be 0 and a diverged state would vanish from the output.
    def _print_Max(self, expr: sp.Max) -> str:
        return self._fold("tl.maximum", expr.args)

    def _print_Min(self, expr: sp.Min) -> str:
        return self._fold("tl.minimum", expr.args)

    def _fold(self, fn: str, args) -> str:
        out = self._print(args[0])
        for a in args[1:]:
            out = f"{fn}({out}, {self._print(a)}, propagate_nan=tl.PropagateNan.ALL)"
        return out

    # -- piecewise and logic -----------------------------------------------------------------
    def _print_Heaviside(self, expr: sp.Heaviside) -> str:
        # H(0) = 0: the derivative of max(v, 0) that autograd uses (relu's gradient is 0 at 0).
        return f"tl.where({self._print(expr.args[0])} > 0, 1.0, 0.0)"

    def _print_sign(self, expr: sp.sign) -> str:
        a = self._print(expr.args[0])
        return f"tl.where({a} > 0, 1.0, tl.where({a} < 0, -1.0, 0.0))"

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        *pieces, (last, cond) = expr.args
        if cond != sp.true:
            raise UnrollError(f"a Piecewise without a final 'otherwise' branch: {expr}")
        out = self._print(last)
        for value, c in reversed(pieces):
            out = f"tl.where({self._print(c)}, {self._print(value)}, {out})"
        return out

    def _print_Relational(self, expr: sp.core.relational.Relational) -> str:
        op = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}[expr.rel_op]
        return f"({self._print(expr.lhs)} {op} {self._print(expr.rhs)})"

    def _print_And(self, expr) -> str:
        return "(" + " & ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr) -> str:
        return "(" + " | ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr) -> str:
        return f"(~{self._print(expr.args[0])})"

    # -- functions: the mapping table --------------------------------------------------------
    def _print_Function(self, expr: sp.Function) -> str:
        name = type(expr).__name__
        target = FUNCTIONS.get(name)
        if target is None:
            known = ", ".join(sorted(FUNCTIONS))
            raise UnrollError(f"no Triton translation for {name} in {expr}; known: {known}")
        if target in HELPERS:
            self.helpers_used.add(target)
        return f"{target}({', '.join(self._print(a) for a in expr.args)})"

    def _print_Derivative(self, expr) -> str:
        raise UnrollError(f"an unevaluated derivative cannot be printed as Triton: {expr}")

    _print_Subs = _print_Derivative


# PythonCodePrinter binds a method per math-module function (_print_exp, _print_acos, ...);
# route them all through the mapping table instead.
for _name in list(PythonCodePrinter._kf) + list(FUNCTIONS):
    if f"_print_{_name}" not in TritonPrinter.__dict__:
        setattr(TritonPrinter, f"_print_{_name}", TritonPrinter._print_Function)


def triton_code(
    expr: sp.Basic, names: Mapping[sp.Basic, str] | None = None, dtype: str = "tl.float32"
) -> str:
    """``expr`` as a Triton expression (after `prepare`); see `TritonPrinter`."""
    return TritonPrinter(names, dtype).doprint(prepare(expr))
