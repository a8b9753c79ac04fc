"""Derived objectives, tested both ways (STYLE.md): the derived g against a numerical argmin
(prox_g = φ), F against the layers (it never increases), g against the closed forms of
docs/theory.md section 2, and the refusals for activations that are not proximal maps.

The references here never come from unroll's own output: a grid-plus-golden-section argmin,
the layer map itself, closed forms written by hand, mpmath.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unroll
import unroll.analysis.objectives as objective_module  # noqa: E402
from tests import ROOT
from tests.tolerances import (
    F64_CLOSED_FORM,
    F64_OBJECTIVE,
    F64_ONE_ROUNDING,
    F64_RELATIVE,
    F64_ROUNDING,
    F64_SAME_OPS,
    PROX,
)
from unroll import UnrollError
from unroll.analysis.objectives import Objective, check_activation, objective, t
from unroll.ir import activations
from unroll.lowering.eager.activations import torch_function

y = sp.Symbol("y", real=True)
SOFT_THRESHOLD = sp.Lambda(y, sp.Piecewise((y + 1, y < -1), (0, y <= 1), (y - 1, True)))
HALF_TANH = sp.Lambda(y, sp.tanh(y) / 2)
HALF_ERF = sp.Lambda(y, sp.erf(y) / 2)  # slope ≤ 1/√π; g needs erfinv
# Slopes 1/2 above 0 and 1/3 below, with the value at 0 given as a piece of its own (a point
# piece starting where the next interval starts): g = t²/2 for t ≥ 0, t² below.
POINT_PIECE = sp.Lambda(y, sp.Piecewise((y / 2, y > 0), (0, sp.Eq(y, 0)), (y / 3, True)))

# Every activation with an objective: the bundled ones, families at a few parameters, Lambdas.
SUPPORTED = [
    "identity", "relu", "leaky_relu", "leaky_relu(0.1)", "leaky_relu(0.5)", "sigmoid", "tanh",
    "softplus", "hardtanh", "elu", "elu(0.5)", "atan", "softsign", SOFT_THRESHOLD, HALF_TANH,
    HALF_ERF, POINT_PIECE,
]  # fmt: skip
IDS = [s if isinstance(s, str) else str(s.expr) for s in SUPPORTED]


def test_every_bundled_activation_is_covered_or_refused():
    fixed = {n for n in activations.names() if "(" not in n}
    assert fixed - set(SUPPORTED) == {"gelu", "silu"}  # refused, see test_refusals


# --- prox_g = φ -------------------------------------------------------------------------------


def numerical_prox(obj: Objective, vs: torch.Tensor) -> torch.Tensor:
    """argmin_y g(y) + ½ (y − v)² for each v, without φ: a 4001-point grid over
    [v − 8, v + 8] ∩ dom g, then 100 golden-section steps on the bracket around the best point
    (the function is 1-strongly convex, so the bracket holds the minimiser)."""
    lo_d, hi_d = float(obj.domain.inf), float(obj.domain.sup)
    lo = torch.clamp(vs - 8, min=lo_d)
    hi = torch.clamp(vs + 8, max=hi_d)
    grid = lo[:, None] + (hi - lo)[:, None] * torch.linspace(0, 1, 4001, dtype=torch.float64)

    def h(ys: torch.Tensor) -> torch.Tensor:
        return obj.evaluate_g(ys) + 0.5 * (ys - vs.reshape(-1, *[1] * (ys.dim() - 1))) ** 2

    i = h(grid).argmin(-1, keepdim=True)
    a = grid.gather(-1, (i - 1).clamp(min=0)).squeeze(-1)
    b = grid.gather(-1, (i + 1).clamp(max=grid.shape[-1] - 1)).squeeze(-1)
    r = (math.sqrt(5) - 1) / 2
    for _ in range(100):
        c, d = b - r * (b - a), a + r * (b - a)
        left = h(c) < h(d)
        a, b = torch.where(left, a, c), torch.where(left, d, b)
    return (a + b) / 2


# The minimised function is 1-strongly convex, so an error δ in the argmin costs at least δ²/2:
# float64 noise ε in evaluating it (|values| ≲ 100, ε ≈ 1e-14) limits δ to about √(2ε) ≈ 1.4e-7.
PROX_TOL = PROX  # tests/tolerances.py


@pytest.mark.parametrize("spec", SUPPORTED, ids=IDS)
def test_phi_is_the_prox_of_g(spec):
    obj = objective(spec)
    gen = torch.Generator().manual_seed(0)
    vs = torch.cat(
        [torch.rand(200, generator=gen, dtype=torch.float64) * 8 - 4,
         torch.tensor([-1.0, 0.0, 1.0, 1e-3], dtype=torch.float64)]
    )  # fmt: skip
    got = numerical_prox(obj, vs)
    want = torch_function(obj.activation)(vs)
    torch.testing.assert_close(got, want, rtol=0, atol=PROX_TOL)


def test_prox_check_has_teeth():
    """A wrong g (tanh's g used for sigmoid) is caught by the same check."""
    wrong = objective("tanh")
    vs = torch.linspace(-3, 3, 31, dtype=torch.float64)
    gap = (numerical_prox(wrong, vs) - torch.sigmoid(vs)).abs().max()
    assert gap > 100 * PROX_TOL


# --- F never increases along the layers -------------------------------------------------------


def _weights(n: int, seed: int, eig: torch.Tensor | None = None):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    lam = torch.rand(n, generator=gen, dtype=torch.float64) if eig is None else eig
    W = q @ torch.diag(lam) @ q.T
    W = (W + W.T) / 2  # exactly symmetric
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    x0 = torch.randn(16, n, generator=gen, dtype=torch.float64) * 2
    return W, b, x0


def _layers(obj: Objective, W, b, x0, depth: int) -> torch.Tensor:
    x = torch_function(obj.activation)(x0)
    values = [obj.evaluate(x, W, b)]
    for _ in range(depth):
        x = torch_function(obj.activation)(x @ W.T + b)
        values.append(obj.evaluate(x, W, b))
    return torch.stack(values)  # (depth + 1, batch)


@pytest.mark.parametrize("spec", SUPPORTED, ids=IDS)
def test_F_never_increases_along_the_layers(spec):
    obj = objective(spec)
    W, b, x0 = _weights(6, seed=3)
    assert all(c.holds for c in obj.check_weights(W))
    F = _layers(obj, W, b, x0, depth=30)
    assert torch.isfinite(F).all()
    # Round-off only: each F is a sum of ~n² float64 terms of size ≲ 10.
    tol = F64_RELATIVE * (1 + F[:-1].abs())
    assert (F[1:] - F[:-1] <= tol).all(), (F[1:] - F[:-1]).max()
    assert (F[0] - F[-1] > 1e-6).any()  # it does move: the check is not vacuous


def test_descent_check_has_teeth():
    """Outside 0 ⪯ W ⪯ I the layers can climb F; the same check sees it."""
    obj = objective("identity")
    W, b, x0 = _weights(4, seed=5, eig=torch.tensor([-1.5, -1.2, 0.3, 0.5], dtype=torch.float64))
    assert not obj.check_weights(W)[1].holds
    F = _layers(obj, W, b, x0, depth=10)
    assert (F[1:] - F[:-1] > 1e-6).any()


# --- closed forms (docs/theory.md section 2, and ones derived by hand) --------------------------


def _interior(obj: Objective, k: int = 9) -> torch.Tensor:
    lo, hi = float(obj.domain.inf), float(obj.domain.sup)
    lo, hi = max(lo, -3.0), min(hi, 3.0)
    return torch.linspace(lo, hi, k + 2, dtype=torch.float64)[1:-1]


def _np(f):
    return lambda ts: torch.tensor([float(f(float(s))) for s in ts], dtype=torch.float64)


def _leaky(a):
    return lambda s: (1 / a - 1) * s * s / 2 if s < 0 else 0.0


def _elu(alpha):
    return lambda s: (alpha + s) * math.log1p(s / alpha) - s - s * s / 2 if s < 0 else 0.0


CLOSED_FORMS = {
    # docs/theory.md: up to an additive constant.
    "leaky_relu(0.1)": _leaky(0.1),
    "leaky_relu(0.5)": _leaky(0.5),
    "sigmoid": lambda s: s * math.log(s) + (1 - s) * math.log(1 - s) - s * s / 2,
    "tanh": lambda s: s * math.atanh(s) + 0.5 * math.log(1 - s * s) - s * s / 2,
    # By hand: g′ = φ⁻¹(t) − t integrated; softplus: d/dt Li₂(e⁻ᵗ) = log(1 − e⁻ᵗ).
    "softplus": lambda s: float(mpmath.polylog(2, mpmath.exp(-s))),
    "elu": _elu(1.0),
    "elu(0.5)": _elu(0.5),
    "atan": lambda s: -math.log(math.cos(s)) - s * s / 2,
    "softsign": lambda s: -math.log(1 - abs(s)) - abs(s) - s * s / 2,
    "identity": lambda s: 0.0,
}


@pytest.mark.parametrize("spec", sorted(CLOSED_FORMS))
def test_g_matches_closed_form_up_to_a_constant(spec):
    obj = objective(spec)
    ts = _interior(obj)
    diff = obj.evaluate_g(ts) - _np(CLOSED_FORMS[spec])(ts)
    torch.testing.assert_close(diff, diff[:1].expand_as(diff), **F64_ROUNDING)


@pytest.mark.parametrize(
    ("spec", "domain"),
    [
        ("relu", sp.Interval(0, sp.oo)),
        ("hardtanh", sp.Interval(-1, 1)),
        ("sigmoid", sp.Interval(0, 1)),  # g has finite limits at 0 and 1 (closure)
        ("tanh", sp.Interval(-1, 1)),
        ("softplus", sp.Interval(0, sp.oo)),
        ("elu(0.5)", sp.Interval(-sp.Rational(1, 2), sp.oo)),
        ("atan", sp.Interval.open(-sp.pi / 2, sp.pi / 2)),  # g → +∞ at the ends
        ("softsign", sp.Interval.open(-1, 1)),
        ("leaky_relu(0.1)", sp.Reals),
    ],
)
def test_domain(spec, domain):
    assert objective(spec).domain == domain


@pytest.mark.parametrize("spec", ["relu", "hardtanh"])
def test_indicators(spec):
    """ReLU: indicator of t ≥ 0; hardtanh: of [−1, 1]. Value 0 on the domain, +∞ off it."""
    obj = objective(spec)
    assert obj.g == 0
    lo = float(obj.domain.inf)
    hi = float(obj.domain.sup)
    ts = torch.tensor([lo, lo + 0.5, min(hi, 7.0), hi, lo - 1e-9, lo - 3.0], dtype=torch.float64)
    ts = ts[torch.isfinite(ts)]
    want = torch.where((ts >= lo) & (ts <= hi), 0.0, math.inf)
    assert torch.equal(obj.evaluate_g(ts), want)


def test_point_piece_gives_two_parabolas():
    """The pieces are ordered by where they start, a point before the interval open at it."""
    obj = objective(POINT_PIECE)
    ts = torch.linspace(-3, 3, 13, dtype=torch.float64)
    want = torch.where(ts >= 0, ts * ts / 2, ts * ts)  # (1/a − 1) t²/2 for slopes a = 1/2, 1/3
    torch.testing.assert_close(obj.evaluate_g(ts), want, **F64_SAME_OPS)


def test_soft_threshold_gives_the_absolute_value():
    obj = objective(SOFT_THRESHOLD)
    ts = torch.linspace(-3, 3, 13, dtype=torch.float64)
    torch.testing.assert_close(obj.evaluate_g(ts), ts.abs(), **F64_SAME_OPS)


@given(st.fractions(min_value=sp.Rational(1, 20), max_value=1, max_denominator=20))
@settings(max_examples=4, deadline=None)
def test_leaky_relu_any_slope(a):
    obj = objective("leaky_relu", a=float(a))
    ts = torch.linspace(-2, 2, 9, dtype=torch.float64)
    want = _np(_leaky(float(a)))(ts)
    torch.testing.assert_close(obj.evaluate_g(ts), want, rtol=F64_OBJECTIVE, atol=F64_OBJECTIVE)


def test_normalisation_g_of_phi_0_is_0():
    for spec in ["sigmoid", "softplus", "tanh", "elu(0.5)"]:
        obj = objective(spec)
        c0 = obj.activation.expr.subs(activations.v, 0)
        assert sp.simplify(obj.g.subs(t, c0)) == 0


# --- torch against SymPy, F against its symbolic form ------------------------------------------


@pytest.mark.parametrize("spec", SUPPORTED, ids=IDS)
def test_torch_g_matches_sympy_g(spec):
    obj = objective(spec)
    ts = _interior(obj, 7)
    want = torch.tensor(
        [float(sp.N(obj.g.subs(t, sp.Float(float(s), 30)), 30)) for s in ts], dtype=torch.float64
    )
    torch.testing.assert_close(obj.evaluate_g(ts), want, **F64_CLOSED_FORM)
    for c, gc in obj.points:  # ends and joins, where the expression itself needs a limit
        got = obj.evaluate_g(torch.tensor([float(c)], dtype=torch.float64))
        assert got.item() == pytest.approx(float(gc), abs=F64_ONE_ROUNDING["atol"])


@pytest.mark.parametrize("spec", ["leaky_relu(0.1)", "sigmoid"])
def test_evaluate_matches_symbolic_F(spec):
    obj = objective(spec)
    n = 3
    gen = torch.Generator().manual_seed(7)
    W = torch.randn(n, n, generator=gen, dtype=torch.float64)
    W = (W + W.T) / 4
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    x = torch.rand(n, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    F = obj.F.subs(obj.n, n).doit()
    F = F.replace(objective_module.g_fn, sp.Lambda(t, obj.g))
    values = {obj.x[i + 1]: float(x[i]) for i in range(n)}
    values |= {obj.b[i + 1]: float(b[i]) for i in range(n)}
    values |= {obj.W[i + 1, j + 1]: float(W[i, j]) for i in range(n) for j in range(n)}
    want = float(sp.N(F.subs(values), 30))
    assert obj.evaluate(x, W, b).item() == pytest.approx(want, rel=F64_OBJECTIVE, abs=F64_OBJECTIVE)


def test_evaluate_batches_and_is_infinite_off_the_domain():
    obj = objective("relu")
    W, b, _ = _weights(4, seed=1)
    x = torch.rand(2, 3, 4, dtype=torch.float64)
    out = obj.evaluate(x, W, b)
    assert out.shape == (2, 3)
    manual = 0.5 * torch.einsum("...i,ij,...j->...", x, torch.eye(4, dtype=W.dtype) - W, x)
    torch.testing.assert_close(out, manual - x @ b)
    x[1, 2, 0] = -0.1
    assert math.isinf(obj.evaluate(x, W, b)[1, 2].item())
    assert torch.isfinite(obj.evaluate(x, W, b)[0]).all()
    with pytest.raises(UnrollError, match="x \\(..., n\\), W \\(n, n\\), b \\(n,\\)"):
        obj.evaluate(x, W[:3, :3], b)


def test_evaluate_g_has_finite_gradients_on_the_domain():
    obj = objective("sigmoid")
    ts = torch.tensor([0.2, 0.5, 0.9, 1.5], dtype=torch.float64, requires_grad=True)
    out = obj.evaluate_g(ts)
    out[:3].sum().backward()
    assert torch.isfinite(ts.grad).all()
    want = torch.log(ts[:3] / (1 - ts[:3])) - ts[:3]  # g′ = φ⁻¹(t) − t
    torch.testing.assert_close(ts.grad[:3], want.detach())


# --- conditions and refusals ------------------------------------------------------------------


def test_conditions_of_sigmoid():
    obj = objective("sigmoid")
    cont, nondec, lip, sym, psd = obj.conditions
    assert cont.holds and nondec.holds and lip.holds
    assert lip.how == "symbolic" and "1/4" in lip.detail  # σ′ peaks at σ′(0) = 1/4
    assert sym.holds is None and psd.holds is None and sym.how == psd.how == "assumed"
    assert "symmetric" in sym.description and "0 ⪯ W ⪯ I" in psd.description


def test_check_weights():
    obj = objective("relu")
    good, _, _ = _weights(5, seed=2)
    assert [c.holds for c in obj.check_weights(good)] == [True, True]
    bad = good.clone()
    bad[0, 1] += 0.1
    assert obj.check_weights(bad)[0].holds is False
    assert obj.check_weights(good * 2)[1].holds is False  # eigenvalues up to ~2


def test_refusal_gelu_not_non_decreasing():
    with pytest.raises(UnrollError) as e:
        objective("gelu")
    msg = str(e.value)
    assert "gelu" in msg and "not non-decreasing" in msg
    # d/dv [v Φ(v)] = Φ(v) + v ϕ(v) is smallest where its derivative (2 − v²) ϕ(v) vanishes:
    # v = −√2, value Φ(−√2) − √2 ϕ(√2) ≈ −0.1289.
    assert "v ≈ -1.414" in msg and "-0.1289" in msg
    assert "Scale it" not in msg  # scaling cannot fix a decreasing φ


def test_refusal_silu():
    with pytest.raises(UnrollError, match="silu .*not non-decreasing") as e:
        objective("silu")
    assert "Scale it" not in str(e.value)


def test_refusal_elu_2_proposes_scaling():
    with pytest.raises(UnrollError, match="elu\\(2\\) .*slope above 1") as e:
        objective("elu(2)")
    msg = str(e.value)
    assert "not non-decreasing" not in msg
    assert "φ/L with L = 2" in msg and "v ≈ 0" in msg  # α eᵛ → α as v → 0⁻


def test_refusal_scaled_tanh_proposes_tanh():
    with pytest.raises(UnrollError, match="slope above 1") as e:
        objective(sp.Lambda(y, 2 * sp.tanh(y)))
    assert "L = 2" in str(e.value) and "Lambda(v, tanh(v))" in str(e.value)
    assert str(e.value).count("\n") == 0  # one line: the CLI shows the first line only


def test_refusal_discontinuous():
    with pytest.raises(UnrollError, match="not continuous .*jumps from 0 to 1 at v = 0"):
        objective(sp.Lambda(y, sp.Piecewise((y, y < 0), (y + 1, True))))


def test_refusal_unbounded_slope_proposes_no_scaling():
    with pytest.raises(UnrollError, match="slope above 1") as e:
        objective(sp.Lambda(y, y**3))
    assert "unbounded" in str(e.value) and "Scale it" not in str(e.value)


def test_refusal_sign_names_its_two_jumps_only():
    with pytest.raises(UnrollError, match="not continuous") as e:
        objective(sp.Lambda(y, sp.sign(y)))
    msg = str(e.value)
    assert "jumps from -1 to 0 at v = 0" in msg and "jumps from 0 to 1 at v = 0" in msg
    assert "oo" not in msg


@pytest.mark.parametrize(
    ("phi", "words"),
    [
        (sp.sin(y), ["not non-decreasing", "φ′ = -1"]),  # limits at ±∞ are AccumBounds
        (sp.floor(y), ["cannot differentiate", "floor"]),
        (sp.sqrt(y), ["not a real number", "no scaling"]),  # not real for v < 0
        (sp.log(y), ["not a real number", "no scaling"]),
    ],
)
def test_refusal_of_what_is_not_a_continuous_real_map(phi, words):
    with pytest.raises(UnrollError) as e:
        objective(sp.Lambda(y, phi))
    for w in words:
        assert w in str(e.value)
    assert "Scale it" not in str(e.value)


@pytest.mark.parametrize("phi", [sp.I * y, sp.Eq(y, 1)])
def test_a_lambda_that_is_not_a_real_expression_is_refused(phi):
    with pytest.raises(UnrollError, match="real"):
        objective(sp.Lambda(y, phi))


def test_what_sympy_cannot_invert_is_said_plainly():
    """φ(v) = (v + sin v)/2 is a proximal map (0 ≤ φ′ ≤ 1) without a closed-form inverse."""
    assert all(c.holds for c in check_activation(sp.Lambda(y, (y + sp.sin(y)) / 2))[:3])
    with pytest.raises(UnrollError, match="could not invert"):
        objective(sp.Lambda(y, (y + sp.sin(y)) / 2))


def test_check_activation_reports_without_raising():
    cont, nondec, lip, *_ = check_activation("elu(2)")
    assert cont.holds and nondec.holds and lip.holds is False
    assert lip.how == "symbolic" and "2" in lip.detail
    _, nondec, *_ = check_activation("silu")
    assert nondec.holds is False and nondec.how == "numeric"


def test_public_names_and_printing():
    # unroll.objective is the function even after its module, unroll.analysis.objectives, is imported.
    assert unroll.objective is objective
    assert isinstance(unroll.objective("relu"), unroll.Objective)
    assert unroll.Objective is Objective
    obj = objective("sigmoid")
    text = str(obj)
    assert "g(t) = " in text and "t in [0, 1]" in text and "conditions:" in text
    tex = obj.latex()
    assert "\\log" in tex and "\\left[0, 1\\right]" in tex and "g{\\left({x}_{i} \\right)}" in tex


def test_docs_table_is_current():
    """docs/objectives.md carries the generated table verbatim."""

    doc = ROOT / "docs" / "objectives.md"
    assert objective_module.table() in doc.read_text(encoding="utf-8")
