"""1-D and 2-D slices of the loss around θ along (filter-normalised) directions (Li et al., 2018).

``slice_1d``: ``L(θ + α d)`` for each ``α``; ``slice_2d``: ``L(θ + α d1 + β d2)`` on a grid. With
filter-normalised directions, ``α = ±1`` means every filter has moved by its own norm. Two independent
random directions in high dimension are nearly orthogonal (their cosine is reported by
:func:`cosine` so a figure can say so); they are not orthogonalised, since that would undo the filter
normalisation.

>>> import torch
>>> from lightning_landscape.parameters import ParameterSpace
>>> w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
>>> space = ParameterSpace([w])
>>> loss = lambda: float(w[0] ** 2 + 3 * w[1] ** 2)
>>> e1, e2 = torch.eye(2, dtype=torch.float64)
>>> slice_1d(loss, space, e2, [-1.0, 0.0, 1.0]).tolist()
[3.0, 0.0, 3.0]
>>> slice_2d(loss, space, e1, e2, [0.0, 1.0], [0.0, 1.0]).tolist()  # rows: β, columns: α
[[0.0, 1.0], [3.0, 4.0]]
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from lightning_landscape.flatness.directions import move_to, restored
from lightning_landscape.flatness.sharpness import LossFn
from lightning_landscape.linalg.dot import dot64
from lightning_landscape.linalg.reduction import norm
from lightning_landscape.parameters import ParameterSpace


@contextlib.contextmanager
def _restore_point(space: ParameterSpace, theta: torch.Tensor | None) -> Iterator[torch.Tensor]:
    """The caller's θ, put back by the caller's own :func:`restored` after the slices (on an error too),
    or a :func:`restored` of our own."""
    if theta is None:
        with restored(space) as own:
            yield own
        return
    try:
        yield theta
    finally:
        move_to(space, theta)


def _values(x: Sequence[float] | torch.Tensor) -> list[float]:
    return [float(v) for v in (x.tolist() if isinstance(x, torch.Tensor) else x)]


def slice_1d(loss_fn: LossFn, space: ParameterSpace, direction: torch.Tensor,
             alphas: Sequence[float] | torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
    """Loss at ``θ + α d`` for each ``α`` (float64 tensor); parameters restored bit-exactly.

    Memory: one copy of θ (the restore point) besides ``direction``; each point is formed in the
    parameters themselves. A caller that already holds θ inside :func:`restored` passes it as ``theta``
    (no second copy; that context restores the parameters).
    """
    out = []
    with torch.no_grad(), _restore_point(space, theta) as theta:
        d = direction.to(device=theta.device, dtype=theta.dtype)
        for a in _values(alphas):
            move_to(space, theta, (a, d))  # in place: θ, d and the parameters are the only vectors
            out.append(float(loss_fn()))
    return torch.tensor(out, dtype=torch.float64)


def slice_2d(loss_fn: LossFn, space: ParameterSpace, d1: torch.Tensor, d2: torch.Tensor,
             alphas: Sequence[float] | torch.Tensor, betas: Sequence[float] | torch.Tensor,
             theta: torch.Tensor | None = None) -> torch.Tensor:
    """Loss at ``θ + α d1 + β d2``: a ``(len(betas), len(alphas))`` float64 tensor (row = β, as images).

    Memory and ``theta`` as in :func:`slice_1d`."""
    grid = []
    with torch.no_grad(), _restore_point(space, theta) as theta:
        u = d1.to(device=theta.device, dtype=theta.dtype)
        v = d2.to(device=theta.device, dtype=theta.dtype)
        for b in _values(betas):
            row = []
            for a in _values(alphas):
                move_to(space, theta, (b, v), (a, u))
                row.append(float(loss_fn()))
            grid.append(row)
    return torch.tensor(grid, dtype=torch.float64)


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    """Cosine of the angle between two flat directions (0 for a zero vector).

    >>> round(cosine(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])), 4)
    0.7071
    """
    nu, nv = norm(u), norm(v)
    if nu == 0 or nv == 0:
        return 0.0
    return dot64(u, v) / (float(nu) * float(nv))
