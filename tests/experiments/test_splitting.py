"""Splitting steepest descent: the splitting matrix, its spectrum, and the predicted loss change.

Everything runs in float64 so that second-order effects of size ε² stay far above rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unroll
from tests.tolerances import (
    F64_ROUNDING,
    F64_SPLITTING_MATRIX,
    LANCZOS_EIGENVALUE,
    LANCZOS_EIGENVECTOR,
    SPLIT_PREDICTION,
    SPLIT_READBACK,
)
from unroll.errors import UnrollError
from unroll.experiments.digits import one_thread
from unroll.experiments.parallel import Residual
from unroll.experiments.splitting import find_sites, splitting_matrices, splitting_spectra

DT = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """These networks are tiny: intra-op threads only add waiting on a busy machine."""
    with one_thread():
        yield


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 6, dtype=DT), nn.Tanh(), nn.Linear(6, 4, dtype=DT), nn.Softplus(),
        nn.Linear(4, 3, dtype=DT),
    )  # fmt: skip


def _cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, dtype=DT),
        nn.Tanh(),
        nn.Conv2d(3, 4, 3, stride=2, dtype=DT),
        nn.SiLU(),
        nn.AvgPool2d(3),
        nn.Flatten(),
        nn.Linear(4, 3, dtype=DT),
    )


def _resnet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    block = lambda: Residual(  # noqa: E731
        nn.Sequential(nn.Linear(4, 5, dtype=DT), nn.Tanh(), nn.Linear(5, 4, dtype=DT))
    )
    return nn.Sequential(nn.Linear(5, 4, dtype=DT), block(), block(), nn.Linear(4, 3, dtype=DT))


def _data(model: nn.Module, n: int = 40, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 2, 7, 7) if isinstance(model[0], nn.Conv2d) else (n, 5)
    return torch.randn(shape, generator=g, dtype=DT), torch.randint(0, 3, (n,), generator=g)


MODELS = {"mlp": _mlp, "cnn": _cnn, "resnet": _resnet}
loss_fn = F.cross_entropy


def test_sites_found_and_relu_rejected():
    assert [s.name for s in find_sites(_mlp())] == ["0", "2"]
    assert [s.name for s in find_sites(_resnet())] == ["1.f.0", "2.f.0"]
    cnn = find_sites(_cnn())
    assert [(s.name, s.flatten) for s in cnn] == [("0", False), ("2", True)]
    relu = nn.Sequential(nn.Linear(5, 6, dtype=DT), nn.ReLU(), nn.Linear(6, 3, dtype=DT))
    with pytest.raises(UnrollError, match="no growable layer"):
        unroll.grow(relu, _data(relu), loss_fn)


def test_exact_matrix_is_the_definition():
    """S_j = Σ_n ∂L/∂z_nj σ''(u_nj) x̃_n x̃_nᵀ, written out by hand for tanh."""
    model = _mlp()
    x, y = _data(model)
    lin, out = model[0], model[2:]
    u = lin(x)
    z = torch.tanh(u)
    (g,) = torch.autograd.grad(loss_fn(out(z), y), z)
    d2 = -2 * torch.tanh(u) * (1 - torch.tanh(u) ** 2)
    xt = torch.cat([x, torch.ones(len(x), 1, dtype=DT)], 1)
    reference = torch.einsum("nj,nd,ne->jde", (g * d2).detach(), xt, xt)
    S = splitting_matrices(model, (x, y), loss_fn)["0"]
    assert S.shape == (6, 6, 6)
    torch.testing.assert_close(S, reference, **F64_SPLITTING_MATRIX)


def test_batches_are_weighted_by_size():
    model = _mlp()
    x, y = _data(model, n=30)
    whole = splitting_matrices(model, (x, y), loss_fn)
    parts = splitting_matrices(model, [(x[:7], y[:7]), (x[7:], y[7:])], loss_fn)
    for name in whole:
        torch.testing.assert_close(parts[name], whole[name], **F64_SPLITTING_MATRIX)


@pytest.mark.parametrize("kind", ["wide", "cnn"])
def test_rayleigh_quotient_matches_eigh(kind):
    """Matrix-free λ_min, λ_max (products S v only) against eigh of the exact S."""
    if kind == "wide":
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(60, 5, dtype=DT), nn.Tanh(), nn.Linear(5, 3, dtype=DT))
        g = torch.Generator().manual_seed(4)
        data = (
            torch.randn(200, 60, generator=g, dtype=DT),
            torch.randint(0, 3, (200,), generator=g),
        )
        iters = 45  # fewer steps than d = 61: the answer must come from convergence
    else:  # products through F.conv2d against S from unfolded patches
        model = _cnn()
        data = _data(model, n=16)
        iters = 40
    exact = splitting_matrices(model, data, loss_fn)
    fast = splitting_spectra(model, data, loss_fn, exact=False, iters=iters, tol=1e-10)
    for name, S in exact.items():
        lam, vec = torch.linalg.eigh(S)
        scale = lam.abs().amax(1)
        sp = fast[name]
        # A Ritz value with residual ‖r‖ lies within ‖r‖ ≤ tol·scale = 1e-10·scale of an
        # eigenvalue (symmetric S); 1e-8 leaves room for the scale estimate. An eigenvector's
        # angle is ≤ ‖r‖/gap, so 1 − |cos| ≈ angle²/2 is far below 1e-6 for these gaps.
        assert ((sp.lambda_min - lam[:, 0]).abs() <= LANCZOS_EIGENVALUE * scale).all()
        assert ((sp.lambda_max - lam[:, -1]).abs() <= LANCZOS_EIGENVALUE * scale).all()
        # eigenvectors up to sign (the spectra here have simple ends)
        assert ((sp.v_min * vec[:, :, 0]).sum(1).abs() > 1 - LANCZOS_EIGENVECTOR).all()
        assert ((sp.v_max * vec[:, :, -1]).sum(1).abs() > 1 - LANCZOS_EIGENVECTOR).all()


def _loss(model, data) -> float:
    with torch.no_grad():
        return float(loss_fn(model(data[0]), data[1]))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("method", ["positive", "signed"])
def test_same_function_at_eps_zero_and_ordinary_module(name, method):
    model = MODELS[name]()
    data = _data(model)
    grown, report = unroll.grow(model, data, loss_fn, method=method, eps=0.0, fraction=1.0)
    assert report.splits, "this network has neurons to split"
    assert report.params_after > report.params_before
    assert sum(p.numel() for p in grown.parameters()) == report.params_after
    with torch.no_grad():
        torch.testing.assert_close(grown(data[0]), model(data[0]), **F64_ROUNDING)
    # the original is untouched, the grown model trains with a fresh optimiser
    assert sum(p.numel() for p in model.parameters()) == report.params_before
    opt = torch.optim.Adam(grown.parameters(), lr=1e-2)
    before = _loss(grown, data)
    for _ in range(5):
        opt.zero_grad()
        loss_fn(grown(data[0]), data[1]).backward()
        opt.step()
    assert _loss(grown, data) < before


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("method", ["positive", "signed"])
def test_predicted_change_is_second_order_exact(name, method):
    """(L(grown) − L) / predicted → 1 as ε → 0: |ratio − 1| ≤ ε, first order with constant 1.

    The offsets are ε times unit vectors and the losses O(1), so the constant is not tuned to
    these networks; a wrong factor in the prediction (a lost ½, the wrong eigenvalue, offsets
    not summing to zero) leaves |ratio − 1| = O(1) and fails at every ε here.
    """
    model = MODELS[name]()
    data = _data(model)
    base = _loss(model, data)
    for eps in [0.01, 0.003, 0.001]:
        grown, report = unroll.grow(model, data, loss_fn, method=method, eps=eps, fraction=0.5)
        assert report.predicted_change < 0
        ratio = (_loss(grown, data) - base) / report.predicted_change
        assert abs(ratio - 1) < eps, (eps, ratio)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_s2d_prediction_error_is_of_order_eps_squared(name):
    """For S2D the third-order term cancels: the copies θ ± εv with weights ½, ½ add
    ½((v·x)³ − (v·x)³) = 0 at order ε³, so |ratio − 1| falls like ε² (slope 2 ± 0.3)."""
    model = MODELS[name]()
    data = _data(model)
    base = _loss(model, data)
    eps = np.array([0.1, 0.03, 0.01, 0.003])
    errors = []
    for e in eps:
        grown, report = unroll.grow(model, data, loss_fn, method="positive", eps=float(e))
        errors.append(abs((_loss(grown, data) - base) / report.predicted_change - 1))
    slope = np.polyfit(np.log(eps), np.log(errors), 1)[0]
    assert abs(slope - 2) < 0.3, (errors, slope)


def _stable_network():
    """A network whose every hidden neuron has a positive definite splitting matrix.

    Inputs and first-layer weights are positive, so u > 0 and tanh''(u) < 0; output weights are
    positive and the targets lie far above the outputs, so ∂L/∂z < 0. Then ∂L/∂z·σ''(u) > 0 for
    every sample and S = Σ (positive) x̃ x̃ᵀ is positive definite: no positive split helps.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3, dtype=DT), nn.Tanh(), nn.Linear(3, 1, dtype=DT))
    with torch.no_grad():
        model[0].weight.uniform_(0.2, 0.6)
        model[0].bias.uniform_(0.0, 0.2)
        model[2].weight.uniform_(0.5, 1.0)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(12, 2, generator=g, dtype=DT) + 0.1
    y = torch.full((12, 1), 5.0, dtype=DT)
    return model, (x, y)


def test_signed_splitting_descends_where_s2d_is_stuck():
    model, data = _stable_network()
    mse = F.mse_loss
    S = splitting_matrices(model, data, mse)["0"]
    assert (torch.linalg.eigvalsh(S)[:, 0] > 0).all()  # the construction holds

    _, positive = unroll.grow(model, data, mse, method="positive", eps=0.1, fraction=1.0)
    assert positive.stable
    assert positive.splits == ()

    with torch.no_grad():
        base = float(mse(model(data[0]), data[1]))
    grown, signed = unroll.grow(model, data, mse, method="signed", eps=0.1, fraction=1.0)
    assert len(signed.splits) == 3 and all(s.kind == "signed" for s in signed.splits)
    with torch.no_grad():
        after = float(mse(grown(data[0]), data[1]))
    assert after < base
    assert (after - base) / signed.predicted_change == pytest.approx(1, abs=SPLIT_PREDICTION)


def _formula(model, grown, data, loss, report) -> float:
    """Σ (ε²/2) w_i δ_iᵀ S δ_i over the splits, read back from the grown model's parameters
    (one Linear → σ → Linear site), checking Σ w_i = 1 and Σ w_i δ_i = 0 on the way."""
    S = splitting_matrices(model, data, loss)["0"]
    theta_old = torch.cat([model[0].weight, model[0].bias[:, None]], 1).detach()
    theta_new = torch.cat([grown[0].weight, grown[0].bias[:, None]], 1).detach()
    cols = grown[2].weight.detach()
    total = 0.0
    for s in report.splits:
        j, k = s.neuron, s.new_neuron
        deltas = (theta_new[j] - theta_old[j], theta_new[k] - theta_old[j])
        # the consumer's two columns are w_1 c and w_2 c for the original column c
        torch.testing.assert_close(cols[:, j] + cols[:, k], model[2].weight[:, j].detach())
        rho = float(cols[:, k] @ cols[:, j] / (cols[:, j] @ cols[:, j]))
        w = (1 / (1 + rho), rho / (1 + rho))
        assert abs(w[0]) + abs(w[1]) == pytest.approx(1 if s.kind == "positive" else report.c)
        assert (w[0] * deltas[0] + w[1] * deltas[1]).abs().max() < F64_ROUNDING["atol"]
        total += sum(0.5 * wi * float(di @ S[j] @ di) for wi, di in zip(w, deltas, strict=True))
    split = {s.neuron for s in report.splits}
    keep = [i for i in range(len(theta_old)) if i not in split]
    assert torch.equal(theta_new[keep], theta_old[keep])
    return total


@pytest.mark.parametrize("case", ["positive", "signed"])
def test_prediction_is_the_formula_for_the_offsets_taken(case):
    """The positive case splits S2D-style on a generic network; the signed case uses the
    splitting-stable network, where every split is one with a negative weight."""
    if case == "positive":
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8, dtype=DT), nn.Tanh(), nn.Linear(8, 3, dtype=DT))
        data, loss = _data(model), loss_fn
    else:
        model, data = _stable_network()
        loss = F.mse_loss
    grown, report = unroll.grow(model, data, loss, method=case, eps=0.05, fraction=1.0, c=5.0)
    assert report.splits and {s.kind for s in report.splits} == {case}
    total = _formula(model, grown, data, loss, report)
    assert total == pytest.approx(report.predicted_change, rel=SPLIT_READBACK)


def test_fraction_and_budget_limit_the_splits():
    model = _mlp()
    data = _data(model)
    _, all_ = unroll.grow(model, data, loss_fn, fraction=1.0)
    _, few = unroll.grow(model, data, loss_fn, fraction=0.2)  # ceil(0.2 · 10 neurons)
    assert len(few.splits) == 2 < len(all_.splits)
    # the best predicted changes are taken first
    assert [s.gain for s in few.splits] == sorted(s.gain for s in all_.splits)[:2]
    cheapest = min((5 + 1) + 4, (6 + 1) + 3)  # θ plus the consumer's column, per layer
    _, none = unroll.grow(model, data, loss_fn, fraction=1.0, budget=cheapest - 1)
    assert none.splits == ()
    _, capped = unroll.grow(model, data, loss_fn, fraction=1.0, budget=25)
    assert 0 < capped.params_after - capped.params_before <= 25


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"method": "greedy"}, "method"),
        ({"fraction": 0.0}, "fraction"),
        ({"budget": -1}, "budget"),
        ({"eps": float("nan")}, "eps"),
        ({"c": 1.0}, "c "),
        ({"eps": "0.1"}, "eps must be a number"),
        ({"fraction": None}, "fraction must be a number"),
        ({"c": "3"}, "c must be a number"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, word):
    model = _mlp()
    with pytest.raises(UnrollError, match=word):
        unroll.grow(model, _data(model), loss_fn, **kwargs)


def test_loss_fn_must_be_callable():
    model = _mlp()
    with pytest.raises(UnrollError, match="loss_fn must be callable"):
        unroll.grow(model, _data(model), "cross_entropy")


def test_report_table_lists_every_split():
    model = _mlp()
    _, report = unroll.grow(model, _data(model), loss_fn, fraction=0.5)
    lines = report.table().splitlines()
    assert len(lines) == 2 + len(report.splits)
    assert "predicted loss change" in lines[0]


def test_unroll_grow_stays_the_function_after_importing_its_module():
    import unroll.cli.commands.grow  # noqa: F401  (imports unroll.experiments.splitting)
    import unroll.experiments.splitting

    assert unroll.grow is unroll.experiments.splitting.grow
    model = _mlp()
    grown, report = unroll.grow(model, _data(model), loss_fn, fraction=0.1)
    assert len(report.splits) == 1


def test_parallel_forms_grow_at_order_one_and_are_refused_at_order_two():
    """Order 1 is an ordinary sum of branches (the prediction holds); at order 2 the neurons
    also act through Jacobian-vector products, which S does not model."""
    stack = _resnet()[1:3]
    for order in (1, 2):
        model = nn.Sequential(_mlp()[0], nn.Tanh(), nn.Linear(6, 4, dtype=DT))
        model.append(unroll.parallelize(stack, order, share=False))
        model.append(nn.Linear(4, 3, dtype=DT))
        data = _data(model)
        if order == 2:
            with pytest.raises(UnrollError, match=r"layer 3\.branches\.0\.0 .*order-2 Parallel 3"):
                unroll.grow(model, data, loss_fn)
            continue
        assert [s.name for s in find_sites(model)] == ["0", "3.branches.0.0", "3.branches.1.0"]
        eps = 1e-3
        grown, report = unroll.grow(model, data, loss_fn, eps=eps, fraction=0.5)
        ratio = (_loss(grown, data) - _loss(model, data)) / report.predicted_change
        assert abs(ratio - 1) < eps  # |ratio − 1| ≤ ε, as in the test above


@pytest.mark.parametrize("scheme", ["forward_euler", "midpoint"])
def test_scheme_network_branches_grow(scheme):
    """Branches of a scheme-built network: midpoint calls each f twice per step, so S sums
    both calls; the prediction must still hold to second order."""
    torch.manual_seed(0)
    net = unroll.schemes[scheme].network(
        2, dim=4, f=lambda: nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 4)),
        backend="torch",
    )  # fmt: skip
    model = nn.Sequential(nn.Linear(5, 4), net, nn.Linear(4, 3)).to(DT)
    data = _data(model)
    assert len(find_sites(model)) == 2
    same, _ = unroll.grow(model, data, loss_fn, eps=0.0, fraction=1.0)
    with torch.no_grad():
        torch.testing.assert_close(same(data[0]), model(data[0]), **F64_ROUNDING)
    base = _loss(model, data)
    errors = []
    for eps in (1e-2, 1e-3):
        grown, report = unroll.grow(model, data, loss_fn, eps=eps, fraction=0.5)
        errors.append(abs((_loss(grown, data) - base) / report.predicted_change - 1))
        assert errors[-1] < 0.5 * eps
    assert errors[1] < 0.2 * errors[0]
