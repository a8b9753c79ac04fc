"""The activation names the front end accepts, without importing torch.

A scheme file's ``activation:`` key and the parser's suggestion for ``relu(...)`` in scheme
text need only the names; `unroll.ir.activations` holds each activation's SymPy form and torch
function and imports torch. Keeping the names here lets ``unroll list`` read every bundled
scheme file without torch. tests/frontend/test_activation_names.py checks that this table and
`unroll.ir.activations` accept the same names.
"""

from __future__ import annotations

import re

from unroll.errors import UnrollError

FIXED = (
    "identity", "relu", "sigmoid", "tanh", "softplus", "hardtanh", "atan", "softsign", "gelu",
    "silu",
)  # fmt: skip
FAMILIES = {"leaky_relu": "a", "elu": "alpha"}  # family -> the name of its one parameter
ALIASES = {"arctan": "atan", "linear": "identity"}

# name, then optionally one number in parentheses: "elu", "leaky_relu(0.1)", "elu( 1e-1 )".
SPEC = re.compile(
    r"\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*"
    r"(?:\(\s*(?P<arg>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\))?\s*"
)


def names() -> list[str]:
    """Every accepted name, sorted; families shown with their parameter: ``"elu(alpha)"``."""
    return sorted([*FIXED, *(f"{name}({param})" for name, param in FAMILIES.items())])


def is_name(word: str) -> bool:
    """True if ``word`` alone (no number) names an activation or a family: relu, elu, arctan."""
    word = ALIASES.get(word, word)
    return word in FIXED or word in FAMILIES


def check(spec: str) -> str:
    """``spec`` (``"relu"``, ``"leaky_relu(0.1)"``) if it names an activation; an `UnrollError`
    listing the known names otherwise."""
    m = SPEC.fullmatch(spec) if isinstance(spec, str) else None
    if m is None:
        raise UnrollError(
            f"cannot read activation {spec!r}: expected a name with an optional number, "
            f"like 'relu' or 'leaky_relu(0.1)'; known: {', '.join(names())}"
        )
    key = ALIASES.get(m["name"], m["name"])
    if key not in FIXED and key not in FAMILIES:
        raise UnrollError(f"unknown activation {key!r}; known: {', '.join(names())}")
    if m["arg"] is not None and key in FIXED:
        raise UnrollError(f"{key} takes no parameters")
    return spec
