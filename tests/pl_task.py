"""A ``pytorch_lightning`` (not ``lightning.pytorch``) module and data module for flavour tests."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from lightning_landscape.tasks import build_mlp, make_teacher_student


class PLTask(pl.LightningModule):
    def __init__(self, input_dim: int = 6, hidden: int = 12, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_mlp(input_dim, (hidden,), 1, "tanh")

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class PLDataModule(pl.LightningDataModule):
    def __init__(self, input_dim: int = 6, batch_size: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self):
        x, y = make_teacher_student(num_samples=256, input_dim=self.hparams.input_dim)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=self.hparams.batch_size)
