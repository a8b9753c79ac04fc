"""The front end: `compile`, `load` and the bundled scheme library (`schemes`).

Everything a user can hand to unroll becomes a `Scheme` here: scheme text, SymPy equations, or a
YAML scheme file (read with ``yaml.safe_load`` and checked key by key).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import sympy as sp
import yaml

from unroll.errors import UnrollError, at
from unroll.frontend.parse import GREEK, parse
from unroll.frontend.scheme import FrozenMap, Parameter, Scheme
from unroll.ir import activations

SCHEME_DIR = Path(__file__).resolve().parent / "schemes"

_TOP_KEYS = {
    "name": str,
    "description": str,
    "references": (list, str),
    "equations": str,
    "parameters": dict,
    "states": dict,
    "activation": str,
    "startup": str,
    "architecture": str,
    "notes": str,
}
_PARAM_KEYS = {"default": (int, float), "trainable": bool, "bounds": list, "shape": str}
_STATE_KEYS = {"init": (int, float)}


def _type_name(t) -> str:
    names = {
        str: "a string",
        list: "a list",
        dict: "a mapping",
        bool: "true or false",
        int: "a number",
        float: "a number",
    }
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join(dict.fromkeys(names[x] for x in ts))


def _check(where: str, value: Any, expected) -> None:
    ok = isinstance(value, expected)
    if (
        ok
        and isinstance(value, bool)
        and bool not in (expected if isinstance(expected, tuple) else (expected,))
    ):
        ok = False  # YAML 'true' is not a number
    if not ok:
        raise UnrollError(f"{where}: expected {_type_name(expected)}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UnrollError(f"{where}: a non-finite number {value!r}")


def _number(where: str, value: Any) -> float | None:
    if value is None:
        return None
    _check(where, value, (int, float))
    return float(value)


def from_mapping(data: Any, source: str = "<mapping>", text: str | None = None) -> Scheme:
    """A scheme from the parsed contents of a YAML scheme file; errors name ``source`` and the key
    (and, for the equations, the line of the file's ``text`` where they begin, since a parse
    error counts lines within the equations)."""
    if not isinstance(data, dict):
        raise UnrollError(
            f"{source}: a scheme file holds a mapping of keys, not {type(data).__name__}"
        )
    for key, value in data.items():
        if key not in _TOP_KEYS:
            raise UnrollError(f"{source}: unknown key {key!r}; known keys: {', '.join(_TOP_KEYS)}")
        _check(f"{source}: {key}", value, _TOP_KEYS[key])
    for key in ("name", "equations"):
        if key not in data:
            raise UnrollError(f"{source}: missing key {key!r}")
    try:
        equations = parse(data["equations"], (str(n) for n in data.get("parameters") or {}))
    except UnrollError as e:
        line = _equations_line(text) if text is not None else None  # only on an error
        where = f" (their line 1 is line {line} of the file)" if line else ""
        raise UnrollError(f"{source}: equations{where}: {e}") from None

    specs = []
    for raw_name, spec in (data.get("parameters") or {}).items():
        name = GREEK.get(str(raw_name), str(raw_name))
        where = f"{source}: parameters.{raw_name}"
        if not isinstance(spec, dict):
            spec = {"default": spec}
        for key, value in spec.items():
            if key not in _PARAM_KEYS:
                raise UnrollError(
                    f"{where}: unknown key {key!r}; known keys: {', '.join(_PARAM_KEYS)}"
                )
            _check(f"{where}.{key}", value, _PARAM_KEYS[key])
        bounds = spec.get("bounds", [None, None])
        if len(bounds) != 2:
            raise UnrollError(
                f"{where}.bounds: expected [lower, upper] (null for none), got {bounds!r}"
            )
        shape = spec.get("shape", "scalar")
        if shape not in ("scalar", "channel"):
            raise UnrollError(f"{where}.shape: expected 'scalar' or 'channel', got {shape!r}")
        try:
            specs.append(
                Parameter(
                    name,
                    default=_number(f"{where}.default", spec.get("default")),
                    trainable=spec.get("trainable", False),
                    bounds=(
                        _number(f"{where}.bounds", bounds[0]),
                        _number(f"{where}.bounds", bounds[1]),
                    ),
                    per_channel=shape == "channel",
                )
            )
        except UnrollError as e:
            raise UnrollError(f"{source}: {e}") from None

    inits = {}
    for raw_name, spec in (data.get("states") or {}).items():
        where = f"{source}: states.{raw_name}"
        if not isinstance(spec, dict):
            raise UnrollError(f"{where}: expected a mapping like {{init: 0}}, got {spec!r}")
        for key, value in spec.items():
            if key not in _STATE_KEYS:
                raise UnrollError(
                    f"{where}: unknown key {key!r}; known keys: {', '.join(_STATE_KEYS)}"
                )
            _check(f"{where}.{key}", value, _STATE_KEYS[key])
        if "init" in spec:
            inits[GREEK.get(str(raw_name), str(raw_name))] = float(spec["init"])

    references = data.get("references", ())
    if isinstance(references, str):
        references = (references,)
    for i, ref in enumerate(references):
        _check(f"{source}: references[{i}]", ref, str)
    if "activation" in data:
        try:
            activations.get(data["activation"])
        except UnrollError as e:
            raise UnrollError(f"{source}: activation: {e}") from None
    try:
        return Scheme(
            tuple(equations),
            name=data["name"],
            description=data.get("description", "").strip(),
            references=tuple(references),
            parameter_specs=tuple(specs),
            inits=FrozenMap(inits),
            activation=data.get("activation"),
            startup=data.get("startup"),
            architecture=data.get("architecture"),
            notes=data.get("notes", "").strip(),
        )
    except UnrollError as e:
        raise UnrollError(f"{source}: {e}") from None


def load(path: str | Path) -> Scheme:
    """Read a YAML scheme file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UnrollError(f"no such scheme file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UnrollError(f"cannot read scheme file {path}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise _yaml_error(path.name, text, e) from None
    return from_mapping(data, path.name, text)


def _equations_line(text: str) -> int | None:
    """The file line (1-based) where the equations' text begins: the line after ``|`` or
    ``>`` for a block, the key's own line for a one-line value; None if it cannot be told."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    if not isinstance(root, yaml.MappingNode):
        return None
    for key, value in root.value:
        if key.value == "equations" and isinstance(value, yaml.ScalarNode):
            block = value.style in ("|", ">")
            return value.start_mark.line + (2 if block else 1)
    return None


def _yaml_error(source: str, text: str, e: yaml.YAMLError) -> UnrollError:
    """A YAML syntax error as an `UnrollError` with the line and column of the file at fault
    (and a caret under it), and where the construct it was reading began."""
    mark = getattr(e, "problem_mark", None)
    if not isinstance(e, yaml.MarkedYAMLError) or mark is None:
        return UnrollError(f"{source}: not valid YAML: {str(e).splitlines()[0]}")
    message = f"{source}: not valid YAML: {e.problem}"
    start = e.context_mark
    if e.context and start is not None:
        message += f" ({e.context} from line {start.line + 1}, column {start.column + 1})"
    return at(text, mark.index, message)


def _looks_like_path(spec: str) -> bool:
    return "=" not in spec and spec.strip().endswith((".yaml", ".yml"))


def compile(spec: str | Path | sp.Eq | Iterable[sp.Eq] | Scheme) -> Scheme:  # noqa: A001
    """A `Scheme` from scheme text, a SymPy ``Eq`` or a list of them, or a YAML file path.

    >>> str(compile("x_<k+1> = x_k - α ∇F"))
    'x_<k+1> = -α*∇F(x_k) + x_k'
    """
    if isinstance(spec, Scheme):
        return spec
    if isinstance(spec, Path) or (isinstance(spec, str) and _looks_like_path(spec)):
        return load(spec)
    if isinstance(spec, str):
        return Scheme(tuple(parse(spec)))
    if isinstance(spec, sp.Eq):
        return Scheme((spec,))
    if isinstance(spec, Iterable):
        eqs = list(spec)
        return Scheme(tuple(_exact(eq) for eq in eqs))
    raise UnrollError(
        f"cannot compile a {type(spec).__name__}: give scheme text, sympy.Eq(s) or a YAML path"
    )


def _exact(eq: Any) -> Any:
    """SymPy input may carry Floats; store them as the exact decimal they print as."""
    if isinstance(eq, sp.Eq):
        floats = {x: sp.Rational(repr(float(x))) for x in eq.atoms(sp.Float) if x.is_finite}
        return eq.xreplace(floats) if floats else eq
    return eq


class _Library(Mapping):
    """The bundled schemes by name, read from ``unroll/schemes/*.yaml`` on first use."""

    def __init__(self, directory: Path):
        self._dir = directory
        self._schemes: dict[str, Scheme] | None = None

    def _all(self) -> dict[str, Scheme]:
        if self._schemes is None:
            found: dict[str, Scheme] = {}
            for path in sorted(self._dir.glob("*.yaml")):
                scheme = load(path)
                if scheme.name in found:
                    raise UnrollError(f"{path.name}: scheme name {scheme.name!r} is used twice")
                if scheme.name != path.stem:
                    raise UnrollError(
                        f"{path.name}: name {scheme.name!r} differs from the file name"
                    )
                found[scheme.name] = scheme
            self._schemes = found
        return self._schemes

    def __getitem__(self, name: str) -> Scheme:
        try:
            return self._all()[name]
        except KeyError:
            raise UnrollError(f"no bundled scheme {name!r}; see `unroll list`") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __contains__(self, name: object) -> bool:
        return name in self._all()


schemes: Mapping[str, Scheme] = _Library(SCHEME_DIR)


def resolve(spec: str | Path | Scheme) -> Scheme:
    """A bundled scheme's name, a YAML path or scheme text, as the CLI accepts them."""
    if isinstance(spec, str) and spec in schemes:
        return schemes[spec]
    if isinstance(spec, str) and "=" not in spec and not _looks_like_path(spec):
        if Path(spec).is_file():
            return load(spec)
        raise UnrollError(f"no bundled scheme {spec!r} (and no such file); see `unroll list`")
    return compile(spec)
