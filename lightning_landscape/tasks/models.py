"""A small, configurable MLP LightningModule used by the demo, the scan and the tests."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from lightning_landscape._compat import FLAVOURS
from lightning_landscape.tasks.data import ACTIVATIONS
from lightning_landscape.validation import check_bool

_L = FLAVOURS[0]


def build_mlp(
    input_dim: int,
    hidden: Sequence[int],
    output_dim: int,
    activation: str = "tanh",
    bias: bool = True,
    batch_norm: bool = False,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Linear → [BatchNorm] → activation → [Dropout] blocks, then a linear read-out."""
    bias, batch_norm = check_bool("bias", bias), check_bool("batch_norm", batch_norm)
    layers: list[nn.Module] = []
    width = input_dim
    for h in hidden:
        layers.append(nn.Linear(width, h, bias=bias))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, output_dim, bias=bias))
    return nn.Sequential(*layers)


class MLPTask(_L.LightningModule):
    """MLP for regression (MSE) or classification (cross-entropy) with a plain optimizer.

    ``weight_decay`` is the optimizer's (SGD/Adam: a penalty ``weight_decay/2 * ||θ||²``).

    Example:
        >>> model = MLPTask(input_dim=4, hidden=(8,), output_dim=1)
        >>> float(model.training_step((torch.randn(5, 4), torch.randn(5, 1)), 0)) > 0
        True
    """

    def __init__(
        self,
        input_dim: int = 20,
        hidden: Sequence[int] = (64,),
        output_dim: int = 1,
        activation: str = "tanh",
        loss: Literal["mse", "cross_entropy"] = "mse",
        optimizer: Literal["sgd", "adam", "adamw"] = "sgd",
        lr: float = 0.05,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        bias: bool = True,
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_mlp(input_dim, hidden, output_dim, activation, bias, batch_norm, dropout)
        self.loss_kind = loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def compute_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        out = self(x)
        if self.loss_kind == "cross_entropy":
            return nn.functional.cross_entropy(out, y)
        return nn.functional.mse_loss(out, y)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        if self._trainer is not None:
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch)
        self.log("val/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.optimizer == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
