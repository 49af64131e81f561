"""Filter-normalised random directions and moving the weights along them (Li et al., 2018).

A raw Gaussian direction is meaningless for networks with scale symmetries (ReLU, BatchNorm): a layer
with large weights barely notices a unit step that destroys a layer with small weights. Filter
normalisation rescales the direction filter by filter so that every filter moves *relative to its own
size*: for a parameter with ``ndim >= 2`` a filter is a slice along dimension 0 (an output neuron's
incoming weights for ``nn.Linear``, an output channel for ``nn.Conv*``), and ``d_i <- d_i / |d_i| *
|θ_i|``. A step ``θ + σ d`` then changes every filter by the relative amount ``σ``, so ``σ`` is a
dimensionless "relative step size" and loss-vs-``σ`` curves are comparable across layers, models and
training time.

One-dimensional parameters (biases, BatchNorm/LayerNorm affine weights) have no filters:

* ``bias_bn="ignore"`` (default, Li et al.'s recommended setting): their direction is zero — they stay put;
* ``bias_bn="filter"``: the whole tensor is treated as one filter (a random direction of norm ``|b|``).

A filter whose weights are all zero (a dead or zero-initialised unit) gets a zero direction.
Random numbers come only from the caller's ``torch.Generator``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import torch

from lightning_landscape.linalg.reduction import norm
from lightning_landscape.parameters import ParameterSpace
from lightning_landscape.sharded import after_write

BiasMode = Literal["ignore", "filter"]
BIAS_MODES: tuple[str, ...] = ("ignore", "filter")


def filter_normalize(direction: torch.Tensor, reference: torch.Tensor, space: ParameterSpace,
                     bias_bn: BiasMode = "ignore") -> torch.Tensor:
    """Rescale a flat ``direction`` filter by filter to the norms of the flat ``reference`` (θ).

    >>> layer = torch.nn.Linear(3, 2)
    >>> space = ParameterSpace.from_module(layer)
    >>> theta = space.flatten_params()
    >>> d = filter_normalize(torch.randn(space.dim), theta, space)
    >>> w, b = space.unflatten(d)
    >>> torch.allclose(w.norm(dim=1), layer.weight.detach().norm(dim=1)), bool((b == 0).all())
    (True, True)
    """
    if bias_bn not in BIAS_MODES:
        raise ValueError(f"bias_bn must be one of {list(BIAS_MODES)}, got {bias_bn!r}")
    out = []
    for d, w in zip(space.unflatten(direction), space.unflatten(reference)):
        if d.ndim >= 2:
            rows_d = d.reshape(d.shape[0], -1)
            rows_w = w.reshape(w.shape[0], -1)
            norm_d = torch.linalg.vector_norm(rows_d, dim=1, keepdim=True)
            norm_w = torch.linalg.vector_norm(rows_w, dim=1, keepdim=True)
            # tiny floor: a zero random row (probability 0) must not produce NaN
            out.append((rows_d * (norm_w / norm_d.clamp_min(torch.finfo(d.dtype).tiny))).reshape(-1))
        elif bias_bn == "filter":
            # a 1-D parameter is one filter, split over the processes when sharded: reduced norms
            norm_d = norm(d.reshape(-1)).clamp_min(torch.finfo(d.dtype).tiny)
            out.append((d * (norm(w.reshape(-1)) / norm_d)).reshape(-1))
        else:
            out.append(torch.zeros_like(d).reshape(-1))
    return torch.cat(out)


def filter_normalized_direction(space: ParameterSpace, generator: torch.Generator,
                                reference: torch.Tensor | None = None, bias_bn: BiasMode = "ignore") -> torch.Tensor:
    """A Gaussian direction drawn from ``generator``, filter-normalised to ``reference`` (default: θ now).

    >>> net = torch.nn.Linear(4, 3)
    >>> space = ParameterSpace.from_module(net)
    >>> g = torch.Generator().manual_seed(0)
    >>> d = filter_normalized_direction(space, g, bias_bn="filter")
    >>> theta = space.flatten_params()
    >>> bool(torch.isclose(d[-3:].norm(), theta[-3:].norm()))  # the bias moves as one filter
    True
    """
    reference = space.flatten_params() if reference is None else reference
    raw = torch.randn(space.dim, generator=generator, device=generator.device, dtype=space.dtype).to(space.device)
    return _filter_normalize_(raw, reference, space, bias_bn)


def _filter_normalize_(direction: torch.Tensor, reference: torch.Tensor, space: ParameterSpace,
                       bias_bn: BiasMode) -> torch.Tensor:
    """:func:`filter_normalize` in place (the same values): no parameter-sized temporary besides ``direction``."""
    if bias_bn not in BIAS_MODES:
        raise ValueError(f"bias_bn must be one of {list(BIAS_MODES)}, got {bias_bn!r}")
    for d, w in zip(space.unflatten(direction), space.unflatten(reference)):
        if d.ndim >= 2:
            rows_d = d.view(d.shape[0], -1)
            norm_d = torch.linalg.vector_norm(rows_d, dim=1, keepdim=True)
            norm_w = torch.linalg.vector_norm(w.reshape(w.shape[0], -1), dim=1, keepdim=True)
            rows_d.mul_(norm_w / norm_d.clamp_min(torch.finfo(d.dtype).tiny))
        elif bias_bn == "filter":
            norm_d = norm(d.reshape(-1)).clamp_min(torch.finfo(d.dtype).tiny)  # sharded: reduced norms
            d.mul_(norm(w.reshape(-1)) / norm_d)
        else:
            d.zero_()
    return direction


def set_flat(space: ParameterSpace, flat: torch.Tensor) -> None:
    """Write a flat vector into the parameters, in place (cast to each parameter's dtype)."""
    with torch.no_grad():
        for p, part in zip(space.local_tensors(), space.unflatten(flat)):
            p.copy_(part)
    after_write()  # FSDP2: the next forward gathers these values


def move_to(space: ParameterSpace, theta: torch.Tensor, *steps: tuple[float, torch.Tensor]) -> None:
    """Set the parameters to ``θ + Σ cᵢ dᵢ`` for ``steps = ((c₁, d₁), ...)``, parameter by parameter in place.

    No parameter-sized temporary where a parameter has the flat dtype (the sum is formed in the parameter
    itself); other parameters get the sum in the flat dtype, cast once, one parameter at a time.

    >>> w = torch.nn.Parameter(torch.zeros(2)); space = ParameterSpace([w])
    >>> move_to(space, torch.tensor([1.0, 2.0]), (0.5, torch.tensor([2.0, 0.0])), (1.0, torch.tensor([0.0, 1.0])))
    >>> w.tolist()
    [2.0, 3.0]
    """
    parts = [space.unflatten(d.to(device=theta.device, dtype=theta.dtype)) for _, d in steps]
    with torch.no_grad():
        for k, (p, base) in enumerate(zip(space.local_tensors(), space.unflatten(theta))):
            if p.dtype == base.dtype:
                p.copy_(base)
                for (c, _), d in zip(steps, parts):
                    p.add_(d[k], alpha=c)
            else:
                total = base.clone()
                for (c, _), d in zip(steps, parts):
                    total.add_(d[k], alpha=c)
                p.copy_(total)
                del total
    after_write()  # FSDP2: the next forward gathers these values


@contextlib.contextmanager
def restored(space: ParameterSpace) -> Iterator[torch.Tensor]:
    """Yield θ (flat copy; do not modify it); on exit put every parameter back bit-exactly from a copy.

    Restoring from a copy (not by subtracting the step again) is what makes it bit-exact. The flat θ is
    that copy when it holds every parameter's dtype exactly (one parameter-sized copy in all); otherwise
    the parameters are cloned as well.

    >>> net = torch.nn.Linear(2, 1); space = ParameterSpace.from_module(net)
    >>> before = net.weight.detach().clone()
    >>> with restored(space) as theta:
    ...     set_flat(space, theta + 0.1)
    >>> torch.equal(net.weight, before)
    True
    """
    theta = space.flatten_params()
    # Widening casts (bf16/fp16 -> fp32, fp32 -> fp64) are exact: θ itself restores such parameters.
    exact = all(torch.promote_types(p.dtype, theta.dtype) == theta.dtype for p in space.params)
    saved = space.unflatten(theta) if exact else [p.detach().clone() for p in space.local_tensors()]
    try:
        yield theta
    finally:
        with torch.no_grad():
            for p, copy in zip(space.local_tensors(), saved):
                p.copy_(copy)
        after_write()
