"""Apply permutations of hidden units to a model (function-preserving re-labelling of neurons/channels).

Convention used throughout :mod:`lightning_landscape.compare`: a permutation ``p`` of a hidden layer
(a ``LongTensor`` of length ``size``) makes unit ``i`` of the new model the old unit ``p[i]``, i.e. the
producer's weight becomes ``W[p]`` and the consumer's weight ``W_next[:, p]`` (BatchNorm affine and running
statistics, biases and blocks after ``Flatten`` move along).
"""

from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn

from lightning_landscape.compare.spec import Axis, PermutationSpec, permutation_spec

Permutations = dict[str, torch.Tensor]


def _index(perm: torch.Tensor, block: int) -> torch.Tensor:
    if block == 1:
        return perm
    return (perm[:, None] * block + torch.arange(block, device=perm.device)).reshape(-1)


def permute_axis(tensor: torch.Tensor, axis: Axis, perm: torch.Tensor) -> torch.Tensor:
    """``tensor`` with axis ``axis.dim`` re-ordered by ``perm`` (expanded to blocks, shifted by ``offset``).

    >>> w = torch.arange(6.0)  # e.g. a packed q/k bias: units [2, 3] and [4, 5] of the second half
    >>> permute_axis(w, Axis("b", 0, block=2, offset=2), torch.tensor([1, 0])).tolist()
    [0.0, 1.0, 4.0, 5.0, 2.0, 3.0]
    """
    index = _index(perm.to(tensor.device), axis.block)
    length = tensor.shape[axis.dim]
    if axis.offset or index.numel() != length:
        if axis.offset + index.numel() > length:
            raise ValueError(f"{axis.key}: axis {axis.dim} has {length} entries, the units need "
                             f"{axis.offset} + {index.numel()}")
        full = torch.arange(length, device=tensor.device)
        full[axis.offset : axis.offset + index.numel()] = index + axis.offset
        index = full
    return tensor.index_select(axis.dim, index)


def identity_permutations(spec: PermutationSpec) -> Permutations:
    """``{layer: arange(size)}`` for every hidden layer."""
    return {h.name: torch.arange(h.size) for h in spec.layers}


def random_permutations(spec: PermutationSpec, generator: torch.Generator | None = None) -> Permutations:
    """A uniformly random permutation per hidden layer, drawn from ``generator`` (never the global RNG).

    >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    >>> perms = random_permutations(permutation_spec(net), torch.Generator().manual_seed(0))
    >>> sorted(perms["0"].tolist())
    [0, 1, 2, 3]
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    return {h.name: torch.randperm(h.size, generator=generator) for h in spec.layers}


def invert(perms: Mapping[str, torch.Tensor]) -> Permutations:
    """The inverse permutations: ``permute(permute(m, p), invert(p))`` is ``m``."""
    return {name: torch.argsort(p) for name, p in perms.items()}


def _check(spec: PermutationSpec, perms: Mapping[str, torch.Tensor]) -> None:
    known = {h.name: h.size for h in spec.layers}
    for name, p in perms.items():
        if name not in known:
            raise KeyError(f"perms: unknown hidden layer {name!r}; known: {sorted(known)}")
        if p.shape != (known[name],) or not torch.equal(torch.sort(p.cpu()).values, torch.arange(known[name])):
            raise ValueError(f"perms[{name!r}] is not a permutation of range({known[name]})")


def permute_state_dict(
    state: Mapping[str, torch.Tensor], spec: PermutationSpec, perms: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A new state dict with every hidden layer in ``perms`` permuted (layers left out stay as they are).

    Entries not touched by a permutation (e.g. ``num_batches_tracked``, the output bias) are shared,
    not copied.
    """
    _check(spec, perms)
    out = dict(state)
    for hidden in spec.layers:
        if hidden.name not in perms:
            continue
        for axis in hidden.axes:
            out[axis.key] = permute_axis(out[axis.key], axis, perms[hidden.name])
    return out


def permute_model(
    model: nn.Module, perms: Mapping[str, torch.Tensor], spec: PermutationSpec | None = None
) -> nn.Module:
    """A deep copy of ``model`` with its hidden units permuted; its outputs are those of ``model``.

    >>> torch.manual_seed(0) is not None
    True
    >>> net = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).eval()
    >>> spec = permutation_spec(net)
    >>> twin = permute_model(net, random_permutations(spec), spec)
    >>> x = torch.randn(4, 3)
    >>> torch.allclose(net(x), twin(x), atol=1e-6)
    True
    """
    spec = spec if spec is not None else permutation_spec(model)
    state = permute_state_dict(model.state_dict(), spec, perms)
    twin = copy.deepcopy(model)
    twin.load_state_dict(state)
    return twin
