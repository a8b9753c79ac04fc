"""The bundled library and YAML scheme files: every scheme is tested for free."""

import subprocess
import sys
import warnings

import pytest
import torch

import unroll
from tests import ROOT
from unroll.frontend.library import SCHEME_DIR

REQUIRED = [
    "gradient_descent", "heavy_ball", "nesterov", "nesterov_schedule", "proximal_gradient",
    "forward_euler", "lm_resnet", "polynet", "fractalnet", "revnet", "midpoint", "heun",
    "rk4", "rk38", "ab2", "ab3", "leapfrog", "admm",
]  # fmt: skip


def test_the_library_has_every_scheme_the_issue_names():
    assert set(REQUIRED) <= set(unroll.schemes)


def small_problem(scheme):
    """Operators and x0 for a few steps of ``scheme`` on a small problem of its kind."""
    g = torch.Generator().manual_seed(0)
    n = 5
    x0 = torch.randn(n, generator=g, dtype=torch.float64)
    q = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = q @ q.T / n + torch.eye(n, dtype=torch.float64)
    W = (A / A.norm()).contiguous()
    kwargs = {}
    if scheme.kind == "optimizer":
        kwargs["grad"] = lambda x: A @ x
    elif scheme.kind == "ode":
        branches = {
            fn.func.__name__
            for eq in scheme.equations
            for fn in unroll.ir.vocabulary.applications(eq.rhs)
        }
        kwargs["f"] = {name: (lambda t, x: -0.1 * torch.tanh(x)) for name in branches}
    else:
        kwargs["W"], kwargs["activation"] = W, scheme.activation or "tanh"
    for name in scheme.parameters:
        if scheme.parameters[name].default is None:
            kwargs[name] = 0.1
    free = [n for n, s in scheme.states.items() if s.init is None and s.depth > 0]
    start = x0 if len(free) <= 1 else {n: x0 for n in free}
    return start, kwargs


@pytest.mark.parametrize("name", sorted(unroll.schemes))
def test_every_bundled_scheme_parses_prints_back_and_runs(name):
    scheme = unroll.schemes[name]
    assert scheme.name == name and scheme.description and scheme.references
    assert unroll.compile(str(scheme)).equations == scheme.equations
    assert scheme.latex()
    x0, kwargs = small_problem(scheme)
    out = scheme.run(x0, 6, **kwargs)
    values = out.values() if isinstance(out, dict) else [out]
    for v in values:
        assert torch.isfinite(torch.as_tensor(v)).all()
    # The run really moved the state.
    first = out if not isinstance(out, dict) else next(iter(out.values()))
    assert not torch.equal(first, x0 if not isinstance(x0, dict) else next(iter(x0.values())))


def test_no_bundled_scheme_warns():
    for path in sorted(SCHEME_DIR.glob("*.yaml")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an UnrollWarning (a likely typo) would raise
            unroll.load(path)


def write(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


GOOD = "name: s\nequations: x_<k+1> = x_k - α∇F\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (GOOD + "colour: red\n", "unknown key 'colour'"),
        ("name: s\n", "missing key 'equations'"),
        ("name: 3\nequations: x_<k+1> = x_k - α∇F\n", "name: expected a string"),
        (GOOD + "parameters: {α: {default: fast}}\n", r"parameters.α.default: expected a number"),
        (GOOD + "parameters: {α: {default: .inf}}\n", "non-finite"),
        (
            GOOD + "parameters: {α: {trainable: 1}}\n",
            "parameters.α.trainable: expected true or false",
        ),
        (GOOD + "parameters: {α: {speed: 1}}\n", r"parameters.α: unknown key 'speed'"),
        (GOOD + "parameters: {α: {bounds: [0]}}\n", "parameters.α.bounds"),
        (GOOD + "parameters: {α: {default: 2, bounds: [0, 1]}}\n", "outside its bounds"),
        (GOOD + "parameters: {α: {shape: matrix}}\n", "parameters.α.shape"),
        (GOOD + "parameters: {β: 0.5}\n", "parameters.β: β does not appear"),
        (GOOD + "states: {z: {init: 0}}\n", "states.z: z is not a state"),
        (GOOD + "states: {x: {init: abc}}\n", "states.x.init: expected a number"),
        (GOOD + "activation: gelu_fast\n", "activation: unknown activation"),
        (
            "name: s\nequations: x_<k+1> = x_k + (\n",
            r"equations \(their line 1 is line 2 of the file\): unbalanced parentheses",
        ),
        ("- a\n- b\n", "a mapping of keys"),
        ("name: [unclosed\n", r"not valid YAML: .*flow sequence from line 1, column 7"),
        (
            "name: s\nequations: !!python/object/apply:os.system ['true']\n",
            r"not valid YAML: could not determine a constructor .* \(at line 2, column 12\)",
        ),
        ("name: s\n  bad: indent\nequations: x\n", r"not valid YAML: .* \(at line 2, column 6\)"),
    ],
)
def test_scheme_file_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(unroll.UnrollError, match=message):
        unroll.load(write(tmp_path, text))


def test_yaml_parameters_and_initial_values(tmp_path):
    s = unroll.compile(
        str(
            write(
                tmp_path,
                GOOD + "parameters:\n  alpha: {default: 0.5, trainable: true, bounds: [0, 1]}\n",
            )
        )
    )
    p = s.parameters["α"]
    assert (p.default, p.trainable, p.bounds) == (0.5, True, (0.0, 1.0))
    x = s.run(torch.ones(2), 1, grad=lambda x: x)
    torch.testing.assert_close(x, torch.full((2,), 0.5))


def test_missing_file_and_unknown_name():
    with pytest.raises(unroll.UnrollError, match="no such scheme file"):
        unroll.compile("nowhere.yaml")
    with pytest.raises(unroll.UnrollError, match="no bundled scheme 'nowhere'"):
        unroll.schemes["nowhere"]


@pytest.mark.slow
def test_schemes_ship_with_a_plain_install(tmp_path):
    """A non-editable wheel carries the YAML library as package data."""
    root = ROOT
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(root),
        ],
        check=True,
    )
    (wheel,) = wheel_dir.glob("unroll-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    data = SCHEME_DIR.relative_to(ROOT / "unroll").as_posix()  # frontend/schemes
    assert f"unroll/{data}/heavy_ball.yaml" in names
    assert len([n for n in names if n.startswith(f"unroll/{data}/")]) == len(unroll.schemes)


@pytest.mark.parametrize(
    "text, first",
    [
        ("name: s\nequations: |\n  x_<k+1> = x_k\n  y_<k+1> = y_k + (a\n", 3),  # a block
        ("name: s\ndescription: d\nequations: x_<k+1> = x_k + (a\n", 3),  # one line
    ],
)
def test_an_equation_error_says_where_the_equations_begin_in_the_file(tmp_path, text, first):
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(unroll.UnrollError, match=rf"equations \(their line 1 is line {first} of"):
        unroll.load(path)
