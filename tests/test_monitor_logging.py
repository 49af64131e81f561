"""What the monitor writes: every documented tag, at the step whose weights it measured, to every logger."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_helpers import loaders, small_task, trainer
from lightning_landscape import HessianDensity, HessianSpectrum, HessianTrace, LandscapeMonitor

SIZE_GUIDANCE = {"scalars": 0, "histograms": 0, "tensors": 0, "images": 0}


def _events(log_dir: str) -> EventAccumulator:
    acc = EventAccumulator(log_dir, size_guidance=SIZE_GUIDANCE)
    acc.Reload()
    return acc


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_every_documented_tag_at_expected_steps(tmp_path: Path, optimizer: str) -> None:
    probes = [HessianSpectrum(every_n_steps=3), HessianTrace(every_n_steps=4), HessianDensity(every_n_steps=6, num_steps=10)]
    monitor = LandscapeMonitor(probes=probes)
    tb = L.loggers.TensorBoardLogger(tmp_path, name="tb")
    csv_logger = L.loggers.CSVLogger(tmp_path, name="csv")
    t = trainer(max_steps=12, logger=[tb, csv_logger], callbacks=[monitor])
    t.fit(small_task(optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.05), loaders())
    acc = _events(tb.log_dir)
    scalars = set(acc.Tags()["scalars"])

    # Measurements happen after optimizer steps 1 (baseline) and every n, and are written at that step: the
    # weights after s optimizer steps, whose loss Lightning's own self.log records at step s too.
    def expected(every: int, baseline: bool = True) -> list[int]:
        return sorted(({1} if baseline else set()) | {s for s in range(1, 13) if s % every == 0})

    user_steps = {e.step for e in acc.Scalars("train/loss")}
    spectrum_tags = ["lambda_max", "lambda_min", "residual", "lanczos_hvps", "eos_ratio"]
    if optimizer == "adam":
        spectrum_tags.append("preconditioned_lambda_max")
    for key in spectrum_tags:
        steps = [e.step for e in acc.Scalars(f"landscape/hessian/{key}")]
        if optimizer == "adam" and key in ("eos_ratio", "preconditioned_lambda_max"):
            assert steps == expected(3)  # Adam state exists from step 1 on
        else:
            assert steps == expected(3), key
        assert set(steps) - {12} <= user_steps  # the user's last record is the loss at step 11
    for key in ("trace", "trace_stderr"):
        assert [e.step for e in acc.Scalars(f"landscape/hessian/{key}")] == expected(4)
    # The density is expensive and skips the step-1 baseline (measure_at_first_step = False).
    assert [e.step for e in acc.Scalars("landscape/hessian/negative_mass")] == expected(6, baseline=False)
    hvp_steps = sorted({*expected(3), *expected(4), *expected(6)})
    for key in ("landscape/hessian/hvps", "landscape/monitor/seconds", "landscape/monitor/overhead"):
        assert [e.step for e in acc.Scalars(key)] == hvp_steps
    assert all(e.value > 0 for e in acc.Scalars("landscape/hessian/hvps"))
    # Every documented scalar tag of the probes is present (optimizer-specific ones aside).
    optional = {"eos_ratio_unpreconditioned"} | ({"preconditioned_lambda_max"} if optimizer == "sgd" else set())
    for probe in probes:
        for key in probe.scalar_tags:
            keys = [f"ready/{k}" for k in probe.gated_keys if k not in optional] if key == "ready/<key>" else [key]
            for k in keys:
                if k not in optional:
                    assert f"landscape/hessian/{k}" in scalars
    # Histogram (SLQ density) and the custom-scalars layout go to TensorBoard.
    assert [e.step for e in acc.Histograms("landscape/hessian/density")] == expected(6, baseline=False)
    assert "custom_scalars__config__" in acc.Tags()["tensors"]
    # Values are sane: λmax >= λmin, trace finite.
    lmax = [e.value for e in acc.Scalars("landscape/hessian/lambda_max")]
    lmin = [e.value for e in acc.Scalars("landscape/hessian/lambda_min")]
    assert all(a >= b for a, b in zip(lmax, lmin))
    # The CSV logger gets the same scalars at the same steps.
    rows = list(csv.DictReader(open(Path(csv_logger.log_dir) / "metrics.csv")))
    csv_steps = sorted(int(r["step"]) for r in rows if r.get("landscape/hessian/lambda_max"))
    assert csv_steps == expected(3)
    # And the trainer's callback_metrics hold the last values (EarlyStopping / ModelCheckpoint can monitor them).
    assert "landscape/hessian/lambda_max" in t.callback_metrics


def test_gradient_accumulation_measures_once_per_optimizer_step(tmp_path: Path) -> None:
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=2)])
    tb = L.loggers.TensorBoardLogger(tmp_path, name="tb")
    t = trainer(max_steps=6, logger=tb, callbacks=[monitor], accumulate_grad_batches=2)
    t.fit(small_task(), loaders())
    acc = _events(tb.log_dir)
    steps = [e.step for e in acc.Scalars("landscape/hessian/lambda_max")]
    assert monitor.num_measurements == 4  # steps 1, 2, 4, 6
    assert steps == [1, 2, 4, 6]  # written at the optimizer step whose weights were measured
    assert {e.step for e in acc.Scalars("train/loss")} >= set(steps) - {6}  # the user's last loss is at step 5


def test_loss_sources(tmp_path: Path) -> None:
    calls = {"n": 0}

    def loss_fn(module, batch):
        calls["n"] += 1
        x, y = batch
        return torch.nn.functional.mse_loss(module(x), y)

    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)], loss_fn=loss_fn)
    trainer(max_steps=2, callbacks=[monitor]).fit(small_task(), loaders())
    assert monitor.loss_source == "loss_fn" and calls["n"] == 2

    class WithLandscapeLoss(type(small_task())):
        def landscape_loss(self, batch):
            calls["n"] += 10
            return self.compute_loss(batch)

    monitor = LandscapeMonitor(probes=["hessian_spectrum"])
    trainer(max_steps=1, callbacks=[monitor]).fit(WithLandscapeLoss(input_dim=6, hidden=(12,)), loaders())
    assert monitor.loss_source == "landscape_loss" and calls["n"] == 12

    class DictOutput(type(small_task())):
        def training_step(self, batch, batch_idx):
            return {"loss": self.compute_loss(batch), "extra": 1}

    monitor = LandscapeMonitor(probes=["hessian_spectrum"])
    trainer(max_steps=1, callbacks=[monitor]).fit(DictOutput(input_dim=6, hidden=(12,)), loaders())
    assert monitor.loss_source == "training_step" and "landscape/hessian/lambda_max" in monitor.last_values


def test_manual_optimization_without_loss_fn_warns_and_training_continues() -> None:
    class Manual(type(small_task())):
        def __init__(self):
            super().__init__(input_dim=6, hidden=(12,))
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            loss = self.compute_loss(batch)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()

    monitor = LandscapeMonitor(probes=["hessian_spectrum"])
    t = trainer(max_steps=3, callbacks=[monitor])
    with pytest.warns(UserWarning, match="manual optimization"):
        t.fit(Manual(), loaders())
    assert t.global_step == 3 and monitor.num_measurements == 0
