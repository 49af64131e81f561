"""Small models and data for exact-Hessian tests."""

from __future__ import annotations

import torch
from torch import nn


def regression_data(n: int = 64, d: int = 4, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.sin(x.sum(1, keepdim=True)) + 0.1 * torch.randn(n, 1, generator=g, dtype=dtype)
    return x, y


def classification_data(n: int = 64, d: int = 4, classes: int = 3, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    w = torch.randn(d, classes, generator=g, dtype=dtype)
    return x, (x @ w).argmax(1)


def mlp(d: int, hidden: int, out: int, act: type[nn.Module], seed: int = 0, extra: nn.Module | None = None,
        dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(d, hidden)]
    if extra is not None:
        layers.append(extra)
    layers += [act(), nn.Linear(hidden, out)]
    return nn.Sequential(*layers).to(dtype)


MODEL_CASES = {
    # name: (module builder, data builder, loss)
    "tanh_mse": (lambda: mlp(4, 8, 1, nn.Tanh), regression_data, "mse"),
    "relu_ce": (lambda: mlp(4, 8, 3, nn.ReLU), classification_data, "ce"),
    "tanh_ce": (lambda: mlp(4, 6, 3, nn.Tanh, seed=3), classification_data, "ce"),
    "batchnorm_mse": (lambda: mlp(4, 8, 1, nn.Tanh, extra=nn.BatchNorm1d(8)), regression_data, "mse"),
    "dropout_mse": (lambda: mlp(4, 8, 1, nn.Tanh, extra=nn.Dropout(0.3)), regression_data, "mse"),
}


def loss_value(out: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "ce":
        return nn.functional.cross_entropy(out, y)
    return nn.functional.mse_loss(out, y)


def perturb_to_saddle_region(module: nn.Module, scale: float = 1.5, seed: int = 1) -> None:
    """Move the weights to a generic point (large weights make λmin clearly negative for tanh nets)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
