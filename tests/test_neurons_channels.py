"""Channels to infinity: the Martinelli et al. (2025) toy, negative controls, state round trip."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lightning_landscape.neurons import ChannelTracker, candidate_pairs
from lightning_landscape.neurons.toy import channel_toy_data, channel_toy_model, train_gd, train_toy_gd
from lightning_landscape.optim_info import OptimizerInfo
from lightning_landscape.probes import HessianSpectrum, ProbeContext
from lightning_landscape.probes.neurons import ChannelDetector, SaddleBranches, WeightDynamics
from lightning_landscape.tasks import build_mlp, make_teacher_student

LR = 0.25  # full-batch GD on the mean squared error; edge of stability at λmax = 2/LR = 8


def _run_toy(seed: int, steps: int, every: int = 500, dtype: torch.dtype = torch.float32):
    x, y = channel_toy_data(dtype=dtype)
    net = channel_toy_model(seed, dtype=dtype)
    probes = [HessianSpectrum(max_iter=4, tol=1e-6), ChannelDetector(), SaddleBranches(grad_tol=1e-6), WeightDynamics()]
    history = []

    def measure(step: int) -> None:
        ctx = ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=step,
                           optimizer_info=OptimizerInfo("sgd", LR))
        scalars, events = {}, []
        for p in probes:
            r = p.run(ctx)
            scalars.update(r.scalars)
            events += r.events
        history.append((step, scalars, events))

    train_toy_gd(net, x, y, LR, steps, every, measure)  # closed-form full-batch GD (fast)
    return net, probes, history


@pytest.fixture(scope="module")
def channel_run():
    return _run_toy(seed=0, steps=8000)


def test_toy_channel_fires(channel_run):
    net, probes, history = channel_run
    events = [(step, e) for step, _, es in history for e in es if e.rule == "channel_entry"]
    assert len(events) == 1  # announced once, not at every measurement
    step, event = events[0]
    assert 5000 <= step <= 8000
    print(f"channel_entry at step {step}: {event.values}")
    assert event.key == "0:0-1" and event.values["eps"] < 0.35
    assert abs(event.values["slope"] + 1) < 0.5
    assert event.values["confirmed"] == 1.0 and event.values["lambda_max_growth"] > 1.05  # λmax grows
    assert event.values["lambda_eps_slope"] < -1.0  # λmax ~ ε^-2 in the limit
    w, a = net[0].weight.detach().flatten(), net[2].weight.detach().flatten()
    assert a[0] * a[1] < 0 and abs(a).sum() > 5  # opposite signs, diverging
    last = history[-1][1]
    assert last["0/channel_score"] == 1.0 and last["channel_score"] == 1.0
    print("last measurement:", {k: round(v, 4) for k, v in last.items() if not k.startswith(("2/", "total"))})
    assert last["0/effective_width"] == 2.0 and last["saddle_branch"] == 0.0  # a GLU, not a narrower net
    assert last["0/max_out_norm"] == pytest.approx(float(a.abs().max()))
    # the loss is already below the one-neuron plateau (0.0461) and decreasing slowly
    x, y = channel_toy_data(dtype=torch.float32)
    with torch.no_grad():
        assert float(((net(x) - y) ** 2).mean()) < 0.044  # one-neuron plateau: 0.0461
    # ε shrinks and ‖a‖ grows across the run
    eps = [s["0/channel_eps"] for _, s, _ in history]
    assert eps[-1] < 0.8 * eps[2]
    # the detector state is plain Python (small checkpoints) and survives a round trip
    detector = probes[1]
    state = json.loads(json.dumps(detector.state_dict()))
    clone = ChannelDetector()
    clone.load_state_dict(state)
    assert clone.state_dict() == detector.state_dict()


def test_toy_plateau_is_a_saddle_branch_not_a_channel():
    net, _, history = _run_toy(seed=1, steps=2000, every=500, dtype=torch.float64)
    assert not [e for _, _, es in history for e in es if e.rule == "channel_entry"]
    last = history[-1][1]
    w = net[0].weight.detach().flatten()
    assert torch.allclose(w[0], w[1], rtol=1e-4)  # the two neurons merged
    assert last["0/effective_width"] == 1.0 and last["0/width"] == 2.0
    assert last["saddle_branch"] == 1.0 and last["recovery_state"] == 2.0
    assert last["channel_score"] < 1.0
    rules = [e.rule for _, _, es in history for e in es]
    assert rules.count("saddle_branch") == 1


def test_mirrored_plateau_merges_modulo_sign():
    """Seed 3 merges with w₁ = −w₂: odd σ makes it one neuron (sign-aware), effective width 1."""
    net, _, history = _run_toy(seed=3, steps=2000, every=1000, dtype=torch.float64)
    w = net[0].weight.detach().flatten()
    assert torch.allclose(w[0], -w[1], rtol=1e-4)
    assert history[-1][1]["0/effective_width"] == 1.0
    pair = candidate_pairs(net[0].weight.detach(), net[2].weight.detach().T, "odd", k=1)[0]
    assert pair.sign == -1 and pair.eps < 1e-4


def test_wide_mlp_training_fires_no_channel():
    x, y = make_teacher_student(num_samples=1024, input_dim=10, teacher_width=8, activation="tanh", seed=1)
    torch.manual_seed(0)
    for activation in ("tanh", "relu"):
        net = build_mlp(10, [64], 1, activation)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        detector = ChannelDetector(every_n_steps=20)
        events, scores = [], []
        for step in range(1, 401):
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            loss.backward()
            opt.step()
            if step % 20 == 0:
                r = detector.run(ProbeContext(net, lambda: nn.functional.mse_loss(net(x), y), step=step))
                events += r.events
                scores.append(r.scalars.get("0/channel_score", 0.0))  # absent while the window fills
        assert events == [], activation
        assert max(scores) < 1.0


def test_wide_mlp_on_digits_fires_no_channel():
    """Negative control on real data: a wide MLP trained on scikit-learn's digits enters no channel."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    net = build_mlp(64, [128], 10, "tanh")
    opt = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
    detector = ChannelDetector(every_n_steps=25)
    events, scores = [], []
    for step in range(1, 301):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        if step % 25 == 0:
            r = detector.run(ProbeContext(net, lambda: nn.functional.cross_entropy(net(x), y), step=step))
            events += r.events
            scores.append(r.scalars.get("0/channel_score", 0.0))  # absent while the window fills
    assert float(nn.functional.cross_entropy(net(x), y)) < 0.2  # it did learn
    assert events == [] and max(scores) < 1.0


def test_aligned_pair_with_growing_eps_is_not_a_channel():
    """Cosine similarity 1 throughout, output weights opposite and growing — but ε grows: no channel."""
    tracker = ChannelTracker(window=6, min_points=4)
    u = torch.tensor([0.6, 0.8])
    cosines = []
    for t in range(6):
        c = 1.1 + 0.2 * t  # neuron 1 = c · neuron 0: same direction, ε = (c − 1)/2 grows
        w = torch.stack([u, c * u, torch.tensor([-0.8, 0.6])])
        a = torch.tensor([[2.0 + t], [-(2.0 + t)], [1.0]])
        report = tracker.update("fc", step=10 * t, loss=0.5 - 1e-4 * t, w=w, a=a, symmetry="none")
        cosines.append(float(torch.nn.functional.cosine_similarity(w[0], w[1], dim=0)))
    assert min(cosines) > 0.9999  # a cosine-based detector would flag this pair
    verdict = [v for v in report.verdicts if v.pair[:2] == (0, 1)][0]
    assert not verdict.criteria["eps_shrinking"] and verdict.score < 1.0


def test_same_sign_outputs_are_not_a_channel():
    """ε shrinking with growing output weights of the *same* sign: a merge, not a channel."""
    tracker = ChannelTracker(window=6, min_points=4)
    for t in range(6):
        eps = 0.3 * 0.9 ** t
        w = torch.tensor([[1.0 + eps], [1.0 - eps]])
        a = torch.tensor([[0.1 / eps], [0.1 / eps]])
        report = tracker.update("fc", step=t, loss=0.5 - 1e-4 * t, w=w, a=a, symmetry="none")
    assert not report.best.criteria["opposite_signs"] and report.best.score < 1.0
    assert report.best.criteria["eps_shrinking"] and report.best.criteria["loglog_slope"]


def test_closed_form_gd_matches_autograd():
    x, y = channel_toy_data(num_samples=256)
    n1, n2 = channel_toy_model(0), channel_toy_model(0)
    l1, l2 = train_gd(n1, x, y, LR, 50), train_toy_gd(n2, x, y, LR, 50)
    assert l1 == pytest.approx(l2, rel=1e-12)
    assert all(torch.allclose(p, q, rtol=1e-12, atol=1e-14) for p, q in zip(n1.parameters(), n2.parameters()))
