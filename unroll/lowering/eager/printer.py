"""StepIR -> PyTorch source: one step of a scheme as straight-line Python (the eager lowering).

``module_source(ir) -> str``. The module holds one function, printed from the IR the way the
Triton kernels are, so that running a step interprets nothing::

    def step(_h, _c, t, k, _ops, _gain=None):
        x_k, x_km1 = _h                 # every history value, newest first per state
        alpha, beta = _c                # the parameters, in the IR's order
        (_op_F,) = _ops                 # the operators (and φ, last), in OPERATORS order
        o_0 = _op_F(x_k)
        x_kp1 = -alpha*o_0 + beta*(x_k - x_km1) + x_k
        return (x_kp1, x_k)             # the next history: each state's new value, then its past

Expressions go through `sympy.cse` first, and what involves a tensor is printed with ``torch``
functions; an expression of coefficients alone (``exp(-h)``) with `unroll.lowering.eager.functions`,
which takes a Python number (as `Scheme.run` gets them) or a tensor (a network's parameter).

Operators are called as the lowering's caller provides them: in a network's layer form
(``ir.layer``) a branch module takes x, elsewhere a branch callable takes (t, x) as torchdiffeq's
do, an autonomous f(x) getting the step time t. With ``_gain`` (stochastic depth) the updates read
every branch output scaled by it, while later calls read the unscaled value.

Every name in the source is an IR leaf's identifier (`unroll.ir.names`) or one of the module's own,
which start with an underscore; no text of the user's reaches it.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.pycode import PythonCodePrinter

from unroll import __version__
from unroll.errors import UnrollError
from unroll.ir import vocabulary as vocab
from unroll.ir.names import identifier
from unroll.ir.step import StepIR

TEMPLATE_VERSION = 1  # bump when the printed text changes for the same IR
ELEMENTARY = ("exp", "log", "sqrt", "sin", "cos", "tanh")  # torch.<name> / functions.<name>


class TorchStepPrinter(PythonCodePrinter):
    """Prints IR expressions as Python over torch values. ``tensors``: the symbols that hold
    tensors (history values, operator outputs, host values), which decide between ``torch.exp``
    and the dispatching `unroll.lowering.eager.functions.exp`."""

    def __init__(self, tensors: set[sp.Symbol]):
        super().__init__({"fully_qualified_modules": False, "standard": "python3"})
        self.tensors = tensors

    def _is_tensor(self, expr: sp.Basic) -> bool:
        return bool(expr.free_symbols & self.tensors)

    def _call(self, name: str, arg: sp.Basic) -> str:
        module = "torch" if self._is_tensor(arg) else "_fn"
        return f"{module}.{name}({self._print(arg)})"

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        return expr.name  # an IR identifier, or a CSE temporary

    def _print_Float(self, expr: sp.Float) -> str:
        return repr(float(expr))

    def _print_Exp1(self, expr) -> str:
        return repr(float(sp.E))

    def _print_Pi(self, expr) -> str:
        return repr(float(sp.pi))

    def _print_Abs(self, expr: sp.Abs) -> str:
        return f"abs({self._print(expr.args[0])})"  # torch tensors and numbers alike

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        base, e = expr.base, expr.exp
        if e == sp.S.Half:
            return self._call("sqrt", base)
        if e == -sp.S.Half:
            return f"1/{self._call('sqrt', base)}"
        b = self.parenthesize(base, PRECEDENCE["Pow"])
        if e.is_Integer and int(e) < 0:
            return f"1/{b}**{-int(e)}" if int(e) != -1 else f"1/{b}"
        exp = self._print(e) if e.is_Integer else f"({self._print(e)})"
        return f"{b}**{exp}"

    def _print_Function(self, expr: sp.Function) -> str:
        if expr.func == vocab.ACT:
            return f"_phi({self._print(expr.args[0])})"
        name = type(expr).__name__
        if name in ELEMENTARY:
            return self._call(name, expr.args[0])
        raise UnrollError(f"no PyTorch translation for {name} in {expr}")


for _name in ELEMENTARY:  # PythonCodePrinter binds math.* printers for these: use ours
    setattr(TorchStepPrinter, f"_print_{_name}", TorchStepPrinter._print_Function)


def _operator_names(ir: StepIR) -> tuple[str, ...]:
    """The callables ``_ops`` holds, in order: each operator once, then φ when the step uses it."""
    return tuple(ir.operators()) + (("φ",) if ir.uses_activation else ())


def _local(op: str) -> str:
    return {"φ": "_phi", "∇F": "_grad_F"}.get(op) or f"_op_{identifier(op)}"


class _Emitter:
    """Lines of a function body; CSE temporaries are printed just before their first use.

    With ``fuse``, a sum c_0 + Σ c_i T_i (the c_i of numbers alone, the T_i tensors) is
    printed as one fresh tensor and in-place accumulation, ``y = torch.add(T_1, T_2,
    alpha=c_2); y.add_(T_3, alpha=c_3); ...``, each T_i that is not a value already (a sum
    itself, a product) computed first: one pass over memory per term and one allocation, where
    the plain expression allocates a tensor per operation. The sum keeps the form the scheme
    gives it (β(x_k − x_<k-1>) is not expanded into βx_k − βx_<k-1>, which would lose the exact
    zero of x_k − x_<k-1> at the start). The c_i must then be Python numbers (``alpha=`` takes
    no tensor)."""

    def __init__(
        self, printer: TorchStepPrinter, temps: list[tuple[sp.Symbol, sp.Expr]], fuse: bool
    ):
        self.printer = printer
        self.temps = dict(temps)
        self.fuse = fuse
        self.done: set[sp.Symbol] = set()
        self.lines: list[str] = []
        self.count = 0

    def need(self, expr: sp.Basic) -> None:
        for sym in sorted(expr.free_symbols & set(self.temps), key=lambda s: s.name):
            if sym not in self.done:
                self.need(self.temps[sym])
                self.done.add(sym)
                self._emit(sym.name, self.temps[sym])
                if self.printer._is_tensor(self.temps[sym]):
                    self.printer.tensors.add(sym)

    def assign(self, name: str, expr: sp.Expr, into: tuple[str, sp.Symbol] | None = None) -> None:
        """``name = expr``; with ``into`` = (buffer, old), a sum is computed in the memory of the
        tensor ``buffer`` holds (None: a fresh one), which is the value of the symbol ``old``:
        ``old`` is read before the buffer is first written, never after."""
        self.need(expr)
        self._emit(name, expr, into)

    def value(self, expr: sp.Expr) -> str:
        """``expr`` as a name or an expression to pass on (sums computed first when fusing)."""
        self.need(expr)
        if self.fuse and _terms(expr, self.printer.tensors) is not None:
            name = self._fresh()
            self._emit(name, expr)
            return name
        return self.printer.doprint(expr)

    def _fresh(self) -> str:
        self.count += 1
        return f"_s{self.count}"

    def _emit(self, name: str, expr: sp.Expr, into: tuple[str, sp.Symbol] | None = None) -> None:
        terms = _terms(expr, self.printer.tensors) if self.fuse else None
        if terms is None:
            self.lines.append(f"{name} = {self.printer.doprint(expr)}")
            return
        c0, parts = terms
        show = self.printer.doprint
        one = next((i for i, (c, _) in enumerate(parts) if c == 1), None)
        if one is not None:  # start from a term of coefficient 1: no multiplication
            parts = [parts[one], *parts[:one], *parts[one + 1 :]]
        first = parts[:2] if parts[0][0] == 1 else parts[:1]  # the terms the first call reads
        if into is not None and any(into[1] in t.free_symbols for _, t in parts[len(first) :]):
            into = None  # the old value is read after the first write: a fresh tensor then
        # Sums inside the terms, computed first; the one the first call reads may share the
        # buffer (the first call reads it and writes the sum there, element by element).
        inner = [i for i, (_, t) in enumerate(parts) if not isinstance(t, sp.Symbol)]
        shared = next((i for i in inner if i < len(first)), None) if into else None
        if shared is not None and any(
            into[1] in t.free_symbols for j, (_, t) in enumerate(first) if j != shared
        ):
            shared = None  # the first call reads the old value beside it: write only the sum
        named: list[tuple[sp.Expr, str]] = [
            (c, t.name if isinstance(t, sp.Symbol) else "") for c, t in parts
        ]
        for i in [*(i for i in inner if i != shared), *([shared] if shared is not None else [])]:
            sub = self._fresh()
            self._emit(sub, parts[i][1], into if i == shared else None)
            named[i] = (parts[i][0], sub)
        out = f", out={into[0]}" if into else ""
        (c1, t1), rest = named[0], named[1:]
        if c1 != 1:
            self.lines.append(f"{name} = torch.mul({t1}, {show(c1)}{out})")
        elif rest:
            (c2, t2), rest = rest[0], rest[1:]
            self.lines.append(f"{name} = {_combine('torch', t1, t2, c2, show, out=out)}")
        else:  # one tensor plus a number
            self.lines.append(f"{name} = {show(sp.Symbol(t1, real=True) + c0)}")
            return
        for c, t in rest:
            self.lines.append(_combine(f"{name}", None, t, c, show, inplace=True))
        if c0 != 0:
            self.lines.append(f"{name}.add_({show(c0)})")


def _combine(
    on: str, a: str | None, b: str, c: sp.Expr, show, inplace: bool = False, out: str = ""
) -> str:
    """``a + c·b`` as one call: torch.add/sub(a, b[, alpha=c][, out=...]), or
    on.add_/sub_(b[, alpha=c])."""
    op, c = ("sub", -c) if c.could_extract_minus_sign() else ("add", c)
    alpha = "" if c == 1 else f", alpha={show(c)}"
    if inplace:
        return f"{on}.{op}_({b}{alpha})"
    return f"{on}.{op}({a}, {b}{alpha}{out})"


def _split(term: sp.Expr, tensors: set[sp.Symbol]) -> tuple[sp.Expr, sp.Expr]:
    """(c, T) with term = c·T, c free of tensors."""
    c, t = term.as_independent(*tensors, as_Add=False)
    return c, t


def _terms(expr: sp.Expr, tensors: set[sp.Symbol]) -> tuple | None:
    """(c_0, [(c_i, T_i)]) for a sum with at least two parts (or one scaled sum), the c_i free
    of tensors; None for what is printed as it is."""
    if not expr.free_symbols & tensors:
        return None
    if isinstance(expr, sp.Add):
        c0 = sp.Add(*(a for a in expr.args if not a.free_symbols & tensors))
        parts = [_split(a, tensors) for a in expr.args if a.free_symbols & tensors]
        return (c0, parts) if len(parts) + (c0 != 0) >= 2 else None
    if isinstance(expr, sp.Mul):
        c, t = _split(expr, tensors)
        if c != 1 and isinstance(t, sp.Add):  # β(x_k − x_<k-1>): the sum, then one scaling
            return sp.S.Zero, [(c, t)]
    return None


def _unpack(names: list[str], source: str) -> str:
    if len(names) == 1:
        return f"({names[0]},) = {source}"
    return f"{', '.join(names)} = {source}"


def _body(
    ir: StepIR, fuse: bool, into: bool = False
) -> tuple[list[str], list[str], list[str], list[bool]]:
    """The lines of one step: (all of them, those up to the operator outputs, the names of the
    host values and outputs that a fused update reads, and per state whether its new value is a
    tensor of its own). With ``into``, a state's new value may be computed in the memory of its
    oldest value, the one the step drops (``_b<i>``, when the caller hands it over)."""
    branch_gain = ir.layer and any(c.kind == "branch" for c in ir.calls)
    tensors = {h.symbol for h in ir.history} | {c.symbol for c in ir.calls}
    tensors |= {a.symbol for a in ir.host}
    if fuse:  # Scheme.run hands the time over as a tensor (torchdiffeq's): never an alpha=
        tensors.add(_time(ir))
    printer = TorchStepPrinter(tensors)

    # Updates read scaled branch outputs under stochastic depth: give those their own symbols,
    # so CSE never shares a subexpression between a call's argument and an update.
    scaled = {
        c.symbol: sp.Symbol(f"{c.name}__g", real=True) for c in ir.calls if c.kind == "branch"
    }
    updates = [u.expr.xreplace(scaled) if branch_gain else u.expr for u in ir.updates]
    # Each call's arguments, as the callable takes them: a branch in a layer takes x; elsewhere
    # (t, x), with the step time for an autonomous f(x).
    call_args = []
    for c in ir.calls:
        if c.kind == "branch" and not ir.layer:
            call_args.append([c.time if c.time is not None else _time(ir), c.arg])
        else:
            call_args.append([c.arg])
    exprs = [a.expr for a in ir.host] + [e for args in call_args for e in args] + updates
    temps, reduced = sp.cse(exprs, symbols=sp.numbered_symbols("_t", real=True), order="none")
    reduced_iter = iter(reduced)
    body = _Emitter(printer, temps, fuse)

    for a in ir.host:
        body.assign(a.name, next(reduced_iter))
    for c, args in zip(ir.calls, call_args, strict=True):
        printed = []
        for _ in args:
            printed.append(body.value(next(reduced_iter)))
        body.lines.append(f"{c.name} = {_local(c.op)}({', '.join(printed)})  # {c.op}")
    if branch_gain:
        for c in ir.calls:
            if c.kind == "branch":
                g = scaled[c.symbol].name
                body.lines.append(f"{g} = {c.name} if _gain is None else {c.name} * _gain")
                printer.tensors.add(scaled[c.symbol])
    prologue = list(body.lines)
    read = [a.name for a in ir.host]
    read += [
        scaled[c.symbol].name if branch_gain and c.symbol in scaled else c.name for c in ir.calls
    ]
    remaining = list(reduced_iter)
    closure = dict(temps)
    fresh = {}
    for i, u in enumerate(ir.updates):
        expr = remaining[i]
        target = None
        if into and u.state is not None:
            index = next(j for j, s in enumerate(ir.states) if s.name == u.state)
            state = ir.states[index]
            old = state.history[-1].symbol  # the value this step drops
            later = set().union(*(_reads(e, closure) for e in remaining[i + 1 :]))
            if not state.scalar and old not in later:
                target = (f"_b{index}", old)
        fresh[u.state] = fuse and _terms(expr, printer.tensors) is not None
        body.assign(u.name, expr, target)
    owned = [bool(fresh.get(s.name)) and not s.scalar for s in ir.states]
    return body.lines, prologue, read, owned


def _guarded(lines: list[str], ir: StepIR) -> list[str]:
    """``lines`` with, right after the last operator call, every buffer checked against the
    calls' outputs (`unroll.lowering.eager.functions.unshared`): an output that views a
    buffer's memory otherwise would be overwritten while it is read."""
    outputs = [c.name for c in ir.calls]
    if not outputs:
        return lines
    last = max(
        i for i, line in enumerate(lines) if any(line.startswith(f"{o} = ") for o in outputs)
    )
    check = [f"_b{i} = _fn.unshared(_b{i}, ({', '.join(outputs)},))" for i in range(len(ir.states))]
    return lines[: last + 1] + check + lines[last + 1 :]


def _reads(expr: sp.Expr, temps: dict) -> set[sp.Symbol]:
    """The symbols ``expr`` reads, through the CSE temporaries it uses."""
    out: set[sp.Symbol] = set()
    todo = list(expr.free_symbols)
    while todo:
        sym = todo.pop()
        if sym in out:
            continue
        out.add(sym)
        if sym in temps:
            todo += list(temps[sym].free_symbols)
    return out


def module_source(ir: StepIR) -> str:
    """The PyTorch module of one step of ``ir`` (see the module docstring for its shape)."""
    if not ir.is_explicit:
        raise UnrollError(
            f"scheme {ir.label!r} is implicit ({ir.scheme.implicit_reason}); "
            "running implicit schemes is not supported yet"
        )
    operators = _operator_names(ir)
    lines, prologue, read, _ = _body(ir, fuse=False)
    numbers, _, _, _ = _body(ir, fuse=True)
    into, _, _, owned = _body(ir, fuse=True, into=True)

    new = {a.state: a.name for a in (*ir.host, *ir.updates) if a.state is not None}
    history = []
    for s in ir.states:
        history.append(new[s.name])
        history += [h.name for h in s.history[:-1]]
    params = [c.name for c in ir.parameters]
    time, index_name = (c.name for c in ir.coefficients if c.source in ("time", "index"))
    head = [_unpack([h.name for h in ir.history], "_h")]
    if params:
        head.append(_unpack(params, "_c"))
    if operators:
        head.append(_unpack([_local(op) for op in operators], "_ops"))
    back = [f"return ({', '.join(history)},)"]
    outputs = head + prologue + [f"return ({', '.join(read)},)" if read else "return ()"]
    doc = [a_text(a) for a in ir.host] + [c.text() for c in ir.calls]
    doc += [a_text(u) for u in ir.updates]
    signature = f"(_h, _c, {time}, {index_name}, _ops, _gain=None):\n"

    def function(name: str, doc: str, body: list[str], spare: bool = False) -> str:
        sig = signature.replace("_gain=None)", "_gain=None, _spare=())") if spare else signature
        return f'def {name}{sig}    """{doc}"""\n' + "".join(f"    {line}\n" for line in body)

    return (
        f"# unroll eager step: generated by unroll {__version__} (template {TEMPLATE_VERSION}), "
        "do not edit.\n"
        '"""One step of a scheme, printed from its step IR::\n\n'
        + "".join(f"    {line}\n" for line in doc)
        + '"""\n\n'
        "import torch\n\n"
        "from unroll.lowering.eager import functions as _fn\n\n"
        f"HISTORY = {tuple(h.name for h in ir.history)!r}\n"
        f"PARAMETERS = {tuple(params)!r}\n"
        f"OPERATORS = {operators!r}\n"
        f"FRESH = {tuple(owned)!r}  # per state: its new value is a tensor of its own\n\n\n"
        + function(
            "step",
            "The next history (HISTORY's layout) from this one, the parameters (PARAMETERS),\n"
            "    the time, the index and the operators (OPERATORS); ``_gain`` scales the branch\n"
            "    outputs the updates read (stochastic depth).",
            head + lines + back,
        )
        + "\n\n"
        + function(
            "step_numbers",
            "`step` for parameters that are Python numbers: linear combinations accumulate in\n"
            "    place in one fresh tensor each.",
            head + numbers + back,
        )
        + "\n\n"
        + function(
            "step_into",
            "`step_numbers` that may compute a state's new value in the memory of the value\n"
            "    the step drops, handed over in ``_spare`` (one per state, None for none): the\n"
            "    caller gives only tensors it owns that nothing else holds. FRESH says which\n"
            "    states' new values are tensors of their own.",
            head
            + [_unpack([f"_b{i}" for i in range(len(ir.states))], "_spare")]
            + _guarded(into, ir)
            + back,
            spare=True,
        )
        + "\n\n"
        + function(
            "outputs",
            "What a fused update reads besides the history: the host values, then the\n"
            "    operator outputs (scaled by ``_gain`` where the updates read them so).",
            outputs,
        )
    )


def a_text(a) -> str:
    """An assignment as docstring text: identifiers, numbers, operators and φ only."""
    return f"{a.name} = {a.expr}"


def _time(ir: StepIR) -> sp.Symbol:
    return next(c.symbol for c in ir.coefficients if c.source == "time")
