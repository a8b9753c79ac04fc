"""The step IR: one step of a scheme, resolved once; every lowering and analysis reads it.

``build(scheme) -> StepIR``. A step of a scheme is a sequence of operator calls (``W(·)``,
``f(·)``, ``∇F(·)``: matrix products, networks, gradients) and elementwise arithmetic. The IR
writes it over *leaves*, each with the identifier generated code uses for it (`unroll.ir.names`)
and a real SymPy symbol of that name:

- `HistoryValue`: a state's value ``lag`` steps back (``x_k``, ``x_km1``); every state has
  ``max(depth, 1)`` of them, newest first;
- `Coefficient`: a value shared by every element (or every element of one channel): a
  parameter with its spec (default, bounds, trainability, per channel), the time ``t`` or the
  index ``k``;
- `Call`: ``o_i = op(arg)`` (a branch ``f(t, x)`` also has a ``time``; ``f(x)`` has none), in
  evaluation order, each application once. ``arg`` is elementwise in history values,
  coefficients, host values and earlier outputs: stages are substituted, so it is self-contained;
- `Assign`: a value computed from the leaves: a *host* value (a scalar state's new value, such as
  the momentum schedule θ_<k+1>, or a stage computed from scalars alone: work for the host, not
  for a kernel), or a tensor state's new value (an *update*), elementwise in the leaves with the
  activation φ still applied as `unroll.ir.vocabulary.ACT`. Stages are substituted where they
  are used, but for those an implicit scheme reads before computing them: such a stage is an
  update with no state, and its symbol (like that of a new value read early) is the unknown
  its equation determines.

So for heavy ball, ``x_<k+1> = x_k + β(x_k − x_<k-1>) − α∇F(x_k)``::

    calls   o_0 = ∇F(x_k)
    updates x_kp1 = x_k + beta*(x_k - x_km1) - alpha*o_0

A start-up scheme (the one-step method that takes a multistep scheme's first steps) is built
too and checked once: one-step, the same states, no operator the scheme lacks.

`StepIR.scheme_form` writes an IR expression back in the scheme's own SymPy objects (``x[k-1]``,
``f(t, x)``, ``β``), which is what the symbolic analyses expand.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import sympy as sp

from unroll.errors import UnrollError
from unroll.frontend.library import resolve
from unroll.frontend.printing import expr_text
from unroll.frontend.scheme import Parameter, Scheme
from unroll.ir import vocabulary as vocab
from unroll.ir.layer_form import layer_form
from unroll.ir.names import Namer

CALLED = ("linear", "branch", "grad")  # operator kinds a step calls (φ stays elementwise)


@dataclass(frozen=True)
class Leaf:
    """A value the step reads or computes. ``name``: its identifier in generated code;
    ``symbol``: ``Symbol(name, real=True)``, what IR expressions are written in; ``ref``: the
    scheme's own SymPy object for it (``x[k-1]``, ``Symbol('β')``, ``t``)."""

    name: str
    symbol: sp.Symbol
    ref: sp.Basic


@dataclass(frozen=True)
class HistoryValue(Leaf):
    """State ``state``'s value ``lag`` steps back: ``x_k`` (lag 0), ``x_km1`` (lag 1), ..."""

    state: str
    lag: int
    scalar: bool  # a scalar state (a schedule θ_k): a host value, no tensor


Source = Literal["parameter", "time", "index"]


@dataclass(frozen=True)
class Coefficient(Leaf):
    """A value shared by every element: a parameter (``spec`` says its default, bounds,
    trainability and whether it holds one value per channel), the time or the index."""

    source: Source
    spec: Parameter | None = None

    @property
    def per_channel(self) -> bool:
        return bool(self.spec and self.spec.per_channel)


@dataclass(frozen=True)
class Call(Leaf):
    """``symbol = op(arg)``: ``kind`` 'linear', 'branch' or 'grad'; a branch written f(t, x)
    has its time argument in ``time`` (None for an autonomous f(x))."""

    op: str
    kind: str
    arg: sp.Expr
    time: sp.Expr | None = None

    def text(self) -> str:
        args = ([expr_text(self.time)] if self.time is not None else []) + [expr_text(self.arg)]
        return f"{self.name} = {self.op}({', '.join(args)})"


@dataclass(frozen=True)
class Assign(Leaf):
    """``symbol = expr``: ``ref`` is the scheme's left-hand side (``x[k+1]`` or a stage),
    ``state`` the state it advances (None for a stage)."""

    state: str | None
    expr: sp.Expr


@dataclass(frozen=True)
class StateInfo:
    """A state: ``depth`` past values a step reads (0 for one only ever written), ``scalar``
    (it evolves without tensors), ``init`` (its start when x0 leaves it out), and its history
    values, newest first."""

    name: str
    depth: int
    scalar: bool
    init: float | None
    history: tuple[HistoryValue, ...]


@dataclass(frozen=True)
class StepIR:
    """One step of ``scheme`` (see the module docstring). ``layer``: built from the scheme's
    layer form (`unroll.ir.layer_form`), as networks and the tied kernel read it."""

    scheme: Scheme
    layer: bool
    states: tuple[StateInfo, ...]
    coefficients: tuple[Coefficient, ...]
    host: tuple[Assign, ...]
    calls: tuple[Call, ...]
    updates: tuple[Assign, ...]
    startup: StepIR | None

    # -- lookups ---------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """How messages name the scheme."""
        return self.scheme.name or str(self.scheme).replace("\n", "; ")

    @property
    def history(self) -> tuple[HistoryValue, ...]:
        return tuple(h for s in self.states for h in s.history)

    @property
    def parameters(self) -> tuple[Coefficient, ...]:
        return tuple(c for c in self.coefficients if c.source == "parameter")

    @property
    def tensor_states(self) -> tuple[StateInfo, ...]:
        return tuple(s for s in self.states if not s.scalar)

    @property
    def is_explicit(self) -> bool:
        return self.scheme.is_explicit

    @property
    def uses_activation(self) -> bool:
        return any(self._applies(vocab.ACT))

    def _applies(self, fn) -> Iterator[sp.Basic]:
        for e in self.expressions():
            yield from (a for a in vocab.applications(e) if a.func == fn)

    def expressions(self) -> Iterator[sp.Expr]:
        """Every expression of the step: host values, call arguments and times, updates."""
        for a in self.host:
            yield a.expr
        for c in self.calls:
            yield c.arg
            if c.time is not None:
                yield c.time
        for u in self.updates:
            yield u.expr

    def operators(self) -> dict[str, str]:
        """Operator name -> kind ('linear', 'branch', 'grad'), in call order."""
        return {c.op: c.kind for c in self.calls}

    def leaves(self) -> dict[sp.Symbol, Leaf]:
        """Every leaf by its symbol."""
        out: dict[sp.Symbol, Leaf] = {}
        for leaf in (*self.history, *self.coefficients, *self.host, *self.calls, *self.updates):
            out[leaf.symbol] = leaf
        return out

    # -- back to the scheme's own objects ----------------------------------------------------
    def scheme_form(self, expr: sp.Expr) -> sp.Expr:
        """``expr`` (in IR symbols) in the scheme's SymPy objects: history values as
        ``x[k-j]``, coefficients as the parameter symbols, t and k, calls as the operator
        applications they stand for, host values by their expressions."""
        return _scheme_form(self, expr)


@functools.lru_cache(maxsize=512)
def _scheme_subs(ir: StepIR) -> dict[sp.Symbol, sp.Basic]:
    subs: dict[sp.Symbol, sp.Basic] = {}
    for leaf in (*ir.history, *ir.coefficients, *ir.updates):  # updates: the unknowns of an
        subs[leaf.symbol] = leaf.ref  # implicit scheme, read before they are computed
    for a in ir.host:
        subs[a.symbol] = a.expr.xreplace(subs)
    for c in ir.calls:
        fn = sp.Function(c.op)
        arg = c.arg.xreplace(subs)
        subs[c.symbol] = fn(c.time.xreplace(subs), arg) if c.time is not None else fn(arg)
    return subs


def _scheme_form(ir: StepIR, expr: sp.Expr) -> sp.Expr:
    return expr.xreplace(_scheme_subs(ir))


# -- building ----------------------------------------------------------------------------------
def _is_host(eq: sp.Eq, scheme: Scheme, host_names: set[str], scalar_states: set[str]) -> bool:
    """A scalar state's update, or a stage computed from scalar states (and parameters) alone."""
    name = eq.lhs.base.label.name if isinstance(eq.lhs, sp.Indexed) else eq.lhs.name
    if name in scalar_states:
        return True
    refs = {r.base.label.name for r in vocab.state_refs(eq.rhs)}
    stages = {s.name for s in vocab.plain_symbols(eq.rhs) if s.name in scheme.stages}
    has_op = any(vocab.operator_kind(f) != "elementary" for f in vocab.applications(eq.rhs))
    return not has_op and bool(refs | stages) and refs <= scalar_states and stages <= host_names


@functools.lru_cache(maxsize=256)
def build(scheme: Scheme, layer: bool = False) -> StepIR:
    """The step IR of ``scheme`` (of its layer form when ``layer``); memoised, schemes being
    frozen values. Raises `UnrollError` when the start-up scheme does not fit the scheme."""
    if layer:
        scheme = layer_form(scheme)
    k = scheme.index
    name = Namer()

    def real(n: str) -> sp.Symbol:
        return sp.Symbol(n, real=True)

    # History values: every slot of every state, newest first; the new value of a state read
    # before its equation computes it (an implicit scheme) is a leaf of its own, lag -1.
    states = []
    by_ref: dict[sp.Basic, sp.Symbol] = {}
    for s in scheme.states.values():
        values = []
        for lag in range(max(s.depth, 1)):
            ref = scheme.state_value(s.name, -lag)
            n = name(f"{s.name}_{_offset_suffix(k, -lag)}")
            values.append(HistoryValue(n, real(n), ref, s.name, lag, s.scalar))
            by_ref[ref] = values[-1].symbol
        states.append(StateInfo(s.name, s.depth, s.scalar, s.init, tuple(values)))

    coefficients: list[Coefficient] = []
    for p in scheme.parameters.values():
        n = name(p.name)
        coefficients.append(Coefficient(n, real(n), sp.Symbol(p.name), "parameter", p))
    for ref, source in ((vocab.T, "time"), (k, "index")):
        n = name(ref.name)
        coefficients.append(Coefficient(n, real(n), ref, source))  # type: ignore[arg-type]
    by_ref.update({c.ref: c.symbol for c in coefficients})

    scalar_states = {s.name for s in scheme.states.values() if s.scalar}
    host_names: set[str] = set()
    host: list[Assign] = []
    calls: list[Call] = []
    updates: list[Assign] = []
    seen: dict[tuple, sp.Symbol] = {}
    subst: dict[sp.Basic, sp.Expr] = {}  # a stage or new value -> its IR expression
    new_names = {n: name(f"{n}_{_offset_suffix(k, 1)}") for n in scheme.states}
    stage_names: dict[str, str] = {}  # stages an implicit scheme reads before computing them

    def leaf(e: sp.Basic) -> sp.Basic:
        if e in subst:
            return subst[e]
        if e in by_ref:
            return by_ref[e]
        # A new value or a stage read before its equation computes it (an implicit scheme): a
        # leaf of its own, the unknown that equation determines.
        if isinstance(e, sp.Indexed):
            subst[e] = real(new_names[e.base.label.name])
            return subst[e]
        if e.name in scheme.stages:
            subst[e] = real(stage_names.setdefault(e.name, name(e.name)))
            return subst[e]
        return e

    def walk(e: sp.Basic) -> sp.Basic:
        if isinstance(e, (sp.Indexed, sp.Symbol)):
            return leaf(e)
        if isinstance(e, sp.Function) and vocab.operator_kind(e) in CALLED:
            kind = vocab.operator_kind(e)
            if kind == "branch" and len(e.args) == 2:
                time, arg = walk(e.args[0]), walk(e.args[1])
            else:
                (raw,) = e.args
                time, arg = None, walk(raw)
            key = (e.func.__name__, time, arg)
            if key not in seen:
                n = name(f"o_{len(calls)}")
                calls.append(Call(n, real(n), e, e.func.__name__, kind, arg, time))
                seen[key] = calls[-1].symbol
            return seen[key]
        if not e.args:
            return e
        return e.func(*[walk(a) for a in e.args])

    for eq in scheme.equations:
        lhs = eq.lhs
        state = lhs.base.label.name if isinstance(lhs, sp.Indexed) else None
        value = walk(eq.rhs)
        if _is_host(eq, scheme, host_names, scalar_states):
            n = new_names[state] if state else name(lhs.name)
            host.append(Assign(n, real(n), lhs, state, value))
            host_names.add(state or lhs.name)
            subst[lhs] = host[-1].symbol
        elif state is not None or lhs.name in stage_names:
            n = new_names[state] if state else stage_names[lhs.name]
            updates.append(Assign(n, real(n), lhs, state, value))
            # later equations read the value itself, or (implicit) the unknown it solves for
            subst[lhs] = value if scheme.is_explicit else updates[-1].symbol
        else:
            subst[lhs] = value

    ir = StepIR(
        scheme=scheme,
        layer=layer,
        states=tuple(states),
        coefficients=tuple(coefficients),
        host=tuple(host),
        calls=tuple(calls),
        updates=tuple(updates),
        startup=None,
    )
    if scheme.startup:
        object.__setattr__(ir, "startup", _startup(ir, layer))
    return ir


def _offset_suffix(k: sp.Symbol, offset: int) -> str:
    """``k``, ``km1``, ``kp1``: the index ``k`` shifted by ``offset``."""
    return k.name + ("" if offset == 0 else f"m{-offset}" if offset < 0 else f"p{offset}")


def _startup(ir: StepIR, layer: bool) -> StepIR:
    scheme = ir.scheme
    boot = build(resolve(scheme.startup), layer)
    if {s.name for s in boot.states} != {s.name for s in ir.states} or any(
        s.depth > 1 for s in boot.states
    ):
        raise UnrollError(
            f"start-up scheme {scheme.startup!r} must be one-step with the states "
            f"{', '.join(s.name for s in ir.states)}"
        )
    extra = set(boot.operators()) - set(ir.operators())
    if extra:
        raise UnrollError(
            f"start-up scheme {scheme.startup!r} uses operators the scheme lacks: {sorted(extra)}"
        )
    return boot
