"""`unroll.identify`: bundled schemes against their declared architecture, rewritten variants
(reordered, expanded, renamed) and near misses that must not match."""

import pytest
import sympy as sp

import unroll
from unroll.analysis.identification import ARCHITECTURES, densenet_text, identify

# Bundled schemes without an `architecture:` key, and what identify says of them.
UNDECLARED = {
    # Adams-Bashforth reads f at an older state (f(x_<k-1>)), which no architecture does.
    "ab2": None,
    "ab3": None,
    # Runge-Kutta methods evaluate one f at several points: FractalNet with both branches tied
    # to the same f. Branches of an architecture are distinct modules, so these are None.
    "heun": None,
    "midpoint": None,
    "rk4": None,
    "rk38": None,
}


@pytest.mark.parametrize("name", sorted(unroll.schemes))
def test_bundled_scheme_is_its_declared_architecture(name):
    scheme = unroll.schemes[name]
    if scheme.architecture is not None:
        assert scheme.architecture in ARCHITECTURES
        assert identify(scheme) == scheme.architecture
    else:
        assert name in UNDECLARED, f"{name}: declare its architecture or list it in UNDECLARED"
        assert identify(scheme) == UNDECLARED[name]


def test_every_architecture_has_a_bundled_scheme():
    declared = {s.architecture for s in unroll.schemes.values()}
    assert set(ARCHITECTURES) <= declared


def renamed(scheme: unroll.Scheme) -> unroll.Scheme:
    """The scheme with every state, stage and parameter renamed and another index letter."""
    j = sp.Symbol("j", integer=True)
    m: dict = {sp.Symbol(n): sp.Symbol(f"{n}_r") for n in (*scheme.parameters, *scheme.stages)}
    for eq in scheme.equations:
        for ref in eq.atoms(sp.Indexed):
            index = ref.indices[0].xreplace({scheme.index: j})
            m[ref] = sp.IndexedBase(f"{ref.base.label.name}_r")[index]
    return unroll.Scheme(
        tuple(sp.Eq(eq.lhs.xreplace(m), eq.rhs.xreplace(m)) for eq in scheme.equations)
    )


@pytest.mark.parametrize("name", sorted(unroll.schemes))
def test_renaming_does_not_change_the_answer(name):
    scheme = unroll.schemes[name]
    assert identify(renamed(scheme)) == identify(scheme)


VARIANTS = [
    # terms reordered, coefficients expanded, other names
    ("x_<k+1> = x_k - α∇F(x_k) + β x_k - β x_<k-1>", "HB-Net"),
    ("y_<n+1> = (1 + μ) y_n - μ y_<n-1> - η ∇F(y_n)", "HB-Net"),
    ("v_<k+1> = γ v_k - s ∇F(x_k); x_<k+1> = x_k + v_<k+1>", "HB-Net"),
    ("z_<k+1> = σ(c + γ z_k + W_1 z_k - γ z_<k-1>)", "HB-Net"),
    ("x_<k+1> = (1+β)x_k - β x_<k-1> - α∇F((1+β)x_k - β x_<k-1>)", "AGD-Net"),
    # Nesterov's velocity form (Sutskever et al. 2013): x_<k+1> is the gradient step from
    # x_k + β v_k, v_k = x_k − x_<k-1>; and the two-state form with the extrapolated point y.
    ("v_<k+1> = β v_k - α∇F(x_k + β v_k); x_<k+1> = x_k + v_<k+1>", "AGD-Net"),
    ("w_<n+1> = μ w_n - η∇F(y_n + μ w_n); y_<n+1> = y_n + w_<n+1>", "AGD-Net"),
    ("x_<k+1> = y_k - α∇F(y_k); y_<k+1> = x_<k+1> + β(x_<k+1> - x_k)", "AGD-Net"),
    ("p = 2 x_k - x_<k-1>; x_<k+1> = φ(W p + b)", "AGD-Net"),  # β = 1 as a number
    ("x_<k+1> = x_k - 0.5 ∇F(x_k)", "feedforward"),
    ("x_<k+1> = φ(2 W x_k)", "feedforward"),  # W absorbs 2, b = 0
    ("y_<k+1> = h g(y_k) + y_k", "ResNet"),
    ("u_<n+1> = u_n + κ(u_<n-1> - u_n) + Δt f(u_n)", "LM-ResNet"),
    ("x_<k+1> = 0.9 x_k + 0.1 x_<k-1> + f(x_k)", "LM-ResNet"),
    ("x_<k+1> = x_k + h f(x_k) + h f(h f(x_k))", "PolyNet"),  # the branch h f, nested
    ("a = f(x_k); x_<k+1> = x_k + a + f(a)", "PolyNet"),
    ("w = a x_k + g_1(x_k); x_<k+1> = p x_k + q w + g_2(w)", "FractalNet"),
    ("Y_<k+1> = Y_k + g(X_k + f(Y_k)); X_<k+1> = X_k + f(Y_k)", "RevNet"),
    ("p_<k+1> = p_k + f_1(q_k); q_<k+1> = q_k + f_2(p_<k+1>)", "RevNet"),
    (
        "a_<k+1> = W(c_k - d_k) + β; c_<k+1> = φ(a_<k+1> + d_k); d_<k+1> = d_k + ρ a_<k+1> - ρ c_<k+1>",
        "ADMM-Net",
    ),
    ("x_<k+1> = φ(b + c_2 W x_<k-2> + c_0 W x_k + c_1 W x_<k-1>)", "DenseNet"),
    (densenet_text(5), "DenseNet"),
]


@pytest.mark.parametrize("text, expected", VARIANTS)
def test_rewritten_variants_are_recognised(text, expected):
    assert identify(unroll.compile(text)) == expected


NEAR_MISSES = [
    "x_<k+1> = x_k + β(x_k - x_<k-2>) - α∇F",  # heavy ball reaching back two steps
    "x_<k+1> = φ(W x_k + b + β x_k - γ x_<k-1>)",  # momentum with two coefficients
    "x_<k+1> = 0.7 x_k + 0.2 x_<k-1> + f(x_k)",  # LM with coefficients summing to 0.9
    "x_<k+1> = a x_k + c x_<k-1> + f(x_k)",  # the same, symbolically
    "x_<k+1> = 2 x_k + f(x_k)",  # ResNet with 2 x_k
    "x_<k+1> = x_k + f(x_k) + 2 f(f(x_k))",  # PolyNet with an inner gain that is not the outer
    "X_<k+1> = X_k + f(Y_k); Y_<k+1> = Y_k + g(X_k)",  # RevNet's g reading the old X
    "X_<k+1> = X_k + f(Y_k); Y_<k+1> = Y_k + f(X_<k+1>)",  # RevNet with one branch for both
    "x_<k+1> = φ(W(x_k + x_<k-2>) + b)",  # DenseNet skipping x_<k-1>
    "x_<k+1> = x_k f(x_k)",  # not a linear combination
    "x_<k+1> = x_k + f(x_k) + c",  # ResNet plus a constant
    "x_<k+1> = f_2(f_1(x_k))",  # two stacked branches: FractalNet without its short column
    "z = x_k + f_1(x_k); x_<k+1> = x_k + f_2(z)",  # the same with skips: no join of columns
    "x_<k+1> = x_k - α∇F(x_k) - γ∇F(x_<k-1>)",  # an optimizer step with no layer form
]


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_are_not_recognised(text):
    assert identify(unroll.compile(text)) is None


def test_a_template_with_no_canonical_form_is_an_error():
    from unroll.analysis.identification import matches

    with pytest.raises(unroll.UnrollError, match="not a linear combination"):
        matches(unroll.schemes["heavy_ball"], "x_<k+1> = x_k f(x_k)")


def test_identify_takes_a_bundled_name_and_refuses_other_things():
    assert identify("revnet") == "RevNet"
    with pytest.raises(unroll.UnrollError, match="identify takes a Scheme"):
        identify(42)


def test_show_prints_the_architecture_and_the_layer():
    from click.testing import CliRunner

    from unroll.cli import cli

    result = CliRunner().invoke(cli, ["show", "heavy_ball", "--activation", "tanh"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "architecture: HB-Net" in lines
    at = lines.index("layer (φ = tanh):")
    layer = unroll.compile(lines[at + 1].strip().replace("tanh(", "φ("))
    assert layer.equations == unroll.schemes["hb_net"].equations  # written from the paper

    bad = CliRunner().invoke(cli, ["show", "hb_net", "--activation", "nope"])
    assert bad.exit_code == 2 and "unknown activation 'nope'" in bad.output
