"""Small Trainer set-ups shared by the callback tests."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch

from lightning_landscape.tasks import MLPTask, make_teacher_student


def loaders(n: int = 256, batch_size: int = 32, input_dim: int = 6, classes: int = 0, seed: int = 0, shuffle: bool = True):
    x, y = make_teacher_student(num_samples=n, input_dim=input_dim, classes=classes, seed=seed)
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle)


def small_task(**kwargs: Any) -> MLPTask:
    defaults = dict(input_dim=6, hidden=(12,), output_dim=1, activation="tanh", lr=0.05, momentum=0.9)
    defaults.update(kwargs)
    return MLPTask(**defaults)


def trainer(flavour=L, **kwargs: Any):
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    defaults.update(kwargs)
    return flavour.Trainer(**defaults)


class UserMetricsLogger(L.loggers.logger.Logger):
    """Keeps what the user logged (every tag not under ``landscape/``) as ``(step, tag, value)`` rows."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, str, float]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows += [(step, k, float(v)) for k, v in metrics.items() if not k.startswith("landscape/")]
