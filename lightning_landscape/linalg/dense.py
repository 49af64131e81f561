"""Exact spectral quantities of a small symmetric matrix, in the shapes the iterative estimators return.

On a model with a few hundred parameters the whole Hessian costs about what one cold Lanczos run and one
trace estimate spend in products (``HessianOperator.dense``), and its eigendecomposition is free by
comparison: the probes then report exact values (zero residual, zero standard error) instead of estimates.
"""

from __future__ import annotations

import torch

from lightning_landscape.linalg.lanczos import LanczosResult
from lightning_landscape.linalg.slq import SpectralDensity
from lightning_landscape.linalg.trace import TraceEstimate


def _symmetric(matrix: torch.Tensor) -> torch.Tensor:
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {tuple(matrix.shape)}")
    return matrix


def dense_extremes(matrix: torch.Tensor, num_matvecs: int | None = None) -> LanczosResult:
    """λmax and λmin of a symmetric matrix with their unit eigenvectors (``eigh`` in float64).

    ``num_matvecs`` is what building the matrix cost (default: its size, one product per column).

    >>> r = dense_extremes(torch.diag(torch.tensor([-2.0, 0.5, 3.0])))
    >>> r.lambda_max, r.lambda_min, r.relative_residual, r.num_matvecs
    (3.0, -2.0, 0.0, 3)
    """
    matrix = _symmetric(matrix)
    evals, evecs = torch.linalg.eigh(matrix.double())
    vectors = evecs[:, [0, -1]].T.to(matrix.dtype).contiguous()
    return LanczosResult(
        lambda_max=float(evals[-1]), lambda_min=float(evals[0]),
        vector_max=vectors[1], vector_min=vectors[0],
        residual_max=0.0, residual_min=0.0, relative_residual=0.0,
        num_matvecs=matrix.shape[0] if num_matvecs is None else num_matvecs,
        converged=True, ritz_values=evals,
    )


def dense_trace(matrix: torch.Tensor, num_matvecs: int | None = None) -> TraceEstimate:
    """The exact trace (standard error 0).

    >>> dense_trace(torch.eye(4)).value, dense_trace(torch.eye(4)).stderr
    (4.0, 0.0)
    """
    matrix = _symmetric(matrix)
    n = matrix.shape[0] if num_matvecs is None else num_matvecs
    return TraceEstimate(float(torch.diagonal(matrix).double().sum()), 0.0, n, torch.zeros(0, dtype=torch.float64))


def dense_density(matrix: torch.Tensor, num_matvecs: int | None = None) -> SpectralDensity:
    """The exact eigenvalue density: every eigenvalue a node of weight ``1/dim`` (one "probe" row).

    >>> d = dense_density(torch.diag(torch.tensor([-1.0, 0.0, 2.0, 5.0])))
    >>> round(d.trace(), 6), d.nodes.shape
    (6.0, torch.Size([1, 4]))
    """
    matrix = _symmetric(matrix)
    dim = matrix.shape[0]
    evals = torch.linalg.eigvalsh(matrix.double())
    weights = torch.full((1, dim), 1.0 / dim, dtype=torch.float64)
    return SpectralDensity(evals[None], weights, dim, dim if num_matvecs is None else num_matvecs)
