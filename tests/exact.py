"""Ground truth for tests: exact Hessians and gradients of small models via torch.autograd.functional."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call


def flat_loss_function(module: nn.Module, loss_of_output: Callable[[Callable[[Any], torch.Tensor]], torch.Tensor]):
    """``f(flat_params) -> loss`` for the trainable parameters of ``module`` (buffers cloned per call)."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    numels = [p.numel() for _, p in named]
    buffers = {n: b for n, b in module.named_buffers()}

    def f(flat: torch.Tensor) -> torch.Tensor:
        tensors = [c.view(s) for c, s in zip(flat.split(numels), shapes)]
        params = dict(zip(names, tensors))
        bufs = {n: b.clone() for n, b in buffers.items()}

        def forward(x: Any) -> torch.Tensor:
            return functional_call(module, {**params, **bufs}, (x,))

        return loss_of_output(forward)

    flat0 = torch.cat([p.detach().reshape(-1) for _, p in named])
    return f, flat0


def exact_hessian(module: nn.Module, loss_of_output) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H, g)`` of the loss at the module's current parameters (float64 when the module is)."""
    f, flat0 = flat_loss_function(module, loss_of_output)
    H = torch.autograd.functional.hessian(f, flat0)
    g = torch.autograd.functional.jacobian(f, flat0)
    return H.detach(), g.detach()
