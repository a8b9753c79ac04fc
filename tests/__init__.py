"""unroll's tests, laid out as the package is (tests/frontend for unroll/frontend, ...)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository: docs/, kernels/, schemes/
