"""``extreme_eigenvalues`` (SaddleBranches' own λmax/λmin: the plain Lanczos recurrence, no basis) against
``torch.linalg.eigvalsh`` — including runs long enough for the recurrence to lose orthogonality."""

from __future__ import annotations

import pytest
import torch

from lightning_landscape.linalg import extreme_eigenvalues


def _matrix(eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    n = eigenvalues.numel()
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q @ torch.diag(eigenvalues) @ q.T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_extremes_match_eigvalsh_past_lost_orthogonality(seed: int) -> None:
    # Hessian-like: a bulk near zero, negative curvature and outliers that converge (and get ghosts) early.
    evals = torch.cat([torch.linspace(-0.05, 0.1, 50, dtype=torch.float64),
                       torch.tensor([-0.7, 2.0, 5.0, 40.0], dtype=torch.float64)])
    A = _matrix(evals, seed)
    exact = torch.linalg.eigvalsh(A)
    v0 = torch.randn(54, dtype=torch.float64, generator=torch.Generator().manual_seed(10 + seed))
    lam_max, lam_min = extreme_eigenvalues(lambda v: A @ v, v0, max_iter=150, tol=1e-13)
    assert lam_max == pytest.approx(float(exact[-1]), rel=1e-10)
    assert lam_min == pytest.approx(float(exact[0]), rel=1e-8)


def test_stops_on_the_residual_rule() -> None:
    A = _matrix(torch.linspace(-1.0, 3.0, 30, dtype=torch.float64), 3)
    calls = []

    def matvec(v: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return A @ v

    lam_max, lam_min = extreme_eigenvalues(matvec, torch.ones(30, dtype=torch.float64), max_iter=30, tol=1e-2)
    assert len(calls) < 30
    assert abs(lam_max - 3.0) < 0.1 and abs(lam_min + 1.0) < 0.1  # |Ritz residual| ≤ 1e-2·3 bounds the error
