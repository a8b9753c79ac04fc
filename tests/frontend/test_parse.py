"""The scheme-text front end: what parses to what, and what is refused with which message."""

import warnings

import pytest
import sympy as sp

import unroll
from tests.tolerances import F64_SAME_OPS
from unroll.errors import UnrollWarning
from unroll.frontend.parse import parse
from unroll.ir import vocabulary as ir

k = ir.index_symbol("k")
n = ir.index_symbol("n")
x, u, y = sp.IndexedBase("x"), sp.IndexedBase("u"), sp.IndexedBase("y")
α, β, h, a = sp.symbols("α β h a")
f, grad = sp.Function("f"), ir.GRAD


def rhs(text, i=-1):
    return parse(text)[i].rhs


def test_heavy_ball_with_implicit_multiplication_and_bare_gradient():
    got = rhs("x_<k+1> = x_k + β(x_k - x_<k-1>) - α∇F")
    assert sp.expand(got - (x[k] + β * (x[k] - x[k - 1]) - α * grad(x[k]))) == 0


@pytest.mark.parametrize(
    "text",
    [
        "x_{k+1} = x_k + β(x_k - x_{k-1}) - α∇F",
        "x_<k+1> = x_k + beta*(x_k - x_<k - 1>) - alpha grad F",
        r"x_{k+1} = x_k + \beta (x_k - x_{k-1}) - \alpha \nabla F(x_k)",
        "x_<k+1> = x_k + β(x_k - x_<k-1>) - α*∇F(x_k)",
        "x_{k+2} = x_{k+1} + β(x_{k+1} - x_k) - α∇F",  # shifted: newest value at k+2
    ],
)
def test_spellings_of_the_same_scheme(text):
    assert parse(text) == parse("x_<k+1> = x_k + β(x_k - x_<k-1>) - α∇F")


def test_index_letter_comes_from_the_left_hand_side_so_k_can_be_a_coefficient():
    (eq,) = parse("u_<n+1> = u_n + k f(u_n)")
    assert eq.lhs == u[n + 1]
    assert sp.expand(eq.rhs - (u[n] + sp.Symbol("k") * f(u[n]))) == 0


def test_stages_and_fractions_with_juxtaposition():
    eqs = parse("a = f(x_k); x_<k+1> = x_k + h/6 (a + 2a) + 2h f(t + h/2, x_k)")
    assert eqs[0] == sp.Eq(a, f(x[k]), evaluate=False)  # f(x): an autonomous field
    want = x[k] + h / 6 * (3 * a) + 2 * h * f(ir.T + h / 2, x[k])
    assert sp.expand(eqs[1].rhs - want) == 0


def test_f_of_x_is_autonomous_and_f_of_t_x_is_not():
    (auto,) = parse("x_<k+1> = x_k + h f(x_k)")
    (timed,) = parse("x_<k+1> = x_k + h f(t, x_k)")
    assert auto.rhs.has(f(x[k])) and not auto.rhs.has(ir.T)
    assert timed.rhs.has(f(ir.T, x[k]))
    assert auto != timed


def test_equations_separated_by_newlines_and_semicolons_keep_their_order():
    eqs = parse("y_k = x_k + β(x_k - x_<k-1>)\nx_<k+1> = y_k - α∇F(y_k)")
    assert [e.lhs for e in eqs] == [sp.Symbol("y"), x[k + 1]]
    assert eqs[1].rhs == sp.Symbol("y") - α * grad(sp.Symbol("y"))


def test_operators():
    (eq,) = parse("x_<k+1> = σ(W x_k + b) + W_2(x_k) + exp(-h) sqrt(x_k)")
    b = sp.Symbol("b")
    want = (
        ir.ACT(sp.Function("W")(x[k]) + b) + sp.Function("W_2")(x[k]) + sp.exp(-h) * sp.sqrt(x[k])
    )
    assert sp.expand(eq.rhs - want) == 0


def test_elementary_functions_by_name_and_in_latex():
    (eq,) = parse(r"x_<k+1> = sin(x_k) + cos(x_k) tanh(2x_k) + \sin{x_k} + exp(-h) ∇F")
    want = 2 * sp.sin(x[k]) + sp.cos(x[k]) * sp.tanh(2 * x[k]) + sp.exp(-h) * grad(x[k])
    assert sp.expand(eq.rhs - want) == 0


def test_sin_cos_tanh_run_as_torch_computes_them():
    import torch

    s = unroll.compile("x_<k+1> = x_k - h (sin(x_k) + cos(x_k) tanh(x_k)) ∇F")
    x0 = torch.linspace(-2, 2, 7, dtype=torch.float64)
    want = x0.clone()
    for _ in range(3):
        want = want - 0.1 * (torch.sin(want) + torch.cos(want) * torch.tanh(want)) * 2 * want
    got = s.run(x0, 3, grad=lambda x: 2 * x, h=0.1)
    torch.testing.assert_close(got, want, **F64_SAME_OPS)  # same float64 operations


@pytest.mark.parametrize(
    "text, message, column",
    [
        (
            "x_<k+1> = relu(W x_k + b)",
            "relu is not a function of the scheme language: did you mean φ(...) with "
            "activation='relu'?",
            11,
        ),
        ("x_<k+1> = sigmoid (W x_k)", "did you mean φ(...) with activation='sigmoid'?", 11),
        ("x_<k+1> = ReLU(W x_k)", "did you mean φ(...) with activation='relu'?", 11),
        ("x_<k+1> = leaky_relu(W x_k)", "with activation='leaky_relu'?", 11),
        ("x_<k+1> = x_k + h sinh(x_k) f(x_k)", "sinh is not a function", 19),
        ("x_<k+1> = x_k + h sinh(x_k) f(x_k)", "did you mean sin(...)?", 19),
        ("x_<k+1> = x_k + h cosine(x_k) f(x_k)", "did you mean cos(...)?", 19),
        ("x_<k+1> = x_k + h Tahn(x_k) f(x_k)", "did you mean tanh(...)?", 19),
        ("x_<k+1> = x_k + h ln(x_k) f(x_k)", "did you mean log(...)?", 19),
        ("x_<k+1> = x_k - lr(x_k - x_<k-1>) ∇F", "write lr*(...) or lr (...)", 17),
    ],
)
def test_a_name_before_a_parenthesis_that_is_no_function_is_refused(text, message, column):
    test_malformed_input_names_what_and_where(text, message, column)


@pytest.mark.parametrize(
    "text, product",
    [
        ("x_<k+1> = x_k + β(x_k - x_<k-1>) - α∇F", "β"),  # one letter
        ("x_<k+1> = x_k + beta(x_k - x_<k-1>) - α∇F", "β"),  # a Greek letter's name
        ("x_<k+1> = x_k + c_1(x_k - x_<k-1>) - α∇F", "c_1"),  # one letter and a subscript
        ("x_<k+1> = x_k + a2(x_k - x_<k-1>) - α∇F", "a2"),
        ("x_<k+1> = x_k + dt(x_k - x_<k-1>) - α∇F", "dt"),  # a step name
        ("x_<k+1> = x_k + Δt(x_k - x_<k-1>) - α∇F", "Δt"),
        ("x_<k+1> = x_k + lr (x_k - x_<k-1>) - α∇F", "lr"),  # a space: juxtaposition
        ("x_<k+1> = x_k + lr*(x_k - x_<k-1>) - α∇F", "lr"),
        ("mid = f(x_k); x_<k+1> = x_k + mid(x_k - x_<k-1>)", "mid"),  # a stage
    ],
)
def test_a_coefficient_before_a_parenthesis_multiplies(text, product):
    rhs_ = parse(text)[-1].rhs
    p = sp.Symbol(product)
    assert sp.expand(rhs_).coeff(p) == sp.expand(x[k] - x[k - 1])


def test_a_declared_parameter_before_a_parenthesis_multiplies(tmp_path):
    text = "name: s\nequations: x_<k+1> = x_k + mom(x_k - x_<k-1>) - α∇F\n"
    path = tmp_path / "s.yaml"
    path.write_text(text + "parameters: {mom: 0.9}\n")
    s = unroll.load(path)
    assert s.parameters["mom"].default == 0.9
    assert s.equations == tuple(parse(text.split(": ", 2)[2], parameters=["mom"]))
    path.write_text(text)
    with pytest.raises(unroll.UnrollError, match="mom is not a function"):
        unroll.load(path)


@pytest.mark.parametrize(
    "text, name, intent, column",
    [
        ("x_<k+1> = x_k + bta (x_k - x_<k-1>) - α∇F", "bta", "β", 17),
        ("x_<k+1> = x_k - alpah ∇F", "alpah", "α", 17),
        ("x_<k+1> = x_k - lamda ∇F", "lamda", "λ", 17),
        ("x_<k+1> = x_k - Beta ∇F", "Beta", "β", 17),
        ("x_<k+1> = x_k + mom (x_k - x_<k-1>) - mon ∇F", "mon", "mom", 39),
    ],
)
def test_a_parameter_one_letter_from_a_greek_name_or_another_parameter_warns(
    text, name, intent, column
):
    with pytest.warns(UnrollWarning) as record:
        parse(text)
    (warning,) = record
    message = str(warning.message)
    assert message.startswith(f"{name} is a new parameter, one letter from ")
    assert f"did you mean {intent}?" in message and f"column {column})" in message


@pytest.mark.parametrize(
    "text",
    [
        "x_<k+1> = x_k + c_1 (x_k - x_<k-1>) - c_2 ∇F",  # they differ in a digit
        "x_<k+1> = x_k + beta1 (x_k - x_<k-1>) - beta2 ∇F",  # Adam's names
        "x_<k+1> = x_k + lr (x_k - x_<k-1>) - lr2 ∇F",
        "x_<k+1> = x_k + eta (x_k - x_<k-1>) - zeta ∇F",  # Greek names are Greek letters
        "x_<k+1> = x_k + ab (x_k - x_<k-1>) - ac ∇F",  # two letters: too short to judge
    ],
)
def test_names_that_differ_on_purpose_do_not_warn(text):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse(text)


def test_a_declared_parameter_does_not_warn(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nequations: x_<k+1> = x_k - bta ∇F\nparameters: {bta: 0.1}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(unroll.load(path).parameters) == ["bta"]


def test_powers_numbers_and_precedence():
    (eq,) = parse("x_<k+1> = -2^2 x_k + 1.5e1 x_k ** 2 / 3 + 0.25")
    assert sp.expand(eq.rhs - (-4 * x[k] + 5 * x[k] ** 2 + sp.Rational(1, 4))) == 0
    assert all(isinstance(q, sp.Rational) for q in eq.rhs.atoms(sp.Number))


@pytest.mark.parametrize(
    "text, message, column",
    [
        ("x_<k+1> = x_k + (a", "unbalanced parentheses", 17),
        ("x_<k+1> = x_k + a)", "unbalanced parentheses", 18),
        ("x_<k+1> = x_k @ a", "unknown operator '@'", 15),
        ("x_<k+1> = ∇G(x_k)", "unknown operator", 11),
        ("x_<k+1> = x_<k+2>", "x_<k+2> is ahead of the newest value", 11),
        ("x_<k+1> = z_k", "z is not a state", 11),
        ("x_k + 1 = 2", "left-hand side", 1),
        ("3 = x_k", "left-hand side", 1),
        ("x_<k+1> = x_k + 1e999", "non-finite number", 17),
        ("x_<k+1> = x_k + inf", "non-finite number", 17),
        ("x_<k+1> = x_k +", "expected an expression after '+'", 16),
        ("x_<k+1> = ", "missing right-hand side", 11),
        ("x_<k+1> x_k", "expected an equation", 1),
        ("x_<k+1> = x_k = 2", "a second '='", 15),
        ("a = 3", "no state is advanced", 1),
        ("x_<k+1> = x_k; y_<n+1> = y_n", "index letter 'n' differs", 16),
        ("x_<k+1> = x_k; x_<k+1> = 2x_k", "computed twice", 16),
        ("x_<k+1> = f x_k", "f is an operator", 11),
        ("x_<k+1> = x_k - F(x_k)", "F is the objective", 17),
        ("x_<k+1> = x_k + x", "x is a state", 17),
        ("x_<k+1> = φ(x_k, x_k)", "takes one argument", 11),
        ("x_<k+1> = x_k + x_<j+1>", "does not use the index letter", 18),
        ("a = f(x_k); x_<k+1> = a_<k-1>", "a is a stage", 23),
        ("x_<k+1> = x_k / 0", "division by zero", 15),
        # the velocity form's v update means ∇F(x_k): with two states the point is not guessed
        ("v_<k+1> = β v_k - α∇F; x_<k+1> = x_k + v_<k+1>", "bare ∇F is ambiguous", 20),
        # Numbers that used to be misread, overflow, hang or come out complex.
        ("x_<k+1> = x_k + 1.2.3 ∇F", "malformed number 1.2.", 20),
        ("x_<k+1> = x_k + β² ∇F", "unexpected character '²'", 18),
        ("x_<k+1> = x_k + ½ ∇F", "unexpected character '½'", 17),
        ("x_<k+1> = x_k + ٣ ∇F", "unexpected character '٣'", 17),
        ("x_<k+1> = x_k + 0^-1 ∇F", "non-finite", 18),
        ("x_<k+1> = x_k + log(0) ∇F", "non-finite", 17),
        ("x_<k+1> = x_k + sqrt(-1) ∇F", "not a real number", 17),
        ("x_<k+1> = x_k + (-8)^(1/3) ∇F", "not a real number", 21),
        ("x_<k+1> = x_k + 10^10^10 ∇F", "too large", 19),
        ("x_<k+1> = x_k + 0.1e-400000 ∇F", "too small for float64", 17),
        ("x_<k+1> = x_k + 1." + "0" * 2000 + "1 ∇F", "too large (or too long)", 17),
        ("x_<k+1> = x_k + x_<k-2000>", "more than 1000 steps away", 20),
        # Coefficients that float64 cannot hold, refused where the product is written.
        ("x_<k+1> = x_k - 1e308 4 α∇F", "the number 4.00e+308 overflows float64", 23),
        ("x_<k+1> = x_k - 1e308*4 α∇F", "the number 4.00e+308 overflows float64", 23),
        ("x_<k+1> = x_k - 1e308/0.01 α∇F", "the number 1.00e+310 overflows float64", 23),
        ("x_<k+1> = x_k - 1e-300 1e-300 α∇F", "the number 1.00e-600 is too small", 24),
        ("x_<k+1> = x_k - 10^400 α∇F", "the number 1.00e+400 overflows float64", 19),
        ("x_<k+1> = x_k - exp(1000) α∇F", "exp(1000) = 1.97e+434 overflows float64", 17),
        ("x_<k+1> = x_k - 1." + "0" * 400 + "1 ∇F", "more than 308 digits", 17),
        ("x_<k+1> = x_k - 1e308 ∇F - 1e308 ∇F", "the number -2.00e+308 overflows", 11),
        # Names a stage cannot take.
        ("k = 1; x_<k+1> = x_k + f(x_k)", "k is the index letter", 1),
        ("t = 1; x_<k+1> = x_k + f(x_k)", "t is the time", 1),
        ("f = 1; x_<k+1> = x_k + f(x_k)", "f names an operator", 1),
        ("φ = 1; x_<k+1> = φ(x_k)", "φ names an operator", 1),
        ("x_<t+1> = x_t + f(x_t)", "t is the time", 1),
        # A state or stage with another index letter would have been a new parameter x_n.
        ("x_<k+1> = x_n - α∇F", "x_n: x is a state of this scheme, indexed by k", 11),
        ("x_<k+1> = x_k - x_prev ∇F", "'prev' is not the index letter", 17),
        ("u_<n+1> = u_k + h f(u_n)", "u_k: u is a state of this scheme, indexed by n", 11),
        ("a = f(x_k); x_<k+1> = x_k + h a_n", "a_n: a is a stage of this scheme", 31),
        # A misspelt Greek name before '(' is no function either.
        ("x_<k+1> = x_k + bta(x_k - x_<k-1>) - α∇F", "did you mean β(...), the product", 17),
        # Messages show offsets as written, also when the newest value is not at k+1.
        ("x_<k+2> = x_<k+3>", "x_<k+3> is ahead of the newest value x_<k+2>", 11),
    ],
)
def test_malformed_input_names_what_and_where(text, message, column):
    with pytest.raises(unroll.UnrollError) as info:
        parse(text)
    text_of_error = str(info.value)
    assert message in text_of_error
    assert f"column {column})" in text_of_error
    # The caret sits under the reported column.
    caret_line = text_of_error.splitlines()[-1]
    assert caret_line.index("^") - 2 == column - 1


@pytest.mark.parametrize(
    "text",
    [
        "x_<k+1> = x_k + β(x_k - x_<k-1>) - α ∇F (x_k)",  # a space before ∇F's point, as f (x)
        r"x_{k+1} = x_{k} + {\beta}\left(x_{k} - x_{k-1}\right) - \alpha\,\nabla F\left(x_{k}\right)",
        r"x_{k+1} = x_k + \frac{2\beta}{2} (x_k - x_{k-1}) - \alpha \cdot \nabla F",
        "x_<k+1> = x_k + β·(x_k − x_<k-1>) − α×∇F",  # unicode operators
        "x_<k+1> = x_k + β(x_k - x_<k-1>)\u00a0-\u2009α∇F",  # no-break and thin spaces
    ],
)
def test_latex_and_unicode_spellings(text):
    assert parse(text) == parse("x_<k+1> = x_k + β(x_k - x_<k-1>) - α∇F")


def test_subscripted_names_in_braces_and_the_latex_step():
    assert parse(r"x_{n+1} = x_n + c_{1} \Delta t f(x_n) + \eta_{2} \sqrt{x_n}") == parse(
        "x_<n+1> = x_n + c_1 Δt f(x_n) + η_2 sqrt(x_n)"
    )


def test_long_and_deep_inputs_are_refused_at_a_position_or_parsed():
    many = "x_<k+1> = " + "- " * 5000 + "x_k + ∇F" + " + α" * 2000
    assert sp.expand(rhs(many) - (x[k] + grad(x[k]) + 2000 * α)) == 0
    deep = "x_<k+1> = x_k + " + "(x_k " * 300 + ")" * 300
    with pytest.raises(unroll.UnrollError, match="nested more than 50 levels") as info:
        parse(deep)
    # The caret sits under the 51st '(' (shown in a window of the long line).
    lines = str(info.value).splitlines()
    assert lines[2].index("^") - 2 == lines[1].index("(x_k", 60) - 2
    assert len(lines[1]) < 130
    towers = "x_<k+1> = x_k + ∇F x_k" + "^x_k" * 2000
    with pytest.raises(unroll.UnrollError, match="nested more than 50 levels"):
        parse(towers)


@pytest.mark.parametrize("text", ["", "  \n ; \n"])
def test_empty_scheme(text):
    with pytest.raises(unroll.UnrollError, match="empty scheme"):
        parse(text)


def test_errors_on_later_lines_name_the_line():
    with pytest.raises(unroll.UnrollError, match=r"line 2, column 11"):
        parse("a = f(x_k)\nx_<k+1> = q_k")


def test_parser_never_evaluates_python():
    # A string that would have side effects under eval is just refused as scheme text.
    with pytest.raises(unroll.UnrollError):
        parse("x_<k+1> = __import__('os').system('true')")
