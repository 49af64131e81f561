"""Checkpoint state, two monitors side by side, the pytorch_lightning Trainer, and the demo command."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_helpers import loaders, small_task, trainer
from lightning_landscape import HessianDensity, HessianSpectrum, HessianTrace, LandscapeMonitor
from lightning_landscape.cli.main import main
from pl_task import PLDataModule, PLTask


class Recording(LandscapeMonitor):
    """Keeps a copy of its state as the resumed run starts (after Lightning restored it). Its state key
    names its class: both runs of a test use it."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.restored = copy.deepcopy(self.state_dict())
        super().on_train_start(trainer, pl_module)


def test_state_round_trips_through_checkpoint_and_resume(tmp_path: Path) -> None:
    monitor = Recording(probes=[HessianSpectrum(every_n_steps=2)])
    t = trainer(max_steps=4, callbacks=[monitor])
    model = small_task()
    t.fit(model, loaders())
    assert monitor.num_measurements == 3  # steps 1 (baseline), 2 and 4
    ckpt = tmp_path / "mid.ckpt"
    t.save_checkpoint(ckpt)
    saved = copy.deepcopy(monitor.state_dict())
    assert saved["probes"]["hessian_spectrum"]["sharpness"] > 0  # something worth restoring

    resumed = Recording(probes=[HessianSpectrum(every_n_steps=2)])
    t2 = trainer(max_steps=8, callbacks=[resumed])
    t2.fit(small_task(), loaders(), ckpt_path=str(ckpt))
    assert resumed.restored == saved  # every field, exactly
    assert resumed.num_measurements == monitor.num_measurements + 2  # steps 6 and 8, no new baseline
    assert resumed.total_hvps > monitor.total_hvps


def test_changed_probe_list_restores_each_probe_it_still_has(tmp_path: Path) -> None:
    monitor = Recording(probes=[HessianSpectrum(every_n_steps=2), HessianTrace(every_n_steps=2)])
    t = trainer(max_steps=4, callbacks=[monitor])
    t.fit(small_task(), loaders())
    ckpt = tmp_path / "mid.ckpt"
    t.save_checkpoint(ckpt)
    saved = copy.deepcopy(monitor.state_dict())

    # The trace probe dropped, a density probe added: the spectrum's state and the totals come back.
    resumed = Recording(probes=[HessianSpectrum(every_n_steps=2), HessianDensity(every_n_steps=1000)])
    t2 = trainer(max_steps=6, callbacks=[resumed])
    with pytest.warns(UserWarning, match=r"probes no longer configured \(\['hessian_trace'\]\)"):
        t2.fit(small_task(), loaders(), ckpt_path=str(ckpt))
    assert resumed.restored["probes"]["hessian_spectrum"] == saved["probes"]["hessian_spectrum"]
    assert resumed.restored["probes"]["hessian_density"] == HessianDensity().state_dict()
    assert resumed.restored["num_measurements"] == saved["num_measurements"]
    assert resumed.restored["total_hvps"] == saved["total_hvps"]


def test_state_saved_under_the_former_key_is_found_by_prefix(tmp_path: Path) -> None:
    """Checkpoints written when the key also named the probes still resume."""
    monitor = Recording(probes=[HessianSpectrum(every_n_steps=2)])
    t = trainer(max_steps=4, callbacks=[monitor])
    t.fit(small_task(), loaders())
    ckpt = tmp_path / "old.ckpt"
    t.save_checkpoint(ckpt)
    data = torch.load(ckpt, weights_only=False)
    state = data["callbacks"].pop(monitor.state_key)
    data["callbacks"]["Recording{'prefix': 'landscape', 'probes': ['hessian_spectrum']}"] = state
    data["callbacks"]["Recording{'prefix': 'other', 'probes': ['hessian_spectrum']}"] = {"total_hvps": -1}
    torch.save(data, ckpt)
    resumed = Recording(probes=[HessianSpectrum(every_n_steps=2)])
    t2 = trainer(max_steps=6, callbacks=[resumed])
    t2.fit(small_task(), loaders(), ckpt_path=str(ckpt))
    assert resumed.restored == state


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
    assert [e.step for e in acc.Scalars("landscape/hessian/lambda_max")] == [1, 2, 4]  # the measured steps


def test_demo_command(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--logdir", str(tmp_path / "runs"), "--epochs", "1", "--every", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for fragment in ("final λmax", "final λmin", "final trace", "HVPs spent", "overhead", "tensorboard --logdir"):
        assert fragment in out
    assert list((tmp_path / "runs" / "demo").glob("version_0/events.out.tfevents.*"))


def test_demo_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "0", "--logdir", str(tmp_path)])
