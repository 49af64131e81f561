"""Align the hidden units of one solution to another (Hungarian matching per hidden layer).

Two methods (Ainsworth et al., 2023, "Git Re-Basin"; Entezari et al., 2022):

* ``"weight"`` — maximise ``Σ_layers ⟨θ_a, π(θ_b)⟩`` over the tensors each hidden layer touches
  (producer rows, bias, BatchNorm, *and* the consumer's columns). A layer's cost depends on the
  neighbouring layers' permutations, so it is solved by coordinate descent: a forward sweep that uses only
  the already-aligned side of each layer (exact for a permuted copy), then sweeps over the layers in a
  seeded random order, each solved with ``scipy.optimize.linear_sum_assignment``, until no layer improves.
  Needs no data.
* ``"activation"`` — match units by the correlation of their post-activation outputs on data (channels of
  a convolution pool over batch and positions); layers are independent, one assignment each.

Either way the result is a permutation per hidden layer to apply to ``model_b`` (see
:mod:`lightning_landscape.compare.permute` for the convention); applying it propagates into the next layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from lightning_landscape.compare.data import Data, InputFn, default_inputs, example_input, iter_batches
from lightning_landscape.compare.permute import (
    Permutations,
    identity_permutations,
    permute_axis,
    permute_model,
)
from lightning_landscape.compare.spec import Axis, PermutationSpec, permutation_spec

Method = Literal["weight", "activation"]
METHODS: tuple[str, ...] = ("weight", "activation")


@dataclass
class Alignment:
    """Permutations that map ``model_b``'s units onto ``model_a``'s, and how they were found.

    ``similarity[layer]`` is the mean matched similarity (weight matching: mean inner product of the matched
    unit weight vectors; activation matching: mean correlation of matched units).
    """

    perms: Permutations
    method: str
    iterations: int = 1
    similarity: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "iterations": self.iterations,
            "similarity": dict(self.similarity),
            "perms": {k: v.tolist() for k, v in self.perms.items()},
        }


def _assign(similarity: np.ndarray) -> np.ndarray:
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    perm = np.empty(similarity.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def _unit_major(tensor: torch.Tensor, axis: Axis, size: int) -> torch.Tensor:
    """``(size, -1)`` view: row ``i`` holds everything unit ``i`` owns in this tensor (blocks included)."""
    moved = tensor.movedim(axis.dim, 0)
    return moved[axis.offset : axis.offset + size * axis.block].reshape(size, -1)


def _check_same_structure(spec: PermutationSpec, state_a: Mapping, state_b: Mapping) -> None:
    for hidden in spec.layers:
        for axis in hidden.axes:
            if state_a[axis.key].shape != state_b[axis.key].shape:
                raise ValueError(
                    f"model_a and model_b differ at {axis.key}: {tuple(state_a[axis.key].shape)} vs "
                    f"{tuple(state_b[axis.key].shape)}"
                )


def _layer_similarity(
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    spec: PermutationSpec,
    perms: Mapping[str, torch.Tensor],
    name: str,
    use_key,
) -> torch.Tensor:
    """``S[i, j] = Σ_axes ⟨a_i, b_j⟩`` with the other layers' current permutations applied to ``b``."""
    by_key = spec.axes_by_key()
    hidden = spec.layer(name)
    sim = torch.zeros(hidden.size, hidden.size, dtype=torch.float64)
    for axis in hidden.axes:
        if not use_key(axis.key, name):
            continue
        wa = state_a[axis.key].detach().to("cpu", torch.float64)
        wb = state_b[axis.key].detach().to("cpu", torch.float64)
        for other, other_axis in by_key[axis.key]:
            if other != name:
                wb = permute_axis(wb, other_axis, perms[other])
        sim += _unit_major(wa, axis, hidden.size) @ _unit_major(wb, axis, hidden.size).T
    return sim


def weight_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    spec: PermutationSpec | None = None,
    max_iter: int = 100,
    seed: int = 0,
) -> Alignment:
    """Permutations of ``model_b``'s hidden units that maximise its weight overlap with ``model_a``.

    >>> from lightning_landscape.compare.permute import random_permutations, invert
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> spec = permutation_spec(net)
    >>> p = random_permutations(spec, torch.Generator().manual_seed(1))
    >>> found = weight_matching(net, permute_model(net, p, spec), spec).perms
    >>> all(torch.equal(found[k], invert(p)[k]) for k in p)
    True
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    spec = spec if spec is not None else permutation_spec(model_a)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    _check_same_structure(spec, state_a, state_b)
    perms = identity_permutations(spec)
    by_key = spec.axes_by_key()
    order = [h.name for h in spec.layers]

    # Forward sweep: use only tensors whose other permuted axes are already solved (exact for a copy).
    solved: set[str] = set()
    for name in order:
        def ready(key: str, layer: str) -> bool:
            return all(other == layer or other in solved for other, _ in by_key[key])

        sim = _layer_similarity(state_a, state_b, spec, perms, name, ready)
        perms[name] = torch.from_numpy(_assign(sim.numpy()))
        solved.add(name)

    # Coordinate descent on the full objective.
    rng = np.random.default_rng(seed)
    iterations = 0
    for iterations in range(1, max_iter + 1):
        improved = False
        for idx in rng.permutation(len(order)):
            name = order[idx]
            sim = _layer_similarity(state_a, state_b, spec, perms, name, lambda k, n: True)
            current = perms[name]
            old = float(sim[torch.arange(len(current)), current].sum())
            new_perm = torch.from_numpy(_assign(sim.numpy()))
            new = float(sim[torch.arange(len(new_perm)), new_perm].sum())
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[name] = new_perm
                improved = True
        if not improved:
            break

    similarity = {}
    for name in order:
        sim = _layer_similarity(state_a, state_b, spec, perms, name, lambda k, n: True)
        similarity[name] = float(sim[torch.arange(len(perms[name])), perms[name]].mean())
    return Alignment(perms, "weight", iterations, similarity)


class _Moments:
    """Streaming first/second moments and cross-moments of two activation matrices ``(n, units)``."""

    def __init__(self) -> None:
        self.n = 0
        self.sa = self.sb = self.saa = self.sbb = self.sab = None

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.to(torch.float64), b.to(torch.float64)
        parts = (a.sum(0), b.sum(0), (a * a).sum(0), (b * b).sum(0), a.T @ b)
        if self.sa is None:
            self.sa, self.sb, self.saa, self.sbb, self.sab = parts
        else:
            self.sa, self.sb, self.saa, self.sbb, self.sab = (
                x + y for x, y in zip((self.sa, self.sb, self.saa, self.sbb, self.sab), parts)
            )
        self.n += a.shape[0]

    def correlation(self, eps: float = 1e-12) -> torch.Tensor:
        n = self.n
        ma, mb = self.sa / n, self.sb / n
        va = (self.saa / n - ma**2).clamp_min(0)
        vb = (self.sbb / n - mb**2).clamp_min(0)
        cov = self.sab / n - ma[:, None] * mb[None, :]
        return cov / (va.sqrt()[:, None] * vb.sqrt()[None, :] + eps)


def _as_rows(h: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Units on axis ``dim`` (default 1) → ``(samples, units)``: every other position is a sample."""
    dim = 1 if dim is None else dim
    if h.dim() == 2 and dim == 1:
        return h
    return h.movedim(dim, -1).reshape(-1, h.shape[dim])


@torch.no_grad()
def activation_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Data,
    spec: PermutationSpec | None = None,
    input_fn: InputFn | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
) -> Alignment:
    """Permutations of ``model_b``'s hidden units maximising the correlation of matched activations.

    Both models run in eval mode (modes restored); activations are read after each hidden layer's
    activation (the last channel-wise module before the next weight layer). Units with no module to read
    them from (``probe=None``: attention heads, a ``TransformerEncoderLayer``'s MLP) are then matched by
    their weights, given the permutations found for the others.

    >>> from lightning_landscape.compare.permute import random_permutations, invert
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> spec = permutation_spec(net)
    >>> p = random_permutations(spec, torch.Generator().manual_seed(1))
    >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(2))
    >>> found = activation_matching(net, permute_model(net, p, spec), (x,), spec).perms
    >>> torch.equal(found["0"], invert(p)["0"])
    True
    """
    input_fn = input_fn or default_inputs
    spec = spec if spec is not None else permutation_spec(model_a, example_input(data, input_fn))
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    _check_same_structure(spec, state_a, state_b)
    probed = [h for h in spec.layers if h.probe is not None]
    captured: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    modes = [(m, m.training) for model in (model_a, model_b) for m in model.modules()]
    for which, model in enumerate((model_a, model_b)):
        for hidden in probed:
            def hook(_mod, _inp, out, key=(which, hidden.name)):
                captured[key] = out.detach()

            handles.append(model.get_submodule(hidden.probe).register_forward_hook(hook))
    moments = {h.name: _Moments() for h in probed}
    try:
        model_a.eval()
        model_b.eval()
        for i, batch in enumerate(iter_batches(data, batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            inputs = input_fn(batch)
            model_a(inputs)
            model_b(inputs)
            for hidden in probed:
                moments[hidden.name].update(
                    _as_rows(captured[(0, hidden.name)], hidden.probe_dim),
                    _as_rows(captured[(1, hidden.name)], hidden.probe_dim),
                )
            captured.clear()
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes:
            m.training = mode
    if any(m.n == 0 for m in moments.values()):
        raise ValueError("data: no batches to compute activations on")
    perms, similarity = identity_permutations(spec), {}
    for hidden in probed:
        corr = moments[hidden.name].correlation()
        perm = _assign(corr.numpy())
        perms[hidden.name] = torch.from_numpy(perm)
        similarity[hidden.name] = float(corr[torch.arange(hidden.size), torch.from_numpy(perm)].mean())
    for hidden in spec.layers:  # no activations to read: match by weights, the others' permutations applied
        if hidden.probe is None:
            sim = _layer_similarity(state_a, state_b, spec, perms, hidden.name, lambda k, n: True)
            perms[hidden.name] = torch.from_numpy(_assign(sim.numpy()))
            similarity[hidden.name] = float(sim[torch.arange(hidden.size), perms[hidden.name]].mean())
    return Alignment(perms, "activation", 1, similarity)


def align(
    model_a: nn.Module,
    model_b: nn.Module,
    method: Method = "weight",
    data: Data | None = None,
    spec: PermutationSpec | None = None,
    **kwargs,
) -> tuple[nn.Module, Alignment]:
    """``model_b`` with its hidden units aligned to ``model_a`` (a copy; same function as ``model_b``).

    ``method="activation"`` needs ``data``; ``kwargs`` go to :func:`weight_matching` /
    :func:`activation_matching`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if spec is None:
        spec = permutation_spec(model_a, None if data is None else example_input(data, kwargs.get("input_fn")))
    if method == "weight":
        alignment = weight_matching(model_a, model_b, spec, **kwargs)
    else:
        if data is None:
            raise ValueError("data is required for method='activation'")
        alignment = activation_matching(model_a, model_b, data, spec, **kwargs)
    return permute_model(model_b, alignment.perms, spec), alignment


def parameter_distance(model_a: nn.Module, model_b: nn.Module, relative: bool = False) -> float:
    """``‖θ_a − θ_b‖`` over the trainable parameters (``relative``: divided by ``(‖θ_a‖ + ‖θ_b‖)/2``).

    >>> net = nn.Linear(2, 2)
    >>> parameter_distance(net, net)
    0.0
    """
    pa = dict(model_a.named_parameters())
    sq, na, nb = 0.0, 0.0, 0.0
    for name, p in model_b.named_parameters():
        if not p.requires_grad:
            continue
        a = pa[name].detach().to(torch.float64)
        b = p.detach().to(torch.float64)
        sq += float(((a - b) ** 2).sum())
        na += float((a**2).sum())
        nb += float((b**2).sum())
    dist = sq**0.5
    if relative:
        scale = (na**0.5 + nb**0.5) / 2
        return dist / scale if scale > 0 else 0.0
    return dist


__all__ = [
    "Alignment",
    "METHODS",
    "activation_matching",
    "align",
    "parameter_distance",
    "weight_matching",
]
