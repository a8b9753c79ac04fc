"""The inverse of a scheme (unroll/ir/inverse.py): every bundled scheme either inverts, and then
forward steps followed by inverse steps give back the start in float64, or is refused with its
reason; the closed forms of the issue; the inverse of the inverse is the scheme."""

from __future__ import annotations

import pytest
import sympy as sp
import torch

import unroll
from tests.tolerances import F64_INVERSE_ROUND_TRIP, F64_REROUTED, WRONG_INVERSE
from unroll.errors import UnrollError
from unroll.frontend.library import compile as compile_scheme
from unroll.ir import vocabulary as vocab
from unroll.ir.inverse import inverse, invertibility_condition
from unroll.ir.step import build
from unroll.lowering.eager.run import Stepper, operators, run

# Every bundled scheme: None where it inverts, else a phrase its refusal must contain. A new
# bundled scheme fails `test_every_bundled_scheme_is_listed` until it is classified here.
EXPECTED = {
    "ab2": "only through f(-h + t, x_<k-1>)",
    "ab3": "only through f(-2*h + t, x_<k-2>)",
    "admm": "state x is written but never read",
    "agd_net": "only through W(",
    "densenet": "only through W(",
    "forward_euler": "its inverse is implicit",
    "fractalnet": "its inverse is implicit",
    "gradient_descent": "its inverse is implicit",
    "hb_net": "relu is not invertible",
    "heavy_ball": None,
    "heavy_ball_velocity": None,
    "momentum_resnet": None,
    "heun": "its inverse is implicit",
    "leapfrog": None,
    "lm_resnet": None,
    "midpoint": "its inverse is implicit",
    "nesterov": "its inverse is implicit",
    "nesterov_schedule": "does not determine",
    "polynet": "its inverse is implicit",
    "proximal_gradient": "only through W(x_k)",
    "revnet": None,
    "rk38": "its inverse is implicit",
    "rk4": "its inverse is implicit",
}

MOMENTUM = "v_<k+1> = γ v_k + (1 - γ) f(x_k)\nx_<k+1> = x_k + v_<k+1>"

# Parameter values for the round trip: the defaults, but LM-ResNet at κ = −1/2 (growth 2 per
# layer) so that eight inverse steps stay far from float64's limit (κ = −0.05 is the guard's case).
PARAMS = {"lm_resnet": {"κ": -0.5}}


def test_every_bundled_scheme_is_listed():
    assert set(EXPECTED) == set(unroll.schemes)


@pytest.mark.parametrize("name", sorted(n for n, why in EXPECTED.items() if why is not None))
def test_refused_with_its_reason(name):
    with pytest.raises(UnrollError) as info:
        inverse(unroll.schemes[name])
    assert EXPECTED[name] in str(info.value)
    assert repr(name) in str(info.value)  # the message names the scheme


# -- round trips -------------------------------------------------------------------------------
def _mlp(dim: int, seed: int, scale: float = 0.5, timed: bool = True):
    """A random field (t, x) -> scale·tanh(x A + t c) B in float64; c = 0 unless ``timed`` (an
    autonomous f(x) in a scheme is still called with the step's time, which it must not read)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    b = torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    c = torch.randn(dim, generator=g, dtype=torch.float64) * timed

    def f(t, x):
        return scale * torch.tanh(x @ a + torch.as_tensor(t, dtype=x.dtype) * c) @ b

    return f


def _ops(scheme, dim):
    timed = any(c.time is not None for c in build(scheme).calls)
    fields = {"f": _mlp(dim, 1, timed=timed), "g": _mlp(dim, 2, timed=timed)}
    return operators(scheme, grad=lambda x: _mlp(dim, 3)(0.0, x), f=fields)


def _round_trip(scheme, params, steps=8, dim=6, batch=5):
    """Forward ``steps`` steps from a random history (every slot different), then as many
    inverse steps from the reversed final history; returns (start, rebuilt) histories."""
    values = {**scheme.defaults(), **params}
    ops = _ops(scheme, dim)
    inv = inverse(scheme, **params)
    forward, backward = Stepper(scheme, ops, values), Stepper(inv, ops, values)
    g = torch.Generator().manual_seed(0)
    start = {
        n: [torch.randn(batch, dim, generator=g, dtype=torch.float64) for _ in range(s.depth)]
        for n, s in scheme.states.items()
    }
    history = {n: list(v) for n, v in start.items()}
    times = [0.3 + 0.1 * k for k in range(steps)]
    for k in range(steps):
        new = forward.step(history, k, torch.tensor(times[k], dtype=torch.float64))
        history = {n: [new[n], *v[:-1]] for n, v in history.items()}
    back = {n: v[::-1] for n, v in history.items()}  # the inverse's history: reversed
    for j in range(steps):
        t = torch.tensor(-times[steps - 1 - j], dtype=torch.float64)  # the inverse runs in −t
        new = backward.step(back, j, t)
        back = {n: [new[n], *v[:-1]] for n, v in back.items()}
    return start, {n: v[::-1] for n, v in back.items()}


INVERTIBLE = sorted(n for n, why in EXPECTED.items() if why is None)


@pytest.mark.parametrize("name", INVERTIBLE)
def test_forward_then_inverse_returns_the_start(name):
    start, rebuilt = _round_trip(unroll.schemes[name], PARAMS.get(name, {}))
    for n in start:
        for a, b in zip(start[n], rebuilt[n], strict=True):
            # Eight steps at a growth of at most 2 per layer: 2^8 · 1e-16 · (a few) ≈ 1e-13.
            assert torch.allclose(b, a, **F64_INVERSE_ROUND_TRIP), (name, n, (a - b).abs().max())


@pytest.mark.parametrize(
    "text",
    [
        MOMENTUM,
        # A three-step linear multistep network: f at the two newest states, a nonzero oldest
        # coefficient.
        "x_<k+1> = 1/2 x_k + 1/4 x_<k-1> + 1/4 x_<k-2> + h (3/2 f(x_k) - 1/2 f(x_<k-1>))",
    ],
)
def test_other_invertible_forms_return_the_start(text):
    scheme = compile_scheme(text)
    params = {"γ": 0.9} if "γ" in text else {"h": 0.1}
    start, rebuilt = _round_trip(scheme, params)
    for n in start:
        for a, b in zip(start[n], rebuilt[n], strict=True):
            # Growth at most 2 here too (the 3-step scheme's reversed roots: 1, and 2 twice).
            assert torch.allclose(b, a, **F64_INVERSE_ROUND_TRIP)


def test_a_wrong_inverse_fails_the_round_trip():
    """The round trip can fail: the inverse of LM-ResNet taken at a κ other than the forward
    one does not give back the start."""
    scheme = unroll.schemes["lm_resnet"]
    start, _ = _round_trip(scheme, {"κ": -0.5})
    ops = _ops(scheme, 6)
    forward = Stepper(scheme, ops, {"κ": -0.5, "h": 1.0})
    backward = Stepper(inverse(scheme), ops, {"κ": -0.4, "h": 1.0})
    history = {"u": list(start["u"])}
    new = forward.step(history, 0, torch.tensor(0.3, dtype=torch.float64))
    back = backward.step(
        {"u": [history["u"][0], new["u"]]}, 0, torch.tensor(-0.3, dtype=torch.float64)
    )
    assert not torch.allclose(back["u"], start["u"][1], atol=WRONG_INVERSE)


def test_run_retraces_a_one_step_scheme_backwards_in_time():
    """`run` executes the inverse like any scheme: N steps of symplectic Euler on a
    time-dependent field from t0, then N inverse steps from t0' = −(t0 + (N − 1) h)."""
    scheme = compile_scheme("X_<k+1> = X_k + h f(t, Y_k)\nY_<k+1> = Y_k + h g(t, X_<k+1>)")
    fields = {"f": _mlp(4, 1), "g": _mlp(4, 2)}
    g = torch.Generator().manual_seed(1)
    x0 = {n: torch.randn(3, 4, generator=g, dtype=torch.float64) for n in "XY"}
    steps, h, t0 = 12, 0.1, 0.25
    end = run(scheme, x0, steps, f=fields, h=h, t0=t0)
    back = run(inverse(scheme), end, steps, f=fields, h=h, t0=-(t0 + (steps - 1) * h))
    for n in "XY":
        # RevNet-like: growth 1 per layer, 12 steps: rounding only.
        assert torch.allclose(back[n], x0[n], **F64_REROUTED)
    # Run forwards in time instead, the inverse does not retrace the field's time dependence.
    wrong = run(inverse(scheme), end, steps, f=fields, h=h, t0=t0)
    assert not torch.allclose(wrong["X"], x0["X"], atol=WRONG_INVERSE)


# -- closed forms ------------------------------------------------------------------------------
def _same(a: sp.Expr, b: sp.Expr) -> bool:
    return sp.simplify(sp.expand(a - b)) == 0


def test_lm_resnet_closed_form():
    (eq,) = inverse(unroll.schemes["lm_resnet"]).equations
    u, n = sp.IndexedBase("u"), sp.Symbol("n", integer=True)
    kappa, h = sp.symbols("κ h")
    f = sp.Function("f")
    assert eq.lhs == u[n + 1]
    assert _same(eq.rhs, (u[n - 1] - (1 - kappa) * u[n] - h * f(-vocab.T, u[n])) / kappa)


def test_revnet_closed_form():
    eqs = inverse(unroll.schemes["revnet"]).equations
    X, Y, k = sp.IndexedBase("X"), sp.IndexedBase("Y"), sp.Symbol("k", integer=True)
    f, g = sp.Function("f"), sp.Function("g")
    assert [e.lhs for e in eqs] == [Y[k + 1], X[k + 1]]
    assert _same(eqs[0].rhs, Y[k] - g(X[k]))
    assert _same(eqs[1].rhs, X[k] - f(Y[k + 1]))


def test_momentum_closed_form():
    eqs = {e.lhs: e.rhs for e in inverse(compile_scheme(MOMENTUM)).equations}
    x, v, k = sp.IndexedBase("x"), sp.IndexedBase("v"), sp.Symbol("k", integer=True)
    gamma, f = sp.Symbol("γ"), sp.Function("f")
    assert _same(eqs[x[k + 1]], x[k] - v[k])
    assert _same(eqs[v[k + 1]], (v[k] - (1 - gamma) * f(x[k + 1])) / gamma)


@pytest.mark.parametrize("name", INVERTIBLE)
def test_inverse_of_inverse_is_the_scheme(name):
    scheme = unroll.schemes[name]
    again = {e.lhs: e.rhs for e in inverse(inverse(scheme)).equations}
    original = {e.lhs: e.rhs for e in scheme.equations}
    assert set(again) == set(original)

    # A later equation may read a new value the original computes first: compare the new
    # values with every new value substituted.
    def resolved(eqs):
        out = {}
        for lhs, rhs in eqs.items():
            out[lhs] = rhs.xreplace(out)
        return out

    a, b = resolved(original), resolved({lhs: again[lhs] for lhs in original})
    assert all(_same(a[lhs], b[lhs]) for lhs in a)


def test_the_inverse_prints_and_parses_back():
    for name in INVERTIBLE:
        inv = inverse(unroll.schemes[name])
        assert compile_scheme(str(inv)).equations == inv.equations


# -- refusals --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "params", "condition", "message"),
    [
        ("lm_resnet", {"kappa": 0}, sp.Symbol("κ"), "κ = 0"),
        ("heavy_ball", {"beta": 0.0}, -sp.Symbol("β"), "β = 0.0"),
        ("heavy_ball_velocity", {"β": 0}, sp.Symbol("β"), "β = 0"),
    ],
)
def test_zero_oldest_coefficient_names_the_value(name, params, condition, message):
    scheme = unroll.schemes[name]
    assert invertibility_condition(scheme) == condition
    with pytest.raises(UnrollError, match="not invertible at") as info:
        inverse(scheme, **params)
    assert message in str(info.value)


def test_constant_condition_schemes_have_no_caveat():
    assert invertibility_condition(unroll.schemes["leapfrog"]) == 1
    assert invertibility_condition(unroll.schemes["revnet"]) == 1
    assert inverse(unroll.schemes["revnet"]).notes == ""
    assert "κ ≠ 0" in inverse(unroll.schemes["lm_resnet"]).notes


def test_implicit_scheme_refused():
    with pytest.raises(UnrollError, match="implicit"):
        inverse(compile_scheme("x_<k+1> = x_<k-1> + h f(x_<k+1>)"))


def test_invertible_activation_is_still_refused_with_its_reason():
    scheme = unroll.compile("x_<k+1> = φ(x_<k-1> + W x_k)")
    with pytest.raises(UnrollError, match="inverse of φ, which a scheme cannot express"):
        inverse(scheme)


@pytest.mark.parametrize(
    "text, found",
    [
        ("x_<k+1> = x_k + x_<k-1>^2 + f(x_k)", "2 closed-form solutions"),
        # one-to-one on the reals, but SymPy's solutions are complex branches: the message says
        # what was found, not that the step is not one-to-one
        ("x_<k+1> = tanh(x_<k-1>) + f(x_k)", "2 closed-form solutions"),
        ("x_<k+1> = x_<k-1>^3 + f(x_k)", "3 closed-form solutions"),
        # SymPy has no method for it (NotImplementedError inside): an UnrollError, not a crash
        ("x_<k+1> = 2 x_<k-1> + tanh(x_<k-1>) + f(x_k)", "no closed-form solution"),
    ],
)
def test_no_single_closed_form_solution_refused(text, found):
    with pytest.raises(UnrollError, match=rf"gives {found}( \(branches.*\))?; unroll inverts"):
        inverse(compile_scheme(text))


def test_scheme_reading_its_index_refused():
    x, k = sp.IndexedBase("x"), vocab.index_symbol("k")
    f = sp.Function("f")
    scheme = compile_scheme([sp.Eq(x[k + 1], x[k - 1] + k * f(x[k]))])
    with pytest.raises(UnrollError, match="reads its index k"):
        inverse(scheme)
