"""Every analysis of one scheme as one report (`facts`), and the scheme catalogue docs/schemes.md.

`facts` gathers what `unroll inspect` prints and what docs/schemes.md lists; an analysis that does
not apply is a "not applicable: <reason>" note, never a crash. Regenerate the catalogue and the
stability-region figure with ``python -m unroll.analysis.report`` (or ``unroll docs``);
tests/analysis/test_report.py fails when docs/schemes.md is out of date.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import sympy as sp
from sympy.core.function import AppliedUndef

from unroll.analysis import rates, stability
from unroll.analysis.identification import identify
from unroll.analysis.inverse import inverse_stability
from unroll.analysis.modified import modified_equation, truncation_equation
from unroll.analysis.objectives import objective
from unroll.analysis.ode import ode_step
from unroll.analysis.orders import order
from unroll.errors import UnrollError
from unroll.frontend.library import schemes as bundled
from unroll.ir import activations
from unroll.ir.layer_form import layer_form

CATALOGUE_MU, CATALOGUE_L = 1.0, 100.0  # the curvatures the catalogue tunes for (κ = 100)
INVERSE_DEPTH = 16  # the layers over which the inverse step's amplification is predicted
DOCS = Path(__file__).resolve().parents[2] / "docs"
FIGURE = "stability.png"
MAX_SHOWN_TERMS = 4  # the modified equation is shown to its leading correction, at most h^4


def _try(fn, *args, **kwargs) -> tuple[Any, str | None]:
    try:
        return fn(*args, **kwargs), None
    except UnrollError as e:
        return None, str(e).splitlines()[0]


def _text(e: Any) -> str:
    if isinstance(e, sp.Basic):
        return sp.sstr(e)
    return str(e)


def _objective_text(obj: Any) -> str:
    g, domain = getattr(obj, "g", None), getattr(obj, "domain", None)
    if g is None:
        return " ".join(str(obj).split())
    return f"F(x) = ½ xᵀ(I − W)x − bᵀx + Σᵢ g(xᵢ), g(t) = {_text(g)} on {_text(domain)}"


def _modified_text(eq: sp.Eq, state: str, h: sp.Symbol) -> str:
    """``dx/dt = f + h(...) + ... + O(h^n)``, in rising powers of h."""
    by_degree: dict[int, list] = {}
    for term in sp.Add.make_args(eq.rhs.removeO()):
        _, power = term.as_independent(h, as_Add=False)
        by_degree.setdefault(int(sp.degree(power, h)), []).append(term)
    terms = [_text(sp.Add(*by_degree[d])) for d in sorted(by_degree)]
    text = " + ".join([*terms, _text(eq.rhs.getO())]).replace("+ -", "- ")
    return f"d{state}/dt = {text}"


def facts(
    scheme,
    activation: str | None = None,
    mu: float = CATALOGUE_MU,
    L: float = CATALOGUE_L,
    depth: int = INVERSE_DEPTH,
) -> dict:
    """What unroll knows of ``scheme``, as JSON-ready data: each analysis's value (None where it
    does not apply) and, in ``notes``, why an analysis is absent. ``mu`` and ``L`` bound the
    curvatures for an optimizer scheme's rates; they are checked only where they are used.
    ``depth``: the layers over which the inverse step's error amplification is predicted."""
    out: dict[str, Any] = {
        "scheme": scheme.name or None,
        "equations": str(scheme),
        "kind": scheme.kind,
        "explicit": scheme.is_explicit,
        "declared_architecture": scheme.architecture,
    }
    notes: dict[str, str] = {}

    out["architecture"], err = _try(identify, scheme)
    if err:
        notes["architecture"] = err
    elif out["architecture"] is None:
        notes["architecture"] = "no known architecture matches"

    form, err = _try(layer_form, scheme)
    out["layer"] = "; ".join(str(form).splitlines()) if form is not None else None
    if err:
        notes["layer"] = err

    act = activation if activation is not None else scheme.activation
    if act is not None:
        activations.get(act)  # an unknown name is the user's error, not a note
    out["activation"] = act
    uses_layer = scheme.kind in ("layer", "optimizer")
    if act is None or not uses_layer:
        out["objective"] = None
        notes["objective"] = (
            "not applicable: no activation given" if uses_layer else "not applicable: ODE scheme"
        )
    else:
        obj, err = _try(objective, act)
        out["objective"] = None if obj is None else _objective_text(obj)
        if err:
            notes["objective"] = err

    if scheme.kind == "ode":
        _ode_facts(scheme, out, notes)
    else:
        for key in ("order", "zero_stable", "stability_function", "modified_equation"):
            out[key] = None
            notes[key] = f"not applicable: {scheme.kind} schemes have no step h"

    if scheme.kind == "optimizer":
        _rate_facts(scheme, mu, L, out, notes)
    else:
        notes["rate"] = "not applicable: not an optimizer scheme"
    _inverse_facts(scheme, depth, out, notes)
    out["notes"] = notes
    return out


def _inverse_facts(scheme, depth: int, out: dict, notes: dict) -> None:
    """Whether the step can be run backwards (reversible networks) and how stably: the growth
    of an error per layer of the inverse and its amplification over ``depth`` layers."""
    form, err = _try(layer_form, scheme)
    target = form if form is not None else scheme
    found, err = _try(inverse_stability, target, depth)
    out["inverse_depth"] = depth
    if err:
        out["inverse_growth"] = out["inverse_amplification"] = None
        notes["inverse_growth"] = f"no reversible network: {err}"
        return
    out["inverse_growth"] = found.growth
    out["inverse_amplification"] = found.amplification


def _ode_facts(scheme, out: dict, notes: dict) -> None:
    symbolic = False
    for key, fn in (
        ("order", order),
        ("zero_stable", stability.is_zero_stable),
        ("characteristic_roots", stability.characteristic_roots),
        ("stability_function", stability.stability_function),
    ):
        value, err = _try(fn, scheme)
        if err:
            notes[key] = err
        if key == "characteristic_roots" and value is not None:
            symbolic = any(isinstance(r, sp.Basic) and r.free_symbols for r in value)
            value = [_text(r) for r in value]
        elif isinstance(value, sp.Basic):
            value = _text(value)
        out[key] = value
    if out["order"] == 0:
        notes["order"] = (
            "inconsistent with ẋ = f for generic parameter values; the modified equation "
            "shows the equation the scheme does approximate"
        )
    if out["characteristic_roots"] and symbolic:
        out["zero_stable_at"] = {n: v for n, v in scheme.defaults().items() if n != "h"}
    step, err = _try(ode_step, scheme, "stability")
    out["stability_kind"] = None if step is None else ("R(z)" if step.depth == 1 else "π(ζ, z)")
    # The backward-error form to its leading correction: h^p for a scheme of order p.
    terms = min(max(out["order"] or 1, 1), MAX_SHOWN_TERMS)
    eq, err = _try(modified_equation, scheme, terms)
    out["modified_equation"] = (
        None if eq is None else _modified_text(eq, step.state, step.scheme_form(step.h))
    )
    if err:
        notes["modified_equation"] = err
    if step is not None and (step.depth > 1 or eq is None):
        eq, err = _try(truncation_equation, scheme, 2)
        out["truncation_equation"] = None if eq is None else _truncation_text(eq)
        if err:
            notes["truncation_equation"] = err


def _truncation_text(eq: sp.Eq) -> str:
    """``u'*(κ + 1) - h*u''*(κ - 1)/2 + ... = f(u)``: u(t), f and their derivatives written with
    primes, the notation of the papers, instead of SymPy's ``Derivative(u(t), (t, 2))``."""

    # the states u(t) (the left-hand side holds them and their t-derivatives only)
    states = {fn: sp.Symbol(fn.func.__name__) for fn in eq.lhs.atoms(AppliedUndef)}

    def prime(d: sp.Derivative, at: sp.Expr) -> sp.Symbol:
        point = _text(at.xreplace(states))
        return sp.Symbol(f"{d.expr.func.__name__}{chr(39) * d.derivative_count}({point})")

    # f's derivatives at a point, f''(x(t)) or f'(c_3*x(t)): in multistep forms' right-hand sides
    at_points = {
        s: prime(s.expr, s.point[0])
        for s in eq.atoms(sp.Subs)
        if isinstance(s.expr, sp.Derivative) and isinstance(s.expr.expr, AppliedUndef)
    }
    at_states = {
        d: prime(d, d.expr.args[0])
        for d in eq.atoms(sp.Derivative)
        if isinstance(d.expr, AppliedUndef)
        and d.variables[0] in d.expr.args
        and not d.expr.args[0].is_Symbol
    }
    derivatives = {
        d: sp.Symbol(states[d.expr].name + "'" * d.derivative_count)
        for d in eq.atoms(sp.Derivative)
        if d.expr in states
    }
    plain = eq.xreplace(at_points).xreplace(at_states).xreplace(derivatives).xreplace(states)
    return f"{_text(plain.lhs)} = {_text(plain.rhs)}"


def _rate_facts(scheme, mu: float, L: float, out: dict, notes: dict) -> None:
    matrix, err = _try(rates.iteration_matrix, scheme)
    out["iteration_matrix"] = _text(matrix) if matrix is not None else None
    if err:
        notes["iteration_matrix"] = notes["rate"] = notes["tuned"] = err
        out["rate_at_defaults"] = out["tuned"] = out["tuned_rate"] = None
        return
    out["mu"], out["L"] = rates.check_interval(mu, L)  # used here: the user's error if bad
    out["history"] = rates.history_labels(scheme)
    out["rate_at_defaults"], err = _try(rates.rate, scheme, mu, L)
    if err:
        notes["rate"] = err
    known = rates.known_tuning(scheme)
    out["tuned"], err = _try(rates.tune, scheme, mu, L)
    if err:
        notes["tuned"] = err
        out["tuned_rate"] = None
    else:
        out["tuned_rate"] = rates.rate(scheme, mu, L, **out["tuned"])
    out["tuning"] = (
        {
            "method": f"closed form ({known.family.name}; {known.family.reference})",
            "parameters": {n: _text(v) for n, v in known.params.items()},
            "rate": _text(known.rate),
        }
        if known
        else {"method": "numerical search"}
    )


_LABELS = [
    ("kind", "kind"),
    ("declared_architecture", "declared architecture"),
    ("architecture", "identified architecture"),
    ("layer", "layer"),
    ("activation", "activation"),
    ("objective", "objective"),
    ("order", "order"),
    ("zero_stable", "zero-stable"),
    ("characteristic_roots", "roots of ρ(ζ)"),
    ("stability_function", "stability"),
    ("modified_equation", "modified equation"),
    ("truncation_equation", "modified equation, form of Lu et al."),
    ("iteration_matrix", "iteration matrix on F = ½λx²"),
    ("rate_at_defaults", "rate at the defaults"),
    ("tuned", "tuned parameters"),
    ("tuned_rate", "tuned rate"),
    ("inverse_growth", "inverse step, error growth per layer"),
    ("inverse_amplification", "inverse step, amplification"),
]


def _value_text(key: str, value: Any, f: dict) -> str:
    if key == "inverse_growth":
        return f"{value:.6g} (at the defaults)"
    if key == "inverse_amplification":
        digits = math.log10(value) if 0 < value < math.inf else math.inf
        return f"{value:.3g} over {f['inverse_depth']} layers ({digits:.1f} decimal digits)"
    if key in ("rate_at_defaults", "tuned_rate"):
        verdict = " (diverges: the rate is 1 or more)" if value >= 1 else ""
        return f"{value:.4f} over λ ∈ [{f['mu']:g}, {f['L']:g}]{verdict}"
    if key == "tuned":
        body = ", ".join(f"{n} = {v:.6g}" for n, v in value.items()) or "none"
        return f"{body} ({f['tuning']['method']})"
    if key == "stability_function":
        return f"{f['stability_kind']} = {value}"
    if key == "characteristic_roots":
        return ", ".join(value)
    if key == "zero_stable":
        at = f.get("zero_stable_at")
        where = f" at {', '.join(f'{n} = {v:g}' for n, v in at.items())}" if at else ""
        return ("yes" if value else "no") + where
    if key == "iteration_matrix":
        return f"{value} on ({', '.join(f['history'])})"
    if key == "order" and value == 0 and f["notes"].get("order"):
        return f"0 ({f['notes']['order']})"
    return str(value)


def lines(f: dict) -> list[str]:
    """The report as ``label: value`` lines (absent analyses with their note, each note once)."""
    out = [f"scheme: {f['scheme'] or '(from text)'}", "equations:"]
    out += [f"  {line}" for line in f["equations"].splitlines()]
    said: set[str] = set()
    for key, name in _LABELS:
        value = f.get(key)
        if value is not None:
            out.append(f"{name}: {_value_text(key, value, f)}")
            continue
        note = f["notes"].get(key)
        if note is not None and note not in said:
            said.add(note)
            out.append(f"{name}: {note}")
    return out


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def markdown(schemes=None) -> str:
    """docs/schemes.md: every bundled scheme with its formula and analyses."""
    if schemes is None:
        schemes = bundled
    out = [
        "# The bundled schemes",
        "",
        "Generated by `unroll docs` (`python -m unroll.analysis.report`) from the analyses in",
        "`unroll/analysis/`; do not edit. tests/analysis/test_report.py checks that it is current.",
        "",
        "Conventions: ODE schemes are analysed with step h on ẋ = f(x), an autonomous field,",
        "when every branch is written f(x), and on ẋ = f(t, x) when a branch is written f(t, x)",
        "(a branch written f(x) is then evaluated at the step's time t_k, as at run time; earlier",
        "versions read every f(x) so, and gave a Runge–Kutta method written with f(x) order 1). A",
        "residual network without a step (PolyNet, FractalNet) reads each branch as h·f, and",
        "every branch as the same f. Order 0 means inconsistent: the scheme does not converge to",
        "the solution of ẋ = f (LM-ResNet for κ ≠ 0 solves (1 + κ)u̇ = f(u) instead, see its",
        "modified equation). The modified equation is the field of backward error analysis,",
        "dx/dt = f + h f₂ + ..., in elementary differentials of f at x (f'f, f''(f,f), ...),",
        "shown to its leading correction; multistep schemes also show the form of Lu et al. 2018.",
        "Optimizer schemes are analysed on F = ½λx² with λ ∈ "
        f"[{CATALOGUE_MU:g}, {CATALOGUE_L:g}] (κ = {CATALOGUE_L / CATALOGUE_MU:g}).",
        "",
        f"![Stability regions]({FIGURE})",
        "",
        "| scheme | kind | architecture (identified) | order | zero-stable | rate: defaults / tuned |",
        "|---|---|---|---|---|---|",
    ]
    all_facts = {name: facts(s) for name, s in schemes.items()}
    for name, f in all_facts.items():
        arch = f["architecture"] or "—"
        order_ = "n/a" if f["order"] is None else str(f["order"])
        zs = "n/a" if f["zero_stable"] is None else ("yes" if f["zero_stable"] else "no")
        if f.get("tuned_rate") is not None:
            rate = f"{f['rate_at_defaults']:.4f} / {f['tuned_rate']:.4f}"
        else:
            rate = "n/a"
        out.append(
            f"| [{name}](#{name}) | {f['kind']} | {_md_cell(arch)} | {order_} | {zs} | {rate} |"
        )
    for name, f in all_facts.items():
        s = schemes[name]
        out += ["", f"## {name}", ""]
        if s.description:
            out += [s.description, ""]
        out += ["```", f["equations"], "```", ""]
        for line in lines(f)[2 + len(f["equations"].splitlines()) :]:
            label, _, value = line.partition(": ")
            out.append(f"- {label}: `{value}`" if _is_formula(label) else f"- {line}")
    return "\n".join(out) + "\n"


def _is_formula(label: str) -> bool:
    return label in (
        "layer",
        "stability",
        "modified equation",
        "iteration matrix on F = ½λx²",
        "roots of ρ(ζ)",
        "objective",
        "modified equation, form of Lu et al.",
    )


def figure(path: Path, schemes=None) -> Path:
    """One grid figure of the stability regions of the bundled one-state ODE schemes."""
    from matplotlib.figure import Figure

    if schemes is None:
        schemes = bundled
    regions = []
    for s in schemes.values():
        if s.kind != "ode":
            continue
        region, err = _try(stability.stability_region, s, n=201)
        if region is not None:
            regions.append(region)
    cols = 4
    rows = -(-len(regions) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows), dpi=90, layout="constrained")
    for i, region in enumerate(regions):
        region.draw(fig.add_subplot(rows, cols, i + 1))
    fig.suptitle("Absolute stability regions (shaded: stable), z = hλ")
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def write(directory: Path = DOCS, figures: bool = True) -> list[Path]:
    """Write schemes.md (and the figure) into ``directory``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    md = directory / "schemes.md"
    md.write_text(markdown(), encoding="utf-8")
    written = [md]
    if figures:
        written.append(figure(directory / FIGURE))
    return written


if __name__ == "__main__":  # pragma: no cover - the same as `unroll docs`
    for p in write():
        print(p)
