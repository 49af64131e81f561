"""Monitoring must not change training: bit-identical weights, buffers, optimizer state, RNG and user metrics."""

from __future__ import annotations

import random

import lightning.pytorch as L
import numpy as np
import pytest
import torch
import torchmetrics

from lightning_helpers import UserMetricsLogger, loaders, small_task, trainer
from lightning_landscape import HessianDensity, HessianSpectrum, HessianTrace, LandscapeMonitor


class MetricTask(type(small_task())):
    """Logs a torchmetrics metric and its own values inside training_step (re-run by the probe closure)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.train_mae = torchmetrics.MeanAbsoluteError()
        self.logged: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        loss = torch.nn.functional.mse_loss(out, y)
        self.train_mae.update(out.detach(), y)
        self.log("train/loss", loss)
        self.log("train/mae", self.train_mae, on_step=True, on_epoch=True)
        return loss


def _run(monitor: LandscapeMonitor | None, accumulate: int = 2, **trainer_kwargs):
    L.seed_everything(7, verbose=False)
    model = MetricTask(input_dim=6, hidden=(16, 16), batch_norm=True, dropout=0.2, lr=0.05, momentum=0.9)
    logger = UserMetricsLogger()
    t = trainer(
        max_steps=10,
        callbacks=[monitor] if monitor else [],
        logger=logger,
        accumulate_grad_batches=accumulate,
        **trainer_kwargs,
    )
    t.fit(model, loaders(n=512, batch_size=16))
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    return model, t.optimizers[0].state_dict(), logger.rows, rng, t


def _assert_identical(a, b) -> None:
    model_a, opt_a, rows_a, rng_a, _ = a
    model_b, opt_b, rows_b, rng_b, _ = b
    for (name, pa), (_, pb) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(pa, pb), f"{name} differs"
    for key in opt_a["state"]:
        for k, v in opt_a["state"][key].items():
            assert torch.equal(v, opt_b["state"][key][k]), f"optimizer state {key}/{k} differs"
    assert rows_a == rows_b
    assert torch.equal(rng_a[0], rng_b[0]) and np.array_equal(rng_a[1], rng_b[1]) and rng_a[2] == rng_b[2]


@pytest.mark.parametrize("probe_batch", ["fixed", "current", "cached"])
def test_bit_identical_with_and_without_monitor(probe_batch: str) -> None:
    baseline = _run(None)
    probes = [HessianSpectrum(every_n_steps=1), HessianTrace(every_n_steps=2), HessianDensity(every_n_steps=3, num_steps=8)]
    monitor = LandscapeMonitor(probes=probes, probe_batch=probe_batch, num_probe_batches=2)
    monitored = _run(monitor)
    assert monitor.num_measurements == 10  # one per optimizer step (max_steps counts optimizer steps)
    _assert_identical(baseline, monitored)
    # The model logged with and without the monitor; the metric's own state was restored.
    assert monitored[4].callback_metrics["train/mae_epoch"] == baseline[4].callback_metrics["train/mae_epoch"]


def test_bit_identical_with_gradient_clipping_and_trainer_precision() -> None:
    baseline = _run(None, accumulate=1, gradient_clip_val=0.5)
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=2)], precision="trainer")
    _assert_identical(baseline, _run(monitor, accumulate=1, gradient_clip_val=0.5))
