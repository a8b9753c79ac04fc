"""The layer form of a scheme: optimizer steps rewritten as network layers (a SymPy pass).

``layer_form(scheme) -> Scheme``. ODE and layer schemes are already layers (``f`` is the residual
branch; ``φ`` and ``W`` are the layer) and come back unchanged. An optimizer scheme, one with
``∇F``, is realised by the proximal-gradient reading of docs/theory.md section 2:

- with h(x) = ½ xᵀ(I − W₀)x − b₀ᵀx one has p − α∇h(p) = W p + b for W = (1 − α)I + αW₀ and
  b = αb₀, so a gradient term ``c ∇F(p)`` of a state update is replaced by ``W p + b − p``
  (the step, whatever its coefficient, is absorbed into W and b), and
- the update of every *primal* state is wrapped in ``φ = prox_g``: a state whose new value
  (stages and other new values written out) is a plain gradient step p + c ∇F(p), or, when no
  state's is, every state that ∇F is evaluated at, directly or through stages:

      x_<k+1> = E + c ∇F(p)     becomes     x_<k+1> = φ(E + W p + b − p).

  Heavy ball gives φ(W x_k + b + β(x_k − x_<k-1>)) (HB-Net), Nesterov φ(W y + b) (AGD-Net),
  gradient descent φ(W x_k + b) (the feedforward layer).
- A non-primal state that carries the gradient into a primal update, as the velocity v of
  ``v_<k+1> = β v_k − α∇F(x_k); x_<k+1> = x_k + v_<k+1>``, is substituted into that update
  first, and afterwards re-derived from the new primal value: x_<k+1> = E + c v_<k+1> gives
  v_<k+1> = (x_<k+1> − E)/c. So the velocity form builds the same network as heavy ball, and
  Nesterov's velocity form ``v_<k+1> = β v_k − α∇F(x_k + β v_k); x_<k+1> = x_k + v_<k+1>``,
  where x_<k+1> is the gradient step from x_k + β v_k, the same as AGD-Net:
  x_<k+1> = φ(W(x_k + β v_k) + b), v_<k+1> = x_<k+1> − x_k.

One gradient term per update is realised (several would each need their own W). ``α`` and
whatever else only scaled ∇F disappears from the parameters; ``b`` (per channel, trainable,
default 0) is new.
"""

from __future__ import annotations

import sympy as sp

from unroll.errors import UnrollError
from unroll.frontend.printing import equation_text, expr_text
from unroll.frontend.scheme import Parameter, Scheme
from unroll.ir import vocabulary as vocab

# The linear operator and the bias the rewrite introduces.
W = vocab.linear("W")


def _grad_apps(expr: sp.Basic) -> list[sp.Basic]:
    return [a for a in vocab.applications(expr) if vocab.operator_kind(a) == "grad"]


def _fresh_bias(scheme: Scheme) -> sp.Symbol:
    taken = set(scheme.parameters) | set(scheme.stages) | set(scheme.states)
    for name in ("b", "b_0", "bias"):
        if name not in taken:
            return sp.Symbol(name)
    raise UnrollError(f"scheme {scheme.name or str(scheme)!r}: no free name for the layer bias")


def _realise_gradient(rhs: sp.Expr, bias: sp.Symbol, where: str) -> sp.Expr:
    """``rhs`` with its one term ``c ∇F(p)`` replaced by ``W p + b − p``."""
    kept, grads = [], []
    for term in sp.Add.make_args(rhs):
        if not _grad_apps(term):
            kept.append(term)
            continue
        for sub in sp.Add.make_args(sp.expand(term)):
            coeff, app = sub.as_independent(*_grad_apps(sub), as_Add=False)
            if vocab.operator_kind(app) != "grad" or _grad_apps(coeff):
                raise UnrollError(
                    f"{where}: ∇F enters nonlinearly ({expr_text(sub)}); the proximal reading "
                    "needs a term c ∇F(p)"
                )
            (point,) = app.args
            if _grad_apps(point):
                raise UnrollError(f"{where}: ∇F inside ∇F ({expr_text(app)}) has no layer form")
            grads.append(point)
    if len(grads) > 1:
        raise UnrollError(
            f"{where}: {len(grads)} gradient terms; the proximal reading realises one per update"
        )
    (point,) = grads
    return sp.Add(*kept) + W(point) + bias - point


def _substituted(expr: sp.Expr, defs: dict) -> sp.Expr:
    """``expr`` with stages and new values replaced by their definitions, recursively."""
    for _ in range(len(defs) + 1):
        done = expr.xreplace(defs)
        if done == expr:
            return expr
        expr = done
    return expr  # pragma: no cover - definitions that refer to themselves make a scheme implicit


def _gradient_steps(scheme: Scheme, defs: dict) -> set[str]:
    """Tensor states whose new value, stages and other new values written out, is one gradient
    step p + c ∇F(p) and nothing else: Nesterov's x_<k+1> = y − α∇F(y), whether y is a stage or
    x_k + β v_k through a velocity v."""
    out = set()
    for eq in scheme.equations:
        if not isinstance(eq.lhs, sp.Indexed) or scheme.states[eq.lhs.base.label.name].scalar:
            continue
        rhs = sp.expand(_substituted(eq.rhs, defs))
        apps = set(_grad_apps(rhs))
        if len(apps) != 1:
            continue
        (app,) = apps
        c = sp.expand(sp.diff(rhs, app))
        if c == 0 or _grad_apps(c) or vocab.state_refs(c):
            continue
        if sp.expand(rhs - c * app - app.args[0]) == 0:
            out.add(eq.lhs.base.label.name)
    return out


def _primal_states(scheme: Scheme, defs: dict) -> set[str]:
    """The states φ = prox_g wraps: those whose update is a gradient step p + c ∇F(p), else the
    tensor states that ∇F is evaluated at, through stages and new values."""
    steps = _gradient_steps(scheme, defs)
    if steps:
        return steps

    def states_in(expr: sp.Basic, seen: frozenset) -> set[str]:
        out = set()
        for ref in vocab.state_refs(expr):
            if vocab.offset(ref, scheme.index) == 1 and ref in defs and ref not in seen:
                out |= states_in(defs[ref], seen | {ref})
            else:
                out.add(ref.base.label.name)
        for sym in vocab.plain_symbols(expr):
            if sym in defs and sym not in seen:
                out |= states_in(defs[sym], seen | {sym})
        return out

    primal: set[str] = set()
    for eq in scheme.equations:
        for app in _grad_apps(eq.rhs):
            primal |= states_in(app.args[0], frozenset())
    return {n for n in primal if not scheme.states[n].scalar}


def layer_form(scheme: Scheme) -> Scheme:
    """The scheme as a network layer: ``scheme`` itself unless it is an optimizer scheme, whose
    gradient steps become ``φ(... W p + b ...)`` as the module docstring says. The result is an
    ordinary `Scheme` (kind 'layer'), so it prints, runs and lowers like any other."""
    if scheme.kind != "optimizer":
        return scheme
    name = scheme.name or str(scheme)
    taken_w = [o for eq in scheme.equations for o in vocab.applications(eq.rhs) if o.func == W]
    if taken_w:
        raise UnrollError(f"scheme {name!r} already uses W; its layer form would introduce W")
    bias = _fresh_bias(scheme)
    defs = {eq.lhs: eq.rhs for eq in scheme.equations}
    primal = _primal_states(scheme, defs)

    # Symbols (stages, new values of non-primal states) whose definitions carry ∇F.
    carriers: dict[sp.Basic, sp.Expr] = {}
    for eq in scheme.equations:
        is_primal = isinstance(eq.lhs, sp.Indexed) and eq.lhs.base.label.name in primal
        if not is_primal and _grad_apps(eq.rhs.xreplace(carriers)):
            carriers[eq.lhs] = eq.rhs.xreplace(carriers)

    out: list[sp.Eq] = []
    deferred: dict[sp.Indexed, list[sp.Eq]] = {}
    for eq in scheme.equations:
        lhs = eq.lhs
        where = equation_text(eq)
        if lhs in carriers:
            if isinstance(lhs, sp.Indexed):
                owner, again = _rederive(scheme, lhs, primal, where)
                deferred.setdefault(owner, []).append(again)
            continue  # a gradient-carrying stage is substituted where it is used
        rhs = eq.rhs.xreplace(carriers)
        if isinstance(lhs, sp.Indexed) and lhs.base.label.name in primal and _grad_apps(rhs):
            rhs = vocab.ACT(_realise_gradient(rhs, bias, where))
        elif _grad_apps(rhs):
            raise UnrollError(
                f"{where}: ∇F in the update of {expr_text(lhs)}, which ∇F is not evaluated at; "
                "the proximal reading has no layer for it"
            )
        out.append(sp.Eq(lhs, rhs))
        out += deferred.pop(lhs, [])
    if deferred:  # pragma: no cover - _rederive only defers to equations that exist
        raise UnrollError(f"scheme {name!r}: cannot order the layer equations")

    used = {s.name for eq in out for s in vocab.plain_symbols(eq.rhs)}
    specs = [p for p in scheme.parameters.values() if p.name in used]
    specs.append(Parameter(bias.name, default=0.0, trainable=True, per_channel=True))
    states = {eq.lhs.base.label.name for eq in out if isinstance(eq.lhs, sp.Indexed)}
    return Scheme(
        tuple(out),
        name=scheme.name,
        description=f"layer form of {name}: {scheme.description}".strip().rstrip(":"),
        references=scheme.references,
        parameter_specs=tuple(specs),
        inits={n: v for n, v in scheme.inits.items() if n in states},
        activation=scheme.activation,
        startup=scheme.startup,
        architecture=scheme.architecture,
        notes=scheme.notes,
    )


def _rederive(
    scheme: Scheme, new: sp.Indexed, primal: set[str], where: str
) -> tuple[sp.Indexed, sp.Eq]:
    """For a gradient-carrying state v: the primal update x_<k+1> = E + c v_<k+1> it feeds, and
    v's re-derived equation v_<k+1> = (x_<k+1> − E)/c."""
    for eq in scheme.equations:
        if not (isinstance(eq.lhs, sp.Indexed) and eq.lhs.base.label.name in primal):
            continue
        c = sp.expand(sp.diff(eq.rhs, new))
        if c == 0:
            continue
        rest = sp.expand(eq.rhs - c * new)
        if (
            not c.free_symbols.isdisjoint(rest.atoms(sp.Indexed))
            or vocab.state_refs(c)
            or list(vocab.applications(c))
            or new in rest.atoms(sp.Indexed)
            or _grad_apps(rest)
        ):
            continue
        return eq.lhs, sp.Eq(new, sp.factor_terms((eq.lhs - rest) / c))
    raise UnrollError(
        f"{where}: ∇F in the update of {expr_text(new)}, which is not a primal state "
        "and feeds no primal update linearly; the proximal reading has no layer for it"
    )
