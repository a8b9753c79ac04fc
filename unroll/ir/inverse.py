"""The inverse of a scheme: its step solved for the oldest state values (a SymPy pass).

``inverse(scheme) -> Scheme``. One step of an explicit scheme reads each state's ``d`` newest
values and writes its next one; the inverse step reads the ``d`` newest values *after* the step
and gives back the oldest one before it. It is an ordinary `Scheme` that runs backwards in its
own index: for a state of history depth ``d`` the forward values x_<k+1>, x_k, ..., x_<k+1-d>
are the inverse's y_<j+1-d>, ..., y_j, y_<j+1>, so

- the inverse's history is the forward history reversed, state by state: after ``N`` forward
  steps from [x_0, ...], start the inverse from [x_<N+1-d>, ..., x_N] and ``N`` inverse steps
  end at the reversed start (`unroll.lowering.nn.reversible.HistoryLayout` does this);
- the time runs backwards: ``t`` in the scheme is ``-t`` in the inverse, so the inverse step
  that undoes forward step k runs at time −t_k (`unroll.lowering.eager.run.run` with
  ``t0 = -(t0 + (N - 1) h)`` retraces a forward run of N steps).

LM-ResNet, ``u_<n+1> = (1 − κ) u_n + κ u_<n-1> + h f(u_n)``, gives
``u_<n+1> = (u_<n-1> − (1 − κ) u_n − h f(u_n))/κ``; RevNet,
``X_<k+1> = X_k + f(Y_k); Y_<k+1> = Y_k + g(X_<k+1>)``, gives
``Y_<k+1> = Y_k − g(X_k); X_<k+1> = X_k − f(Y_<k+1>)``.

How: from the step IR (`unroll.ir.step.build`), every operator output o_i = op(arg) is an opaque
value; the state updates are solved with `sympy.solve` for the oldest values in terms of the
newer ones and the o_i; an o_i can then be computed once its argument is known, either as
written (its states already recovered) or after substituting the solution (RevNet's
g(X_k + f(Y_k)) is g(X_<k+1>)). The step is refused, with an `UnrollError` saying why, when it
is implicit, when an oldest value enters only through an operator (ab2's f(t − h, x_<k-1>)) or
through φ, when the solution would itself need the value it solves for (the inverse of forward
Euler is backward Euler: implicit), when the solution is not unique, or when the coefficient of
the oldest values vanishes at the given parameters (LM-ResNet at κ = 0).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import sympy as sp

from unroll.errors import UnrollError
from unroll.frontend.printing import expr_text
from unroll.frontend.scheme import Scheme, canonical_params
from unroll.ir import activations
from unroll.ir import vocabulary as vocab
from unroll.ir.step import Call, HistoryValue, StepIR, build


def inverse(scheme: Scheme, **params: Any) -> Scheme:
    """The inverse step of ``scheme`` as a `Scheme` (see the module docstring): same
    parameters (specs kept, so trainable coefficients stay trainable), same operators, the
    forward history reversed. ``params`` (and the scheme's defaults) are only checked: the
    inverse keeps its coefficients symbolic, and it is refused where the given values make the
    oldest values' coefficient vanish. Raises `UnrollError` naming the reason a scheme has no
    explicit inverse."""
    return _inversion(build(scheme)).scheme(_values(scheme, params))


def invertibility_condition(scheme: Scheme) -> sp.Expr:
    """The determinant of the step's Jacobian in its oldest values (operators held fixed), in
    the scheme's parameter symbols: κ for LM-ResNet, β for heavy ball, 1 for RevNet. The
    inverse exists where it is nonzero. Raises `UnrollError` as `inverse` does."""
    return _inversion(build(scheme)).determinant()


def _values(scheme: Scheme, params: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = dict(scheme.defaults())
    values.update(canonical_params(scheme, params))
    return values


@functools.lru_cache(maxsize=256)
def _inversion(ir: StepIR) -> _Inversion:
    """The solve of ``ir``'s step, memoised (step IRs are frozen values)."""
    return _Inversion(ir)


class _Inversion:
    """The solve, once per step IR: `solution` maps each oldest value to its expression in
    the newer values, the coefficients and the operator outputs."""

    def __init__(self, ir: StepIR):
        self.ir = ir
        self.label = ir.label
        self.scheme_in = ir.scheme
        if not ir.is_explicit:
            raise UnrollError(
                f"scheme {self.label!r} is implicit ({ir.scheme.implicit_reason}): "
                "an implicit step has no explicit inverse"
            )
        index = next(c for c in ir.coefficients if c.source == "index")
        if any(index.symbol in e.free_symbols for e in ir.expressions()):
            raise UnrollError(
                f"scheme {self.label!r} reads its index {index.ref}: the inverse would depend on "
                "the depth it is run to"
            )
        for s in ir.states:
            if s.depth == 0:
                raise UnrollError(
                    f"scheme {self.label!r}: state {s.name} is written but never read, so one "
                    f"step does not determine {s.name}'s value before it"
                )
        self.oldest: dict[sp.Symbol, HistoryValue] = {
            s.history[-1].symbol: s.history[-1] for s in ir.states
        }
        self.calls: dict[sp.Symbol, Call] = {c.symbol: c for c in ir.calls}
        stages: dict[sp.Symbol, sp.Expr] = {}
        for a in ir.host:
            if a.state is None:
                stages[a.symbol] = a.expr.xreplace(stages)
        self.new = {a.symbol: a for a in (*ir.host, *ir.updates) if a.state is not None}
        self.equations = [a.symbol - a.expr.xreplace(stages) for a in self.new.values()]
        self._check_occurrences()
        unknowns = list(self.oldest)
        # The Jacobian of the new values in the oldest ones, the operator outputs held fixed:
        # its determinant is the oldest values' coefficient (κ for LM-ResNet).
        values = [a.expr.xreplace(stages) for a in self.new.values()]
        det = sp.factor(sp.Matrix(values).jacobian(unknowns).det())
        if det == 0:
            raise UnrollError(
                f"scheme {self.label!r}: the step does not determine "
                f"{self._names(unknowns)} (the Jacobian in them is singular)"
            )
        self.det = det
        names = self._names(unknowns)
        try:
            solutions = sp.solve(self.equations, unknowns, dict=True)
        except NotImplementedError:  # SymPy has no method for this equation
            solutions = []
        if len(solutions) != 1 or set(solutions[0]) != set(unknowns):
            # SymPy solves over the complex numbers: tanh and x³ give several branches even
            # where the real step is one-to-one, so say what was found, not what the step is.
            found = (
                f"{len(solutions)} closed-form solutions (branches over the complex numbers)"
                if len(solutions) > 1
                else "no closed-form solution"
            )
            raise UnrollError(
                f"scheme {self.label!r}: solving the step for {names} gives {found}; "
                "unroll inverts steps with exactly one, such as those linear in the oldest state"
            )
        self.solution: dict[sp.Symbol, sp.Expr] = solutions[0]
        self.order, self.ready = self._schedule()

    # -- checks -------------------------------------------------------------------------------
    def _names(self, symbols) -> str:
        return ", ".join(expr_text(self.ir.scheme_form(s)) for s in symbols)

    def _check_occurrences(self) -> None:
        """Every oldest value must enter the updates outside φ and outside the operators."""
        activation = self.scheme_in.activation
        for u, value in self.oldest.items():
            shown = expr_text(value.ref)
            for eq in self.equations:
                for app in vocab.applications(eq):
                    if app.func == vocab.ACT and u in app.free_symbols:
                        raise UnrollError(
                            f"scheme {self.label!r}: {shown} enters through φ "
                            f"({expr_text(self.ir.scheme_form(app))}); {_activation_reason(activation)}"
                        )
            if not any(u in eq.free_symbols for eq in self.equations):
                inside = [c for c in self.ir.calls if u in c.arg.free_symbols]
                where = expr_text(self.ir.scheme_form(inside[0].symbol)) if inside else "no update"
                raise UnrollError(
                    f"scheme {self.label!r}: {shown} enters the step only through {where}; "
                    f"solving for it would need the inverse of {inside[0].op if inside else 'it'}"
                )

    def determinant(self) -> sp.Expr:
        return self.ir.scheme_form(self.det)

    def _check_values(self, values: Mapping[str, Any]) -> None:
        subs = {
            c.symbol: sp.nsimplify(values[c.ref.name]) for c in self.ir.parameters
            if isinstance(values.get(c.ref.name), (int, float)) and not isinstance(values[c.ref.name], bool)
        }  # fmt: skip
        at = self.det.xreplace(subs)
        if at.is_number and at == 0:
            given = ", ".join(
                f"{c.ref} = {values[c.ref.name]}" for c in self.ir.parameters
                if c.symbol in self.det.free_symbols and c.symbol in subs
            )  # fmt: skip
            raise UnrollError(
                f"scheme {self.label!r} is not invertible at {given}: the coefficient of its "
                f"oldest value{'s' if len(self.oldest) > 1 else ''} "
                f"({self._names(self.oldest)}), {expr_text(self.determinant())}, vanishes there"
            )

    # -- the order of the inverse step ----------------------------------------------------------
    def _schedule(self) -> tuple[list[sp.Symbol], dict[sp.Symbol, tuple[sp.Expr, sp.Expr | None]]]:
        """The oldest values in the order the inverse computes them, and each operator call the
        inverse makes with its argument (and time): as written where its states are already
        recovered, else with the solution substituted."""
        known = {h.symbol for h in self.ir.history if h.symbol not in self.oldest}
        known |= set(self.new) | {c.symbol for c in self.ir.coefficients}
        done: list[sp.Symbol] = []
        ready: dict[sp.Symbol, tuple[sp.Expr, sp.Expr | None]] = {}

        def available(expr: sp.Expr | None) -> bool:
            return expr is None or all(
                s in known or s in ready or s in done for s in expr.free_symbols
            )

        while len(done) < len(self.oldest):
            progress = False
            for c in self.ir.calls:  # as written: reads recovered values
                if c.symbol not in ready and available(c.arg) and available(c.time):
                    ready[c.symbol], progress = (c.arg, c.time), True
            for u in self.oldest:
                if u not in done and available(self.solution[u]):
                    done.append(u)
                    progress = True
            if progress:
                continue
            for c in self.ir.calls:  # with the solution substituted
                arg = sp.simplify(c.arg.xreplace(self.solution))
                time = None if c.time is None else sp.simplify(c.time.xreplace(self.solution))
                if (
                    c.symbol not in ready
                    and set(arg.free_symbols).isdisjoint(self.oldest)
                    and (available(arg) and available(time))
                ):
                    ready[c.symbol] = (arg, time)
                    break
            else:
                u = next(u for u in self.oldest if u not in done)
                needs = sorted(
                    (
                        expr_text(self.ir.scheme_form(s))
                        for s in self.solution[u].free_symbols
                        if s in self.calls and s not in ready
                    ),
                    key=len,
                )
                more = f" (and {len(needs) - 1} more)" if len(needs) > 1 else ""
                oldest = expr_text(self.ir.scheme_form(u))
                raise UnrollError(
                    f"scheme {self.label!r}: its inverse is implicit: solving the step for "
                    f"{oldest} needs {needs[0]}{more}, which depends on {oldest} itself"
                )
        return done, ready

    # -- the inverse as a scheme ----------------------------------------------------------------
    def scheme(self, values: Mapping[str, Any]) -> Scheme:
        self._check_values(values)
        k = self.scheme_in.index
        refs: dict[sp.Symbol, sp.Basic] = {}
        for s in self.ir.states:
            d = s.depth
            for h in s.history:  # forward offset -lag -> inverse offset 2 - d + lag
                refs[h.symbol] = sp.IndexedBase(s.name)[k + 2 - d + h.lag]
        for sym, a in self.new.items():  # forward offset 1 -> inverse offset 1 - d
            d = self.scheme_in.states[a.state].depth
            refs[sym] = sp.IndexedBase(a.state)[k + 1 - d]
        for c in self.ir.coefficients:
            refs[c.symbol] = -vocab.T if c.source == "time" else c.ref

        def mapped(expr: sp.Expr) -> sp.Expr:
            subs = dict(refs)
            for sym in self._calls_in(expr):
                arg, time = self.ready[sym]
                fn = sp.Function(self.calls[sym].op)
                subs[sym] = fn(mapped(time), mapped(arg)) if time is not None else fn(mapped(arg))
            return expr.xreplace(subs)

        equations = []
        for u in self.order:
            value = self.oldest[u]
            rhs = sp.factor_terms(sp.together(mapped(self.solution[u])))
            equations.append(sp.Eq(sp.IndexedBase(value.state)[k + 1], rhs, evaluate=False))
        name = self.scheme_in.name
        out = Scheme(
            tuple(equations),
            name=f"{name}_inverse" if name else "",
            description=(
                f"The inverse step of {name or 'the scheme'}: it runs the scheme backwards, "
                "its history the forward one reversed, in time -t."
            ),
            references=self.scheme_in.references,
            parameter_specs=tuple(self.scheme_in.parameters.values()),
            activation=self.scheme_in.activation,
            notes=""
            if self.det.is_number
            else f"Defined where {expr_text(self.determinant())} ≠ 0.",
        )
        for s in self.ir.states:
            if out.states[s.name].depth != s.depth:  # pragma: no cover - det ≠ 0 prevents it
                raise UnrollError(
                    f"scheme {self.label!r}: the inverse reads {out.states[s.name].depth} values "
                    f"of {s.name}, not {s.depth}"
                )
        return out

    def _calls_in(self, expr: sp.Expr) -> list[sp.Symbol]:
        return [s for s in expr.free_symbols if s in self.calls]


def _activation_reason(name: str | None) -> str:
    """Why the inverse cannot pass through φ."""
    if name is not None:
        try:
            act = activations.get(name)
        except UnrollError:
            act = None
        if (
            act is not None
            and sp.is_strictly_increasing(act.expr, sp.Reals, activations.v) is False
        ):
            return f"{name} is not invertible (not one-to-one), so the step loses it"
    shown = f"φ = {name}" if name else "φ"
    return f"solving for it would need the inverse of {shown}, which a scheme cannot express"
