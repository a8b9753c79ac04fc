"""The printed eager step: its two forms agree, it holds no user text, and it is what runs."""

from __future__ import annotations

import ast

import pytest
import sympy as sp
import torch

import unroll
from tests.tolerances import (
    F64_FEW_ULPS,
    F64_REASSOCIATED,
    F64_SAME_OPS,
    F64_TRAJECTORY,
    FINITE_DIFFERENCE,
)
from unroll.frontend.scheme import Scheme
from unroll.ir.step import build
from unroll.lowering.eager.program import eager_step

EXPLICIT = sorted(n for n, s in unroll.schemes.items() if s.is_explicit)


def _inputs(ir, generator):
    """Random float64 history values and parameters, and smooth operators, for one step."""
    shape = (3, 4)
    history = tuple(
        torch.rand((), dtype=torch.float64, generator=generator) + 0.5
        if h.scalar
        else torch.randn(shape, dtype=torch.float64, generator=generator)
        for h in ir.history
    )
    params = tuple(
        0.3 + 0.4 * float(torch.rand((), dtype=torch.float64, generator=generator))
        for _ in ir.parameters
    )
    ops = []
    for name in eager_step(ir).operators:
        kind = ir.operators().get(name, "act")
        if kind == "branch" and not ir.layer:
            ops.append(lambda t, x: torch.sin(x) + 0.1 * t)
        else:
            ops.append(torch.tanh)
    return history, params, tuple(ops)


@pytest.mark.parametrize("layer", [False, True], ids=["scheme", "layer"])
@pytest.mark.parametrize("name", EXPLICIT)
def test_the_in_place_step_for_numbers_is_the_plain_step(name, layer):
    ir = build(unroll.schemes[name], layer=layer)
    program = eager_step(ir)
    g = torch.Generator().manual_seed(0)
    history, params, ops = _inputs(ir, g)
    t = torch.tensor(0.7, dtype=torch.float64)
    plain = program.step(history, params, t, 3, ops)
    fused = program.step_numbers(history, params, t, 3, ops)
    assert len(plain) == len(fused) == len(history)
    for a, b in zip(plain, fused, strict=True):
        # The same sums in another association: a few float64 roundings of O(1) values.
        torch.testing.assert_close(b, a, **F64_REASSOCIATED)


def test_the_plain_step_is_what_the_ir_says():
    """The printed step against the IR's update evaluated by SymPy (an independent reading)."""
    ir = build(unroll.schemes["rk4"])
    program = eager_step(ir)
    x, h, t = 0.3, 0.1, 0.2
    f = lambda t, x: x * (1 - x) + t  # noqa: E731
    x0, t0 = torch.tensor(x, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)
    got = program.step((x0,), (h,), t0, 0, (f,))
    a = f(t, x)
    b = f(t + h / 2, x + h / 2 * a)
    c = f(t + h / 2, x + h / 2 * b)
    d = f(t + h, x + h * c)
    assert float(got[0]) == pytest.approx(x + h / 6 * (a + 2 * b + 2 * c + d), rel=F64_FEW_ULPS)


def test_no_text_of_the_users_reaches_the_source():
    eqs = unroll.compile("x_<k+1> = x_k - α ∇F").equations
    hostile = Scheme(eqs, name='x""";import os;os.mkdir("pwned");"""\nbad', description='"""')
    source = eager_step(build(hostile)).source
    assert "pwned" not in source and "import os" not in source
    tree = ast.parse(source)
    kinds = [type(node).__name__ for node in tree.body]
    # HISTORY, PARAMETERS, OPERATORS, FRESH; step, step_numbers, step_into, outputs
    assert kinds == ["Expr", "Import", "ImportFrom"] + ["Assign"] * 4 + ["FunctionDef"] * 4


def test_run_takes_the_in_place_step_only_for_plain_numbers():
    """A trainable coefficient (a tensor that needs a gradient) runs the plain step, and the
    gradient flows; numbers run the in-place one; both give the same iterates."""
    c = torch.randn(5, dtype=torch.float64)
    x0 = torch.randn(5, dtype=torch.float64)
    grad = lambda x: x - c  # noqa: E731
    hb = unroll.schemes["heavy_ball"]
    alpha = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    x = hb.run(x0, 10, grad=grad, α=alpha, β=0.9)
    (da,) = torch.autograd.grad(x.sum(), alpha)
    eps = 1e-6
    plus = hb.run(x0, 10, grad=grad, α=0.1 + eps, β=0.9).sum()
    minus = hb.run(x0, 10, grad=grad, α=0.1 - eps, β=0.9).sum()
    # central difference: O(eps²) truncation plus float64 rounding / eps ≈ 1e-10
    assert float(da) == pytest.approx(float(plus - minus) / (2 * eps), rel=FINITE_DIFFERENCE)
    torch.testing.assert_close(x.detach(), hb.run(x0, 10, grad=grad, α=0.1, β=0.9), **F64_SAME_OPS)


def test_every_symbol_of_the_ir_is_an_identifier_in_the_source():
    ir = build(unroll.compile("x_<k+1> = x_k + λ(x_k - x_<k-1>) - mask ∇F(x_k + tl x_k)"))
    source = eager_step(ir).source
    compile(source, "<eager>", "exec")  # a keyword named λ -> 'lambda' would not parse
    names = {c.name for c in ir.parameters}
    assert "lambda" not in names and all(n.isidentifier() for n in names)
    assert sp.Symbol("mask") not in {c.ref for c in ir.parameters} or "mask_v" in names


@pytest.mark.parametrize("name", EXPLICIT)
def test_the_step_into_dropped_memory_is_the_plain_step(name):
    """step_into writes a state's new value where its dropped value was: the same numbers as
    the plain step, computed on copies."""
    ir = build(unroll.schemes[name])
    program = eager_step(ir)
    g = torch.Generator().manual_seed(0)
    history, params, ops = _inputs(ir, g)
    t = torch.tensor(0.7, dtype=torch.float64)
    want = program.step(tuple(h.clone() for h in history), params, t, 3, ops)
    spares = tuple(
        None if h.dim() == 0 else history[i]
        for i, h in zip(program.lasts, (history[i] for i in program.lasts), strict=True)
    )
    got = program.step_into(history, params, t, 3, ops, None, spares)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **F64_REASSOCIATED)  # the same sums, reassociated


def _heavy_ball(x0, steps, **kw):
    c = torch.linspace(-1, 1, x0.numel(), dtype=x0.dtype)
    return unroll.schemes["heavy_ball"].run(x0, steps, grad=lambda x: x - c, α=0.1, β=0.9, **kw)


def test_run_reuses_the_memory_of_dropped_states_and_only_its_own(monkeypatch):
    from unroll.lowering.eager import program as program_module

    handed = []
    original = program_module.eager_step

    def spy(ir):
        p = original(ir)
        step_into = p.step_into

        def recording(*args):
            handed.append(sum(s is not None for s in args[-1]))
            return step_into(*args)

        return type(p)(**{**p.__dict__, "step_into": recording})

    monkeypatch.setattr("unroll.lowering.eager.run.eager_step", spy)
    x0 = torch.randn(1000, dtype=torch.float64)
    keep = x0.clone()
    x = _heavy_ball(x0, 20)
    assert torch.equal(x0, keep)  # the caller's x0 is never written
    assert sum(handed) >= 15  # after the first steps, every step writes into dropped memory
    # the same iterates as the plain functional loop
    c = torch.linspace(-1, 1, 1000, dtype=torch.float64)
    xk, xp = x0, x0
    for _ in range(20):
        xk, xp = xk + 0.9 * (xk - xp) - 0.1 * (xk - c), xk
    torch.testing.assert_close(x, xk, **F64_TRAJECTORY)


def test_values_someone_else_holds_are_never_overwritten():
    x0 = torch.randn(50, dtype=torch.float64)
    path = _heavy_ball(x0, 12, trajectory=True)  # the trajectory holds every state
    seen, copies = [], []
    c = torch.linspace(-1, 1, 50, dtype=torch.float64)

    def grad(x):  # an operator that keeps its inputs
        seen.append(x)
        copies.append(x.clone())
        return x - c

    unroll.schemes["heavy_ball"].run(x0, 12, grad=grad, α=0.1, β=0.9)
    for kept, copy in zip(seen, copies, strict=True):
        assert torch.equal(kept, copy)  # none was overwritten by a later step
    xk, xp = x0, x0
    for k in range(12):
        xk, xp = xk + 0.9 * (xk - xp) - 0.1 * (xk - c), xk
        torch.testing.assert_close(path[k + 1], xk, **F64_TRAJECTORY)
