"""Identifiers for generated code, made from scheme names in this one place.

A scheme may name its parameters and states with any letters (``β``, ``κ``, ``θ``, Cyrillic,
subscripted ``c_1``), and SymPy input may carry any symbol name at all. Every lowering that
prints code (the eager PyTorch module, the Triton kernels) writes a scheme's values under the
names `identifier` gives, which are guaranteed to be:

- ASCII Python identifiers: Greek letters are spelled out (``β`` -> ``beta``), other non-ASCII
  letters become ``u`` and their code point (``ж`` -> ``u0436``), anything else ``_``;
- free of leading, trailing and doubled underscores, so that a generated module may use
  ``_name`` for itself and ``name__suffix`` for values derived from ``name`` without meeting a
  scheme's name;
- never a Python keyword or soft keyword, never a builtin, never one of `GENERATED` (the names
  generated modules use for themselves without an underscore): such a name gets a ``_v`` suffix.

`Namer` hands out such names once each, so two scheme names that spell alike (``β`` and
``beta``) get different identifiers.
"""

from __future__ import annotations

import builtins
import keyword
import re

# Greek letters by the ASCII name the scheme language also accepts (β is also written beta).
GREEK_NAMES = {
    "α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "ζ": "zeta",
    "η": "eta", "θ": "theta", "κ": "kappa", "λ": "lambda", "μ": "mu", "ν": "nu", "ξ": "xi",
    "ρ": "rho", "τ": "tau", "ω": "omega", "Δ": "Delta", "φ": "phi", "ϕ": "phi", "σ": "sigma",
    "π": "pi", "χ": "chi", "ψ": "psi", "ι": "iota", "ο": "omicron", "υ": "upsilon",
    "Γ": "Gamma", "Θ": "Theta", "Λ": "Lambda", "Ξ": "Xi", "Π": "Pi", "Σ": "Sigma",
    "Φ": "Phi", "Ψ": "Psi", "Ω": "Omega",
}  # fmt: skip
_SUBSCRIPTS = str.maketrans("₀₁₂₃₄₅₆₇₈₉", "0123456789")

# Names generated modules use for themselves without a leading underscore: module names they
# import, and the names of kernel arguments and locals their templates write.
GENERATED = frozenset(
    {
        "torch", "triton", "tl", "math", "ops", "F", "nn", "runtime",
        "mask", "offs", "rows", "cols", "pid", "part", "layer", "wmask", "off",
        "M", "K", "C", "N", "B", "GRID_K", "CHANNEL_ROWS",
        "BLOCK_M", "BLOCK_K", "BLOCK_N", "CDT", "COMPUTE", "PREC", "STORE", "STORE_P",
        "update", "step", "calls", "gain", "phi",
    }
)  # fmt: skip
RESERVED = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins))


def _spell(text: str) -> str:
    out = []
    for ch in text.translate(_SUBSCRIPTS):
        if ch.isascii() and (ch.isalnum() or ch == "_"):
            out.append(ch)
        elif ch in GREEK_NAMES:
            out.append(GREEK_NAMES[ch])
        elif ch.isalnum():
            out.append(f"u{ord(ch):04x}")
        else:
            out.append("_")
    return re.sub("_+", "_", "".join(out)).strip("_")


def identifier(text: str) -> str:
    """``text`` as an identifier with the guarantees of the module docstring (not yet unique:
    see `Namer`)."""
    name = _spell(text) or "v"
    if name[0].isdigit():
        name = f"v{name}"
    if name in RESERVED or name in GENERATED:
        name = f"{name}_v"
    return name


class Namer:
    """Hands out identifiers, each once: the second ``beta`` becomes ``beta_1``."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def __call__(self, text: str) -> str:
        base = identifier(text)
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name
