"""Stochastic trace estimators with a standard error: Hutchinson and Hutch++.

Hutch++ (Meyer, Musco, Musco & Woodruff 2021) spends a third of the budget on a sketch ``Q`` of the
dominant range, takes ``tr(Qᵀ A Q)`` exactly and runs Hutchinson only on the deflated remainder
``(I - QQᵀ) A (I - QQᵀ)``. Curvature spectra are dominated by a few outliers, so the deflated part
has far smaller variance. The reported standard error is the sample standard error of the Hutchinson
part (the exact part contributes none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from lightning_landscape.linalg.random import rademacher

Matvec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TraceEstimate:
    """A trace estimate, its standard error and the number of operator applications spent."""

    value: float
    stderr: float
    num_matvecs: int
    samples: torch.Tensor  # the quadratic forms behind the stochastic part (for pooling / diagnostics)


def _stderr(samples: torch.Tensor) -> float:
    n = samples.numel()
    return float(samples.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")


def hutchinson_trace(
    matvec: Matvec,
    dim: int,
    num_samples: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> TraceEstimate:
    """``tr(A) ≈ mean(zᵀ A z)`` over Rademacher ``z``.

    >>> A = torch.diag(torch.arange(1.0, 6.0))
    >>> est = hutchinson_trace(lambda v: A @ v, 5, 8, torch.Generator().manual_seed(0))
    >>> est.value  # Rademacher probes are exact on diagonal matrices
    15.0
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    samples = []
    for _ in range(num_samples):
        z = rademacher(dim, generator, dtype, device)
        samples.append(torch.dot(z, matvec(z)).double())
    s = torch.stack(samples).cpu()
    return TraceEstimate(float(s.mean()), _stderr(s), num_samples, s)


def hutchpp_trace(
    matvec: Matvec,
    dim: int,
    num_matvecs: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> TraceEstimate:
    """Hutch++ with a budget of ``num_matvecs`` operator applications (at least 3).

    >>> torch.manual_seed(0) and None
    >>> U = torch.linalg.qr(torch.randn(50, 50, dtype=torch.float64))[0]
    >>> A = U @ torch.diag(torch.logspace(2, -2, 50, dtype=torch.float64)) @ U.T
    >>> est = hutchpp_trace(lambda v: A @ v, 50, 30, torch.Generator().manual_seed(0), torch.float64)
    >>> abs(est.value - float(torch.trace(A))) < 4 * est.stderr + 1e-9
    True
    """
    if num_matvecs < 3:
        raise ValueError(f"num_matvecs must be >= 3 for Hutch++, got {num_matvecs}")
    sketch = min(num_matvecs // 3, dim)
    remaining = num_matvecs - 2 * sketch
    S = torch.stack([rademacher(dim, generator, dtype, device) for _ in range(sketch)], dim=1)
    AS = torch.stack([matvec(S[:, i]) for i in range(sketch)], dim=1)
    Q, _ = torch.linalg.qr(AS)
    exact = sum(float(torch.dot(Q[:, i], matvec(Q[:, i]))) for i in range(sketch))
    used = 2 * sketch
    if remaining <= 0 or sketch >= dim:
        return TraceEstimate(exact, 0.0, used, torch.zeros(0, dtype=torch.float64))
    samples = []
    for _ in range(remaining):
        g = rademacher(dim, generator, dtype, device)
        g = g - Q @ (Q.T @ g)
        Ag = matvec(g)
        Ag = Ag - Q @ (Q.T @ Ag)
        samples.append(torch.dot(g, Ag).double())
    s = torch.stack(samples).cpu()
    return TraceEstimate(exact + float(s.mean()), _stderr(s), used + remaining, s)
