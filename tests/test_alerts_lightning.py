"""End to end through a real Trainer: alerts + controller wired into LandscapeMonitor (its ``alerts`` and
``weight_decay`` arguments), with a synthetic L2/neuron probe.

* without the controller, a run whose weight decay sits close to the collapse threshold fires
  ``l2_threshold`` and (``stop_on``) stops; with the controller the margin is restored before the
  alert fires and training runs to the end;
* a channel event raises weight decay in the optimizer (kept ``initial_weight_decay``), logged as
  ``landscape/l2/weight_decay``;
* resume from a mid-run checkpoint: alerts fired before are not fired again, and the controller
  continues from its saved state (same weight-decay trajectory as the uninterrupted run).
"""

from __future__ import annotations

from typing import ClassVar, Optional

import pytest

from lightning_landscape.alerts import (
    AlertManager,
    ChannelEntry,
    Event,
    L2Threshold,
    Sink,
)
from lightning_landscape.callbacks import LandscapeMonitor
from lightning_landscape.control import WeightDecayController
from lightning_landscape.probes.base import PROBES, Probe, ProbeResult

from lightning_helpers import loaders, small_task, trainer

L = pytest.importorskip("lightning.pytorch")

BETA_C = 0.012  # synthetic critical weight decay


class FakeL2Probe(Probe):
    """margin = BETA_C / current weight decay (what the ray estimate gives for a deep linear net);
    a ``channel_entry`` event at every measurement in ``channel_steps``."""

    name = "fake_l2_for_alert_tests"
    group = "l2"
    default_every_n_steps = 1
    scalar_tags: ClassVar[dict[str, str]] = {"margin": "synthetic L2 margin", "margin_tracked": "the same"}

    def __init__(self, every_n_steps: Optional[int] = None, channel_from: int = 10**9, channel_to: int = 10**9) -> None:
        super().__init__(every_n_steps)
        self.channel_from, self.channel_to = channel_from, channel_to

    def run(self, ctx) -> ProbeResult:
        wd = ctx.optimizer.param_groups[0]["weight_decay"]
        margin = BETA_C / wd if wd > 0 else float("inf")
        out = ProbeResult(scalars={"margin": margin, "margin_tracked": margin})
        if self.channel_from <= ctx.step < self.channel_to:
            out.events.append(Event("channel_entry", ctx.step, ctx.epoch, {"eps": 1e-3}, "warning",
                                    "neurons 1 and 2 diverging", key="net.0:1-2"))
        return out


PROBES.pop(FakeL2Probe.name)  # a test double: keep it out of the registry other tests parametrise over


class Collect(Sink):
    def __init__(self) -> None:
        super().__init__("info")
        self.events: list[Event] = []

    def emit(self, events):
        self.events.extend(events)


def run(max_steps, controller, wd=0.01, ckpt_dir=None, resume=None, channel=(10**9, 10**9), stop=True,
        extra_probes=()):
    sink = Collect()
    alerts = AlertManager([L2Threshold(margin_below=1.5, k=2), ChannelEntry(cooldown_steps=5)], sinks=[sink],
                          stop_on=["l2_threshold"] if stop else None)
    monitor = LandscapeMonitor(probes=[FakeL2Probe(channel_from=channel[0], channel_to=channel[1]), *extra_probes],
                               measure_first_step=False, alerts=alerts, weight_decay=controller)
    callbacks = [monitor]
    extra = {}
    if ckpt_dir is not None:
        callbacks.append(L.callbacks.ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=10, save_top_k=-1,
                                                     filename="{step}"))
        extra["enable_checkpointing"] = True
    tr = trainer(max_steps=max_steps, callbacks=callbacks, **extra)
    model = small_task(weight_decay=wd, momentum=0.0)
    tr.fit(model, loaders(n=64, batch_size=8), ckpt_path=resume)
    return tr, monitor, sink


def test_l2_alert_fires_and_stops_without_controller():
    tr, monitor, sink = run(20, controller=None)
    assert [(e.rule, e.step) for e in sink.events] == [("l2_threshold", 2)]
    assert tr.global_step == 2  # stop_on stopped training
    assert monitor.last_values["landscape/alerts/l2_threshold"] == 1.0


def test_controller_restores_margin_before_the_alert():
    ctrl = WeightDecayController(target_margin=2.0, lower_factor=0.5, cooldown_steps=5, max_wd=0.05)
    tr, monitor, sink = run(20, controller=ctrl)
    assert tr.global_step == 20  # ran to the end
    assert [(e.rule, e.step) for e in sink.events] == [("weight_decay", 1)]
    opt = tr.optimizers[0]
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(BETA_C / 2.0)
    assert opt.param_groups[0]["initial_weight_decay"] == 0.01
    assert monitor.last_values["landscape/l2/margin"] == pytest.approx(2.0)
    assert monitor.last_values["landscape/l2/weight_decay"] == pytest.approx(BETA_C / 2.0)
    assert monitor.last_values["landscape/alerts/l2_threshold"] == 0.0


def test_channel_raises_weight_decay_within_limits():
    ctrl = WeightDecayController(raise_factor=2.0, target_margin=2.0, cooldown_steps=3, max_wd=0.05)
    tr, monitor, sink = run(30, controller=ctrl, wd=1e-3, channel=(5, 100))
    changes = [e for e in sink.events if e.rule == "weight_decay"]
    # raised every cooldown while the channel persists, until the margin cap (BETA_C / 2 = 0.006)
    assert [round(e.values["new"], 6) for e in changes] == [0.002, 0.004, 0.006]
    assert [e.rule for e in sink.events].count("channel_entry") == 1  # the alert itself fires once
    assert tr.optimizers[0].param_groups[0]["weight_decay"] == pytest.approx(0.006)


def test_resume_from_mid_run_checkpoint_does_not_refire(tmp_path):
    def ctrl():
        return WeightDecayController(raise_factor=1.5, target_margin=1.1, cooldown_steps=4, max_wd=0.05)

    kw = dict(wd=1e-3, channel=(3, 16), stop=False)
    tr_full, mon_full, sink_full = run(20, ctrl(), ckpt_dir=tmp_path, **kw)
    full = [(e.rule, e.step, e.key) for e in sink_full.events]
    assert ("channel_entry", 3, "net.0:1-2") in full and any(s > 10 for _, s, _ in full)
    ckpt = tmp_path / "step=10.ckpt"
    assert ckpt.exists()
    tr_res, mon_res, sink_res = run(20, ctrl(), resume=str(ckpt), **kw)
    resumed = [(e.rule, e.step, e.key) for e in sink_res.events]
    assert resumed == [f for f in full if f[1] > 10]  # nothing fired before the checkpoint fires again
    assert ("channel_entry", 3, "net.0:1-2") not in resumed
    wd_full = tr_full.optimizers[0].param_groups[0]["weight_decay"]
    assert tr_res.optimizers[0].param_groups[0]["weight_decay"] == pytest.approx(wd_full)
    assert mon_res.weight_decay.state_dict() == mon_full.weight_decay.state_dict()


def test_resume_with_a_changed_probe_list_keeps_alert_and_controller_state(tmp_path):
    """Adding a probe before resuming must not orphan the saved alert and controller state (it would
    re-fire every alert and re-apply every weight-decay raise from the start)."""
    from lightning_landscape import HessianTrace

    def ctrl():
        return WeightDecayController(raise_factor=1.5, target_margin=1.1, cooldown_steps=4, max_wd=0.05)

    kw = dict(wd=1e-3, channel=(3, 16), stop=False)
    tr_full, mon_full, sink_full = run(20, ctrl(), ckpt_dir=tmp_path, **kw)
    full = [(e.rule, e.step, e.key) for e in sink_full.events]
    ckpt = tmp_path / "step=10.ckpt"
    # The resumed run measures the trace too (rarely: it changes nothing the rules see).
    tr_res, mon_res, sink_res = run(20, ctrl(), resume=str(ckpt),
                                    extra_probes=[HessianTrace(every_n_steps=1000)], **kw)
    resumed = [(e.rule, e.step, e.key) for e in sink_res.events]
    assert resumed == [f for f in full if f[1] > 10]
    assert ("channel_entry", 3, "net.0:1-2") not in resumed
    assert tr_res.optimizers[0].param_groups[0]["weight_decay"] == pytest.approx(
        tr_full.optimizers[0].param_groups[0]["weight_decay"])
    assert mon_res.weight_decay.state_dict() == mon_full.weight_decay.state_dict()
    assert mon_res.alerts.state_dict()["rules"] == mon_full.alerts.state_dict()["rules"]
