"""The torch function of an activation (`unroll.ir.activations`): PyTorch's own where it has one
(``torch.relu``, ``F.softplus``, ...), else printed from the SymPy expression.

`lambdify_torch` prints any one-variable expression (a user's Lambda, a derived objective's g)
through SymPy's torch printer with the functions unroll's expressions need (a dilogarithm for
softplus's objective, reciprocal trigonometric functions).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence

import sympy as sp
import torch
import torch.nn.functional as tf
from sympy.printing.codeprinter import PrintMethodNotImplementedError
from sympy.printing.pytorch import TorchPrinter

from unroll.errors import UnrollError
from unroll.ir.activations import Activation, v

# A family's torch function from its exact parameters.
_NATIVE: dict[str, Callable[..., Callable]] = {
    "identity": lambda: _identity,
    "relu": lambda: torch.relu,
    "sigmoid": lambda: torch.sigmoid,
    "tanh": lambda: torch.tanh,
    "softplus": lambda: tf.softplus,
    "hardtanh": lambda: tf.hardtanh,
    "atan": lambda: torch.atan,
    "softsign": lambda: tf.softsign,
    "gelu": lambda: tf.gelu,
    "silu": lambda: tf.silu,
    "leaky_relu": lambda a: functools.partial(tf.leaky_relu, negative_slope=float(a)),
    "elu": lambda alpha: functools.partial(tf.elu, alpha=float(alpha)),
}


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@functools.lru_cache(maxsize=256)
def torch_function(act: Activation) -> Callable:
    """φ as a function of a tensor, elementwise, of the input's shape and dtype."""
    native = _NATIVE.get(act.family or "")
    if native is not None:
        return native(*(value for _, value in act.params))
    return lambdify_torch(act.expr, v)


def dilog(z):
    """Li₂(z) = Σ_k z^k / k² for a real tensor z ≤ 1 (NaN above 1); same shape and dtype.

    torch has no dilogarithm, and the derived objective of softplus needs one. Uses
    Li₂(z) = −Li₂(z/(z−1)) − ½ log²(1−z) for z < 0, the series on [0, ½] and the reflection
    Li₂(z) = π²/6 − log z · log(1−z) − Li₂(1−z) on (½, 1]; 60 series terms give 2⁻⁶⁰ < 1e-18.
    """
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

    def _print_Function(self, expr):
        # An undefined function the caller names (φ): a call of that name.
        if isinstance(expr, sp.core.function.AppliedUndef) and self._settings.get(
            "allow_unknown_functions"
        ):
            args = ", ".join(self._print(a) for a in expr.args)
            return f"{expr.func.__name__}({args})"
        return super()._print_Function(expr)

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


def lambdify_many(
    args: Sequence[sp.Symbol],
    exprs: Sequence[sp.Expr],
    functions: Mapping[str, Callable] | None = None,
) -> Callable[..., tuple]:
    """A torch function of ``args`` (tensors or numbers) computing ``exprs`` elementwise, printed
    once as `lambdify_torch` prints one expression; ``functions`` names the callables of
    undefined functions in them (φ). Returns a tuple, each value of the first argument's shape
    and dtype."""
    prepared = [_floats(e.rewrite(sp.Piecewise)) for e in exprs]
    table = {"_unroll_dilog": dilog, **(functions or {})}
    printer = _Printer(
        {"fully_qualified_modules": False, "inline": True, "allow_unknown_functions": True}
    )
    try:
        fn = sp.lambdify(list(args), prepared, modules=[table, "torch"], printer=printer)
    except PrintMethodNotImplementedError as e:
        what = str(e).splitlines()[0].rsplit(" ", 1)[-1]
        raise UnrollError(f"no torch evaluation for {what}") from None

    def apply(*values):
        ref = values[0]
        out = []
        for y in fn(*values):
            if not isinstance(y, torch.Tensor):
                y = torch.full_like(ref, float(y))
            out.append(y.to(ref.dtype).expand_as(ref) if y.shape != ref.shape else y.to(ref.dtype))
        return tuple(out)

    return apply
