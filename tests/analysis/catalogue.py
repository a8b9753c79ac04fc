"""Classical methods written as scheme text, the way users write them, in both spellings.

`MULTISTEP`: Adams–Bashforth (AB1-AB6), Adams–Moulton (AM1-AM5, k-step, order k + 1, as in
nodepy) and the backward differentiation formulas (BDF1-BDF6), copied from the tables of
Hairer, Nørsett, Wanner (chapter III), each with the name of the nodepy method it
must agree with. `runge_kutta_text` writes a Butcher tableau (nodepy's catalogue, in the tests)
as stages. Each text is written with autonomous branches f(x); `timed` rewrites it with
f(t + c h, x), c the time the state value stands for.
"""

from __future__ import annotations

import re

import sympy as sp

# name -> (text with f(x), nodepy constructor name, its argument)
MULTISTEP: dict[str, tuple[str, str, int]] = {
    "AB1": ("x_<k+1> = x_k + h f(x_k)", "Adams_Bashforth", 1),
    "AB2": ("x_<k+1> = x_k + h/2 (3 f(x_k) - f(x_<k-1>))", "Adams_Bashforth", 2),
    "AB3": (
        "x_<k+1> = x_k + h/12 (23 f(x_k) - 16 f(x_<k-1>) + 5 f(x_<k-2>))",
        "Adams_Bashforth",
        3,
    ),
    "AB4": (
        "x_<k+1> = x_k + h/24 (55 f(x_k) - 59 f(x_<k-1>) + 37 f(x_<k-2>) - 9 f(x_<k-3>))",
        "Adams_Bashforth",
        4,
    ),
    "AB5": (
        "x_<k+1> = x_k + h/720 (1901 f(x_k) - 2774 f(x_<k-1>) + 2616 f(x_<k-2>)"
        " - 1274 f(x_<k-3>) + 251 f(x_<k-4>))",
        "Adams_Bashforth",
        5,
    ),
    "AB6": (
        "x_<k+1> = x_k + h/1440 (4277 f(x_k) - 7923 f(x_<k-1>) + 9982 f(x_<k-2>)"
        " - 7298 f(x_<k-3>) + 2877 f(x_<k-4>) - 475 f(x_<k-5>))",
        "Adams_Bashforth",
        6,
    ),
    "AM1": ("x_<k+1> = x_k + h/2 (f(x_<k+1>) + f(x_k))", "Adams_Moulton", 1),
    "AM2": ("x_<k+1> = x_k + h/12 (5 f(x_<k+1>) + 8 f(x_k) - f(x_<k-1>))", "Adams_Moulton", 2),
    "AM3": (
        "x_<k+1> = x_k + h/24 (9 f(x_<k+1>) + 19 f(x_k) - 5 f(x_<k-1>) + f(x_<k-2>))",
        "Adams_Moulton",
        3,
    ),
    "AM4": (
        "x_<k+1> = x_k + h/720 (251 f(x_<k+1>) + 646 f(x_k) - 264 f(x_<k-1>)"
        " + 106 f(x_<k-2>) - 19 f(x_<k-3>))",
        "Adams_Moulton",
        4,
    ),
    "AM5": (
        "x_<k+1> = x_k + h/1440 (475 f(x_<k+1>) + 1427 f(x_k) - 798 f(x_<k-1>)"
        " + 482 f(x_<k-2>) - 173 f(x_<k-3>) + 27 f(x_<k-4>))",
        "Adams_Moulton",
        5,
    ),
    "BDF1": ("x_<k+1> = x_k + h f(x_<k+1>)", "backward_difference_formula", 1),
    "BDF2": (
        "x_<k+1> = 4/3 x_k - 1/3 x_<k-1> + 2/3 h f(x_<k+1>)",
        "backward_difference_formula",
        2,
    ),
    "BDF3": (
        "x_<k+1> = 18/11 x_k - 9/11 x_<k-1> + 2/11 x_<k-2> + 6/11 h f(x_<k+1>)",
        "backward_difference_formula",
        3,
    ),
    "BDF4": (
        "x_<k+1> = 48/25 x_k - 36/25 x_<k-1> + 16/25 x_<k-2> - 3/25 x_<k-3> + 12/25 h f(x_<k+1>)",
        "backward_difference_formula",
        4,
    ),
    "BDF5": (
        "x_<k+1> = 300/137 x_k - 300/137 x_<k-1> + 200/137 x_<k-2> - 75/137 x_<k-3>"
        " + 12/137 x_<k-4> + 60/137 h f(x_<k+1>)",
        "backward_difference_formula",
        5,
    ),
    "BDF6": (
        "x_<k+1> = 360/147 x_k - 450/147 x_<k-1> + 400/147 x_<k-2> - 225/147 x_<k-3>"
        " + 72/147 x_<k-4> - 10/147 x_<k-5> + 60/147 h f(x_<k+1>)",
        "backward_difference_formula",
        6,
    ),
}

_STATE_ARG = re.compile(r"f\((x_k|x_<k([+-])(\d+)>)\)")


def timed(text: str) -> str:
    """``text`` with every f(x_<k+j>) written f(t + j h, x_<k+j>)."""

    def time(m: re.Match) -> str:
        j = 0 if m.group(1) == "x_k" else int(m.group(3)) * (1 if m.group(2) == "+" else -1)
        step = "h" if abs(j) == 1 else f"{abs(j)}h"
        t = "t" if j == 0 else f"t + {step}" if j > 0 else f"t - {step}"
        return f"f({t}, {m.group(1)})"

    return _STATE_ARG.sub(time, text)


def _coefficient(c: sp.Expr) -> str:
    text = sp.sstr(c)
    return text if c.is_Rational else f"({text})"


def _combination(weights, names) -> str:
    """``w_1 s1 + w_2 s2 ...`` with zero weights left out and signs written as users do."""
    out = ""
    for w, name in zip(weights, names, strict=True):
        w = sp.sympify(w)
        if w == 0:
            continue
        sign = "-" if w.could_extract_minus_sign() else "+"
        mag = -w if sign == "-" else w
        term = name if mag == 1 else f"{_coefficient(mag)} {name}"
        out += f" {sign} {term}" if out else (f"-{term}" if sign == "-" else term)
    return out


def runge_kutta_text(A, b, c, time: bool = False) -> str:
    """The tableau (A, b, c) as stages s1, s2, ... (an implicit method's stages read one
    another), with f(x) or, when ``time``, f(t + c_i h, x)."""
    s = len(b)
    names = [f"s{i + 1}" for i in range(s)]
    lines = []
    for i in range(s):
        inc = _combination(A[i], names)
        arg = f"x_k + h ({inc})" if inc else "x_k"
        if time:
            ci = sp.sympify(c[i])
            t = "t" if ci == 0 else f"t + {_coefficient(ci)} h"
            lines.append(f"{names[i]} = f({t}, {arg})")
        else:
            lines.append(f"{names[i]} = f({arg})")
    lines.append(f"x_<k+1> = x_k + h ({_combination(b, names)})")
    return "\n".join(lines)
