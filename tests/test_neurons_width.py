"""Effective width, saddle branches from neuron splitting (exact Hessian), weight dynamics, recovery."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_landscape.neurons import (
    Erf,
    classify_state,
    convergence_rate,
    discover_layers,
    distances,
    effective_width,
    hidden_statistics,
    layer_effective_width,
    layer_norms,
    snapshot,
)
from lightning_landscape.neurons.toy import channel_toy_data
from lightning_landscape.probes import ProbeContext
from lightning_landscape.probes.neurons import ChannelDetector, SaddleBranches, WeightDynamics


def _width(net, x, **kw):
    layer = discover_layers(net, forward=lambda: net(x)).layers[0]
    h_rms, scale = hidden_statistics([layer], lambda: net(x))[layer.name]
    return layer_effective_width(layer, h_rms, scale, **kw)


def _relu_net(w1, b1, w2):
    net = nn.Sequential(nn.Linear(w1.shape[1], w1.shape[0]), nn.ReLU(), nn.Linear(w1.shape[0], 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(w1), net[0].bias.copy_(b1), net[2].weight.copy_(w2)
    return net


def test_effective_width_respects_symmetry():
    x = torch.randn(256, 2, dtype=torch.float64)
    base = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2]], dtype=torch.float64)
    b = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    # ReLU: neuron 3 = 2.5 × neuron 0 (positive scale) merges; neuron 4 = −neuron 1 does not; neuron 5 dead
    w1 = torch.cat([base, 2.5 * base[:1], -base[1:2], torch.tensor([[0.0, 0.0]], dtype=torch.float64)])
    b1 = torch.cat([b, 2.5 * b[:1], -b[1:2], torch.tensor([-1.0], dtype=torch.float64)])
    w2 = torch.tensor([[1.0, -1.0, 0.5, 0.7, 0.4, 3.0]], dtype=torch.float64)
    rep = _width(_relu_net(w1, b1, w2), x)
    assert (rep.width, rep.effective_width) == (6, 4)
    assert 5 in rep.negligible and sorted(u for u, _ in rep.groups[0]) == [0, 3]
    # the merged group cancels: 1·relu(w0 x) − 0.4·relu(2.5 w0 x) = 0 → negligible too
    w2c = torch.tensor([[1.0, -1.0, 0.5, -0.4, 0.4, 3.0]], dtype=torch.float64)
    assert _width(_relu_net(w1, b1, w2c), x).effective_width == 3
    # tanh: the mirrored neuron merges (odd), a mirrored softplus neuron does not
    for act, expected in ((nn.Tanh, 2), (nn.Softplus, 3)):
        net = nn.Sequential(nn.Linear(2, 3), act(), nn.Linear(3, 1)).double()
        with torch.no_grad():
            net[0].weight.copy_(torch.cat([base[:2], -base[:1]])), net[0].bias.copy_(torch.cat([b[:2], -b[:1]]))
        assert _width(net, x).effective_width == expected, act


def test_channel_pair_is_not_merged():
    """Deep in a channel (ε = 1e-4, a = ±1e4) the pair is a gated linear unit, not one neuron."""
    w = torch.tensor([[1.0 + 1e-4], [1.0 - 1e-4]], dtype=torch.float64)
    a = torch.tensor([[1e4 + 0.5], [-1e4 + 0.5]], dtype=torch.float64)
    x = torch.randn(512, 1, dtype=torch.float64)
    h = torch.erf(x @ w.T / math.sqrt(2))
    out = h @ a
    rep = effective_width(w, a, h.pow(2).mean(0).sqrt(), float(out.pow(2).mean().sqrt()), "odd")
    assert rep.effective_width == 2
    w_equal = torch.tensor([[1.0], [1.0]], dtype=torch.float64)  # exactly merged: one neuron
    assert effective_width(w_equal, a, h.pow(2).mean(0).sqrt(), 1.0, "odd").effective_width == 1


def _toy_loss_flat(theta, x, y):
    w1, w2, a1, a2 = theta
    f = a1 * torch.erf(w1 * x / math.sqrt(2)) + a2 * torch.erf(w2 * x / math.sqrt(2))
    return ((f - y) ** 2).mean()


@pytest.fixture(scope="module")
def trained_narrow():
    """A one-neuron erf net trained to its critical point on the channel-toy data (‖∇L‖ ~ 1e-15)."""
    x, y = channel_toy_data()
    narrow = nn.Sequential(nn.Linear(1, 1, bias=False), Erf(), nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        narrow[0].weight.fill_(1.0), narrow[2].weight.fill_(1.0)
    _lbfgs(narrow, x, y)
    return narrow, x, y


def _lbfgs(net, x, y, rounds=4):
    opt = torch.optim.LBFGS(net.parameters(), lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        return loss

    for _ in range(rounds):
        opt.step(closure)


@pytest.mark.parametrize("delta", [2.0, -0.5])
def test_split_neuron_gives_saddle_branch(delta, trained_narrow):
    """Train a one-neuron erf net to its critical point, split a → (δa, (1−δ)a): same function, λmin < 0
    (exact Hessian), effective width 1 = the narrow width, and both indicators fire."""
    narrow, x, y = trained_narrow
    w, a = narrow[0].weight.item(), narrow[2].weight.item()
    wide = nn.Sequential(nn.Linear(1, 2, bias=False), Erf(), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        wide[0].weight.fill_(w)
        wide[2].weight.copy_(torch.tensor([[delta * a, (1 - delta) * a]], dtype=torch.float64))
    assert torch.allclose(wide(x), narrow(x), atol=1e-12)
    theta = torch.tensor([w, w, delta * a, (1 - delta) * a], dtype=torch.float64)
    exact = torch.linalg.eigvalsh(torch.autograd.functional.hessian(lambda t: _toy_loss_flat(t, x, y), theta))
    assert exact[0] < -1e-3 and exact[-1] > 0
    print(f"toy split δ={delta}: exact λmin={float(exact[0]):.4g} λmax={float(exact[-1]):.4g}")
    ctx = ProbeContext(wide, lambda: ((wide(x) - y) ** 2).mean(), step=10)
    probe = SaddleBranches(grad_tol=1e-6)
    out = probe.run(ctx)
    assert out.scalars["0/effective_width"] == 1.0 and out.scalars["0/width"] == 2.0
    assert out.scalars["grad_norm"] < 1e-8
    assert out.scalars["saddle_branch"] == 1.0 and out.scalars["saddle"] == 1.0
    assert out.scalars["recovery_state"] == 2.0  # saddle branch
    assert ctx.extras["lambda_min"] == pytest.approx(float(exact[0]), rel=1e-6)  # own Lanczos, 4 parameters: exact
    assert sorted(e.rule for e in out.events) == ["saddle", "saddle_branch"]
    assert probe.run(ProbeContext(wide, ctx.loss_closure, step=20)).events == []  # fires on entry, not again


def test_split_tanh_teacher_student_width_three():
    """A wider case: tanh net with biases, narrow width 2 trained to a critical point, neuron 0 split (δ = 1.8)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(3, 4, generator=g, dtype=torch.float64)) @ torch.randn(4, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    narrow = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1)).double()
    _lbfgs(narrow, x, y)
    wide = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    delta = 1.8
    with torch.no_grad():
        wide[0].weight.copy_(torch.cat([narrow[0].weight, narrow[0].weight[:1]]))
        wide[0].bias.copy_(torch.cat([narrow[0].bias, narrow[0].bias[:1]]))
        a = narrow[2].weight[0]
        wide[2].weight.copy_(torch.stack([delta * a[0], a[1], (1 - delta) * a[0]])[None])
        wide[2].bias.copy_(narrow[2].bias)
    assert torch.allclose(wide(x), narrow(x), atol=1e-10)
    ctx = ProbeContext(wide, lambda: ((wide(x) - y) ** 2).mean(), step=1)
    out = SaddleBranches(grad_tol=1e-5, tol=1e-8).run(ctx)
    assert out.scalars["0/effective_width"] == 2.0 and out.scalars["0/width"] == 3.0
    assert out.scalars["saddle_branch"] == 1.0
    params = [p for p in wide.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of(theta):
        chunks, i = [], 0
        for p in params:
            chunks.append(theta[i:i + p.numel()].view_as(p))
            i += p.numel()
        h = torch.tanh(x @ chunks[0].T + chunks[1])
        return ((h @ chunks[2].T + chunks[3] - y) ** 2).mean()

    exact = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat))
    # The split outside [0, 1] is a strict saddle here: the exact Hessian has λmin = −0.0123 against
    # λmax = 10.7, past the −1e-3·λmax floor; the probe must say so.
    assert float(exact[0]) < -1e-3 * float(exact[-1])
    assert out.scalars["saddle"] == 1.0
    assert ctx.extras["lambda_min"] == pytest.approx(float(exact[0]), rel=1e-3, abs=1e-8)


def test_weight_dynamics_exact():
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    x = torch.randn(8, 2, dtype=torch.float64)
    probe = WeightDynamics(histogram_every=1)
    closure = lambda: (net(x) ** 2).mean()  # noqa: E731
    before = [p.detach().clone() for p in net.parameters()]
    first = probe.run(ProbeContext(net, closure, step=10))
    assert first.scalars["0/distance_from_init"] == 0.0 and "0/update_ratio" not in first.scalars
    assert first.scalars["init_step"] == 10.0
    assert set(first.histograms) == {"0/neuron_out_norm", "0/neuron_in_norm"}
    assert all(torch.equal(p, q) for p, q in zip(before, net.parameters()))  # reading only
    with torch.no_grad():
        net[0].weight.add_(0.5)
        net[2].bias.add_(-2.0)
    out = probe.run(ProbeContext(net, closure, step=14)).scalars
    assert out["0/distance_from_init"] == pytest.approx(0.5 * math.sqrt(6))
    assert out["2/distance_from_init"] == pytest.approx(2.0)
    assert out["0/norm"] == pytest.approx(float(torch.cat([net[0].weight.flatten(), net[0].bias]).detach().norm()))
    assert out["0/update_ratio"] == pytest.approx(0.5 * math.sqrt(6) / (out["0/norm"] * 4))
    assert out["total/distance_from_init"] == pytest.approx(math.sqrt(6 * 0.25 + 4))
    assert out["0/max_out_norm"] == pytest.approx(float(net[2].weight.detach().abs().max()))
    assert layer_norms(net)["0"] == pytest.approx(out["0/norm"])
    assert distances(net, snapshot(net)) == {"0": 0.0, "2": 0.0}


def test_recovery_classification_and_rate():
    steps = list(range(0, 100, 10))
    assert convergence_rate(steps, [0.2 + 3 * math.exp(-0.1 * s) for s in steps], floor=0.2) == pytest.approx(0.1)
    assert math.isnan(convergence_rate([1], [1.0]))
    common = dict(grad_tol=1e-4, floor_tol=1e-3)
    assert classify_state(1.0, 0.5, 0.0, True, **common) == "moving"
    assert classify_state(1e-6, 5e-4, 0.0, True, **common) == "global_minimum"
    assert classify_state(1e-6, 0.5, 0.0, True, **common) == "saddle_branch"
    assert classify_state(1e-6, 0.5, 0.0, False, **common) == "plateau"


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [(WeightDynamics, {"histogram_every": -1}, "WeightDynamics.histogram_every"),
     (ChannelDetector, {"window": 2}, "ChannelDetector.window"),
     (ChannelDetector, {"min_opposition": 2.0}, "ChannelDetector.min_opposition"),
     (ChannelDetector, {"severity": "loud"}, "ChannelDetector.severity"),
     (SaddleBranches, {"grad_tol": 0.0}, "SaddleBranches.grad_tol"),
     (SaddleBranches, {"layers": [["fc1"]]}, "SaddleBranches.layers"),
     (SaddleBranches, {"loss_floor": float("nan")}, "SaddleBranches.loss_floor")],
)
def test_bad_arguments_name_themselves(cls, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cls(**kwargs)
