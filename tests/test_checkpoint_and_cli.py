"""Checkpoint state, two monitors side by side, the pytorch_lightning Trainer, and the demo command."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_helpers import loaders, small_task, trainer
from lightning_landscape import HessianSpectrum, HessianTrace, LandscapeMonitor
from lightning_landscape.cli.main import main
from pl_task import PLDataModule, PLTask


def test_state_round_trips_through_checkpoint_and_resume(tmp_path: Path) -> None:
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=2)])
    t = trainer(max_steps=4, callbacks=[monitor])
    model = small_task()
    t.fit(model, loaders())
    assert monitor.num_measurements == 3  # steps 1 (baseline), 2 and 4
    ckpt = tmp_path / "mid.ckpt"
    t.save_checkpoint(ckpt)

    resumed = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=2)])
    t2 = trainer(max_steps=8, callbacks=[resumed])
    t2.fit(small_task(), loaders(), ckpt_path=str(ckpt))
    assert resumed.num_measurements == monitor.num_measurements + 2  # steps 6 and 8, no new baseline
    assert resumed.total_hvps > monitor.total_hvps


def test_two_monitors_with_different_configurations(tmp_path: Path) -> None:
    fast = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)], log_prefix="fast")
    slow = LandscapeMonitor(probes=[HessianTrace(every_n_steps=3)], log_prefix="slow", probe_batch="current")
    t = trainer(max_steps=3, callbacks=[fast, slow], enable_checkpointing=True, default_root_dir=tmp_path)
    t.fit(small_task(), loaders())
    assert "fast/hessian/lambda_max" in t.callback_metrics and "slow/hessian/trace" in t.callback_metrics
    assert fast.state_key != slow.state_key
    t.save_checkpoint(tmp_path / "two.ckpt")  # both states saved under distinct keys


def test_pytorch_lightning_trainer(tmp_path: Path) -> None:
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=2)])
    logger = pl.loggers.TensorBoardLogger(tmp_path)
    t = trainer(flavour=pl, max_steps=4, callbacks=[monitor], logger=logger)
    t.fit(PLTask(), PLDataModule())
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("landscape/hessian/lambda_max")] == [0, 1, 3]


def test_demo_command(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--logdir", str(tmp_path / "runs"), "--epochs", "1", "--every", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for fragment in ("final λmax", "final λmin", "final trace", "HVPs spent", "overhead", "tensorboard --logdir"):
        assert fragment in out
    assert list((tmp_path / "runs" / "demo").glob("version_0/events.out.tfevents.*"))


def test_demo_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "0", "--logdir", str(tmp_path)])
