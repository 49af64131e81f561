"""A LightningDataModule over teacher–student data (for the CLI examples and LightningCLI configs)."""

from __future__ import annotations

import torch

from lightning_landscape._compat import primary
from lightning_landscape.tasks.data import make_teacher_student

_L = primary()


class TeacherStudentDataModule(_L.LightningDataModule):
    """Synthetic teacher–student data split into train/validation loaders.

    Example:
        >>> dm = TeacherStudentDataModule(num_samples=100, input_dim=3, batch_size=10)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), tuple(y.shape)
        ((10, 3), (10, 1))
    """

    def __init__(
        self,
        num_samples: int = 4096,
        input_dim: int = 20,
        output_dim: int = 1,
        teacher_width: int = 8,
        activation: str = "tanh",
        noise: float = 0.05,
        classes: int = 0,
        val_fraction: float = 0.2,
        batch_size: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        x, y = make_teacher_student(hp.num_samples, hp.input_dim, hp.output_dim, hp.teacher_width,
                                    hp.activation, hp.noise, hp.classes, hp.seed)
        n_val = int(hp.val_fraction * hp.num_samples)
        self.train_set = torch.utils.data.TensorDataset(x[n_val:], y[n_val:])
        self.val_set = torch.utils.data.TensorDataset(x[:n_val], y[:n_val])

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.val_set, batch_size=max(self.hparams.batch_size, 256))
