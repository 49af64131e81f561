"""Lanczos iteration for the extreme eigenpairs of a symmetric operator.

One Krylov space gives both ends of the spectrum. Power iteration would return the eigenvalue of largest
*magnitude* instead, which is the (negative) λmin at a saddle — never report that as λmax.

Convergence is judged on the Ritz residual ``|A u - θ u| = |β_m s_m|`` (exact in exact arithmetic,
free to evaluate), relative to the spectral scale ``max(|θ_max|, |θ_min|)``, so that a λmin near zero
does not stall the stop rule. The basis is kept and fully re-orthogonalised (twice, "twice is enough"),
which keeps the Ritz values free of ghost copies for the short runs used here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Matvec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LanczosResult:
    """Extreme Ritz pairs of a symmetric operator.

    ``residual_max`` / ``residual_min`` are absolute Ritz residuals ``|A u - θ u|``; ``relative_residual``
    is the larger of the two divided by the spectral scale.
    """

    lambda_max: float
    lambda_min: float
    vector_max: torch.Tensor
    vector_min: torch.Tensor
    residual_max: float
    residual_min: float
    relative_residual: float
    num_matvecs: int
    converged: bool
    ritz_values: torch.Tensor


def _tridiagonal(alphas: list[float], betas: list[float]) -> torch.Tensor:
    k = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[: k - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


def lanczos_tridiagonal(
    matvec: Matvec, v0: torch.Tensor, num_steps: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run ``num_steps`` Lanczos steps from ``v0`` (fully re-orthogonalised).

    Returns ``(T, basis, matvecs)``: the tridiagonal matrix (float64, possibly smaller than
    ``num_steps`` after an invariant subspace is found), the orthonormal basis as rows, and the number
    of operator applications. Used by stochastic Lanczos quadrature.
    """
    state = _LanczosState(matvec, v0, num_steps)
    while state.step():
        pass
    return _tridiagonal(state.alphas, state.betas), state.basis[: len(state.alphas)], state.matvecs


class _LanczosState:
    """The incremental iteration, shared by the extreme-eigenpair solver and SLQ."""

    def __init__(self, matvec: Matvec, v0: torch.Tensor, max_steps: int) -> None:
        if v0.ndim != 1:
            raise ValueError(f"start vector must be 1-D, got shape {tuple(v0.shape)}")
        norm = torch.linalg.vector_norm(v0)
        if not torch.isfinite(norm) or norm == 0:
            raise ValueError("start vector must be finite and non-zero")
        self.matvec = matvec
        self.max_steps = min(max_steps, v0.numel())
        self.basis = torch.empty((self.max_steps, v0.numel()), dtype=v0.dtype, device=v0.device)
        self.basis[0] = v0 / norm
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.matvecs = 0
        self.broke_down = False

    def step(self) -> bool:
        """One Lanczos step; returns whether another step is possible."""
        j = len(self.alphas)
        q = self.basis[j]
        w = self.matvec(q)
        self.matvecs += 1
        if not torch.isfinite(w).all():
            raise FloatingPointError("operator returned non-finite values (NaN/Inf) in Lanczos")
        alpha = torch.dot(w, q)
        w = w - alpha * q
        if j > 0:
            w = w - self.betas[j - 1] * self.basis[j - 1]
        basis = self.basis[: j + 1]
        for _ in range(2):  # full re-orthogonalisation, twice
            w = w - basis.T @ (basis @ w)
        beta = torch.linalg.vector_norm(w)
        self.alphas.append(float(alpha))
        self.betas.append(float(beta))
        scale = max(abs(a) for a in self.alphas) + max(self.betas)
        if float(beta) <= 1e-10 * max(scale, 1e-30):
            self.broke_down = True  # invariant subspace: Ritz values are exact eigenvalues
            return False
        if j + 1 >= self.max_steps:
            return False
        self.basis[j + 1] = w / beta
        return True


def lanczos_extremes(
    matvec: Matvec,
    v0: torch.Tensor,
    max_iter: int = 30,
    tol: float = 1e-2,
    min_iter: int = 2,
) -> LanczosResult:
    """Largest and smallest eigenpairs of the symmetric operator ``matvec`` from one Krylov space.

    Stops once both extreme Ritz pairs satisfy ``|A u - θ u| <= tol * max(|θ_max|, |θ_min|)``, after
    ``max_iter`` steps, or when an invariant subspace is found (then the values are exact).

    >>> A = torch.diag(torch.tensor([-2.0, 0.5, 1.0, 3.0]))
    >>> r = lanczos_extremes(lambda v: A @ v, torch.ones(4), max_iter=4, tol=1e-8)
    >>> round(r.lambda_max, 6), round(r.lambda_min, 6)
    (3.0, -2.0)
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    state = _LanczosState(matvec, v0, max_iter)
    converged = False
    while True:
        more = state.step()
        k = len(state.alphas)
        evals, evecs = torch.linalg.eigh(_tridiagonal(state.alphas, state.betas))
        beta_last = state.betas[-1]
        res_min = abs(beta_last * float(evecs[-1, 0]))
        res_max = abs(beta_last * float(evecs[-1, -1]))
        scale = max(abs(float(evals[0])), abs(float(evals[-1])), 1e-30)
        rel = max(res_min, res_max) / scale
        if state.broke_down:
            res_min = res_max = rel = 0.0
            converged = True
            break
        if k >= min(min_iter, state.max_steps) and rel <= tol:
            converged = True
            break
        if not more:
            break
    basis = state.basis[:k]
    coeffs = evecs.to(basis.dtype).to(basis.device)
    vec_min = basis.T @ coeffs[:, 0]
    vec_max = basis.T @ coeffs[:, -1]
    return LanczosResult(
        lambda_max=float(evals[-1]),
        lambda_min=float(evals[0]),
        vector_max=vec_max / torch.linalg.vector_norm(vec_max),
        vector_min=vec_min / torch.linalg.vector_norm(vec_min),
        residual_max=res_max,
        residual_min=res_min,
        relative_residual=rel,
        num_matvecs=state.matvecs,
        converged=converged,
        ritz_values=evals,
    )
