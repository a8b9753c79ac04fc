"""unroll: a compiler from iteration schemes to neural networks.

The pipeline, one module per pass::

    scheme = compile(text)        # parse.py: str | sympy.Eq | YAML -> Scheme (scheme.py)
    x      = scheme.run(x0, ...)  # run.py:   Scheme -> eager torch execution
    facts  = analysis.*           # order, stability, objective, architecture, rates
    module = scheme.network(...)  # lowering: torch modules, Triton source (cached)
"""

from __future__ import annotations

import importlib

from unroll.errors import UnrollError, UnrollWarning

__version__ = "0.1.0"

# Public names and the module that is their one home; imported on first use so that
# `import unroll` stays cheap and Triton is only imported where it is needed.
_LAZY = {
    "Scheme": "unroll.api",
    "compile": "unroll.api",
    "load": "unroll.api",
    "schemes": "unroll.api",
    "layer_form": "unroll.api",
    "inverse": "unroll.api",
    "inverse_stability": "unroll.analysis.inverse",
    "Parameter": "unroll.frontend.scheme",
    "State": "unroll.frontend.scheme",
    "objective": "unroll.analysis.objectives",
    "Objective": "unroll.analysis.objectives",
    "identify": "unroll.analysis.identification",
    "per_block": "unroll.lowering.nn.options",
    "grow": "unroll.experiments.splitting",
    "parallelize": "unroll.experiments.parallel",
}

__all__ = ["UnrollError", "UnrollWarning", "__version__", *_LAZY]


# Subpackages users reach as attributes (``unroll.nn.staged``), imported on first use.
_SUBMODULES = ("nn", "analysis", "driver")


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f"unroll.{name}")
        globals()[name] = module
        return module
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unroll' has no attribute {name!r}")
