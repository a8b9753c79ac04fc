"""`Scheme`: the frozen, validated value every pass works on.

A scheme is its equations (SymPy, in evaluation order, see `unroll.ir.vocabulary` for the vocabulary) plus
what a scheme file says about them (parameters, initial values, activation, references). Every
fact that follows from the equations (states and their history depth, stages, parameters, kind,
explicitness) is derived here when the value is built, never passed in.

`Scheme` is a passive value: it knows its equations and what follows from them, and nothing of
the passes that read it. What users call on it (``run``, ``network``, ``order``, ...) lives on
the subclass `unroll.api.Scheme`, which `unroll.compile` and `unroll.schemes` return.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import sympy as sp

from unroll.errors import UnrollError
from unroll.frontend.parse import GREEK, STEP_NAMES, float64_misfit  # noqa: F401  (the step names, defined where the parser reads them)
from unroll.frontend.printing import equation_latex, equation_text, expr_text
from unroll.ir import vocabulary as ir


class FrozenMap(Mapping):
    """A read-only, hashable, ordered mapping (for `Scheme.states` and `Scheme.parameters`)."""

    def __init__(self, items: Mapping | None = None):
        self._d = dict(items or {})

    def __getitem__(self, key):
        return self._d[key]

    def __iter__(self) -> Iterator:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(tuple(self._d.items()))

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def __repr__(self) -> str:
        return f"FrozenMap({self._d!r})"


@dataclass(frozen=True)
class Parameter:
    """A coefficient of the scheme (α, β, h, κ, b, ...) and what the scheme file says of it."""

    name: str
    default: float | None = None
    trainable: bool = False
    bounds: tuple[float | None, float | None] = (None, None)
    per_channel: bool = False

    def __post_init__(self):
        lo, hi = self.bounds
        if lo is not None and hi is not None and lo > hi:
            raise UnrollError(f"parameter {self.name}: lower bound {lo} exceeds upper bound {hi}")
        d = self.default
        if d is not None and ((lo is not None and d < lo) or (hi is not None and d > hi)):
            raise UnrollError(
                f"parameter {self.name}: default {d} lies outside its bounds {self.bounds}"
            )


@dataclass(frozen=True)
class State:
    """A state the scheme advances. ``depth``: how many past values a step reads (x_k, x_{k-1},
    ... gives 2); ``init``: the value it starts at when left out of x0 (None: it must be given);
    ``scalar``: it evolves without any tensor (a momentum schedule θ_k)."""

    name: str
    depth: int
    init: float | None = None
    scalar: bool = False


Kind = Literal["optimizer", "ode", "layer"]


@dataclass(frozen=True)
class Scheme:
    """An iteration scheme: equations evaluated in order, each computing a state's new value
    ``x_<k+1>`` or a stage. Build with `unroll.compile`; ``str(scheme)`` parses back to an equal
    scheme."""

    equations: tuple[sp.Eq, ...]
    name: str = ""
    description: str = ""
    references: tuple[str, ...] = ()
    parameter_specs: tuple[Parameter, ...] = ()
    inits: FrozenMap = field(default_factory=FrozenMap)
    activation: str | None = None
    startup: str | None = None
    architecture: str | None = (
        None  # what the scheme file says it is (`unroll.identify` derives it)
    )
    notes: str = ""

    # Derived in __post_init__ (never passed in).
    index: sp.Symbol = field(init=False, repr=False, compare=False)
    states: FrozenMap = field(init=False, repr=False, compare=False)
    stages: tuple[str, ...] = field(init=False, repr=False, compare=False)
    parameters: FrozenMap = field(init=False, repr=False, compare=False)
    kind: Kind = field(init=False, repr=False, compare=False)
    is_explicit: bool = field(init=False, repr=False, compare=False)
    implicit_reason: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        set_ = object.__setattr__
        eqs = tuple(self.equations)
        set_(self, "equations", eqs)
        set_(self, "references", tuple(self.references))
        set_(self, "parameter_specs", tuple(self.parameter_specs))
        set_(self, "inits", FrozenMap(self.inits))
        if not eqs:
            raise UnrollError("empty scheme: no equations")
        for eq in eqs:
            if not isinstance(eq, sp.Eq):
                raise UnrollError(
                    f"an equation must be a sympy.Eq, not {type(eq).__name__}: {eq!r}"
                )

        k = self._index_symbol(eqs)
        set_(self, "index", k)
        state_names, stages = self._targets(eqs, k)
        set_(self, "stages", tuple(stages))
        self._check_references(eqs, k, state_names, stages)
        self._check_operator_arguments(eqs, k, state_names, stages)

        # History depth: the oldest value of each state that a step reads.
        oldest = {name: 1 for name in state_names}
        for eq in eqs:
            for ref in ir.state_refs(eq.rhs):
                name = ref.base.label.name
                oldest[name] = min(oldest[name], ir.offset(ref, k))
        for name in self.inits:
            if name not in state_names:
                raise UnrollError(f"states.{name}: {name} is not a state of this scheme")
        scalar = self._scalar_states(eqs, k, state_names, stages)
        set_(
            self,
            "states",
            FrozenMap(
                {n: State(n, 1 - oldest[n], self.inits.get(n), n in scalar) for n in state_names}
            ),
        )
        set_(self, "parameters", self._parameters(eqs, k, stages))
        set_(self, "kind", self._kind(eqs))
        reason = self._implicit_reason(eqs, k)
        set_(self, "is_explicit", reason is None)
        set_(self, "implicit_reason", reason)

    # -- derivation helpers ----------------------------------------------------------------
    @staticmethod
    def _index_symbol(eqs: tuple[sp.Eq, ...]) -> sp.Symbol:
        letters = set()
        for eq in eqs:
            if isinstance(eq.lhs, sp.Indexed):
                if len(eq.lhs.indices) != 1 or len(eq.lhs.indices[0].free_symbols) != 1:
                    raise UnrollError(f"{eq.lhs}: a state is indexed by one letter plus an integer")
                letters |= eq.lhs.indices[0].free_symbols
            elif not isinstance(eq.lhs, sp.Symbol):
                raise UnrollError(
                    f"left-hand side {eq.lhs} must be a state value x[k+1] or a stage symbol"
                )
        if not letters:
            raise UnrollError(
                "no state is advanced: one left-hand side must be a new state like x[k+1]"
            )
        if len(letters) > 1:
            raise UnrollError(
                f"states are indexed by different letters: {sorted(map(str, letters))}"
            )
        k = letters.pop()
        if not k.is_integer:
            raise UnrollError(
                f"the index {k} must be an integer symbol: Symbol({k.name!r}, integer=True)"
            )
        return k

    @staticmethod
    def _targets(eqs, k) -> tuple[list[str], list[str]]:
        states: list[str] = []
        stages: list[str] = []
        for eq in eqs:
            if isinstance(eq.lhs, sp.Indexed):
                name = eq.lhs.base.label.name
                if ir.offset(eq.lhs, k) != 1:
                    raise UnrollError(f"{eq.lhs}: a state's new value is written at {k}+1")
                if name in states:
                    raise UnrollError(f"{name} is computed twice")
                states.append(name)
            else:
                if eq.lhs.name in stages:
                    raise UnrollError(f"stage {eq.lhs.name} is computed twice")
                if eq.lhs in (ir.T, k):
                    raise UnrollError(
                        f"{eq.lhs} is reserved (time or index) and cannot be assigned"
                    )
                stages.append(eq.lhs.name)
        both = set(states) & set(stages)
        if both:
            raise UnrollError(f"{sorted(both)[0]} is both a state and a stage")
        return states, stages

    @staticmethod
    def _check_references(eqs, k, states, stages) -> None:
        for eq in eqs:
            for ref in ir.state_refs(eq.rhs):
                name = ref.base.label.name
                if name not in states:
                    raise UnrollError(
                        f"{ref}: {name} is not a state (no equation computes {name}[{k}+1])"
                    )
                if ir.offset(ref, k) > 1:
                    raise UnrollError(f"{ref} is ahead of the newest value {name}[{k}+1]")
            for fn in ir.applications(eq.rhs):
                if ir.operator_kind(fn) is None:
                    raise UnrollError(f"unknown operator {fn.func} in {fn}")
            bad = [n for n in (sp.zoo, sp.oo, -sp.oo, sp.nan) if eq.rhs.has(n)]
            if bad:
                raise UnrollError(f"a non-finite number {bad[0]} in {equation_text(eq)}")
            misfit = float64_misfit(eq.rhs)
            if misfit is not None:
                raise UnrollError(f"{misfit}, in {equation_text(eq)}")
            for part in sp.preorder_traversal(eq.rhs):
                if part.is_number and part.is_extended_real is False:
                    raise UnrollError(f"{part} is not a real number, in {equation_text(eq)}")
            for sym in ir.plain_symbols(eq.rhs):
                if sym.name in states:
                    raise UnrollError(
                        f"{sym.name} is a state: use it with its index, {sym.name}[{k}]"
                    )

    @staticmethod
    def _check_operator_arguments(eqs, k, states, stages) -> None:
        """An operator (∇F, f, φ, W) applied to parameters alone (φ(b), W y, or a stage computed
        from parameters) has no tensor to act on at run time: an error naming the equation."""
        constant: set[str] = set()  # stages computed from parameters and numbers alone

        def parameters_only(expr: sp.Basic) -> bool:
            names = {s.name for s in ir.plain_symbols(expr)}
            return not ir.state_refs(expr) and not (names & set(stages)) - constant

        for i, eq in enumerate(eqs, 1):
            for fn in ir.applications(eq.rhs):
                if ir.operator_kind(fn) in (None, "elementary") or not fn.args:
                    continue
                arg = fn.args[-1]  # the operand: x of f(t, x)
                if parameters_only(arg):
                    used = sorted(s.name for s in ir.plain_symbols(arg))
                    what = ", ".join(used) if used else "a number"
                    raise UnrollError(
                        f"equation {i}, {equation_text(eq)}: {expr_text(fn)} applies an operator "
                        f"to {what} alone, which is no tensor when the scheme runs; its argument "
                        f"must hold a state or a stage computed from one, e.g. {states[0]}_{k}"
                    )
            if isinstance(eq.lhs, sp.Symbol) and parameters_only(eq.rhs):
                constant.add(eq.lhs.name)

    @staticmethod
    def _scalar_states(eqs, k, states, stages) -> set[str]:
        """States (and stages) that evolve without tensors: no operator, no tensor state."""
        deps: dict[str, sp.Expr] = {}
        for eq in eqs:
            name = eq.lhs.base.label.name if isinstance(eq.lhs, sp.Indexed) else eq.lhs.name
            deps[name] = eq.rhs
        tensor: set[str] = set()
        changed = True
        while changed:
            changed = False
            for name, rhs in deps.items():
                if name in tensor:
                    continue
                uses = {r.base.label.name for r in ir.state_refs(rhs)}
                uses |= {s.name for s in ir.plain_symbols(rhs) if s.name in stages}
                has_op = any(ir.operator_kind(f) != "elementary" for f in ir.applications(rhs))
                if has_op or uses & tensor:
                    tensor.add(name)
                    changed = True
        return {n for n in states if n not in tensor}

    def _parameters(self, eqs, k, stages) -> FrozenMap:
        found: list[str] = []
        for eq in eqs:
            for sym in sorted(ir.plain_symbols(eq.rhs), key=lambda s: s.name):
                if sym in (ir.T, k) or sym.name in stages or sym.name in found:
                    continue
                found.append(sym.name)
        specs = {p.name: p for p in self.parameter_specs}
        for name in specs:
            if name not in found:
                raise UnrollError(f"parameters.{name}: {name} does not appear in the equations")
        ordered = [n for n in specs] + [n for n in found if n not in specs]
        return FrozenMap({n: specs.get(n, Parameter(n)) for n in ordered})

    @staticmethod
    def _kind(eqs) -> Kind:
        kinds = {ir.operator_kind(f) for eq in eqs for f in ir.applications(eq.rhs)}
        if "grad" in kinds:
            return "optimizer"
        if "branch" in kinds:
            return "ode"
        if kinds & {"act", "linear"}:
            return "layer"
        raise UnrollError("the scheme uses no operator: expected ∇F, f(x), φ(...) or W x")

    @staticmethod
    def _implicit_reason(eqs, k) -> str | None:
        computed_at = {}
        for i, eq in enumerate(eqs):
            key = eq.lhs.base.label.name if isinstance(eq.lhs, sp.Indexed) else eq.lhs.name
            computed_at[key] = i
        for i, eq in enumerate(eqs):
            for ref in ir.state_refs(eq.rhs):
                name = ref.base.label.name
                if ir.offset(ref, k) == 1 and computed_at[name] >= i:
                    return (
                        f"{equation_text(sp.Eq(ref, 0)).split(' =')[0]} is used in equation {i + 1} "
                        f"before equation {computed_at[name] + 1} computes it"
                    )
            for sym in ir.plain_symbols(eq.rhs):
                if sym.name in computed_at and computed_at[sym.name] >= i:
                    return (
                        f"stage {sym.name} is used in equation {i + 1} "
                        f"before equation {computed_at[sym.name] + 1} computes it"
                    )
        return None

    # -- value semantics: equal schemes are equal whatever their class (a `unroll.api.Scheme` and
    # the plain one it wraps), so memoised passes share their entries -----------------------
    def _key(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self) if f.compare)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scheme) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    # -- printing --------------------------------------------------------------------------
    def __str__(self) -> str:
        return "\n".join(equation_text(eq) for eq in self.equations)

    def latex(self) -> str:
        """The equations as LaTeX, one per line (``\\\\`` separated)."""
        return " \\\\\n".join(equation_latex(eq) for eq in self.equations)

    def state_value(self, name: str, offset: int) -> sp.Indexed:
        """The SymPy object for ``name_<k+offset>``."""
        return sp.IndexedBase(name)[self.index + offset]

    def defaults(self) -> dict[str, float]:
        """Parameter defaults from the scheme file (those that have one)."""
        return {n: p.default for n, p in self.parameters.items() if p.default is not None}


def canonical_params(scheme: Scheme, params: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword values by the scheme's parameter names (``alpha`` is accepted for ``α``);
    unknown names are an `UnrollError` naming them."""
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in params.items():
        name = GREEK.get(key, key)
        if name not in scheme.parameters:
            known = ", ".join(scheme.parameters) or "none"
            raise UnrollError(
                f"unknown parameter {key!r} for scheme {scheme.name or str(scheme)!r}; its parameters: {known}"
            )
        if name in given:
            raise UnrollError(f"{given[name]!r} and {key!r} both give {name}: give one of them")
        out[name], given[name] = value, key
    return out
