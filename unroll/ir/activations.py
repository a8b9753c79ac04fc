"""The activations unroll knows, as SymPy expressions (the mathematics of φ).

Everything symbolic reads them here: derived objectives, kernel printing, the layer forms. The
eager torch function of an activation is the lowering's business
(`unroll.lowering.eager.activations.torch_function`).

    get("relu")                    # a fixed activation
    get("leaky_relu(0.1)")         # a family, parameter in the name ...
    get("leaky_relu", a=0.1)       # ... or as a keyword
    from_lambda(sp.Lambda(x, 2 * sp.tanh(x)))   # any one-variable SymPy Lambda
    from_spec(spec)                # any of the above (str | Activation | Lambda) -> Activation

Names are parsed with one small regex (name, optional number in parentheses); the text is never
evaluated. Parameters are kept exact (``sp.Rational``) so that derived facts stay exact.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import sympy as sp

from unroll.errors import UnrollError

v = sp.Symbol("v", real=True)
_FIXED_NAMES = frozenset(
    {
        "identity",
        "relu",
        "sigmoid",
        "tanh",
        "softplus",
        "hardtanh",
        "atan",
        "softsign",
        "gelu",
        "silu",
    }
)


@dataclass(frozen=True)
class Activation:
    """A coordinate-wise activation ``φ``: ``expr`` is φ(v) in the real symbol ``v``.

    ``params`` records the exact values a family was instantiated with, e.g. ``(("a", 1/10),)``
    for ``leaky_relu(0.1)``, and ``family`` its name (``"leaky_relu"``); a fixed activation is
    its own family, one made from a Lambda has none.
    """

    name: str
    expr: sp.Expr
    params: tuple[tuple[str, sp.Rational], ...] = ()
    family: str | None = None

    def __post_init__(self):
        if self.family is None and self.name in _FIXED_NAMES:
            object.__setattr__(self, "family", self.name)


# --- the registry ---------------------------------------------------------------------------


def _fixed() -> dict[str, Activation]:
    sig = 1 / (1 + sp.exp(-v))
    return {
        a.name: a
        for a in [
            Activation("identity", v),
            Activation("relu", sp.Max(v, 0)),
            Activation("sigmoid", sig),
            Activation("tanh", sp.tanh(v)),
            Activation("softplus", sp.log(1 + sp.exp(v))),
            Activation("hardtanh", sp.Max(-1, sp.Min(1, v))),
            Activation("atan", sp.atan(v)),
            Activation("softsign", v / (1 + sp.Abs(v))),
            # Not proximal maps (they dip below zero slope); kept so networks can use them and
            # `unroll.objective` can say why no objective exists.
            Activation("gelu", v / 2 * (1 + sp.erf(v / sp.sqrt(2)))),
            Activation("silu", v * sig),
        ]
    }


def _leaky_relu(a: sp.Rational) -> sp.Expr:
    return sp.Piecewise((v, v >= 0), (a * v, True))


def _elu(alpha: sp.Rational) -> sp.Expr:
    return sp.Piecewise((v, v > 0), (alpha * (sp.exp(v) - 1), True))


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


def is_name(word: str) -> bool:
    """True if ``word`` alone (no number) names an activation or a family: relu, elu, arctan."""
    word = _ALIASES.get(word, word)
    return word in _FIXED_NAMES or word in _FAMILIES


SPELLINGS = (*sorted(_FIXED_NAMES), *_FAMILIES, *_ALIASES)  # every word that names one


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
        return Activation(f"{key}({_show(value)})", build(value), ((param, value),), key)
    reg = _registry()
    if key not in reg:
        raise UnrollError(f"unknown activation {key!r}; known: {', '.join(names())}")
    if arg is not None or params:
        raise UnrollError(f"{key} takes no parameters")
    return reg[key]


def from_lambda(lam: sp.Lambda, name: str | None = None) -> Activation:
    """An activation from a one-variable SymPy ``Lambda`` (its torch function is printed from the
    expression, `unroll.lowering.eager.activations`).

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
    return Activation(name or sp.sstr(expr), expr)


def from_spec(spec: str | Activation | sp.Lambda, **params: object) -> Activation:
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
