"""Weight dynamics: per-layer norms, distance from a reference (initialisation), relative update size,
per-neuron input/output weight norms. Pure torch, no state (the probe keeps the references).

Example:
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    >>> ref = snapshot(net)
    >>> with torch.no_grad():
    ...     _ = net[0].weight.add_(1.0)
    >>> round(distances(net, ref)["0"], 4)  # six weights moved by 1
    2.4495
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_landscape.linalg.reduction import reduce_sum
from lightning_landscape.neurons.discovery import NeuronLayer
from lightning_landscape.sharded import local_view


def parameter_layers(module: nn.Module) -> dict[str, list[torch.Tensor]]:
    """Trainable parameters grouped by the submodule that owns them directly (name ``""`` → ``"root"``).

    A tensor shared by several modules (tied weights) belongs to the first of them only, as in
    ``module.named_parameters()``: totals count it once.

    >>> sorted(parameter_layers(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))))
    ['0', '1']
    >>> tied = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 2, bias=False))
    >>> tied[1].weight = tied[0].weight
    >>> sorted(parameter_layers(tied))
    ['0']
    """
    out: dict[str, list[torch.Tensor]] = {}
    seen: set[int] = set()
    for name, m in module.named_modules():
        params = [p for p in m.parameters(recurse=False) if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            out[name or "root"] = params
    return out


def _norm(tensors: list[torch.Tensor]) -> float:
    # float64 accumulation without a float64 copy of the tensor (a layer can be most of the model)
    # Sharded parameters: each process adds its shards' squares; the sum is reduced over the processes.
    local = sum(torch.linalg.vector_norm(local_view(t.detach()), dtype=torch.float64) ** 2 for t in tensors)
    return float(torch.sqrt(reduce_sum(torch.as_tensor(local, dtype=torch.float64))))


def snapshot(module: nn.Module) -> dict[str, list[torch.Tensor]]:
    """Detached copies of every layer's parameters (a reference for :func:`distances`)."""
    return {k: [p.detach().clone() for p in v] for k, v in parameter_layers(module).items()}


def layer_norms(module: nn.Module) -> dict[str, float]:
    """Frobenius norm of each layer's parameters (weight and bias together).

    >>> layer = torch.nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[3.0, 4.0]]))
    >>> layer_norms(layer)
    {'root': 5.0}
    """
    return {k: _norm(v) for k, v in parameter_layers(module).items()}


def distances(module: nn.Module, reference: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """``‖θ_layer − θ_layer(ref)‖`` for each layer present in ``reference`` with matching shapes."""
    out = {}
    for k, params in parameter_layers(module).items():
        ref = reference.get(k)
        if ref is None or len(ref) != len(params) or any(r.shape != p.shape for r, p in zip(ref, params)):
            continue
        out[k] = _norm([p.detach() - r.to(p.device) for p, r in zip(params, ref)])
    return out


def neuron_norms(layer: NeuronLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-neuron ``(‖wᵢ‖, ‖aᵢ‖)``: input-weight (bias included) and output-weight norms.

    >>> fc1, fc2 = torch.nn.Linear(2, 3, bias=False), torch.nn.Linear(3, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = fc2.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    >>> neuron_norms(NeuronLayer("fc1", "fc1", "fc2", fc1, fc2, "tanh", "odd"))[1].tolist()
    [1.0, 2.0, 0.5]
    """
    return (torch.linalg.vector_norm(layer.input_weights(), dim=1, dtype=torch.float64),
            torch.linalg.vector_norm(layer.output_weights(), dim=1, dtype=torch.float64))
