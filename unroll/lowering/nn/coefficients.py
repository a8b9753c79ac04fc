"""A block's coefficients (β, κ, h, ...) as a module: trainable ones are `nn.Parameter`s,
bounded ones stored unconstrained as ``raw_<name>`` and mapped into their interval by `Bound`
once per forward, the others buffers; `coefficients_of` builds them from a scheme's parameters
and the options (scalar, per channel or per block)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from unroll.errors import UnrollError
from unroll.frontend.scheme import STEP_NAMES, canonical_params
from unroll.ir.names import GREEK_NAMES
from unroll.ir.step import StepIR
from unroll.lowering.nn.options import Options, names_of, per_block


# -- coefficients ------------------------------------------------------------------------------
class Bound:
    """The map from an unconstrained raw value onto the open interval between ``lo`` and ``hi``
    (either may be None): lo + (hi − lo)·sigmoid(raw), lo + softplus(raw) or hi − softplus(raw),
    clamped to the representable values strictly inside, so rounding never reaches a bound
    (LM-ResNet's κ stays in the zero-stable interval −1 < κ ≤ 1 in every dtype). A plain value:
    it pickles, and the clamp limits are computed once per dtype."""

    def __init__(self, lo: float | None, hi: float | None):
        self.lo, self.hi = lo, hi
        self._inside: dict[torch.dtype, tuple[float | None, float | None]] = {}

    def __getstate__(self) -> dict:
        return {"lo": self.lo, "hi": self.hi}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["lo"], state["hi"])

    def limits(self, dtype: torch.dtype) -> tuple[float | None, float | None]:
        """The representable values of ``dtype`` just inside the bounds."""
        if dtype not in self._inside:
            lo, hi = self.lo, self.hi
            t = lambda v: torch.tensor(v, dtype=dtype)  # noqa: E731
            inf = math.inf
            lo_in = None if lo is None else torch.nextafter(t(lo), t(hi if hi is not None else inf))
            hi_in = (
                None if hi is None else torch.nextafter(t(hi), t(lo if lo is not None else -inf))
            )
            self._inside[dtype] = (
                None if lo_in is None else float(lo_in),
                None if hi_in is None else float(hi_in),
            )
        return self._inside[dtype]

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            value = torch.sigmoid(raw)
            if hi - lo != 1:
                value = value * (hi - lo)
            if lo != 0:
                value = value + lo
        elif lo is not None:
            value = nn.functional.softplus(raw) + lo
        else:
            value = hi - nn.functional.softplus(raw)
        lo_in, hi_in = self.limits(raw.dtype)
        return torch.clamp(value, min=lo_in, max=hi_in)

    def inverse(self, value: torch.Tensor) -> torch.Tensor:
        """The raw value that maps to ``value`` (moved strictly inside the bounds first)."""
        lo, hi = self.lo, self.hi
        lo_in, hi_in = self.limits(value.dtype)
        value = torch.clamp(value.detach(), min=lo_in, max=hi_in)
        if lo is not None and hi is not None:
            return torch.logit((value - lo) / (hi - lo))
        gap = value - lo if lo is not None else hi - value
        return gap + torch.log(-torch.expm1(-gap))  # softplus⁻¹(gap), stable for large gaps


_ASCII = {greek: name for greek, name in GREEK_NAMES.items()}


class Coefficients(nn.Module):
    """A block's scheme parameters, by the identifiers of the step IR (``beta``, ``kappa``,
    ``c_1``). Trainable ones are `nn.Parameter`s (``raw_<name>`` when bounded, mapped into the
    bounds by `values`), the others buffers. ``coefficients.kappa`` and ``coefficients.κ`` read
    the value (bounds applied) and assigning either sets it."""

    def __init__(
        self,
        values: Mapping[str, torch.Tensor],
        trainable: set[str],
        bounds: Mapping[str, tuple[float | None, float | None]],
        aliases: Mapping[str, str],
    ):
        super().__init__()
        self.names = tuple(values)  # in the IR's order
        self.aliases = dict(aliases)  # scheme name (β) -> identifier (beta)
        self.bounds: dict[str, Bound] = {}
        for name, value in values.items():
            lo, hi = bounds.get(name, (None, None))
            if name not in trainable:
                self.register_buffer(name, value)
            elif lo is None and hi is None:
                self.register_parameter(name, nn.Parameter(value))
            else:
                self.bounds[name] = Bound(lo, hi)
                self.register_parameter(
                    f"raw_{name}", nn.Parameter(self.bounds[name].inverse(value))
                )

    def _key(self, name: str) -> str:
        return self.aliases.get(name, name)

    def value(self, name: str) -> torch.Tensor:
        """The value of the parameter ``name`` (identifier or scheme name), bounds applied."""
        key = self._key(name)
        bound = self.bounds.get(key)
        if bound is not None:
            return bound(self._parameters[f"raw_{key}"])
        if key in self._parameters:
            return self._parameters[key]
        if key in self._buffers:
            return self._buffers[key]
        raise AttributeError(name)

    def values(self) -> dict[str, torch.Tensor]:
        """Every parameter's value by its scheme name (``β``, ``κ``)."""
        scheme = {v: k for k, v in self.aliases.items()}
        return {scheme.get(n, n): self.value(n) for n in self.names}

    def ordered(self) -> tuple[torch.Tensor, ...]:
        """The values in the order the block's step takes them (once per forward)."""
        return tuple(self.value(n) for n in self.names)

    @staticmethod
    def stacked(all: Sequence[Coefficients]) -> list[tuple[torch.Tensor, ...]]:
        """`ordered` of every one of ``all`` (blocks of one network, built alike), each bounded
        parameter mapped into its bounds in one operation over all blocks, not one per block."""
        first = all[0]
        columns = []
        for name in first.names:
            bound = first.bounds.get(name)
            if bound is None:
                columns.append([c.value(name) for c in all])
                continue
            raws = torch.stack([c._parameters[f"raw_{name}"] for c in all])
            columns.append(list(bound(raws).unbind(0)))
        return list(zip(*columns, strict=True)) if columns else [() for _ in all]

    def __getattr__(self, name: str) -> Any:
        names = self.__dict__.get("names", ())
        key = self.__dict__.get("aliases", {}).get(name, name)
        if key in names:
            return self.value(key)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        key = self.__dict__.get("aliases", {}).get(name, name)
        if key in self.__dict__.get("names", ()) and isinstance(value, torch.Tensor):
            self.assign(key, value)
            return
        super().__setattr__(name, value)

    def assign(self, name: str, value: torch.Tensor) -> None:
        """Set the parameter ``name`` to ``value`` (through the inverse of its bound)."""
        key = self._key(name)
        with torch.no_grad():
            if key in self.bounds:
                raw = self._parameters[f"raw_{key}"]
                raw.copy_(self.bounds[key].inverse(value.to(raw.dtype)).expand_as(raw))
            else:
                target = self._parameters.get(key)
                target = target if target is not None else self._buffers[key]
                target.copy_(value.to(target.dtype).expand_as(target))

    def extra_repr(self) -> str:
        shown = [
            f"{n} in ({self.bounds[n].lo}, {self.bounds[n].hi})" if n in self.bounds else n
            for n in self.names
        ]
        return ", ".join(shown)


def coefficients_of(ir: StepIR, opts: Options, n: int = 0, count: int = 1) -> Coefficients:
    """Block ``n`` of ``count``'s coefficients. An ODE scheme's step h defaults to 1 here (a
    network absorbs the step into its branches, the ResNet convention), whatever the scheme
    file gives `Scheme.run`."""
    form = ir.scheme
    given = canonical_params(form, opts.params)
    trainable = (
        {p.name for p in form.parameters.values() if p.trainable}
        if opts.trainable is None
        else set(canonical_params(form, {n: None for n in names_of(opts.trainable)}))
    )
    per_channel = {p.name for p in form.parameters.values() if p.per_channel}
    per_channel |= set(canonical_params(form, {n: None for n in opts.per_channel}))
    values: dict[str, torch.Tensor] = {}
    bounds: dict[str, tuple] = {}
    train: set[str] = set()
    aliases: dict[str, str] = {}
    for c in ir.parameters:
        spec = c.spec
        default = 1 if form.kind == "ode" and spec.name in STEP_NAMES else spec.default
        value = given.get(spec.name, default)
        if isinstance(value, per_block):
            if opts.tied:
                raise UnrollError(
                    f"params[{spec.name!r}]: per_block values need one block per step "
                    "(tied=True shares one)"
                )
            value = value.at(n, count, spec.name)
        elif callable(value) and not isinstance(value, torch.Tensor):
            raise UnrollError(
                f"params[{spec.name!r}] is a callable: wrap an initialiser of the block index "
                "as unroll.per_block(...)"
            )
        if value is None:
            raise UnrollError(
                f"missing value for parameter {spec.name} (pass params={{{spec.name!r}: ...}}; "
                "it has no default)"
            )
        values[c.name] = _initial(spec.name, value, spec.bounds, spec.name in per_channel, opts)
        bounds[c.name] = spec.bounds
        if spec.name in trainable:
            train.add(c.name)
        if spec.name != c.name:
            aliases[spec.name] = c.name
    return Coefficients(values, train, bounds, aliases)


def _initial(name: str, value: Any, bounds, per_channel: bool, opts: Options) -> torch.Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.get_default_dtype()).clone()
    except (TypeError, ValueError, RuntimeError):
        raise UnrollError(f"params[{name!r}] must be a number or a tensor, not {value!r}") from None
    if not per_channel and t.numel() != 1:
        raise UnrollError(
            f"params[{name!r}] has shape {tuple(t.shape)}: a vector is one value per channel "
            f"only with per_channel=[{name!r}]; one value per block: unroll.per_block([...])"
        )
    t = t.reshape(()) if not per_channel else t
    if per_channel:
        if opts.width is None:
            raise UnrollError(f"parameter {name} is per channel: pass dim= or channels=")
        shape = (opts.width,) if opts.channels is None else (opts.width, 1, 1)
        try:
            t = t.expand(shape).clone() if t.dim() == 0 else t.reshape(shape).clone()
        except RuntimeError:
            raise UnrollError(
                f"params[{name!r}] has shape {tuple(t.shape)}: per channel it needs "
                f"{opts.width} values, shape {shape}"
            ) from None
    lo, hi = bounds
    if (lo is not None and bool((t < lo).any())) or (hi is not None and bool((t > hi).any())):
        raise UnrollError(f"params[{name!r}] = {value!r} lies outside the bounds {bounds}")
    return t
