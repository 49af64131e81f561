"""Random-walk escape radius: how far (relative to the weights) a random step must go to raise the loss.

A walker is a filter-normalised random direction ``d`` (see :mod:`.directions`); it walks out along
``θ + σ d`` and its escape radius is the smallest relative step ``σ`` at which the loss has risen by
``δ``: ``L(θ + σ d) >= L(θ) + δ`` (a spin-glass flatness measure, Liao et al. 2024). Near a minimum with
Hessian ``H`` this is ``σ ≈ sqrt(2δ / dᵀHd)``: flat minima have large radii, sharp ones small radii.
Because ``d`` is filter-normalised, ``σ`` is the relative change of every filter, so radii are
comparable across layers, models and training time, and are invariant to the rescaling symmetries of
ReLU networks.

Search (few forward passes): scan ``σ = σ_min, σ_min·growth, ...`` up to ``σ_max`` until the loss first
reaches the threshold (the first grid point above it, so the *smallest* crossing on the grid), then
bisect the last bracket geometrically down to a relative width ``rel_tol``. A walker that never reaches the
threshold is *censored*: it reports ``σ_max`` (a lower bound). A NaN/Inf loss counts as escaped.

>>> import torch
>>> from lightning_landscape.parameters import ParameterSpace
>>> w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
>>> space = ParameterSpace([w])
>>> loss = lambda: float(0.5 * 8.0 * (w ** 2).sum())              # H = 8 I
>>> d = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
>>> r = escape_radius(loss, space, [d], delta=0.25)
>>> round(r.mean, 2)  # sqrt(2·0.25/8) = 0.25
0.25
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from lightning_landscape.flatness.directions import move_to, restored
from lightning_landscape.flatness.sharpness import LossFn
from lightning_landscape.parameters import ParameterSpace


@dataclass
class EscapeResult:
    """Per-walker radii (``σ_max`` for censored walkers) and the summary statistics over walkers."""

    radii: list[float]
    escaped: list[bool]
    base_loss: float
    delta: float
    forward_passes: int
    rise_at_radius: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.radii))

    @property
    def std(self) -> float:
        """Sample standard deviation over walkers (0 for one walker)."""
        return float(np.std(self.radii, ddof=1)) if len(self.radii) > 1 else 0.0

    @property
    def min(self) -> float:
        return float(np.min(self.radii))

    @property
    def max(self) -> float:
        return float(np.max(self.radii))

    @property
    def median(self) -> float:
        return float(np.median(self.radii))

    @property
    def censored_fraction(self) -> float:
        """Walkers that did not escape within ``σ_max`` (their radius is a lower bound)."""
        return 1.0 - float(np.mean(self.escaped))


def _check(sigma_min: float, sigma_max: float, growth: float, rel_tol: float, delta: float) -> None:
    if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not growth > 1:
        raise ValueError(f"growth must be > 1, got {growth}")
    if not rel_tol > 0:
        raise ValueError(f"rel_tol must be > 0, got {rel_tol}")
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")


def escape_radius_along(loss_at: Callable[[float], float], threshold: float, sigma_min: float = 1e-3,
                        sigma_max: float = 10.0, growth: float = 2.0, rel_tol: float = 0.01) -> tuple[float, bool, int, float]:
    """Smallest ``σ`` on the search grid with ``loss_at(σ) >= threshold``, refined by geometric bisection.

    Returns ``(σ, escaped, forward_passes, loss_at_σ_upper)``; ``σ`` is the geometric midpoint of the final
    bracket (``σ_min`` if the loss is already above threshold there; ``σ_max`` if never).

    >>> sigma, escaped, passes, _ = escape_radius_along(lambda s: s * s, threshold=0.04)  # crosses at σ = 0.2
    >>> round(sigma, 2), escaped, passes <= 16
    (0.2, True, True)
    """
    _check(sigma_min, sigma_max, growth, rel_tol, 1.0)
    passes, lo, hi, value_hi = 0, 0.0, None, math.nan
    sigma = sigma_min
    while True:
        value = loss_at(sigma)
        passes += 1
        if not value < threshold:  # NaN/Inf count as escaped
            hi, value_hi = sigma, value
            break
        lo = sigma
        if sigma >= sigma_max:
            return sigma_max, False, passes, value
        sigma = min(sigma * growth, sigma_max)
    if lo == 0.0:  # already escaped at the smallest step: σ_min is an upper bound
        return sigma_min, True, passes, value_hi
    while hi / lo > 1.0 + rel_tol:
        mid = math.sqrt(lo * hi)
        value = loss_at(mid)
        passes += 1
        if value < threshold:
            lo = mid
        else:
            hi, value_hi = mid, value
    return math.sqrt(lo * hi), True, passes, value_hi


def escape_radius(loss_fn: LossFn, space: ParameterSpace, directions: Iterable[torch.Tensor], delta: float,
                  sigma_min: float = 1e-3, sigma_max: float = 10.0, growth: float = 2.0, rel_tol: float = 0.01,
                  base_loss: float | None = None) -> EscapeResult:
    """Escape radius of each walker (direction) from the current θ; parameters restored bit-exactly.

    ``directions`` may be a generator expression (one direction in memory at a time). ``base_loss``
    (``L(θ)`` from the same ``loss_fn``) saves one forward pass.
    """
    _check(sigma_min, sigma_max, growth, rel_tol, delta)
    radii: list[float] = []
    escaped: list[bool] = []
    rises: list[float] = []
    passes = 0
    with torch.no_grad(), restored(space) as theta:
        if base_loss is None:
            base_loss = float(loss_fn())
            passes += 1
        if not math.isfinite(base_loss):
            raise FloatingPointError(f"loss at θ is {base_loss}: no escape radius")
        threshold = base_loss + delta
        for d in directions:
            d = d.to(device=theta.device, dtype=theta.dtype)

            def loss_at(sigma: float) -> float:
                move_to(space, theta, (sigma, d))
                return float(loss_fn())

            sigma, ok, n, value = escape_radius_along(loss_at, threshold, sigma_min, sigma_max, growth, rel_tol)
            radii.append(sigma)
            escaped.append(ok)
            rises.append(value - base_loss)
            passes += n
    if not radii:
        raise ValueError("directions is empty: need at least one walker")
    return EscapeResult(radii, escaped, float(base_loss), float(delta), passes, rises)
