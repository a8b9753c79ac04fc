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

    def assign(self, name: str, expr: sp.Expr) -> None:
        self.need(expr)
        self._emit(name, expr)

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

    def _emit(self, name: str, expr: sp.Expr) -> None:
        terms = _terms(expr, self.printer.tensors) if self.fuse else None
        if terms is None:
            self.lines.append(f"{name} = {self.printer.doprint(expr)}")
            return
        c0, parts = terms
        show = self.printer.doprint
        named = []
        for c, t in parts:
            if isinstance(t, sp.Symbol):
                named.append((c, t.name))
            else:
                sub = self._fresh()
                self._emit(sub, t)
                named.append((c, sub))
        one = next((i for i, (c, _) in enumerate(named) if c == 1), None)
        if one is not None:  # start from a term of coefficient 1: no multiplication
            named = [named[one], *named[:one], *named[one + 1 :]]
        (c1, t1), rest = named[0], named[1:]
        if c1 != 1:
            self.lines.append(f"{name} = torch.mul({t1}, {show(c1)})")
        elif rest:
            (c2, t2), rest = rest[0], rest[1:]
            self.lines.append(f"{name} = {_combine('torch', t1, t2, c2, show)}")
        else:  # one tensor plus a number
            self.lines.append(f"{name} = {show(sp.Symbol(t1, real=True) + c0)}")
            return
        for c, t in rest:
            self.lines.append(_combine(f"{name}", None, t, c, show, inplace=True))
        if c0 != 0:
            self.lines.append(f"{name}.add_({show(c0)})")


def _combine(on: str, a: str | None, b: str, c: sp.Expr, show, inplace: bool = False) -> str:
    """``a + c·b`` as one call: torch.add/sub(a, b[, alpha=c]), or on.add_/sub_(b[, alpha=c])."""
    op, c = ("sub", -c) if c.could_extract_minus_sign() else ("add", c)
    alpha = "" if c == 1 else f", alpha={show(c)}"
    if inplace:
        return f"{on}.{op}_({b}{alpha})"
    return f"{on}.{op}({a}, {b}{alpha})"


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


def _body(ir: StepIR, fuse: bool) -> tuple[list[str], list[str], list[str]]:
    """The lines of one step: (all of them, those up to the operator outputs, and the names of
    the host values and outputs that a fused update reads)."""
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
    for u in ir.updates:
        body.assign(u.name, next(reduced_iter))
    return body.lines, prologue, read


def module_source(ir: StepIR) -> str:
    """The PyTorch module of one step of ``ir`` (see the module docstring for its shape)."""
    if not ir.is_explicit:
        raise UnrollError(
            f"scheme {ir.label!r} is implicit ({ir.scheme.implicit_reason}); "
            "running implicit schemes is not supported yet"
        )
    operators = _operator_names(ir)
    lines, prologue, read = _body(ir, fuse=False)
    numbers, _, _ = _body(ir, fuse=True)

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

    def function(name: str, doc: str, body: list[str]) -> str:
        return f'def {name}{signature}    """{doc}"""\n' + "".join(f"    {line}\n" for line in body)

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
        f"OPERATORS = {operators!r}\n\n\n"
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
