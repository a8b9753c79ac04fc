"""The activations unroll knows: one SymPy expression and one torch function each.

An activation is one home for everything that needs it: the symbolic form (for derived
objectives and kernel printing) and the eager torch function (for `Scheme.run` and modules).

    get("relu")                    # a fixed activation
    get("leaky_relu(0.1)")         # a family, parameter in the name ...
    get("leaky_relu", a=0.1)       # ... or as a keyword
    from_lambda(sp.Lambda(x, 2 * sp.tanh(x)))   # any one-variable SymPy Lambda
    resolve(spec)                  # any of the above (str | Activation | Lambda) -> Activation

Names are parsed with one small regex (name, optional number in parentheses); the text is never
evaluated. Parameters are kept exact (``sp.Rational``) so that derived facts stay exact.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import sympy as sp
from sympy.printing.codeprinter import PrintMethodNotImplementedError
from sympy.printing.pytorch import TorchPrinter

from unroll.errors import UnrollError

v = sp.Symbol("v", real=True)


@dataclass(frozen=True)
class Activation:
    """A coordinate-wise activation ``φ``: ``expr`` is φ(v) in the real symbol ``v``.

    ``torch`` maps a tensor to a tensor of the same shape. ``params`` records the exact values a
    family was instantiated with, e.g. ``(("a", 1/10),)`` for ``leaky_relu(0.1)``.
    """

    name: str
    expr: sp.Expr
    torch: Callable
    params: tuple[tuple[str, sp.Rational], ...] = ()


# --- SymPy -> torch for expressions in one variable ------------------------------------------


def dilog(z):
    """Li₂(z) = Σ_k z^k / k² for a real tensor z ≤ 1 (NaN above 1); same shape and dtype.

    torch has no dilogarithm, and the derived objective of softplus needs one. Uses
    Li₂(z) = −Li₂(z/(z−1)) − ½ log²(1−z) for z < 0, the series on [0, ½] and the reflection
    Li₂(z) = π²/6 − log z · log(1−z) − Li₂(1−z) on (½, 1]; 60 series terms give 2⁻⁶⁰ < 1e-18.
    """
    import torch

    z = torch.as_tensor(z)
    neg = z < 0
    # Map z < 0 into (0, 1); keep z in [0, 1] as is; park invalid inputs at a harmless 0.
    safe = torch.where(z > 1, torch.zeros_like(z), z)
    y = torch.where(neg, safe / (safe - 1), safe)
    high = y > 0.5
    w = torch.where(high, 1 - y, y)  # w in [0, 1/2]
    series = torch.zeros_like(w)
    power = torch.ones_like(w)
    for k in range(1, 61):
        power = power * w
        series = series + power / (k * k)
    # log y · log(1 − y) with the 0 · ∞ at y = 1 taken as its limit 0.
    one = y >= 1
    logs = torch.where(
        one, torch.zeros_like(y), torch.log(y) * torch.log1p(-torch.where(one, 0, y))
    )
    li_y = torch.where(high, math.pi**2 / 6 - logs - series, series)
    out = torch.where(neg, -li_y - 0.5 * torch.log1p(-safe) ** 2, li_y)
    return torch.where(z > 1, torch.full_like(z, math.nan), out)


class _Printer(TorchPrinter):
    """SymPy's torch printer plus the functions unroll's expressions need."""

    # Reciprocal functions torch lacks (SymPy's antiderivatives produce them).
    def _reciprocal(self, expr, of: str):
        return f"(1 / {self._module_format('torch.' + of)}({self._print(expr.args[0])}))"

    def _print_coth(self, expr):
        return self._reciprocal(expr, "tanh")

    def _print_sech(self, expr):
        return self._reciprocal(expr, "cosh")

    def _print_csch(self, expr):
        return self._reciprocal(expr, "sinh")

    def _print_cot(self, expr):
        return self._reciprocal(expr, "tan")

    def _print_sec(self, expr):
        return self._reciprocal(expr, "cos")

    def _print_csc(self, expr):
        return self._reciprocal(expr, "sin")

    def _print_erfinv(self, expr):
        return f"{self._module_format('torch.erfinv')}({self._print(expr.args[0])})"

    def _print_erfc(self, expr):
        return f"{self._module_format('torch.erfc')}({self._print(expr.args[0])})"

    def _print_polylog(self, expr):
        order, arg = expr.args
        if order != 2:
            raise UnrollError(f"no torch evaluation for {expr}: only Li₂ (polylog(2, ·)) is known")
        return f"_unroll_dilog({self._print(arg)})"


def _floats(e: sp.Basic) -> sp.Basic:
    """``e`` with every numeric subexpression (``log(2)``, ``1/8``) as a 17-digit Float;
    integer exponents stay integers."""
    if isinstance(e, sp.Expr) and e.is_number and not e.is_Integer:
        return sp.Float(e.evalf(17), 17)
    if isinstance(e, sp.Pow) and e.exp.is_Integer:
        return sp.Pow(_floats(e.base), e.exp)
    if not e.args:
        return e
    return e.func(*[_floats(a) for a in e.args])


def lambdify_torch(expr: sp.Expr, symbol: sp.Symbol) -> Callable:
    """A torch function of one tensor computing ``expr`` in ``symbol`` elementwise.

    The result has the input's shape and dtype, also when ``expr`` is constant. Numbers are
    turned into floats first so that ``log(2)`` or a rational branch value never reaches torch
    as an integer; Max/Min are printed through Piecewise (torch.where).
    """
    import torch

    expr = _floats(expr.rewrite(sp.Piecewise))
    try:
        fn = sp.lambdify(
            symbol, expr, modules=[{"_unroll_dilog": dilog}, "torch"], printer=_Printer
        )
    except PrintMethodNotImplementedError as e:
        what = str(e).splitlines()[0].rsplit(" ", 1)[-1]
        raise UnrollError(f"no torch evaluation for {what} (in {expr})") from None

    def apply(x):
        out = fn(x)
        if not isinstance(out, torch.Tensor):
            return torch.full_like(x, float(out))
        return out.to(x.dtype).expand_as(x) if out.shape != x.shape else out.to(x.dtype)

    return apply


# --- the registry ---------------------------------------------------------------------------


def _fixed() -> dict[str, Activation]:
    import torch
    import torch.nn.functional as tf

    sig = 1 / (1 + sp.exp(-v))
    return {
        a.name: a
        for a in [
            Activation("identity", v, lambda x: x),
            Activation("relu", sp.Max(v, 0), torch.relu),
            Activation("sigmoid", sig, torch.sigmoid),
            Activation("tanh", sp.tanh(v), torch.tanh),
            Activation("softplus", sp.log(1 + sp.exp(v)), tf.softplus),
            Activation("hardtanh", sp.Max(-1, sp.Min(1, v)), tf.hardtanh),
            Activation("atan", sp.atan(v), torch.atan),
            Activation("softsign", v / (1 + sp.Abs(v)), tf.softsign),
            # Not proximal maps (they dip below zero slope); kept so networks can use them and
            # `unroll.objective` can say why no objective exists.
            Activation("gelu", v / 2 * (1 + sp.erf(v / sp.sqrt(2))), tf.gelu),
            Activation("silu", v * sig, tf.silu),
        ]
    }


def _leaky_relu(a: sp.Rational) -> tuple[sp.Expr, Callable]:
    import torch.nn.functional as tf

    return sp.Piecewise((v, v >= 0), (a * v, True)), functools.partial(
        tf.leaky_relu, negative_slope=float(a)
    )


def _elu(alpha: sp.Rational) -> tuple[sp.Expr, Callable]:
    import torch.nn.functional as tf

    return sp.Piecewise((v, v > 0), (alpha * (sp.exp(v) - 1), True)), functools.partial(
        tf.elu, alpha=float(alpha)
    )


# family name -> (parameter name, default, builder)
_FAMILIES: dict[str, tuple[str, sp.Rational, Callable]] = {
    "leaky_relu": ("a", sp.Rational(1, 100), _leaky_relu),  # torch's default slope
    "elu": ("alpha", sp.Integer(1), _elu),
}
_ALIASES = {"arctan": "atan", "linear": "identity"}

# name, then optionally one number in parentheses: "elu", "leaky_relu(0.1)", "elu( 1e-1 )".
_NAME = re.compile(
    r"\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*"
    r"(?:\(\s*(?P<arg>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\))?\s*"
)

_REGISTRY: dict[str, Activation] | None = None


def _registry() -> dict[str, Activation]:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _fixed()
    return _REGISTRY


def names() -> list[str]:
    """Every name `get` accepts, families shown with their parameter: ``"elu(alpha)"``."""
    fams = [f"{name}({param})" for name, (param, _, _) in _FAMILIES.items()]
    return sorted([*_registry(), *fams])


def _exact(value: object, what: str) -> sp.Rational:
    """``value`` (a number, numeric string or SymPy number) as an exact rational."""
    if isinstance(value, sp.Basic):
        if not (value.is_Rational or value.is_Float):
            raise UnrollError(f"{what} must be a number, got {value}")
        value = str(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UnrollError(f"{what} must be a number, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnrollError(f"{what} must be finite, got {value}")
        value = repr(value)  # shortest decimal: 0.1 -> "0.1" -> 1/10, not 3602879701896397/2**55
    try:
        f = Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise UnrollError(f"{what} must be a number, got {value!r}") from None
    return sp.Rational(f.numerator, f.denominator)


def _show(q: sp.Rational) -> str:
    return str(q) if q.is_Integer else repr(float(q))


def get(name: str, **params: object) -> Activation:
    """The activation called ``name``; an `UnrollError` listing the known ones otherwise.

    Families take one number, in the name (``"elu(0.5)"``) or as a keyword (``alpha=0.5``);
    without it they use torch's default.
    """
    m = _NAME.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        raise UnrollError(
            f"cannot read activation {name!r}: expected a name with an optional number, "
            f"like 'relu' or 'leaky_relu(0.1)'; known: {', '.join(names())}"
        )
    key, arg = m["name"], m["arg"]
    key = _ALIASES.get(key, key)
    if key in _FAMILIES:
        param, default, build = _FAMILIES[key]
        extra = sorted(set(params) - {param})
        if extra:
            raise UnrollError(f"{key} takes one parameter {param!r}, not {', '.join(extra)}")
        if arg is not None and param in params:
            raise UnrollError(f"{key}: {param} given twice, in the name and as a keyword")
        raw = arg if arg is not None else params.get(param, default)
        value = _exact(raw, f"{key} parameter {param}")
        expr, fn = build(value)
        return Activation(f"{key}({_show(value)})", expr, fn, ((param, value),))
    reg = _registry()
    if key not in reg:
        raise UnrollError(f"unknown activation {key!r}; known: {', '.join(names())}")
    if arg is not None or params:
        raise UnrollError(f"{key} takes no parameters")
    return reg[key]


def from_lambda(lam: sp.Lambda, name: str | None = None) -> Activation:
    """An activation from a one-variable SymPy ``Lambda``; its torch function is printed from it.

    The Lambda's variable is renamed to the real symbol ``v``; any other free symbol is an error.
    """
    if not isinstance(lam, sp.Lambda):
        raise UnrollError(f"expected a sympy.Lambda, got {type(lam).__name__}")
    if len(lam.variables) != 1:
        raise UnrollError(f"an activation takes one variable, {lam} takes {len(lam.variables)}")
    (var,) = lam.variables
    expr = lam.expr.xreplace({var: v})
    if not isinstance(expr, sp.Expr) or expr.has(sp.I) or expr.is_extended_real is False:
        raise UnrollError(f"an activation maps a real v to a real number; {lam} does not")
    extra = expr.free_symbols - {v}
    if extra:
        names_ = ", ".join(sorted(map(str, extra)))
        raise UnrollError(f"activation {lam} has free symbols besides {var}: {names_}")
    return Activation(name or sp.sstr(expr), expr, lambdify_torch(expr, v))


def resolve(spec: str | Activation | sp.Lambda, **params: object) -> Activation:
    """``spec`` as an `Activation`: a name (see `get`), a SymPy ``Lambda``, or one already."""
    if isinstance(spec, Activation):
        if params:
            raise UnrollError("parameters go with a name, not with an Activation")
        return spec
    if isinstance(spec, sp.Lambda):
        if params:
            raise UnrollError("parameters go with a name, not with a Lambda")
        return from_lambda(spec)
    return get(spec, **params)
