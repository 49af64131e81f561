"""Values that must not be silently wrong: the nonfinite flag and trace error, duplicate prefixes, models
without (real) trainable parameters, tied weights, and probe batches that cannot be cut into rows."""

from __future__ import annotations

import math

import lightning.pytorch as L
import pytest
import torch
from torch import nn

from lightning_helpers import loaders, small_task, trainer
from lightning_landscape import HessianSpectrum, HessianTrace, LandscapeMonitor, LandscapeMonitorWarning


def _alerts_into(events: list):
    from lightning_landscape.alerts import AlertManager, NonFinite, Sink

    class Collect(Sink):
        def emit(self, batch):
            events.extend(batch)

    return AlertManager([NonFinite(cooldown_steps=0)], sinks=[Collect("info")])


def test_nonfinite_flag_comes_down_when_the_probes_recover() -> None:
    def loss_fn(module, batch):  # NaN at the measurement after step 2 only
        loss = nn.functional.mse_loss(module(batch[0]), batch[1])
        return loss * float("nan") if module.trainer.global_step == 2 else loss

    events: list = []
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)], loss_fn=loss_fn,
                               alerts=_alerts_into(events))
    seen = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((monitor.last_values.get("landscape/monitor/nonfinite"),
                         monitor.last_values.get("landscape/alerts/nonfinite")))

    t = trainer(max_steps=4, callbacks=[monitor, Watch()])
    with pytest.warns(LandscapeMonitorWarning, match="non-finite"):
        t.fit(small_task(), loaders())
    assert seen == [(0.0, 0.0), (1.0, 1.0), (0.0, 0.0), (0.0, 0.0)]
    assert "landscape/hessian/lambda_max" in monitor.last_values  # measured again after the NaN step


def test_trace_at_the_minimum_budget_never_logs_a_nan_stderr() -> None:
    events: list = []
    monitor = LandscapeMonitor(probes=[HessianTrace(every_n_steps=1, num_matvecs=3)], alerts=_alerts_into(events))
    trainer(max_steps=2, callbacks=[monitor]).fit(small_task(), loaders())
    values = monitor.last_values
    assert math.isfinite(values["landscape/hessian/trace"])
    stderr = values.get("landscape/hessian/trace_stderr")
    assert stderr is None or math.isfinite(stderr)
    if stderr is None:
        assert "num_matvecs" in monitor.not_measured["landscape/hessian/trace_stderr"]
    assert [e for e in events if e.rule == "nonfinite"] == []


def test_two_monitors_with_one_prefix_are_refused() -> None:
    first = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)])
    second = LandscapeMonitor(probes=[HessianTrace(every_n_steps=1)])
    with pytest.raises(RuntimeError, match="state_key"):  # Lightning itself, when the Trainer is built
        trainer(max_steps=1, callbacks=[first, second])
    t = trainer(max_steps=1, callbacks=[first])
    t.callbacks.append(second)  # added later: refused in setup, before training starts, naming the setting
    with pytest.raises(ValueError, match="log_prefix='landscape' is used by 2 LandscapeMonitors"):
        t.fit(small_task(), loaders())


# ---------------------------------------------------------------------------- parameters
class _Frozen(type(small_task())):
    """No trainable parameter at all; trains without an optimizer (Lightning allows it)."""

    def __init__(self) -> None:
        super().__init__(input_dim=6, hidden=(12,))
        for p in self.parameters():
            p.requires_grad_(False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y).requires_grad_()

    def configure_optimizers(self):
        return None


def test_no_trainable_parameters_warns_once_and_training_runs() -> None:
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)])
    t = trainer(max_steps=3, callbacks=[monitor])
    with pytest.warns(LandscapeMonitorWarning, match="no trainable parameters") as record:
        t.fit(_Frozen(), loaders())
    assert t.global_step == 3
    assert sum("no trainable parameters" in str(w.message) for w in record) == 1
    assert monitor.num_measurements == 0 and not monitor._enabled


class _WithComplex(type(small_task())):
    def __init__(self) -> None:
        super().__init__(input_dim=6, hidden=(12,), lr=0.05, momentum=0.0)
        self.phase = nn.Parameter(torch.tensor([0.5 + 0.5j, -0.2j]))

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) + (self.phase.abs() ** 2).sum()


def test_complex_parameters_are_refused_with_a_warning_and_training_runs() -> None:
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1), HessianTrace(every_n_steps=1)])
    t = trainer(max_steps=3, callbacks=[monitor])
    with pytest.warns(LandscapeMonitorWarning, match=r"complex parameters are not supported \(\['phase'\]\)"):
        t.fit(_WithComplex(), loaders())
    assert t.global_step == 3
    assert not any(k.startswith("landscape/hessian/") for k in monitor.last_values)


class _Tied(nn.Module):
    """An encoder and a decoder sharing one weight (as a language model ties its embedding and head)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(6, 6, bias=False)
        self.act = nn.Tanh()
        self.dec = nn.Linear(6, 6)
        self.dec.weight = self.enc.weight
        self.out = nn.Linear(6, 1)

    def forward(self, x):
        return self.out(self.dec(self.act(self.enc(x))))


def test_tied_weights_count_once_in_weight_totals() -> None:
    from lightning_landscape.probes import ProbeContext
    from lightning_landscape.probes.neurons import WeightDynamics

    torch.manual_seed(0)
    net = _Tied()
    x, y = torch.randn(16, 6), torch.randn(16, 1)
    probe = WeightDynamics(every_n_steps=1, histogram_every=0)
    probe.run(ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=1))
    init = [p.detach().clone() for p in net.parameters()]  # parameters(): each tensor once
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    out = probe.run(ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=3)).scalars
    unique = list(net.parameters())
    assert len(unique) == 4 and sum(1 for _ in net.named_parameters(remove_duplicate=False)) == 5
    norm = float(torch.cat([p.detach().flatten() for p in unique]).double().norm())
    moved = float(torch.cat([(p.detach() - q).flatten() for p, q in zip(unique, init)]).double().norm())
    assert out["total/norm"] == pytest.approx(norm, rel=1e-12)
    assert out["total/distance_from_init"] == pytest.approx(moved, rel=1e-12)
    assert out["total/update_ratio"] == pytest.approx(moved / (norm * 2), rel=1e-12)
