"""Growing width by splitting steepest descent (docs/theory.md section 5).

A neuron is one output unit of a ``Linear`` layer (or one output channel of a ``Conv2d``)
followed by a smooth activation σ. With θ its incoming weights and bias and z = σ(θᵀx) its
output, its splitting matrix is

    S = Σ_samples ∂L/∂z · σ''(θᵀx) · x xᵀ          (x with a 1 appended when there is a bias)

and replacing the neuron by copies with output weights w_i (Σ w_i = 1) and inputs θ + ε δ_i
(Σ w_i δ_i = 0) changes the loss by (ε²/2) Σ w_i δ_iᵀ S δ_i + O(ε³). The pass, one function
per step::

    sites    = find_sites(model)                         # growable (layer, σ, consumer) triples
    spectra  = splitting_spectra(model, data, loss_fn)   # λ_min, v_min, λ_max, v_max per neuron
    plan     = _plan(spectra, ...)                       # which neurons split, weights, offsets
    grown    = _apply(model, plan)                       # a new, ordinary nn.Module

`grow` runs all four and returns the grown model and a `GrowthReport`.

S is never assembled from per-sample outer products. The autograd trick: add to each
activation output the zero-valued term σ''(u)·xᵀV_j x with a zero matrix V_j per neuron; after
one backward pass V_j.grad = S_j (`splitting_matrices`, memory m·d² per layer). For wide
layers, the term σ''(u)·(xᵀv_j)(xᵀa_j) with a zero vector a_j gives a_j.grad = S_j v_j in one
backward pass through the layer's own ``F.linear`` / ``F.conv2d``, and λ_min, λ_max come from
a matrix-free Rayleigh-quotient method on those products (`_lanczos`): no d×d matrix is formed.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unroll.errors import UnrollError
from unroll.experiments.parallel import Parallel

__all__ = [
    "GrowthReport",
    "check_options",
    "Site",
    "Spectrum",
    "Split",
    "find_sites",
    "grow",
    "splitting_matrices",
    "splitting_spectra",
]

# Activations with a usable second derivative. ReLU-like ones have σ'' = 0 almost everywhere,
# so every splitting matrix vanishes and splitting cannot see anything: they are not growable.
SMOOTH_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.ELU,
    nn.CELU,
    nn.LogSigmoid,
    nn.Softsign,
    nn.Tanhshrink,
)

# Modules that act on each neuron (channel) separately and identically, so a copied neuron
# stays a copy through them. Dropout is the identity here: the analysis runs in eval mode.
_CHANNELWISE: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


# --------------------------------------------------------------------------------------------
# Sites: where neurons can grow


@dataclass(frozen=True)
class Site:
    """A growable layer: ``parent[producer]`` (Linear or Conv2d) → ``parent[producer + 1]`` (a
    smooth activation) → channel-wise modules → ``parent[consumer]`` (Linear or Conv2d), all
    in the ``nn.Sequential`` named ``parent`` (``""`` is the model itself).

    ``flatten`` is true for Conv2d → … → Flatten → Linear, where each channel owns a
    contiguous block of the consumer's input columns.
    """

    name: str  # qualified name of the producer, the key of every per-layer result
    parent: str
    producer: int
    consumer: int
    flatten: bool = False

    def modules(self, model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
        """(producer, activation, consumer) inside ``model`` (or a deep copy of it)."""
        seq = model.get_submodule(self.parent)
        return seq[self.producer], seq[self.producer + 1], seq[self.consumer]


def _growable_layer(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"


def find_sites(model: nn.Module) -> list[Site]:
    """Every growable layer of ``model``, in module order.

    The protocol: inside any ``nn.Sequential`` (nested ones too, e.g. the ``.f`` of a residual
    block), a ``Linear`` or ``Conv2d`` (groups 1, zero padding) directly followed by one of
    `SMOOTH_ACTIVATIONS`, then optionally by channel-wise modules (dropout, pooling; for a
    convolution also one ``Flatten``), then by the ``Linear`` / ``Conv2d`` that reads its
    output. A layer or consumer registered in more than one place of the model (a shared
    module) is skipped: growing it would change both places at once. A layer inside an
    order-2 `unroll.experiments.parallel.Parallel` is refused: its neurons also act through Jacobian-vector
    products, which the splitting matrix does not account for.
    """
    jvp_parts = [n for n, m in model.named_modules() if isinstance(m, Parallel) and m.order == 2]
    sites = []
    for parent_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        layers = list(seq)
        for i in range(len(layers) - 2):
            prod, act = layers[i], layers[i + 1]
            if not (_growable_layer(prod) and isinstance(act, SMOOTH_ACTIVATIONS)):
                continue
            conv = isinstance(prod, nn.Conv2d)
            flatten = False
            for j in range(i + 2, len(layers)):
                nxt = layers[j]
                if isinstance(nxt, _CHANNELWISE) and (
                    conv or isinstance(nxt, nn.Dropout | nn.Identity)
                ):
                    continue
                if conv and not flatten and isinstance(nxt, nn.Flatten):
                    if nxt.start_dim != 1:
                        break
                    flatten = True
                    continue
                ok = (
                    isinstance(nxt, nn.Linear)
                    if (flatten or not conv)
                    else (_growable_layer(nxt) and isinstance(nxt, nn.Conv2d))
                )
                if ok:
                    name = f"{parent_name}.{i}" if parent_name else str(i)
                    inside = [p for p in jvp_parts if name.startswith(f"{p}.") or not p]
                    if inside:
                        raise UnrollError(
                            f"layer {name} lies in the order-2 Parallel {inside[0] or 'model'}: "
                            "its neurons also act through J_f·f cross terms, which splitting "
                            "matrices do not model; grow the order-1 form or the deep stack"
                        )
                    sites.append(Site(name, parent_name, i, j, flatten))
                break
    # A module registered in two places is shared: growing it would change both at once.
    count: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        count[id(m)] = count.get(id(m), 0) + 1
    return [s for s in sites if all(count[id(m)] == 1 for m in s.modules(model)[::2])]


def _fan_in(layer: nn.Module) -> int:
    """d, the length of θ: the incoming weights of one neuron, plus 1 for a bias."""
    return layer.weight[0].numel() + (layer.bias is not None)


def _split_theta(layer: nn.Module, v: Tensor) -> tuple[Tensor, Tensor | None]:
    """(m, d) vectors → (weight-shaped, bias-shaped or None) tensors."""
    w_numel = layer.weight[0].numel()
    w = v[:, :w_numel].reshape(v.shape[0], *layer.weight.shape[1:])
    b = v[:, w_numel] if layer.bias is not None else None
    return w, b


def _affine(layer: nn.Module, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """The layer's own map with other weights: θ_jᵀx for every neuron j (and position)."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, w, b)
    return F.conv2d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)


def _features(layer: nn.Module, x: Tensor) -> Tensor:
    """The inputs each neuron sees, with a 1 for the bias: (M, d) for Linear (M = all leading
    dimensions), (N, d, L) patches for Conv2d (L = output positions)."""
    if isinstance(layer, nn.Linear):
        feats = x.reshape(-1, x.shape[-1])
    else:
        padding = layer.padding
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            else:  # "same" with stride 1: symmetric when every dilation·(k−1) is even
                total = [
                    d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size, strict=True)
                ]
                if any(t % 2 for t in total):
                    raise UnrollError(
                        f"exact=True does not support padding='same' with an even kernel "
                        f"({tuple(layer.kernel_size)}); use exact=False"
                    )
                padding = tuple(t // 2 for t in total)
        feats = F.unfold(x, layer.kernel_size, layer.dilation, padding, layer.stride)
    if layer.bias is not None:
        shape = list(feats.shape)
        shape[1] = 1
        feats = torch.cat([feats, feats.new_ones(shape)], dim=1)
    return feats


# --------------------------------------------------------------------------------------------
# The autograd trick


def _second_derivative(act: nn.Module, u: Tensor) -> Tensor:
    """σ''(u) of an elementwise activation, by differentiating it twice."""
    with torch.enable_grad():
        v = u.detach().requires_grad_(True)
        (d1,) = torch.autograd.grad(act.forward(v).sum(), v, create_graph=True)
        (d2,) = torch.autograd.grad(d1.sum(), v)
    return d2


# extra(site, x, u, σ''(u)) -> a zero-valued tensor shaped like u that carries the probe
Extra = Callable[[Site, Tensor, Tensor, Tensor], Tensor]


@contextmanager
def _probed(model: nn.Module, sites: list[Site], extra: Extra):
    """Adds ``extra(...)`` to the output of each site's activation while active."""
    seen: list[tuple[Site, Tensor, Tensor]] = []
    handles = []

    def capture(site: Site):
        def hook(module, inputs, output):
            seen.append((site, inputs[0], output))

        return hook

    def inject(site: Site):
        def hook(module, inputs, output):
            # Only where this activation reads the output of this site's layer (an activation
            # module may be shared by several places of the model).
            for s, x, u in seen:
                if s is site and u is inputs[0]:
                    return output + extra(site, x, u, _second_derivative(module, u))
            return None

        return hook

    try:
        for s in sites:
            prod, act, _ = s.modules(model)
            handles.append(prod.register_forward_hook(capture(s)))
            handles.append(act.register_forward_hook(inject(s)))
        yield
    finally:
        for h in handles:
            h.remove()


def _batches(data) -> list[tuple[object, Tensor]]:
    """``(inputs, targets)`` or an iterable of such pairs → a list of pairs."""
    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], Tensor):
        return [(data[0], data[1])]
    if isinstance(data, Iterable):
        batches = list(data)
        if batches and all(isinstance(b, tuple | list) and len(b) == 2 for b in batches):
            return [(b[0], b[1]) for b in batches]
    raise UnrollError(
        "data must be a pair (inputs, targets) of tensors or an iterable of such pairs "
        "(e.g. a DataLoader)"
    )


def _gradients(model, sites, data, loss_fn, extra, leaves: dict[str, list[Tensor]]):
    """Σ over batches of (n_b/N)·∂loss_b/∂leaves, with ``extra`` injected; model in eval mode."""
    if not callable(loss_fn):
        raise UnrollError(f"loss_fn must be callable as loss_fn(outputs, targets), got {loss_fn!r}")
    batches = _batches(data)
    total = sum(len(y) for _, y in batches)
    flat = [t for s in sites for t in leaves[s.name]]
    acc = [torch.zeros_like(t) for t in flat]
    was_training = model.training
    model.eval()
    try:
        for inputs, targets in batches:
            with _probed(model, sites, extra), torch.enable_grad():
                loss = loss_fn(model(inputs), targets)
                if not (isinstance(loss, Tensor) and loss.dim() == 0):
                    raise UnrollError("loss_fn must return a scalar tensor (the mean loss)")
                grads = torch.autograd.grad(loss * (len(targets) / total), flat, allow_unused=True)
            for a, g in zip(acc, grads, strict=True):
                if g is not None:
                    a += g
    finally:
        model.train(was_training)
    out, i = {}, 0
    for s in sites:
        n = len(leaves[s.name])
        out[s.name] = acc[i : i + n]
        i += n
    return out


def _model_dtype(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    p = next(model.parameters())
    return p.dtype, p.device


def _sites_or_error(model: nn.Module) -> list[Site]:
    sites = find_sites(model)
    if not sites:
        raise UnrollError(
            "model has no growable layer: need Linear/Conv2d → smooth activation "
            "(tanh, sigmoid, softplus, GELU, SiLU, ...) → Linear/Conv2d inside an nn.Sequential; "
            "ReLU has σ'' = 0, so its splitting matrices vanish"
        )
    return sites


def splitting_matrices(model: nn.Module, data, loss_fn) -> dict[str, Tensor]:
    """The exact splitting matrix of every neuron, by one backward pass per batch.

    Returns ``{site name: S}`` with S of shape (m, d, d): m neurons (output channels), d the
    length of θ = (flattened incoming weights, bias). ``loss_fn(model(inputs), targets)`` must
    be the mean loss of a batch; batches are weighted by their size.
    """
    sites = _sites_or_error(model)
    dtype, device = _model_dtype(model)
    leaves = {}
    for s in sites:
        prod = s.modules(model)[0]
        d = _fan_in(prod)
        leaves[s.name] = [
            torch.zeros(prod.weight.shape[0], d, d, dtype=dtype, device=device, requires_grad=True)
        ]

    def extra(site, x, u, d2):
        (V,) = leaves[site.name]
        prod = site.modules(model)[0]
        feats = _features(prod, x)
        if isinstance(prod, nn.Linear):
            quad = torch.einsum("nd,jde,ne->nj", feats, V, feats).reshape(u.shape)
        else:
            quad = torch.einsum("ndl,jde,nel->njl", feats, V, feats).reshape(u.shape)
        return d2 * quad

    grads = _gradients(model, sites, data, loss_fn, extra, leaves)
    return {name: 0.5 * (g[0] + g[0].transpose(1, 2)) for name, g in grads.items()}


def _matvec(model, sites, data, loss_fn, vectors: dict[str, Tensor]) -> dict[str, Tensor]:
    """{name: (m, d) vectors v_j} → {name: S_j v_j}, in one backward pass per batch."""
    sites = [s for s in sites if s.name in vectors]
    leaves = {s.name: [torch.zeros_like(vectors[s.name], requires_grad=True)] for s in sites}

    def extra(site, x, u, d2):
        prod = site.modules(model)[0]
        v = _affine(prod, x, *_split_theta(prod, vectors[site.name]))
        a = _affine(prod, x, *_split_theta(prod, leaves[site.name][0]))
        return d2 * v * a

    grads = _gradients(model, sites, data, loss_fn, extra, leaves)
    return {name: g[0] for name, g in grads.items()}


# --------------------------------------------------------------------------------------------
# Spectra


@dataclass(frozen=True)
class Spectrum:
    """The two ends of the spectrum of each neuron's S: shapes (m,), (m, d), (m,), (m, d);
    eigenvectors have unit norm."""

    lambda_min: Tensor
    v_min: Tensor
    lambda_max: Tensor
    v_max: Tensor


def _lanczos(
    matvec: Callable[[dict[str, Tensor]], dict[str, Tensor]],
    shapes: dict[str, tuple[int, int]],
    *,
    iters: int,
    tol: float,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, Spectrum]:
    """λ_min, λ_max and their eigenvectors of every neuron's S from products S v only.

    This is the Rayleigh–Ritz form of the Rayleigh-quotient iteration: after k products the
    Krylov space span{q, Sq, …, S^{k−1}q} contains every iterate that gradient steps on the
    Rayleigh quotient vᵀSv / vᵀv could reach from q in k steps, and Lanczos returns its
    extreme Rayleigh quotients (Ritz values) exactly, both ends from one sequence. Every
    neuron of every layer runs at once: one backward pass per step. Full reorthogonalisation
    keeps it exact in k = d steps; a breakdown (an invariant subspace, e.g. S of low rank)
    restarts with a fresh orthogonal vector. Stops when the Ritz residuals of both ends are
    below ``tol`` times the spectral scale for all neurons, or after ``iters`` steps.
    """
    eps = torch.finfo(dtype).eps
    state = {}
    for name, (m, d) in shapes.items():
        q = torch.randn(m, d, generator=generator, dtype=dtype, device=device)
        q = q / q.norm(dim=1, keepdim=True)
        state[name] = {"Q": [q], "alpha": [], "beta": [], "done": False, "steps": min(iters, d)}
    result: dict[str, Spectrum] = {}

    def ritz(name):
        st = state[name]
        k = len(st["alpha"])
        T = torch.diag_embed(torch.stack(st["alpha"], 1))
        if k > 1:
            off = torch.stack(st["beta"][: k - 1], 1)
            T = T + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
        theta, Y = torch.linalg.eigh(T)
        Q = torch.stack(st["Q"][:k], 1)  # (m, k, d)
        return theta, Y, Q

    while True:
        active = {n: st["Q"][-1] for n, st in state.items() if not st["done"]}
        if not active:
            break
        products = matvec(active)
        for name, w in products.items():
            st = state[name]
            Qs = st["Q"]
            q = Qs[-1]
            alpha = (q * w).sum(1)
            st["alpha"].append(alpha)
            Q = torch.stack(Qs, 1)
            for _ in range(2):  # full reorthogonalisation, twice is enough
                w = w - torch.einsum("mk,mkd->md", torch.einsum("mkd,md->mk", Q, w), Q)
            beta = w.norm(dim=1)
            scale = torch.stack([a.abs() for a in st["alpha"]] + [b for b in st["beta"]], 1)
            scale = scale.amax(1).clamp_min(torch.finfo(dtype).tiny)
            k = len(st["alpha"])
            theta, Y, Qk = ritz(name)
            residual = beta[:, None] * Y[:, -1, :].abs()  # (m, k)
            ends = residual[:, [0, -1]]
            converged = bool((ends <= tol * scale[:, None]).all())
            if k >= st["steps"] or converged:
                st["done"] = True
                vmin = torch.einsum("mk,mkd->md", Y[:, :, 0], Qk)
                vmax = torch.einsum("mk,mkd->md", Y[:, :, -1], Qk)
                result[name] = Spectrum(
                    theta[:, 0],
                    vmin / vmin.norm(dim=1, keepdim=True),
                    theta[:, -1],
                    vmax / vmax.norm(dim=1, keepdim=True),
                )
                continue
            broke = beta <= 10 * eps * scale
            if bool(broke.any()):
                # Restart the broken rows with a random vector orthogonal to their basis.
                r = torch.randn(w.shape, generator=generator, dtype=dtype, device=device)
                for _ in range(2):
                    r = r - torch.einsum("mk,mkd->md", torch.einsum("mkd,md->mk", Q, r), Q)
                r = r / r.norm(dim=1, keepdim=True)
                beta = torch.where(broke, torch.zeros_like(beta), beta)
                nxt = torch.where(
                    broke[:, None], r, w / beta.clamp_min(torch.finfo(dtype).tiny)[:, None]
                )
            else:
                nxt = w / beta[:, None]
            st["beta"].append(beta)
            Qs.append(nxt)
    return result


def splitting_spectra(
    model: nn.Module,
    data,
    loss_fn,
    *,
    exact: bool = True,
    iters: int = 50,
    tol: float = 1e-6,
    seed: int = 0,
) -> dict[str, Spectrum]:
    """λ_min, λ_max of every neuron's splitting matrix, with unit eigenvectors.

    ``exact=True`` forms S (`splitting_matrices`, memory m·d² per layer) and calls
    ``torch.linalg.eigh``; ``exact=False`` never forms a d×d matrix: `_lanczos` on products
    S v, at most ``iters`` backward passes over ``data`` (``seed`` fixes its start vectors).
    Returns ``{site name: Spectrum}``.
    """
    if exact:
        out = {}
        for name, S in splitting_matrices(model, data, loss_fn).items():
            lam, vec = torch.linalg.eigh(S)
            out[name] = Spectrum(lam[:, 0], vec[:, :, 0], lam[:, -1], vec[:, :, -1])
        return out
    if iters < 1:
        raise UnrollError(f"iters must be at least 1, got {iters}")
    sites = _sites_or_error(model)
    dtype, device = _model_dtype(model)
    shapes = {}
    for s in sites:
        prod = s.modules(model)[0]
        shapes[s.name] = (prod.weight.shape[0], _fan_in(prod))
    gen = torch.Generator(device=device).manual_seed(seed)
    return _lanczos(
        lambda vs: _matvec(model, sites, data, loss_fn, vs),
        shapes,
        iters=iters,
        tol=tol,
        generator=gen,
        dtype=dtype,
        device=device,
    )


# --------------------------------------------------------------------------------------------
# The plan and the report


@dataclass(frozen=True)
class Split:
    """One neuron replaced by two copies.

    ``neuron`` keeps index ``neuron`` with input θ + offsets[0] and output weight weights[0];
    the new copy is ``new_neuron`` (appended) with θ + offsets[1] and weights[1]; ``kind`` is
    "positive" (S2D: ½, ½, ±ε v_min) or "signed" (a negative weight, along v_max).
    ``predicted_change`` = (ε²/2) Σ w_i δ_iᵀ S δ_i.
    """

    layer: str
    neuron: int
    new_neuron: int
    kind: Literal["positive", "signed"]
    lambda_min: float
    lambda_max: float
    weights: tuple[float, float]
    predicted_change: float
    gain: float  # predicted_change / (ε²/2): λ_min, or −(c−1)/(c+1) λ_max
    offsets: tuple[Tensor, Tensor] = field(repr=False, compare=False)


@dataclass(frozen=True)
class GrowthReport:
    """What `grow` did: every neuron's spectrum ends and the splits taken.

    ``eigenvalues[layer]`` is (λ_min, λ_max), each of shape (m,) for the layer before growing.
    ``tolerance`` is where rounding ends: an eigenvalue within it of 0 counts as 0
    (100 float eps of the dtype times the largest |λ| of the model).
    """

    method: str
    eps: float
    c: float
    splits: tuple[Split, ...]
    eigenvalues: dict[str, tuple[Tensor, Tensor]]
    params_before: int
    params_after: int
    tolerance: float

    @property
    def predicted_change(self) -> float:
        """(ε²/2) Σ over splits of Σ w_i δ_iᵀ S δ_i: the predicted loss change to second order."""
        return sum(s.predicted_change for s in self.splits)

    @property
    def stable(self) -> bool:
        """True when no neuron has λ_min < 0: every neuron is splitting-stable for S2D."""
        return all(bool((lmin >= -self.tolerance).all()) for lmin, _ in self.eigenvalues.values())

    def table(self) -> str:
        """A plain-text table of the splits, one per line."""
        n = max([5, *(len(s.layer) for s in self.splits)])
        lines = [
            f"{self.method} splitting, eps={self.eps:g}"
            + (f", c={self.c:g}" if self.method == "signed" else "")
            + f": {len(self.splits)} splits, params {self.params_before} -> {self.params_after}, "
            f"predicted loss change {self.predicted_change:.3e}",
            f"{'layer':>{n}} {'neuron':>6} {'kind':>8} {'lambda_min':>11} {'lambda_max':>11} "
            f"{'weights':>14} {'change':>11}",
        ]
        for s in self.splits:
            w = f"({s.weights[0]:g}, {s.weights[1]:g})"
            lines.append(
                f"{s.layer:>{n}} {s.neuron:>6} {s.kind:>8} {s.lambda_min:>11.3e} "
                f"{s.lambda_max:>11.3e} {w:>14} {s.predicted_change:>11.3e}"
            )
        return "\n".join(lines)


def _split_cost(site: Site, model: nn.Module) -> int:
    """Parameters one more neuron adds at ``site``: its θ and its consumer's input weights."""
    prod, _, cons = site.modules(model)
    return _fan_in(prod) + cons.weight.numel() // prod.weight.shape[0]


def _tolerance(model: nn.Module, spectra: dict[str, Spectrum]) -> float:
    """Below this a "negative" eigenvalue is rounding, not curvature."""
    dtype, _ = _model_dtype(model)
    scale = max(
        max(float(sp.lambda_min.abs().max()), float(sp.lambda_max.abs().max()))
        for sp in spectra.values()
    )
    return 100 * torch.finfo(dtype).eps * scale


def _plan(
    model: nn.Module,
    sites: list[Site],
    spectra: dict[str, Spectrum],
    *,
    method: str,
    fraction: float,
    budget: int | None,
    eps: float,
    c: float,
) -> list[Split]:
    """The splits to take: each neuron's better option, best gain first across all layers,
    within the ``fraction`` and ``budget`` limits. New copies are numbered after the layer's
    existing neurons, in plan order."""
    noise = _tolerance(model, spectra)
    ratio = (c - 1) / (c + 1)
    candidates = []
    for site in sites:
        sp = spectra[site.name]
        for j in range(len(sp.lambda_min)):
            lmin, lmax = float(sp.lambda_min[j]), float(sp.lambda_max[j])
            options = []
            if lmin < -noise:
                options.append(("positive", lmin))
            if method == "signed" and lmax > noise:
                options.append(("signed", -ratio * lmax))
            if options:
                kind, gain = min(options, key=lambda o: o[1])
                candidates.append((gain, site, j, kind, lmin, lmax))
    candidates.sort(key=lambda t: t[0])
    total = sum(len(spectra[s.name].lambda_min) for s in sites)
    limit = math.ceil(fraction * total)
    spent = 0
    plan: list[Split] = []
    added: dict[str, int] = {}
    for gain, site, j, kind, lmin, lmax in candidates:
        if len(plan) >= limit:
            break
        cost = _split_cost(site, model)
        if budget is not None and spent + cost > budget:
            continue
        spent += cost
        sp = spectra[site.name]
        if kind == "positive":
            v = sp.v_min[j]
            weights, offsets = (0.5, 0.5), (eps * v, -eps * v)
        else:
            v = sp.v_max[j]
            weights = ((c + 1) / 2, -(c - 1) / 2)
            offsets = (eps * ratio * v, eps * v)
        m = sp.lambda_min.shape[0]
        new = m + added.get(site.name, 0)
        added[site.name] = added.get(site.name, 0) + 1
        plan.append(
            Split(
                layer=site.name,
                neuron=j,
                new_neuron=new,
                kind=kind,
                lambda_min=lmin,
                lambda_max=lmax,
                weights=weights,
                predicted_change=0.5 * eps**2 * gain + 0.0,  # + 0.0: no "-0" at eps = 0
                gain=gain,
                offsets=offsets,
            )
        )
    return plan


def _apply(model: nn.Module, sites: list[Site], plan: list[Split]) -> nn.Module:
    """A deep copy of ``model`` with the planned splits: new Parameters, same function at ε=0."""
    grown = copy.deepcopy(model)
    # Last site first: a site's consumer may be the next site's producer, whose new rows must
    # exist before this site copies its input columns (offsets are in the original θ length).
    for site in reversed(sites):
        splits = [s for s in plan if s.layer == site.name]
        if not splits:
            continue
        prod, _, cons = site.modules(grown)
        m, k = prod.weight.shape[0], len(splits)
        with torch.no_grad():
            idx = torch.tensor([s.neuron for s in splits], device=prod.weight.device)
            d1 = torch.stack([s.offsets[0] for s in splits]).to(prod.weight)
            d2 = torch.stack([s.offsets[1] for s in splits]).to(prod.weight)
            w1, b1 = _split_theta(prod, d1)
            w2, b2 = _split_theta(prod, d2)
            W = prod.weight.detach().clone()
            new_w = torch.cat([W, W[idx] + w2])
            new_w[idx] += w1
            prod.weight = nn.Parameter(new_w, requires_grad=prod.weight.requires_grad)
            if prod.bias is not None:
                B = prod.bias.detach().clone()
                new_b = torch.cat([B, B[idx] + b2])
                new_b[idx] += b1
                prod.bias = nn.Parameter(new_b, requires_grad=prod.bias.requires_grad)
            if isinstance(prod, nn.Linear):
                prod.out_features = m + k
            else:
                prod.out_channels = m + k

            c1 = torch.tensor([s.weights[0] for s in splits]).to(cons.weight)
            c2 = torch.tensor([s.weights[1] for s in splits]).to(cons.weight)
            C = cons.weight.detach()
            out = C.shape[0]
            # (out, m, rest): the input columns (or channels, or flattened blocks) per neuron
            blocks = C.reshape(out, m, -1)
            new_cols = blocks[:, idx] * c2[None, :, None]
            blocks = blocks.clone()
            blocks[:, idx] *= c1[None, :, None]
            merged = torch.cat([blocks, new_cols], dim=1)
            if isinstance(cons, nn.Linear):
                merged = merged.reshape(out, -1)
                cons.in_features = merged.shape[1]
            else:
                merged = merged.reshape(out, m + k, *C.shape[2:])
                cons.in_channels = m + k
            cons.weight = nn.Parameter(merged, requires_grad=cons.weight.requires_grad)
    return grown


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_options(
    *, method: str = "signed", fraction: float = 0.25, budget=None, eps: float = 0.01, c=3.0
) -> None:
    """Raise `UnrollError` naming the first bad option of `grow` (callers may check early)."""
    if method not in ("signed", "positive"):
        raise UnrollError(f"method must be 'signed' or 'positive', got {method!r}")
    for name, value in (("fraction", fraction), ("eps", eps), ("c", c)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise UnrollError(f"{name} must be a number, got {value!r}")
    if not (0 < fraction <= 1):
        raise UnrollError(f"fraction must be in (0, 1], got {fraction!r}")
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, int) or budget < 0
    ):
        raise UnrollError(f"budget must be a non-negative int (new parameters), got {budget!r}")
    if not (math.isfinite(eps) and eps >= 0):
        raise UnrollError(f"eps must be a finite number >= 0, got {eps!r}")
    if not (math.isfinite(c) and c > 1):
        raise UnrollError(f"c (the bound on the sum of |weights|) must be > 1, got {c!r}")


def grow(
    model: nn.Module,
    data,
    loss_fn,
    *,
    method: Literal["signed", "positive"] = "signed",
    fraction: float = 0.25,
    budget: int | None = None,
    eps: float = 0.01,
    exact: bool = True,
    c: float = 3.0,
    iters: int = 50,
    seed: int = 0,
) -> tuple[nn.Module, GrowthReport]:
    """Split the neurons whose splitting matrices promise the largest loss decrease.

    ``data`` is ``(inputs, targets)`` or an iterable of such pairs; ``loss_fn(model(inputs),
    targets)`` is the mean loss of a batch. Growable layers are those of `find_sites`.

    ``method="positive"`` is S2D: copies with weights (½, ½) and offsets ±ε v_min, for
    neurons with λ_min < 0; change (ε²/2) λ_min. ``method="signed"`` also allows one negative
    weight: with Σ|w_i| = c the copies w = ((c+1)/2, −(c−1)/2), δ = (ε (c−1)/(c+1) v_max,
    ε v_max) change the loss by −(ε²/2)(c−1)/(c+1) λ_max, a descent whenever λ_max > 0, so a
    splitting-stable neuron (λ_min ≥ 0) can still grow. Each neuron takes the better of its
    positive and its signed split.

    The bound is c = 3: weights (2, −1) and a gain ½ λ_max. The gain factor (c−1)/(c+1) only
    approaches 1 as c → ∞, while the third-order remainder of the expansion grows like
    Σ|w_i|·|δ_i|³ ≤ c·ε³, so large c buys little gain at the cost of a second-order prediction
    that holds only for ever smaller ε (and large cancelling output weights, which later
    training dislikes). c = 3 takes half the largest possible gain with weights of size O(1).

    At most ``ceil(fraction · number of growable neurons)`` neurons split, best predicted
    change first across all layers, and at most ``budget`` new parameters when given.
    ``exact`` chooses `splitting_matrices` (memory m·d² per layer) or the matrix-free
    Rayleigh-quotient method (``iters`` backward passes at most; ``seed`` its start).

    Returns ``(grown, report)``: ``grown`` is a deep copy of ``model`` whose grown layers
    are ordinary ``nn.Linear`` / ``nn.Conv2d`` modules with new Parameters (build a new
    optimiser on ``grown.parameters()``); at ``eps=0`` it computes the same function as
    ``model``. ``report`` is a `GrowthReport`. The analysis runs the model in eval mode.
    """
    check_options(method=method, fraction=fraction, budget=budget, eps=eps, c=c)
    sites = _sites_or_error(model)
    spectra = splitting_spectra(model, data, loss_fn, exact=exact, iters=iters, seed=seed)
    plan = _plan(
        model, sites, spectra, method=method, fraction=fraction, budget=budget, eps=eps, c=c
    )
    grown = _apply(model, sites, plan)
    report = GrowthReport(
        method=method,
        eps=eps,
        c=c,
        splits=tuple(plan),
        eigenvalues={
            n: (sp.lambda_min.detach().clone(), sp.lambda_max.detach().clone())
            for n, sp in spectra.items()
        },
        params_before=_count(model),
        params_after=_count(grown),
        tolerance=_tolerance(model, spectra),
    )
    return grown, report
