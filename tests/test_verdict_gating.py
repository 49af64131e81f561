"""Verdicts only on values that can carry them.

* a key a probe reports as ``warming_up`` is logged but no rule and no controller sees it; once ready,
  the same value fires;
* L2: the margin waits until the model has learned *and* sits in radial equilibrium with the decay;
  ``radial_balance`` is checked against autograd (directional derivative) and is 1 at a stationary point
  of ``L + β‖θ‖²``;
* Adam: the preconditioned edge-of-stability ratio waits for the second-moment estimate;
* "not measured" is absent, never 0, and the reason reaches ``summary()``;
* the rounding floor keeps a vanished Hessian (θ = 0 after a collapse) from reading as a saddle;
* every ready-made rule has a runbook entry, carried by its events and shown in the README.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

from lightning_helpers import loaders, small_task, trainer
from lightning_landscape import ChannelDetector, HessianSpectrum, L2Transition, LandscapeMonitor, SaddleBranches
from lightning_landscape.alerts import RULES, RUNBOOK, AlertManager, Threshold, default_rules
from lightning_landscape.control import WeightDecayController
from lightning_landscape.optim_info import describe_optimizer
from lightning_landscape.probes import ProbeContext
from lightning_landscape.probes.base import PROBES, Probe, ProbeResult

README = Path(__file__).resolve().parents[1] / "README.md"


class ScriptedProbe(Probe):
    """Reports ``value`` = 0.1 (margin-like) at every measurement, warming up before ``READY_FROM``."""

    name = "test_scripted_gate"  # "test_" keeps it out of the every-probe tests
    group = "gate"
    default_every_n_steps = 1
    scalar_tags: ClassVar[dict[str, str]] = {"value": "a scripted value"}
    gated_keys = ("value",)
    READY_FROM = 6

    def run(self, ctx: ProbeContext) -> ProbeResult:
        out = ProbeResult(scalars={"value": 0.1})
        if ctx.step < self.READY_FROM:
            out.warming_up["value"] = "scripted warm-up"
        return out


PROBES.pop(ScriptedProbe.name)  # a test double: not part of the registry the README and other tests walk


def test_warming_up_values_are_logged_but_judged_only_once_ready():
    rule = Threshold("landscape/gate/value", level=0.5, direction="below", k=1, name="low_value")
    controller = WeightDecayController(margin_tag="landscape/gate/value", target_margin=2.0, cooldown_steps=0)
    monitor = LandscapeMonitor(probes=[ScriptedProbe()], alerts=AlertManager([rule], sinks=[]), weight_decay=controller)
    model = small_task(weight_decay=1e-3)
    trainer(max_steps=8, callbacks=[monitor]).fit(model, loaders())
    fired = [e.step for e in monitor.alerts.history if e.rule == "low_value"]
    assert fired == [ScriptedProbe.READY_FROM]  # not at steps 1-5 although the value was 0.1 all along
    changes = [e.step for e in monitor.alerts.history if e.rule == "weight_decay"]
    assert changes and min(changes) == ScriptedProbe.READY_FROM  # the controller waited too
    assert monitor.last_values["landscape/gate/ready/value"] == 1.0
    assert monitor.warming_up == {}


def test_monitor_reports_what_is_warming_up():
    monitor = LandscapeMonitor(probes=[ScriptedProbe()])
    trainer(max_steps=3, callbacks=[monitor]).fit(small_task(), loaders())
    assert monitor.last_values["landscape/gate/value"] == 0.1  # logged
    assert monitor.last_values["landscape/gate/ready/value"] == 0.0
    assert monitor.summary()["warming_up"] == {"landscape/gate/value": "scripted warm-up"}


# ----------------------------------------------------------------------------- L2 readiness


def _deep_linear(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-0.5], [0.8], [0.3]])
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 6, bias=False), nn.Linear(6, 6, bias=False), nn.Linear(6, 1, bias=False))
    return net, x, y


def test_radial_balance_matches_the_autograd_directional_derivative():
    net, x, y = _deep_linear()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, weight_decay=0.02)
    for _ in range(30):
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()
    loss = lambda: ((net(x) - y) ** 2).mean()  # noqa: E731
    out = L2Transition().run(ProbeContext(net, loss, step=30, optimizer=opt)).scalars
    params = list(net.parameters())
    grads = torch.autograd.grad(loss(), params)
    directional = sum(float((p * g).sum()) for p, g in zip(params, grads))  # d/ds L(sθ) at s = 1
    theta_sq = sum(float(p.pow(2).sum()) for p in params)
    expected = -directional / (2 * 0.01 * theta_sq)  # β = wd / 2
    assert out["radial_balance"] == pytest.approx(expected, rel=2e-3, abs=1e-4)


def test_margin_is_judged_only_when_learned_and_in_equilibrium():
    net, x, y = _deep_linear()
    loss = lambda: ((net(x) - y) ** 2).mean()  # noqa: E731
    wd = 0.02
    opt = torch.optim.SGD(net.parameters(), lr=0.05, weight_decay=wd)
    untrained = L2Transition().run(ProbeContext(net, loss, step=1, optimizer=opt))
    assert set(untrained.warming_up) == {"margin", "critical_beta", "margin_tracked"}
    assert "has not learned" in untrained.warming_up["margin"]
    assert "margin" in untrained.scalars  # logged all the same
    # Full-batch GD on L + β‖θ‖² to a stationary point: radial balance -> 1, the margin becomes judgeable.
    for _ in range(3000):
        opt.zero_grad()
        loss().backward()
        opt.step()
    trained = L2Transition().run(ProbeContext(net, loss, step=3000, optimizer=opt))
    assert trained.scalars["radial_balance"] == pytest.approx(1.0, abs=0.02)
    assert trained.scalars["collapse_ratio"] > 0.5
    assert trained.warming_up == {}


def test_weights_draining_initialisation_norm_are_not_judged():
    """A wide, learned net whose weight decay is still draining initialisation norm the loss does not need:
    radial balance ≈ 0, the (tiny) ray margin is logged but not judged."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 4, generator=g)
    y = x @ torch.ones(4, 1)
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 512), nn.ReLU(), nn.Linear(512, 1))
    loss = lambda: ((net(x) - y) ** 2).mean()  # noqa: E731
    opt = torch.optim.SGD(net.parameters(), lr=0.02, weight_decay=0.01)  # decay drains 2e-4 of θ per step
    for _ in range(200):
        opt.zero_grad()
        loss().backward()
        opt.step()
    out = L2Transition().run(ProbeContext(net, loss, step=200, optimizer=opt))
    assert out.scalars["collapse_ratio"] > 0.9  # it has learned
    assert abs(out.scalars["radial_balance"]) < 0.5
    assert "equilibrium" in out.warming_up["margin"]


# ----------------------------------------------------------------------------- Adam readiness


def _adam_context(steps: int) -> tuple[ProbeContext, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss = lambda: ((net(x) - y) ** 2).mean()  # noqa: E731
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    ctx = ProbeContext(net, loss, step=steps, optimizer=opt, optimizer_info=describe_optimizer(opt))
    ctx.data = (x, y)
    return ctx, opt


@pytest.mark.parametrize("steps, warming", [(1, True), (19, True), (20, False)])
def test_adam_ratio_warms_up_with_the_second_moment_estimate(steps, warming):
    ctx, _ = _adam_context(steps)
    probe = HessianSpectrum(adam_warmup_steps=20, tol=1e-3, max_iter=30)
    out = probe.run(ctx)
    assert "eos_ratio" in out.scalars and "preconditioned_lambda_max" in out.scalars
    assert ("eos_ratio" in out.warming_up) is warming
    assert ("eos_ratio_tracked" in out.warming_up) is warming


def test_tracked_ratio_follows_the_learning_rate_exactly():
    ctx, opt = _adam_context(1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    probe = HessianSpectrum(tol=1e-4, max_iter=16)
    ctx = ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=1, optimizer=sgd,
                       optimizer_info=describe_optimizer(sgd))
    measured = probe.run(ctx).scalars
    assert measured["eos_ratio_tracked"] == measured["eos_ratio"]
    sgd.param_groups[0]["lr"] = 0.3  # a ramp tripled the learning rate since the measurement
    tracked = probe.track(2, sgd, describe_optimizer(sgd)).scalars["eos_ratio_tracked"]
    assert tracked == pytest.approx(measured["lambda_max"] * 0.3 / (2 + 2 * 0.9), rel=1e-12)


def test_spectrum_measures_fast_near_the_threshold():
    probe = HessianSpectrum(every_n_steps=500, fast_every_n_steps=25, fast_above=0.25, fast_rise=0.1)
    probe._last_measured, probe._sharpness, probe._sharpness_kind = 100, 10.0, "plain"
    probe._measured_ratio = 0.05
    sgd = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)  # ratio 0.05: slow
    probe.track(101, sgd, describe_optimizer(sgd))
    assert not probe.is_due(125, 124)
    sgd.param_groups[0]["lr"] = 0.1  # a warm-up took the ratio from 0.05 to 0.5: fast
    probe.track(102, sgd, describe_optimizer(sgd))
    assert probe.is_due(125, 124) and not probe.is_due(124, 123)
    # The ratio then holds at 0.5 (a steady edge of stability): FAST_BUDGET more looks, then the regular interval.
    for _ in range(HessianSpectrum.FAST_BUDGET):
        assert probe.is_due(125, 124)
        probe._update_hot(0.5, 0.5, at_measurement=True)
    assert not probe.is_due(125, 124) and probe.is_due(500, 499)
    probe._update_hot(0.6, 0.5, at_measurement=True)  # rising again (+20 %): fast again
    assert probe.is_due(125, 124)


# ----------------------------------------------------------------------------- not measured


class NoNeurons(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def test_neuron_probes_without_layers_log_nothing_and_say_why():
    model = small_task()
    model.net = NoNeurons()
    monitor = LandscapeMonitor(probes=[ChannelDetector(every_n_steps=2), SaddleBranches(every_n_steps=2)])
    with pytest.warns(UserWarning, match="neuron"):
        trainer(max_steps=4, callbacks=[monitor]).fit(model, loaders())
    logged = monitor.last_values
    assert "landscape/neurons/channel_score" not in logged and "landscape/neurons/saddle_branch" not in logged
    reasons = monitor.summary()["not_measured"]
    assert "no neuron layer" in reasons["landscape/neurons/channel_score"]
    assert "no neuron layer" in reasons["landscape/neurons/saddle_branch"]


def test_channel_score_is_absent_until_the_window_fills():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    probe = ChannelDetector(min_points=3, window=3)
    present = []
    for step in (1, 2, 3):
        out = probe.run(ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=step))
        present.append("channel_score" in out.scalars)
    assert present == [False, False, True]


def test_vanished_hessian_after_collapse_is_not_a_saddle():
    net, x, y = _deep_linear()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1e-6)  # collapsed: with 3 layers the Hessian near 0 vanishes like θ, λ ~ ±1e-6 ≪ float32 noise
    loss = lambda: ((net(x) - y) ** 2).mean()  # noqa: E731
    probe = SaddleBranches(grad_tol=1e-2)
    out = probe.run(ProbeContext(net, loss, step=1))
    assert out.scalars["saddle"] == 0.0 and out.events == []
    # Without the floor the same eigenvalues would read as a strict saddle: the floor is what keeps it quiet.
    probe = SaddleBranches(grad_tol=1e-2)
    probe._curvature_floor = lambda ctx, loss: 0.0
    assert probe.run(ProbeContext(net, loss, step=1)).scalars["saddle"] == 1.0


# ----------------------------------------------------------------------------- runbook


def test_every_ready_made_rule_has_a_runbook_carried_by_its_events_and_in_the_readme():
    readme = README.read_text()
    for name in RULES:
        entry = RUNBOOK[name]
        assert entry.meaning and entry.confidence and entry.action
        assert re.search(rf"\| `{name}` \|", readme), name
        assert entry.action in readme.replace("\n", " "), name
    manager = AlertManager(default_rules(), sinks=[])
    fired = manager.observe(5, 0, {"landscape/hessian/eos_ratio_tracked": 100.0, "landscape/hessian/trace": math.nan})
    fired += manager.observe(6, 0, {"landscape/hessian/eos_ratio_tracked": 100.0})
    fired += manager.observe(7, 0, {"landscape/hessian/eos_ratio_tracked": 100.0})
    assert {e.rule for e in fired} >= {"nonfinite", "edge_of_stability"}
    for event in fired:
        assert event.runbook == RUNBOOK[event.rule].action
        assert event.runbook in event.text()


def test_adam_preconditioner_drift_is_exact_for_uniform_rescaling_and_a_lower_bound_otherwise():
    """Between measurements Adam's P drifts; the drift factor along the top eigenvector is exact for a uniform
    rescaling of P, and a lower bound on the exact λmax(P'^{-1/2} H P'^{-1/2}) (dense Hessian) for any
    other. It schedules measurements (a rising drift brings the next one forward); the reported tracked
    ratio follows only the learning rate."""
    ctx, opt = _adam_context(30)
    probe = HessianSpectrum(adam_warmup_steps=0, tol=1e-8, max_iter=60, max_basis=None)
    measured = probe.run(ctx).scalars
    info = describe_optimizer(opt)
    params = [p for p in ctx.module.parameters()]
    net = ctx.module

    def exact_preconditioned_lambda_max() -> float:
        """Dense Hessian (torch.autograd.functional.hessian over a functional call), dense eigvalsh."""
        from lightning_landscape.optim_info import adam_preconditioner

        names = [n for n, _ in net.named_parameters()]
        sizes = [p.numel() for p in params]
        x, y = ctx.data

        def loss_of(flat: torch.Tensor) -> torch.Tensor:
            state = {n: c.view_as(p) for n, p, c in zip(names, params, torch.split(flat, sizes))}
            return ((torch.func.functional_call(net, state, (x,)) - y) ** 2).mean()

        h = torch.autograd.functional.hessian(loss_of, torch.cat([p.detach().reshape(-1) for p in params]))
        p_inv_sqrt = adam_preconditioner(opt, ctx.space).rsqrt()
        return float(torch.linalg.eigvalsh((p_inv_sqrt[:, None] * h * p_inv_sqrt[None, :]).double()).max())

    assert measured["preconditioned_lambda_max"] == pytest.approx(exact_preconditioned_lambda_max(), rel=1e-3)
    step = probe._last_measured + HessianSpectrum.ADAM_TRACK_EVERY
    probe.fast_above = 2 * measured["eos_ratio"]  # "near the edge" for this test: between the ratio and 4x it
    # Uniform: v / 16 -> sqrt(v) / 4 -> P / 4 (eps negligible) -> λ x 4.
    for st in opt.state.values():
        st["exp_avg_sq"].div_(16.0)
    assert probe.track(step, opt, info).scalars["eos_ratio_tracked"] == measured["eos_ratio"]  # lr unchanged
    assert measured["eos_ratio"] * probe._drift == pytest.approx(4.0 * measured["eos_ratio"], rel=1e-3)
    assert probe.is_due(probe._last_measured + 25, probe._last_measured + 24)  # x4 near the edge: measure soon
    # Non-uniform: a lower bound on the exact preconditioned sharpness of the same Hessian.
    g = torch.Generator().manual_seed(3)
    for st in opt.state.values():
        st["exp_avg_sq"].mul_(torch.rand(st["exp_avg_sq"].shape, generator=g) * 4 + 0.25)
    probe.track(step + HessianSpectrum.ADAM_TRACK_EVERY, opt, info)
    tracked = measured["eos_ratio"] * probe._drift
    exact_ratio = exact_preconditioned_lambda_max() / info.eos_threshold()
    assert tracked <= exact_ratio * (1 + 1e-6)
    assert tracked >= 0.2 * exact_ratio  # and not a vacuous one


def test_tracked_margin_follows_the_weight_decay_and_warm_ray_matches_the_full_search():
    net, x, y = _deep_linear()
    loss = lambda: ((net(x) - y) ** 2).mean()  # noqa: E731
    opt = torch.optim.SGD(net.parameters(), lr=0.05, weight_decay=0.02)
    for _ in range(1500):
        opt.zero_grad()
        loss().backward()
        opt.step()
    probe = L2Transition()
    cold = probe.run(ProbeContext(net, loss, step=1500, optimizer=opt)).scalars
    assert 0.05 < cold["ray_argmax_scale"] < 1.5  # deep net: an interior maximum (the jump's barrier)
    warm = probe.run(ProbeContext(net, loss, step=1501, optimizer=opt)).scalars  # same weights, warm-started
    full = L2Transition().run(ProbeContext(net, loss, step=1501, optimizer=opt)).scalars
    assert warm["critical_beta"] == pytest.approx(full["critical_beta"], rel=1e-4)
    opt.param_groups[0]["weight_decay"] = 0.05  # a ramp raised weight decay 2.5x since the measurement
    tracked = probe.track(1502, opt, describe_optimizer(opt)).scalars["margin_tracked"]
    assert tracked == pytest.approx(full["critical_beta"] / 0.025, rel=1e-9)  # β = wd / 2 now
    assert probe.is_due(1525, 1524)  # the margin fell: measure at the fast interval


def test_ready_made_rules_wait_for_readiness_in_a_trainer():
    """EdgeOfStability on Adam's ratio and L2Threshold on the margin, with levels every value meets: they fire
    only once the value is judged (Adam warmed up; the model learned and in equilibrium with the decay)."""
    from lightning_landscape.alerts import EdgeOfStability, L2Threshold

    eos = EdgeOfStability(level=1e-9, forecast_horizon=0)
    l2 = L2Threshold(margin_below=1e9, k=1, collapse_fraction=None, forecast_horizon=0)
    monitor = LandscapeMonitor(
        probes=[HessianSpectrum(every_n_steps=1, adam_warmup_steps=5, fast_every_n_steps=None),
                L2Transition(every_n_steps=1)],
        alerts=AlertManager([eos, l2], sinks=[]))
    trainer(max_steps=8, callbacks=[monitor]).fit(small_task(optimizer="adam", lr=0.01, weight_decay=1e-3), loaders())
    first = {e.rule: e.step for e in reversed(monitor.alerts.history)}
    assert first["edge_of_stability"] == 5  # Adam step 5: the first judged ratio
    assert "l2_threshold" not in first  # an 8-step model has not learned: its margin is logged, never judged
    assert "landscape/l2/margin" in monitor.last_values and monitor.last_values["landscape/l2/ready/margin"] == 0.0
