"""The SymPy -> Triton printer: printed expressions run (interpreter on CPU) and agree with
SymPy's own numeric evaluation (``lambdify`` to NumPy, float64), which unroll did not write."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import sympy as sp
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from tests.tolerances import F32_HELPERS, PRINTER
from unroll import UnrollError  # noqa: E402
from unroll.lowering.triton.printer import (
    FUNCTIONS,
    TritonPrinter,
    helper_source,
    prepare,
    triton_code,
)

x, y = sp.symbols("x y", real=True)

# (expression, input range): ranges keep log/sqrt/pow in their domains.
CASES = [
    (x**2 / y, (0.5, 2)),
    (y / x**3 - 3 * x / 8, (0.5, 2)),
    (-(x + y) / 3 + sp.Rational(1, 7), (-2, 2)),
    (sp.Max(x, 0) + sp.Min(y, 1, x), (-2, 2)),
    (sp.Max(-1, sp.Min(1, x)) * y, (-3, 3)),
    (sp.tanh(x) * y, (-4, 4)),
    (sp.exp(x) - 1 + y, (-3, 3)),
    (sp.log(1 + x * x) * y, (-3, 3)),
    (sp.log(1 + sp.exp(x)), (-30, 30)),
    (sp.diff(sp.log(1 + sp.exp(x)), x) * y, (-30, 30)),
    (1 / (1 + sp.exp(-x)), (-5, 5)),
    # The sigmoid's derivative, where e^|x| overflows float32 (|x| > 88): inf/inf as SymPy
    # writes it, so it only passes through the `prepare` rewrite.
    (sp.diff(1 / (1 + sp.exp(-x)), x) * y, (-120, 120)),
    (sp.sqrt(x) + 1 / sp.sqrt(y), (0.5, 3)),
    (x**y, (0.5, 2)),
    (sp.pi * x + sp.sqrt(2) * y + sp.Float("0.1") * x * y, (-2, 2)),
    (sp.Piecewise((x, x > y), (y * y, True)), (-2, 2)),
    (sp.Heaviside(x) * y + sp.sign(y), (-2, 2)),
    (sp.Abs(x) * sp.erf(y) + sp.sin(x) * sp.cos(y), (-2, 2)),
    (sp.Integer(3), (-1, 1)),
]

TOL = PRINTER  # see tests/tolerances.py


@pytest.fixture(autouse=True)
def _quiet_masked_lanes():
    """The interpreter computes masked-off lanes too (on whatever it loaded there); NumPy's
    warnings about them (0/0 in a lane nobody stores) are not findings."""
    with np.errstate(all="ignore"):
        yield


def _load(tmp_path, name: str, source: str):
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """One module with a kernel per case (written to a real file: Triton reads it back)."""
    bodies, used = [], set()
    for i, (expr, _) in enumerate(CASES):
        p = TritonPrinter({x: "x", y: "y"}, dtype="CDT")
        code = p.doprint(prepare(expr))
        used |= p.helpers_used
        bodies.append(
            f"""
@triton.jit
def case_{i}(x_ptr, y_ptr, out_ptr, n, CDT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask).to(CDT)
    y = tl.load(y_ptr + offs, mask=mask).to(CDT)
    out = tl.zeros_like(x) + ({code})
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
"""
        )
    source = "import triton\nimport triton.language as tl\n\n" + helper_source(used)
    source += "\n" + "\n".join(bodies)
    return _load(tmp_path_factory.mktemp("printer"), "unroll_printer_cases", source)


def _run(kernel, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    import triton.language as tl

    out = torch.full_like(xs, float("nan"))
    cdt = tl.float64 if xs.dtype == torch.float64 else tl.float32
    kernel[(triton_cdiv(xs.numel(), 64),)](xs, ys, out, xs.numel(), CDT=cdt, BLOCK=64)
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("i", range(len(CASES)))
def test_printed_expression_matches_sympy(kernels, i, dtype):
    expr, (lo, hi) = CASES[i]
    gen = torch.Generator().manual_seed(i)
    n = 97  # not a multiple of the block: the masked tail is exercised
    xs = (lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)).to(dtype)
    ys = (lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)).to(dtype)
    ref = sp.lambdify((x, y), expr, ["scipy", "numpy"])(xs.double().numpy(), ys.double().numpy())
    ref = torch.as_tensor(np.broadcast_to(ref, (n,)).astype(np.float64))
    got = _run(getattr(kernels, f"case_{i}"), xs, ys).double()
    # Absolute part: one unit of the output's scale (max |ref|, at least 1) times the tolerance.
    scale = max(1.0, float(ref.abs().max()))
    torch.testing.assert_close(got, ref, rtol=TOL[dtype], atol=TOL[dtype] * scale)


def test_helpers_keep_accuracy_where_the_naive_formula_fails(kernels, tmp_path):
    """tanh, expm1 and log1p near 0 (where 1 - 2/(e^{2x}+1), e^x - 1 and log(1 + x) lose every
    digit in float32) and at large |x| (where exp overflows)."""
    src = (
        "import triton\nimport triton.language as tl\n\n"
        + helper_source({"_tanh", "_log1p"})
        + """
@triton.jit
def k(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, _tanh(x), mask=mask)
    tl.store(out_ptr + n + offs, _expm1(x), mask=mask)
    tl.store(out_ptr + 2 * n + offs, _log1p(x), mask=mask)
"""
    )
    mod = _load(tmp_path, "unroll_printer_helpers", src)
    xs = torch.tensor([1e-10, -3e-8, 1e-4, 0.3, -0.7, 5.0, -20.0, 100.0, -100.0, 0.0])
    out = torch.full((3 * xs.numel(),), float("nan"))
    mod.k[(1,)](xs, out, xs.numel(), BLOCK=16)
    t, e, lg = out.view(3, -1)
    x64 = xs.double()
    # float32 unit roundoff 6e-8; the helpers are a few ulps: 1e-6 relative, tiny absolute for 0.
    torch.testing.assert_close(t.double(), torch.tanh(x64), **F32_HELPERS)
    finite = xs < 80  # e^100 overflows float32: expm1 must give inf there, not nan
    torch.testing.assert_close(e[finite].double(), torch.expm1(x64[finite]), **F32_HELPERS)
    assert torch.isinf(e[~finite]).all()
    pos = xs > -1  # log1p is defined on (-1, inf)
    torch.testing.assert_close(lg[pos].double(), torch.log1p(x64[pos]), **F32_HELPERS)


def test_float64_constants_are_not_rounded_to_float32():
    code = triton_code(sp.Rational(1, 10) + x * sp.pi, dtype="CDT")
    assert "tl.full([], 0.1, CDT)" in code  # a bare 0.1 would be a float32 constant in Triton
    assert triton_code(3 * x / 8) == "3 * x / 8"  # rationals stay exact integer arithmetic


def test_unknown_function_and_unnamed_leaf_are_clear_errors():
    with pytest.raises(UnrollError, match="gamma"):
        triton_code(sp.gamma(x))
    with pytest.raises(UnrollError, match="∇F"):
        triton_code(sp.Symbol("∇F") * x)
    assert triton_code(sp.Symbol("β") * x, names={sp.Symbol("β"): "beta"}) == "beta * x"


def test_mapping_table_names_triton_callables():
    import triton.language as tl

    for name, target in FUNCTIONS.items():
        if target.startswith("tl."):
            assert hasattr(tl, target[3:]), name
        else:
            assert target in helper_source({target}), name
