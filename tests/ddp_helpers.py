"""Callbacks for the DDP test (importable by spawned workers, so not defined inside the test module)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import torch


class Recorder(L.Callback):
    """Saves each rank's first batch, the weights after step 1 and the monitor's final values."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def _path(self, trainer, name: str) -> Path:
        return Path(self.out_dir) / f"{name}_rank{trainer.global_rank}.pt"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0 and batch_idx == 0:
            torch.save([t.detach().cpu() for t in batch], self._path(trainer, "batch"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 1 and not self._path(trainer, "weights").exists():
            torch.save({k: v.detach().clone() for k, v in pl_module.state_dict().items()}, self._path(trainer, "weights"))
            monitor = next(cb for cb in trainer.callbacks if type(cb).__name__ == "LandscapeMonitor")
            torch.save(dict(monitor.last_values), self._path(trainer, "values_step1"))

    def on_train_end(self, trainer, pl_module):
        monitor = next(cb for cb in trainer.callbacks if type(cb).__name__ == "LandscapeMonitor")
        decisions = {
            "alerts": monitor.alerts.state_dict() if monitor.alerts is not None else None,
            "weight_decay": [g["weight_decay"] for g in trainer.optimizers[0].param_groups],
        }
        torch.save(decisions, self._path(trainer, "decisions"))
