"""Guards are exception-safe, and torchmetrics metrics fed the loss (``forward`` + ``self.log(metric)``)
neither break the probes nor the user's own logging."""

from __future__ import annotations

import warnings

import lightning.pytorch as L
import pytest
import torch
import torchmetrics
from torch import nn

from lightning_helpers import UserMetricsLogger, loaders, small_task, trainer
from lightning_landscape import HessianSpectrum, HessianTrace, LandscapeMonitor
from lightning_landscape.callbacks.loss_closure import muted_logging
from lightning_landscape.guards import preserved_buffers, preserved_modes


class ForwardMetricTask(type(small_task())):
    """The torchmetrics idiom: call the metric (``forward``) in training_step and log the metric object.

    ``MeanMetric`` is fed the loss itself, so its ``_forward_cache`` carries the autograd graph."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.train_loss = torchmetrics.MeanMetric()
        self.train_mse = torchmetrics.MeanSquaredError()
        self.train_mae = torchmetrics.MeanAbsoluteError()

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        loss = nn.functional.mse_loss(out, y)
        self.train_loss(loss)
        self.train_mse(out, y)
        self.train_mae(out, y)
        self.log("train/loss", self.train_loss)
        self.log("train/mse", self.train_mse)
        self.log("train/mae", self.train_mae, on_step=True, on_epoch=True)
        self.log("train/raw", loss)
        return loss


def _fit(monitor: LandscapeMonitor | None):
    L.seed_everything(3, verbose=False)
    model = ForwardMetricTask(input_dim=6, hidden=(8,), lr=0.05, momentum=0.9)
    logger = UserMetricsLogger()
    t = trainer(max_steps=8, callbacks=[monitor] if monitor else [], logger=logger)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(model, loaders(n=256, batch_size=32))
    return model, logger.rows, [str(w.message) for w in caught if "LandscapeMonitor" in str(w.message)]


def test_forward_metrics_logged_by_object_stay_logged_and_probes_measure() -> None:
    _, baseline, _ = _fit(None)
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1), HessianTrace(every_n_steps=2)])
    _, rows, complaints = _fit(monitor)
    assert complaints == []  # no probe failed
    assert monitor.num_measurements == 8 and "landscape/hessian/lambda_max" in monitor.last_values
    assert "landscape/hessian/trace" in monitor.last_values
    # The user's values reach the logger at every step, bit-identical to the run without the monitor.
    for tag in ("train/loss", "train/mse", "train/mae_step", "train/raw"):
        steps = [s for s, k, _ in rows if k == tag]
        assert steps == list(range(8)), (tag, steps)
    assert rows == baseline


class _ExplodingState(torchmetrics.MeanMetric):
    """A metric whose state list cannot be read once ``explode`` is set: fails midway through entering."""

    explode = False

    @property
    def _defaults(self):
        if self.explode:
            raise RuntimeError("state unreadable")
        return self.__dict__["_defaults_store"]

    @_defaults.setter
    def _defaults(self, value):
        self.__dict__["_defaults_store"] = value


def test_a_guard_failing_midway_through_entering_restores_everything() -> None:
    module = nn.Module()
    module.first = torchmetrics.MeanMetric()
    module.second = _ExplodingState()
    module.first(torch.tensor(2.0, requires_grad=True) * 3)  # graph-carrying forward cache
    before = dict(module.first.__dict__)
    module.second.explode = True
    user_log = lambda *a, **k: "logged"  # noqa: E731
    module.log = user_log
    with pytest.raises(RuntimeError, match="state unreadable"):
        with muted_logging(module):
            pass
    assert module.log is user_log and "log_dict" not in module.__dict__
    assert module.first.__dict__.keys() == before.keys()
    assert all(module.first.__dict__[k] is v for k, v in before.items())  # the very same objects


def test_muted_logging_restores_metric_state_and_logging_after_the_block_raises() -> None:
    module = nn.Module()
    module.metric = torchmetrics.MeanMetric()
    module.metric(torch.tensor(4.0, requires_grad=True) * 1)
    state = module.metric.mean_value
    with pytest.raises(KeyError):
        with muted_logging(module):
            module.metric(torch.tensor(100.0))
            module.metric.update(torch.tensor(50.0))
            assert module.log(1) is None
            raise KeyError("inside")
    assert "log" not in module.__dict__  # the class method is visible again
    assert module.metric.mean_value is state and float(module.metric.compute()) == 4.0
    assert module.metric._update_count == 1


def test_buffer_and_mode_guards_restore_the_rest_when_one_restore_fails() -> None:
    net = nn.Sequential(nn.BatchNorm1d(2), nn.BatchNorm1d(2))
    net.train()
    means = [m.running_mean.clone() for m in net]
    with pytest.raises(RuntimeError):
        with preserved_modes(net), preserved_buffers(net):
            net.eval()
            for m in net:
                m.running_mean.add_(1.0)
            net[0].running_mean.data = torch.zeros(3)  # resized under the guard: its restore fails...
    # ...yet the other buffers and every mode are back.
    assert torch.equal(net[1].running_mean, means[1]) and all(m.training for m in net.modules())
