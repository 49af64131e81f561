"""Stochastic Lanczos quadrature (SLQ): a smoothed estimate of the eigenvalue density.

For a unit random vector v, the Lanczos tridiagonal matrix T of A started at v gives a Gauss quadrature
rule for ``vᵀ f(A) v``: nodes = eigenvalues of T, weights = squared first components of its
eigenvectors. Averaging over a few vectors estimates the spectral measure ``(1/n) Σ δ(λ - λᵢ)``
(Ghorbani, Krishnan & Xiao 2019; Lin, Saad & Yang 2016).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lightning_landscape.linalg.lanczos import _LanczosState, _tridiagonal
from lightning_landscape.linalg.random import rademacher

Matvec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SpectralDensity:
    """Quadrature nodes and weights (one row per probe vector; each row's weights sum to 1)."""

    nodes: torch.Tensor
    weights: torch.Tensor
    dim: int
    num_matvecs: int

    def histogram(self, bins: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
        """Bin edges and expected eigenvalue counts per bin (counts sum to ``dim``)."""
        nodes = self.nodes.flatten()
        weights = self.weights.flatten() / self.nodes.shape[0]
        lo, hi = float(nodes.min()), float(nodes.max())
        if hi <= lo:
            hi = lo + max(abs(lo), 1.0) * 1e-6
        edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
        idx = torch.clamp(torch.bucketize(nodes, edges, right=True) - 1, 0, bins - 1)
        counts = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, weights) * self.dim
        return edges, counts

    def density(self, grid: torch.Tensor, sigma: float) -> torch.Tensor:
        """Gaussian-smoothed density on ``grid`` (integrates to ~1)."""
        diff = grid.double()[:, None, None] - self.nodes[None]
        kernel = torch.exp(-0.5 * (diff / sigma) ** 2) / (sigma * (2 * torch.pi) ** 0.5)
        return (kernel * self.weights[None]).sum(-1).mean(-1)

    def trace(self) -> float:
        """The trace implied by the quadrature, ``dim * E[Σ w θ]``."""
        return float(self.dim * (self.nodes * self.weights).sum(-1).mean())


def spectral_density(
    matvec: Matvec,
    dim: int,
    num_probes: int,
    num_steps: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> SpectralDensity:
    """SLQ with ``num_probes`` Rademacher start vectors and ``num_steps`` Lanczos steps each.

    >>> A = torch.diag(torch.tensor([-1.0, 0.0, 2.0, 5.0], dtype=torch.float64))
    >>> d = spectral_density(lambda v: A @ v, 4, 2, 4, torch.Generator().manual_seed(0), torch.float64)
    >>> round(d.trace(), 6)
    6.0
    """
    if num_probes < 1 or num_steps < 1:
        raise ValueError("num_probes and num_steps must be >= 1")
    nodes, weights, used = [], [], 0
    steps = min(num_steps, dim)
    for _ in range(num_probes):
        v = rademacher(dim, generator, dtype, device)
        state = _LanczosState(matvec, v, steps)  # only T is needed: no copy of the basis
        while state.step():
            pass
        T = _tridiagonal(state.alphas, state.betas)
        used += state.matvecs
        del state
        evals, evecs = torch.linalg.eigh(T)
        w = evecs[0] ** 2
        pad = steps - evals.numel()  # invariant subspace found early: pad with zero-weight nodes
        if pad:
            evals = torch.cat([evals, evals[-1:].expand(pad)])
            w = torch.cat([w, torch.zeros(pad, dtype=w.dtype)])
        nodes.append(evals)
        weights.append(w)
    return SpectralDensity(torch.stack(nodes), torch.stack(weights), dim, used)
