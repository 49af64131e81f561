"""SAM-style sharpness and its adaptive, scale-invariant form (ASAM).

First-order worst-case sharpness (Foret et al., 2021): ``L(θ + ε) − L(θ)`` with ``ε = ρ g/|g|``, the
step of length ``ρ`` that increases the loss fastest to first order. On a quadratic
``L = L0 + gᵀx + ½ xᵀHx`` this is exactly ``ρ|g| + ½ρ² uᵀHu`` with ``u = g/|g|``; the second term
alone is reported as ``curvature = 2(L(θ+ε) − L(θ) − ρ|g|)/ρ²`` (a finite-difference ``uᵀHu``: the
curvature along the gradient, free of the first-order slope).

Adaptive sharpness (Kwon et al., 2021, ASAM): with ``T = diag(|θ| + η)``, ``ε = ρ T²g/|Tg|`` — the
first-order worst case inside the ellipsoid ``|T⁻¹ε| <= ρ``. With ``η = 0`` it is invariant under the
rescalings ``w -> αw, a -> a/α`` that leave a ReLU network's function unchanged (plain SAM is not).
``η`` keeps zero weights movable; Kwon et al.'s code uses ``η = 0.01`` on weights and ``T = 1`` on biases,
this module uses ``|θ| + η`` on every parameter.

>>> import torch
>>> from lightning_landscape.parameters import ParameterSpace
>>> w = torch.nn.Parameter(torch.tensor([1.0, 0.0], dtype=torch.float64))
>>> space = ParameterSpace([w])
>>> loss = lambda: float(0.5 * (4.0 * w[0] ** 2 + w[1] ** 2))   # H = diag(4, 1), g = (4, 0)
>>> r = sharpness(loss, space, torch.tensor([4.0, 0.0], dtype=torch.float64), rho=0.1)
>>> round(r.sharpness, 10), round(r.curvature, 10)  # ρ|g| + ½ρ²·4 = 0.4 + 0.02
(0.42, 4.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from lightning_landscape.flatness.directions import move_to, restored
from lightning_landscape.linalg.dot import dot64
from lightning_landscape.linalg.reduction import norm as reduced_norm
from lightning_landscape.parameters import ParameterSpace

#: Evaluates the (probe-batch) loss at the parameters as they are now.
LossFn = Callable[[], float]


@dataclass
class SharpnessResult:
    """``sharpness = perturbed_loss − loss``; ``curvature`` = ``2(sharpness − gᵀε)/|ε|²`` (``εᵀHε/|ε|²``
    on a quadratic); ``slope = gᵀε`` is the first-order part. All zero when the gradient is zero."""

    loss: float
    perturbed_loss: float
    sharpness: float
    gradient_norm: float
    perturbation_norm: float
    slope: float
    curvature: float


def sam_perturbation(gradient: torch.Tensor, rho: float) -> torch.Tensor:
    """``ρ g/|g|`` (zero for a zero gradient).

    >>> sam_perturbation(torch.tensor([3.0, 4.0]), 0.5)
    tensor([0.3000, 0.4000])
    """
    norm = reduced_norm(gradient)
    if norm == 0:
        return torch.zeros_like(gradient)
    return gradient * (rho / norm)


def asam_perturbation(gradient: torch.Tensor, theta: torch.Tensor, rho: float, eta: float = 0.0) -> torch.Tensor:
    """``ρ T²g/|Tg|`` with ``T = |θ| + η`` elementwise (zero if ``Tg = 0``).

    >>> asam_perturbation(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0]), rho=1.0)  # T = (2, 0)
    tensor([2., 0.])
    """
    t = theta.abs().add_(eta)
    tg = t * gradient
    norm = reduced_norm(tg)
    if norm == 0:
        return torch.zeros_like(gradient)
    return t.mul_(tg).mul_(rho / norm)  # in place: two parameter-sized temporaries, not four


def perturbed_loss_change(loss_fn: LossFn, space: ParameterSpace, perturbation: torch.Tensor,
                          gradient: torch.Tensor, base_loss: float | None = None) -> SharpnessResult:
    """``L(θ + ε) − L(θ)`` for a given ``ε``; the parameters are restored bit-exactly afterwards."""
    if perturbation.numel() != space.dim or gradient.numel() != space.dim:
        raise ValueError(f"perturbation and gradient must have {space.dim} entries")
    with torch.no_grad(), restored(space) as theta:
        loss0 = float(loss_fn()) if base_loss is None else float(base_loss)
        eps = perturbation.to(device=theta.device, dtype=theta.dtype)
        eps_norm = float(reduced_norm(eps))
        g = gradient.to(device=theta.device, dtype=theta.dtype)
        if eps_norm == 0:
            return SharpnessResult(loss0, loss0, 0.0, float(reduced_norm(g)), 0.0, 0.0, 0.0)
        move_to(space, theta, (1.0, eps))
        loss1 = float(loss_fn())
    slope = dot64(g, eps)
    sharp = loss1 - loss0
    curvature = 2.0 * (sharp - slope) / eps_norm**2 if math.isfinite(sharp) else math.inf
    return SharpnessResult(loss0, loss1, sharp, float(reduced_norm(g)), eps_norm, slope, curvature)


def sharpness(loss_fn: LossFn, space: ParameterSpace, gradient: torch.Tensor, rho: float = 0.05,
              adaptive: bool = False, eta: float = 0.0, base_loss: float | None = None) -> SharpnessResult:
    """SAM sharpness (``adaptive=False``) or ASAM adaptive sharpness (``adaptive=True``) at the current θ.

    ``gradient`` is the flat gradient of the same loss at θ; ``base_loss`` (``L(θ)``) saves one forward
    pass when the caller already has it (it must come from the same loss function).
    """
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if adaptive:
        eps = asam_perturbation(gradient, space.flatten_params(), rho, eta)
    else:
        eps = sam_perturbation(gradient, rho)
    return perturbed_loss_change(loss_fn, space, eps, gradient, base_loss)
