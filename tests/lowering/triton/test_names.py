"""Every name a scheme may give its parameters and states yields a working kernel: Python
keywords (λ is spelled ``lambda``), builtins, the names the generated code uses for itself
(``mask``, ``offs``, ``tl``, ``torch``, ``CDT``, CSE temporaries ``t0``, the pointers and
flags a template derives from a name), Greek letters. Names are mangled once, in
`unroll.ir.names`; the templates' own names start with an underscore or extend a mangled name
with a double underscore. Checked for ``emit`` (the module compiles) and for
``backend="triton"`` (interpreter, float64) against the eager update computed from the IR."""

from __future__ import annotations

import builtins
import dataclasses
import keyword
import os

import pytest
import sympy as sp
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import unroll  # noqa: E402
from tests.tolerances import F64_REROUTED
from unroll.frontend.scheme import Parameter  # noqa: E402
from unroll.ir.names import GENERATED, GREEK_NAMES  # noqa: E402
from unroll.lowering import cache  # noqa: E402
from unroll.lowering.triton.emit import emit  # noqa: E402
from unroll.lowering.triton.op import block_update  # noqa: E402

# Names the generated modules use or used for themselves, and names a template could derive
# from a leaf (x_k -> x_k_ptr, g_x_k, gy_x_kp1, c_alpha, NEED_x_k, out_x_kp1; t0 from CSE).
TEMPLATE_NAMES = [
    "mask", "offs", "rows", "cols", "pid", "part", "tl", "torch", "triton", "runtime", "CDT",
    "M", "K", "C", "GRID_K", "CHANNEL_ROWS", "BLOCK_M", "BLOCK_K", "SCHEME", "INPUTS",
    "COEFFICIENTS", "PER_CHANNEL", "OUTPUTS", "STATES", "SAVED", "OP", "update", "t0", "t1",
    "x_k_ptr", "g_x_k", "gy_x_kp1", "out_x_kp1", "c_alpha", "NEED_x_k", "x_k__ptr", "_mask",
    "_t0", "num_warps", "num_stages", "grid", "tanh", "_tanh", "expm1", "float", "alpha",
]  # fmt: skip
POOL = sorted(
    set(TEMPLATE_NAMES)
    | set(GENERATED)
    | set(keyword.kwlist + keyword.softkwlist)
    | {n for n in dir(builtins) if n.islower() and not n.startswith("_")}
    | set(GREEK_NAMES) - {"φ", "ϕ"}  # φ is the activation
    | set(GREEK_NAMES.values()) - {"phi"}
)

k = sp.Symbol("k", integer=True)
GRAD = sp.Function("∇F")


def scheme(state: str, a: str, b: str, c: str):
    """x_<k+1> = x_k + a (x_k − x_<k-1>)² − b ∇F(x_k) / (1 + c²), c per channel, in the names
    given (SymPy input takes any name)."""
    x = sp.IndexedBase(state)
    pa, pb, pc = sp.Symbol(a), sp.Symbol(b), sp.Symbol(c)
    d = x[k] - x[k - 1]
    eq = sp.Eq(x[k + 1], x[k] + pa * d * d - pb * GRAD(x[k]) / (1 + pc**2))
    s = unroll.compile(eq)
    return dataclasses.replace(s, parameter_specs=(Parameter(c, per_channel=True),))


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UNROLL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kcache"))


names = st.lists(st.sampled_from(POOL), min_size=4, max_size=4, unique=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names)
@example(["x", "alpha", "c_alpha", "λ"])  # c_<alpha>'s pointer was alpha's partial sums
@example(["mask", "offs", "tl", "CDT"])
@example(["torch", "lambda", "t0", "t1"])
@example(["x_k", "x_k_ptr", "g_x_k", "NEED_x_k"])
@example(["β", "beta", "if", "sum"])  # β and beta spell alike
def test_any_names_give_a_module_that_compiles_and_a_kernel_that_is_right(chosen):
    s = scheme(*chosen)
    block, text = emit(s)
    compile(text, "<generated>", "exec")
    op = block_update(s, backend="triton")
    gen = torch.Generator().manual_seed(0)
    shape = (2, 3, 4)
    ts = {i.name: torch.randn(shape, generator=gen, dtype=torch.float64) for i in block.inputs}
    cs = {
        c.name: torch.randn(3 if c.spec and c.spec.per_channel else (), generator=gen,
                            dtype=torch.float64)
        for c in block.coefficients
    }  # fmt: skip
    leaves = [*ts.values(), *cs.values()]
    for v in leaves:
        v.requires_grad_(True)
    got = op(ts, cs)
    want = block_update(s, backend="torch")(ts, cs)  # the IR's update, eagerly, float64
    (state,) = want
    # float64 both sides, a handful of operations in different orders: 1e-12 as in the kernel
    # tests' table (4 orders over the 1e-16 unit roundoff).
    torch.testing.assert_close(got[state], want[state], **F64_REROUTED)
    gy = torch.randn(shape, generator=gen, dtype=torch.float64)
    g_got = torch.autograd.grad((got[state] * gy).sum(), leaves)
    g_want = torch.autograd.grad((want[state] * gy).sum(), leaves)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, **F64_REROUTED)
    cache._loaded.clear()  # keep the memo small over many examples


def test_the_issue_names_through_unroll_emit(tmp_path):
    """λ (spelled lambda, a keyword) and mask, offs, tl, torch, CDT (the generated code's own
    names) in scheme text: the module ``unroll emit`` writes imports and runs right."""
    from click.testing import CliRunner

    from unroll.cli import cli

    text = "x_<k+1> = x_k - λ mask offs tl torch CDT ∇F"
    result = CliRunner().invoke(cli, ["emit", text, "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    module = cache.import_file(tmp_path / "scheme.py", "unroll_names_test")
    x, g = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    values = [0.5, 2.0, 3.0, -1.0, 0.25, 1.5]  # λ, mask, offs, tl, torch, CDT in kernel order
    assert len(module.COEFFICIENTS) == len(values)
    (out,) = module.OP([x, g], values)
    product = 0.5 * 2.0 * 3.0 * -1.0 * 0.25 * 1.5
    torch.testing.assert_close(out, x - product * g, **F64_REROUTED)
