"""Lanczos iteration for the extreme eigenpairs of a symmetric operator.

One Krylov space gives both ends of the spectrum. Power iteration would return the eigenvalue of largest
*magnitude* instead, which is the (negative) λmin at a saddle — never report that as λmax.

Convergence is judged on the Ritz residual ``|A u - θ u| = |β_m s_m|`` (exact in exact arithmetic,
free to evaluate), relative to the spectral scale ``max(|θ_max|, |θ_min|)``, so that a λmin near zero
does not stall the stop rule. The basis is kept and fully re-orthogonalised (one Gram–Schmidt pass after
the three-term recurrence, a second when the DGKS test asks for it), which keeps the Ritz values free
of ghost copies for the short runs used here.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
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

    >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    >>> T, Q, used = lanczos_tridiagonal(lambda v: A @ v, torch.ones(3, dtype=torch.float64), 3)
    >>> torch.linalg.eigvalsh(T).round(decimals=6).tolist(), tuple(Q.shape), used
    ([1.0, 2.0, 3.0], (3, 3), 3)
    """
    state = _LanczosState(matvec, v0, num_steps)
    while state.step():
        pass
    return _tridiagonal(state.alphas, state.betas), state.basis_rows(), state.matvecs


_DGKS = 0.5**0.5  # re-orthogonalise again when one pass shrinks w below |w|/√2 (Daniel et al. 1976)


class _LanczosState:
    """The incremental iteration, shared by the extreme-eigenpair solver and SLQ.

    Cost per step besides the matvec: the three-term recurrence, one classical Gram–Schmidt pass
    against the whole basis (a second only when the DGKS test asks for it) and one host
    synchronisation (α and the norms travel together). The basis grows in
    blocks of ``_BLOCK`` rows, so memory follows the steps actually taken rather than ``max_steps``
    (a warm-started run that converges in 3 steps holds 4 vectors, not 20 or 40).
    """

    _BLOCK = 4

    def __init__(self, matvec: Matvec, v0: torch.Tensor, max_steps: int) -> None:
        norm = _start_vector(v0)
        self.matvec = matvec
        self.max_steps = min(max_steps, v0.numel())
        self._blocks: list[torch.Tensor] = []
        self._dtype, self._device, self._dim = v0.dtype, v0.device, v0.numel()
        self._append(v0, 0, norm)
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.matvecs = 0
        self.broke_down = False
        self._max_alpha = self._max_beta = 0.0
        self.second_passes = 0

    def _append(self, vector: torch.Tensor, j: int, scale: torch.Tensor | None = None) -> None:
        """Store basis vector ``j`` = ``vector / scale`` (allocating a new block when the last one is full)."""
        if j == len(self._blocks) * self._BLOCK:
            rows = min(self._BLOCK, self.max_steps - j)
            self._blocks.append(torch.empty((rows, self._dim), dtype=self._dtype, device=self._device))
        row = self._blocks[-1][j % self._BLOCK]
        if scale is None:
            row.copy_(vector)
        else:
            torch.div(vector, scale, out=row)  # written in place: no temporary vector

    def _views(self, k: int) -> list[torch.Tensor]:
        """The first ``k`` basis vectors as row blocks (views, no copy)."""
        out = []
        for b, block in enumerate(self._blocks):
            rows = min(k - b * self._BLOCK, block.shape[0])
            if rows <= 0:
                break
            out.append(block[:rows])
        return out

    def basis_rows(self, k: int | None = None) -> torch.Tensor:
        """The first ``k`` (default: all computed) basis vectors as the rows of one tensor."""
        views = self._views(len(self.alphas) if k is None else k)
        return views[0] if len(views) == 1 else torch.cat(views)

    def combine(self, coeffs: torch.Tensor) -> torch.Tensor:
        """``coeffsᵀ @ basis`` for a ``(k, m)`` coefficient matrix: ``m`` vectors as rows, block by block.

        Computed as ``(m, k) @ (k, dim)`` so the output is written row-major; the transposed form
        ``basisᵀ @ coeffs`` is ~10× slower on CPU for the thin shapes used here.
        """
        coeffs = coeffs.to(dtype=self._dtype, device=self._device)
        out = None
        for b, block in enumerate(self._views(coeffs.shape[0])):
            part = coeffs[b * self._BLOCK : b * self._BLOCK + block.shape[0]].T @ block
            out = part if out is None else out.add_(part)
        return out

    def _project_out(self, w: torch.Tensor, views: list[torch.Tensor]) -> torch.Tensor:
        coeffs = [block @ w for block in views]
        for block, c in zip(views, coeffs):
            w = torch.addmv(w, block.T, c, alpha=-1.0)
        return w

    def step(self) -> bool:
        """One Lanczos step; returns whether another step is possible."""
        j = len(self.alphas)
        q = self._blocks[j // self._BLOCK][j % self._BLOCK]
        w = self.matvec(q)
        self.matvecs += 1
        alpha_t = torch.dot(w, q)
        # Fused axpys, no host sync (α stays on the device); the first is out of place because a
        # matvec may return a tensor it keeps.
        w = torch.addcmul(w, q, alpha_t, value=-1.0)
        if j > 0:
            w.sub_(self._blocks[(j - 1) // self._BLOCK][(j - 1) % self._BLOCK], alpha=self.betas[j - 1])
        views = self._views(j + 1)
        before = torch.linalg.vector_norm(w)
        # Full re-orthogonalisation (classical Gram–Schmidt, one pass against the whole basis). The
        # three-term recurrence has already removed the large components, so one pass normally
        # suffices; a second runs only when the first removed a lot (the DGKS criterion |w'| < |w|/√2).
        w = self._project_out(w, views)
        beta_t = torch.linalg.vector_norm(w)
        alpha, before, beta = torch.stack([alpha_t.to(beta_t.dtype), before, beta_t]).tolist()  # one host sync
        if not (math.isfinite(alpha) and math.isfinite(before) and math.isfinite(beta)):
            # A NaN/Inf anywhere in A q propagates into α and the norms.
            raise FloatingPointError("operator returned non-finite values (NaN/Inf) in Lanczos")
        if beta < _DGKS * before:
            w = self._project_out(w, views)
            beta_t = torch.linalg.vector_norm(w)
            beta = float(beta_t)
            self.second_passes += 1
        self.alphas.append(alpha)
        self.betas.append(beta)
        self._max_alpha = max(self._max_alpha, abs(alpha))
        self._max_beta = max(self._max_beta, beta)
        if beta <= 1e-10 * max(self._max_alpha + self._max_beta, 1e-30):
            self.broke_down = True  # invariant subspace: Ritz values are exact eigenvalues
            return False
        if j + 1 >= self.max_steps:
            return False
        self._append(w, j + 1, beta_t)
        return True


def lanczos_extremes(
    matvec: Matvec,
    v0: torch.Tensor,
    max_iter: int = 30,
    tol: float = 1e-2,
    min_iter: int = 2,
    max_basis: int | None = None,
) -> LanczosResult:
    """Largest and smallest eigenpairs of the symmetric operator ``matvec`` from one Krylov space.

    Stops once both extreme Ritz pairs satisfy ``|A u - θ u| <= tol * max(|θ_max|, |θ_min|)``, after
    ``max_iter`` steps, or when an invariant subspace is found (then the values are exact).

    ``max_basis`` caps the vectors kept (memory: that many parameter-sized vectors instead of up to
    ``max_iter + 1``): when the basis is full the run thick-restarts from the two extreme Ritz vectors and
    the residual direction (see :func:`_lanczos_thick_restart`).

    >>> A = torch.diag(torch.tensor([-2.0, 0.5, 1.0, 3.0]))
    >>> r = lanczos_extremes(lambda v: A @ v, torch.ones(4), max_iter=4, tol=1e-8)
    >>> round(r.lambda_max, 6), round(r.lambda_min, 6)
    (3.0, -2.0)
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if max_basis is not None:
        if max_basis < 3:
            raise ValueError(f"max_basis must be >= 3 (two Ritz vectors and a new direction), got {max_basis}")
        if max_basis <= min(max_iter, v0.numel()):
            return _lanczos_thick_restart(matvec, v0, max_iter, tol, min_iter, max_basis)
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
    ends = state.combine(evecs[:, [0, -1]])  # both Ritz vectors in one pass over the basis
    return _result(evals, ends, res_max, res_min, rel, state.matvecs, converged)


def _result(
    evals: torch.Tensor, ends: torch.Tensor, res_max: float, res_min: float, rel: float, matvecs: int, converged: bool
) -> LanczosResult:
    """Package the extreme Ritz pairs; ``ends`` holds the (unnormalised) min and max Ritz vectors as rows."""
    vec_min, vec_max = ends
    return LanczosResult(
        lambda_max=float(evals[-1]),
        lambda_min=float(evals[0]),
        vector_max=vec_max / torch.linalg.vector_norm(vec_max),
        vector_min=vec_min / torch.linalg.vector_norm(vec_min),
        residual_max=res_max,
        residual_min=res_min,
        relative_residual=rel,
        num_matvecs=matvecs,
        converged=converged,
        ritz_values=evals,
    )


def _start_vector(v0: torch.Tensor) -> torch.Tensor:
    """The norm of a valid start vector (1-D, finite, non-zero); raises otherwise."""
    if v0.ndim != 1:
        raise ValueError(f"start vector must be 1-D, got shape {tuple(v0.shape)}")
    norm = torch.linalg.vector_norm(v0)
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("start vector must be finite and non-zero")
    return norm


def _lanczos_thick_restart(
    matvec: Matvec, v0: torch.Tensor, max_iter: int, tol: float, min_iter: int, max_basis: int
) -> LanczosResult:
    """Lanczos for both extremes in a basis of at most ``max_basis`` vectors (thick restart).

    The projected matrix ``T = Vᵀ A V`` is kept dense and filled column by column from the Gram–Schmidt
    coefficients (two classical passes: "twice is enough"), so the same loop serves before and after a
    restart. At a restart the basis becomes ``[y_min, y_max, r/|r|]``: the two extreme Ritz vectors and
    the normalised residual direction, along which both Ritz residuals lie (Wu & Simon 2000, TRLan); then
    ``T`` restarts as ``diag(θ_min, θ_max)`` and the next column supplies the couplings ``β s``. The
    relation ``A V = V T + r eₖᵀ`` holds throughout, so the Ritz residual is ``|β Sₖᵢ|`` as without restarts.
    """
    dim = v0.numel()
    m = min(max_basis, dim)
    basis = torch.empty((m, dim), dtype=v0.dtype, device=v0.device)
    torch.div(v0, _start_vector(v0), out=basis[0])
    T = torch.zeros((m, m), dtype=torch.float64)
    applied, matvecs, converged, spectral = 0, 0, False, 0.0
    while True:
        views = basis[: applied + 1]
        w = matvec(basis[applied])
        matvecs += 1
        coeffs = views @ w
        w = torch.addmv(w, views.T, coeffs, alpha=-1.0)
        again = views @ w
        w = torch.addmv(w, views.T, again, alpha=-1.0)
        beta_t = torch.linalg.vector_norm(w)
        column = torch.cat([(coeffs + again).to(beta_t.dtype), beta_t.reshape(1)]).double().cpu()  # one host sync
        if not torch.isfinite(column).all():
            raise FloatingPointError("operator returned non-finite values (NaN/Inf) in Lanczos")
        beta = float(column[-1])
        T[: applied + 1, applied] = column[:-1]
        T[applied, : applied + 1] = column[:-1]
        applied += 1
        evals, evecs = torch.linalg.eigh(T[:applied, :applied])
        res_min, res_max = abs(beta * float(evecs[-1, 0])), abs(beta * float(evecs[-1, -1]))
        scale = max(abs(float(evals[0])), abs(float(evals[-1])), 1e-30)
        rel = max(res_min, res_max) / scale
        spectral = max(spectral, scale)
        if beta <= 1e-10 * spectral or applied >= dim:  # invariant subspace: the Ritz values are exact
            res_min = res_max = rel = 0.0
            converged = True
            break
        if matvecs >= min(min_iter, dim) and rel <= tol:
            converged = True
            break
        if matvecs >= max_iter:
            break
        if applied < m:
            torch.div(w, beta_t, out=basis[applied])
            continue
        ends = evecs[:, [0, -1]].T.to(dtype=basis.dtype, device=basis.device) @ basis[:applied]  # (2, dim)
        basis[:2] = ends
        torch.div(w, beta_t, out=basis[2])
        T.zero_()
        T[0, 0], T[1, 1] = evals[0], evals[-1]
        applied = 2
    ends = evecs[:, [0, -1]].T.to(dtype=basis.dtype, device=basis.device) @ basis[:applied]
    return _result(evals, ends, res_max, res_min, rel, matvecs, converged)
