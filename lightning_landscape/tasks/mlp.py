"""The MLP of the built-in tasks, as a plain ``nn.Sequential`` (no Lightning)."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from lightning_landscape.tasks.data import ACTIVATIONS
from lightning_landscape.validation import check_bool


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
