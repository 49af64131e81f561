"""The channel toy of Martinelli et al. (2025, Fig. 6): two erf neurons without bias, 1-D input.

Target ``y = erf((5x + 2.5)/√2) + erf((5x − 2.5)/√2)``, ``x ~ N(0, 1)``; student
``f(x) = a₁ σ(w₁x) + a₂ σ(w₂x)`` with ``σ(z) = erf(z/√2)``, trained by full-batch gradient descent on the
mean squared error. The student cannot represent the target; depending on the initialisation, GD

* settles on the *one-neuron plateau*: ``w₁ = ±w₂`` (merged modulo sign), loss ≈ 0.0461, effective width 1
  — a point of a saddle branch (seed 1 with the defaults); or
* enters a *channel to infinity*: ``w₁ − w₂ → 0`` while ``a₁ → −∞``, ``a₂ → +∞``, the loss creeping below
  the plateau (seed 0): the pair becomes a gated linear unit.

Example:
    >>> x, y = channel_toy_data(num_samples=64)
    >>> net = channel_toy_model(seed=1)
    >>> tuple(net(x).shape), tuple(y.shape)
    ((64, 1), (64, 1))
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from lightning_landscape.neurons.discovery import Erf

#: seeds of :func:`channel_toy_model` that, with lr 0.25 and the default data, enter a channel / settle
#: on the one-neuron plateau.
CHANNEL_SEEDS = (0, 2, 4, 5)
PLATEAU_SEEDS = (1, 3)


def channel_toy_data(num_samples: int = 4096, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of shape ``[n, 1]`` from a private generator."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, 1, generator=g, dtype=dtype)
    y = torch.erf((5 * x + 2.5) / math.sqrt(2)) + torch.erf((5 * x - 2.5) / math.sqrt(2))
    return x, y


def channel_toy_model(seed: int = 0, w: tuple[float, float] | None = None, a: tuple[float, float] | None = None,
                      dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """``Linear(1, 2, bias=False) → Erf → Linear(2, 1, bias=False)`` with ``w, a ~ N(0, 1)`` (seeded) or given."""
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(2, generator=g, dtype=dtype)
    a0 = torch.randn(2, generator=g, dtype=dtype)
    net = nn.Sequential(nn.Linear(1, 2, bias=False), Erf(), nn.Linear(2, 1, bias=False)).to(dtype)
    with torch.no_grad():
        net[0].weight.copy_((torch.tensor(w, dtype=dtype) if w is not None else w0).reshape(2, 1))
        net[2].weight.copy_((torch.tensor(a, dtype=dtype) if a is not None else a0).reshape(1, 2))
    return net


def train_toy_gd(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int, every: int = 0,
                 callback: Callable[[int], None] | None = None) -> float:
    """:func:`train_gd` for :func:`channel_toy_model` nets with the gradient in closed form (no autograd: a
    few times faster). Same maths: ``L = mean((Σᵢ aᵢ erf(wᵢx/√2) − y)²)``."""
    w_param, a_param = net[0].weight, net[2].weight
    scale = net[1].scale
    xs = x.reshape(-1, 1)
    n = xs.shape[0]
    loss = float("nan")
    for step in range(1, steps + 1):
        with torch.no_grad():
            w, a = w_param.reshape(1, -1), a_param.reshape(1, -1)
            z = xs * w
            h = torch.erf(scale * z)
            r = (h * a).sum(1, keepdim=True) - y.reshape(-1, 1)
            loss = float((r * r).mean())
            grad_a = (2.0 / n) * (r * h).sum(0)
            dh = (2.0 / math.sqrt(math.pi)) * scale * torch.exp(-(scale * z) ** 2)
            grad_w = (2.0 / n) * (r * a * dh * xs).sum(0)
            w_param.sub_(lr * grad_w.reshape(w_param.shape))
            a_param.sub_(lr * grad_a.reshape(a_param.shape))
        if callback is not None and every and step % every == 0:
            callback(step)
    return loss


def train_gd(net: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int,
             every: int = 0, callback: Callable[[int], None] | None = None) -> float:
    """Full-batch gradient descent on the MSE; ``callback(step)`` after every ``every`` steps. Returns the loss."""
    params = [p for p in net.parameters() if p.requires_grad]
    loss = torch.tensor(float("nan"))
    for step in range(1, steps + 1):
        loss = ((net(x) - y) ** 2).mean()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
        if callback is not None and every and step % every == 0:
            callback(step)
    return float(loss.detach())
