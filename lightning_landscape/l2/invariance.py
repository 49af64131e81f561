"""Scale-invariant parameter groups: the weights (and bias) of a layer whose output goes straight into a
BatchNorm / LayerNorm / GroupNorm / InstanceNorm / RMSNorm.

Why it matters for the L2 collapse: for such a group ``L(c·θ_g) = L(θ_g)`` for every ``c > 0`` (the norm
divides the scale out; up to its ``eps``), so shrinking it never moves the function towards the trivial
model — weight decay only shrinks its norm, which raises its effective learning rate ``lr/‖θ_g‖²``. The
penalty ``β‖θ_g‖²`` of such a group can be made as small as one likes without changing the function, so
the collapse is decided by the *other* parameters (last layers, embeddings, norm affines, biases): the
ray towards the trivial model scales those and leaves the scale-invariant groups where they are.

Detection is structural, then numerical: forward hooks record which Conv/Linear module produced the
tensor each normalisation layer receives (a layer whose output also feeds something else, e.g. a
residual sum, is not the norm's whole input, so the tensor would not be the same object); every candidate
is then checked on the actual loss, ``L(c·θ_g) = L(θ_g)`` at ``c = 1/2`` and ``c = 2``, and dropped if
it fails. BatchNorm is scale-invariant with batch statistics (training mode, what the training loss
uses), not with frozen running statistics: run the detection with the module in the mode of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from lightning_landscape.l2.order import LossFn, evaluate, swapped_values

#: Normalisation layers that divide out the scale of their whole input.
NORM_TYPES: tuple[type, ...] = tuple(
    t for t in (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
                getattr(nn, "RMSNorm", None)) if t is not None
)
_PRODUCERS = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass(frozen=True)
class InvariantGroup:
    """One scale-invariant group: the producing layer, the norm it feeds and its parameter names."""

    layer: str
    norm: str
    names: tuple[str, ...]


def _trace_candidates(module: nn.Module, forward: Callable[[], object]) -> list[tuple[str, str]]:
    """``(producer, norm)`` module names where the norm's input is exactly the producer's output tensor."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    found: list[tuple[str, str]] = []
    handles = []

    def on_output(name: str) -> Callable:
        def hook(_m: nn.Module, _inp: object, out: object) -> None:
            if isinstance(out, torch.Tensor):
                produced[id(out)] = (name, out)  # keep the tensor alive: its id stays unique
        return hook

    def on_norm_input(name: str) -> Callable:
        def hook(_m: nn.Module, inp: tuple) -> None:
            if inp and isinstance(inp[0], torch.Tensor):
                hit = produced.get(id(inp[0]))
                if hit is not None and hit[1] is inp[0] and (hit[0], name) not in found:
                    found.append((hit[0], name))
        return hook

    for name, sub in module.named_modules():
        if isinstance(sub, _PRODUCERS):
            handles.append(sub.register_forward_hook(on_output(name)))
        elif isinstance(sub, NORM_TYPES):
            handles.append(sub.register_forward_pre_hook(on_norm_input(name)))
    try:
        with torch.no_grad():
            forward()
    finally:
        for h in handles:
            h.remove()
    return found


def _is_invariant(params: Sequence[torch.Tensor], loss_fn: LossFn, base: float, rtol: float) -> bool:
    for c in (0.5, 2.0):
        with swapped_values(params, [p.detach() * c for p in params]):
            value = evaluate(loss_fn)
        if not abs(value - base) <= rtol * max(abs(base), 1e-12):
            return False
    return True


def scale_invariant_groups(module: nn.Module, loss_fn: LossFn, rtol: float = 2e-3,
                           trainable_only: bool = True) -> list[InvariantGroup]:
    """The parameter groups of ``module`` that the loss cannot see the scale of (see the module docstring).

    ``loss_fn`` runs the forward pass (three times per candidate at most, under ``no_grad``); buffers it
    changes (BatchNorm running statistics in training mode) are restored. A group is kept only when the
    loss changes by less than ``rtol`` (relative) when it is halved or doubled: the norm's ``eps`` breaks
    the invariance a little (4e-4 on a trained LayerNorm net with loss 0.02), and a group shrunk to the
    scale of ``eps`` is no longer invariant — it is then treated as an ordinary parameter.

    Example (conv → BatchNorm is invariant in training mode; the head is not):
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))
        >>> x = torch.randn(8, 1, 4, 4)
        >>> [g.names for g in scale_invariant_groups(net, lambda: net(x).pow(2).mean())]
        [('0.weight', '0.bias')]
    """
    buffers = [b for b in module.buffers()]
    saved = [b.detach().clone() for b in buffers]
    named = dict(module.named_parameters())
    try:
        candidates = _trace_candidates(module, loss_fn)
        groups: list[InvariantGroup] = []
        for layer, norm in candidates:
            names = tuple(f"{layer}.{n}" if layer else n for n, p in module.get_submodule(layer).named_parameters(recurse=False)
                          if p is not None and (p.requires_grad or not trainable_only))
            names = tuple(n for n in names if n in named)
            if names:
                groups.append(InvariantGroup(layer, norm, names))
        if not groups:
            return []
        base = evaluate(loss_fn)
        everything = [named[n] for g in groups for n in g.names]
        if _is_invariant(everything, loss_fn, base, rtol):
            return groups
        return [g for g in groups if _is_invariant([named[n] for n in g.names], loss_fn, base, rtol)]
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)
