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


def _breaks_down(beta: float, max_alpha: float, max_beta: float) -> bool:
    """Whether a Lanczos step found an invariant subspace (β negligible against the spectral scale seen)."""
    return beta <= 1e-10 * max(max_alpha + max_beta, 1e-30)


_DGKS = 0.5**0.5  # re-orthogonalise again when one pass shrinks w below |w|/√2 (Daniel et al. 1976)


class _Basis:
    """Orthonormal vectors kept as rows in blocks of ``BLOCK``, allocated only as the run needs them.

    Memory follows the steps actually taken rather than the cap: a warm-started run that converges in 3
    steps holds 4 vectors, not ``max_iter + 1`` or ``max_basis``. Every operation works block by block
    on views, so no block is ever copied.
    """

    BLOCK = 4

    def __init__(self, dim: int, capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        self.dim, self.capacity, self.dtype, self.device = dim, capacity, dtype, device
        self._blocks: list[torch.Tensor] = []

    def row(self, j: int) -> torch.Tensor:
        return self._blocks[j // self.BLOCK][j % self.BLOCK]

    def store(self, j: int, vector: torch.Tensor, scale: torch.Tensor | None = None) -> None:
        """Row ``j`` = ``vector / scale``, written in place (no temporary vector)."""
        while j >= len(self._blocks) * self.BLOCK:
            start = len(self._blocks) * self.BLOCK
            rows = min(self.BLOCK, self.capacity - start)
            self._blocks.append(torch.empty((rows, self.dim), dtype=self.dtype, device=self.device))
        row = self.row(j)
        if scale is None:
            row.copy_(vector)
        else:
            torch.div(vector, scale, out=row)

    def views(self, k: int) -> list[torch.Tensor]:
        """The first ``k`` rows as row blocks (views, no copy)."""
        out = []
        for b, block in enumerate(self._blocks):
            rows = min(k - b * self.BLOCK, block.shape[0])
            if rows <= 0:
                break
            out.append(block[:rows])
        return out

    def rows(self, k: int) -> torch.Tensor:
        """The first ``k`` rows as one tensor (a view when they lie in one block)."""
        views = self.views(k)
        return views[0] if len(views) == 1 else torch.cat(views)

    def project_out(self, w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One classical Gram–Schmidt pass against the first ``k`` rows: ``(w - Qᵀ Q w, Q w)``."""
        views = self.views(k)
        coeffs = [block @ w for block in views]
        for block, c in zip(views, coeffs):
            w = torch.addmv(w, block.T, c, alpha=-1.0)
        return w, torch.cat(coeffs)

    def combine(self, coeffs: torch.Tensor) -> torch.Tensor:
        """``coeffsᵀ @ Q`` for a ``(k, m)`` coefficient matrix: ``m`` new vectors as rows.

        Computed as ``(m, k) @ (k, dim)`` so the output is written row-major; the transposed form
        ``Qᵀ @ coeffs`` is ~10× slower on CPU for the thin shapes used here.
        """
        coeffs = coeffs.to(dtype=self.dtype, device=self.device)
        out = None
        for b, block in enumerate(self.views(coeffs.shape[0])):
            part = coeffs[b * self.BLOCK : b * self.BLOCK + block.shape[0]].T @ block
            out = part if out is None else out.add_(part)
        return out


class _LanczosState:
    """The incremental iteration, shared by the extreme-eigenpair solver, SLQ and Hutch++.

    Cost per step besides the matvec: the three-term recurrence, one classical Gram–Schmidt pass
    against the whole basis (a second only when the DGKS test asks for it) and one host
    synchronisation (α and the norms travel together). The basis is a :class:`_Basis`, so memory
    follows the steps taken.
    """

    def __init__(self, matvec: Matvec, v0: torch.Tensor, max_steps: int, keep_residual: bool = False) -> None:
        norm = _start_vector(v0)
        self.keep_residual = keep_residual
        self.residual: tuple[torch.Tensor, torch.Tensor] | None = None  # (w, |w|) when stopped by max_steps
        self.matvec = matvec
        self.max_steps = min(max_steps, v0.numel())
        self.basis = _Basis(v0.numel(), self.max_steps, v0.dtype, v0.device)
        self.basis.store(0, v0, norm)
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.matvecs = 0
        self.broke_down = False
        self._max_alpha = self._max_beta = 0.0

    def basis_rows(self, k: int | None = None) -> torch.Tensor:
        """The first ``k`` (default: all computed) basis vectors as the rows of one tensor."""
        return self.basis.rows(len(self.alphas) if k is None else k)

    def step(self) -> bool:
        """One Lanczos step; returns whether another step is possible."""
        j = len(self.alphas)
        q = self.basis.row(j)
        w = self.matvec(q)
        self.matvecs += 1
        alpha_t = torch.dot(w, q)
        # Fused axpys, no host sync (α stays on the device); the first is out of place because a
        # matvec may return a tensor it keeps.
        w = torch.addcmul(w, q, alpha_t, value=-1.0)
        if j > 0:
            w.sub_(self.basis.row(j - 1), alpha=self.betas[j - 1])
        before = torch.linalg.vector_norm(w)
        # Full re-orthogonalisation (classical Gram–Schmidt, one pass against the whole basis). The
        # three-term recurrence has already removed the large components, so one pass normally
        # suffices; a second runs only when the first removed a lot (the DGKS criterion |w'| < |w|/√2).
        w, _ = self.basis.project_out(w, j + 1)
        beta_t = torch.linalg.vector_norm(w)
        alpha, before, beta = torch.stack([alpha_t.to(beta_t.dtype), before, beta_t]).tolist()  # one host sync
        if not (math.isfinite(alpha) and math.isfinite(before) and math.isfinite(beta)):
            # A NaN/Inf anywhere in A q propagates into α and the norms.
            raise FloatingPointError("operator returned non-finite values (NaN/Inf) in Lanczos")
        if beta < _DGKS * before:
            w, _ = self.basis.project_out(w, j + 1)
            beta_t = torch.linalg.vector_norm(w)
            beta = float(beta_t)
        self.alphas.append(alpha)
        self.betas.append(beta)
        self._max_alpha = max(self._max_alpha, abs(alpha))
        self._max_beta = max(self._max_beta, beta)
        if _breaks_down(beta, self._max_alpha, self._max_beta):
            self.broke_down = True  # invariant subspace: Ritz values are exact eigenvalues
            return False
        if j + 1 >= self.max_steps:
            if self.keep_residual:
                self.residual = (w, beta_t)  # the next direction, for a thick restart
            return False
        self.basis.store(j + 1, w, beta_t)
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
    the residual direction (see :func:`_thick_restart`).

    >>> A = torch.diag(torch.tensor([-2.0, 0.5, 1.0, 3.0]))
    >>> r = lanczos_extremes(lambda v: A @ v, torch.ones(4), max_iter=4, tol=1e-8)
    >>> round(r.lambda_max, 6), round(r.lambda_min, 6)
    (3.0, -2.0)
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if max_basis is not None and max_basis < 3:
        raise ValueError(f"max_basis must be >= 3 (two Ritz vectors and a new direction), got {max_basis}")
    capped = max_basis is not None and max_basis < min(max_iter, v0.numel())
    state = _LanczosState(matvec, v0, max_basis if capped else max_iter, keep_residual=capped)
    del v0  # the basis holds a copy; the caller's expression need not stay alive
    converged = False
    while True:
        more = state.step()
        k = len(state.alphas)
        evals, evecs = torch.linalg.eigh(_tridiagonal(state.alphas, state.betas))
        res_min, res_max, rel, _ = _ritz_residuals(evals, evecs, state.betas[-1])
        if state.broke_down:
            res_min = res_max = rel = 0.0
            converged = True
            break
        if k >= min(min_iter, state.max_steps) and rel <= tol:
            converged = True
            break
        if not more:
            break
    if not converged and state.residual is not None:
        return _thick_restart(state, evals, evecs, max_iter, tol, min_iter)
    return _result(state.basis, evals, evecs, res_max, res_min, rel, state.matvecs, converged)


def _ritz_residuals(evals: torch.Tensor, evecs: torch.Tensor, beta: float) -> tuple[float, float, float, float]:
    """``(|r_min|, |r_max|, relative residual, spectral scale)`` of the extreme Ritz pairs: ``|r| = |β sₖ|``."""
    res_min, res_max = abs(beta * float(evecs[-1, 0])), abs(beta * float(evecs[-1, -1]))
    scale = max(abs(float(evals[0])), abs(float(evals[-1])), 1e-30)
    return res_min, res_max, max(res_min, res_max) / scale, scale


def _result(
    basis: _Basis, evals: torch.Tensor, evecs: torch.Tensor, res_max: float, res_min: float, rel: float,
    matvecs: int, converged: bool,
) -> LanczosResult:
    """Package the extreme Ritz pairs (both Ritz vectors in one pass over the basis)."""
    ends = basis.combine(evecs[:, [0, -1]])  # (2, dim): min and max as rows
    ends = ends.div_(torch.linalg.vector_norm(ends, dim=1, keepdim=True))  # in place: no third and fourth vector
    vec_min, vec_max = ends
    return LanczosResult(
        lambda_max=float(evals[-1]),
        lambda_min=float(evals[0]),
        vector_max=vec_max,
        vector_min=vec_min,
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


def _thick_restart(
    state: _LanczosState, evals: torch.Tensor, evecs: torch.Tensor, max_iter: int, tol: float, min_iter: int
) -> LanczosResult:
    """Continue a Lanczos run whose basis is full, in that basis (thick restart).

    The first ``max_basis`` steps are plain Lanczos (tridiagonal, DGKS re-orthogonalisation: the path every
    warm-started run that converges early takes). Then the basis becomes ``[y_min, y_max, r/|r|]``: the two
    extreme Ritz vectors and the normalised residual direction, along which both Ritz residuals lie (Wu &
    Simon 2000, TRLan), and ``T`` restarts as ``diag(θ_min, θ_max)``. From there ``T = Vᵀ A V`` is kept dense,
    filled column by column from the Gram–Schmidt coefficients (two classical passes: "twice is enough"),
    and the next column supplies the couplings ``β s``. The relation ``A V = V T + r eₖᵀ`` holds throughout,
    so the Ritz residual is ``|β Sₖᵢ|`` as without restarts.
    """
    basis, matvec = state.basis, state.matvec
    m, dim = basis.capacity, basis.dim
    w, beta_t = state.residual
    state.residual = None
    matvecs = state.matvecs
    spectral = max(state._max_alpha, max(abs(float(evals[0])), abs(float(evals[-1]))))
    T = torch.zeros((m, m), dtype=torch.float64)
    while True:  # one restart per pass
        ends = basis.combine(evecs[:, [0, -1]])  # (2, dim)
        basis.store(0, ends[0])
        basis.store(1, ends[1])
        del ends
        basis.store(2, w, beta_t)
        T.zero_()
        T[0, 0], T[1, 1] = evals[0], evals[-1]
        applied = 2
        while True:
            w = matvec(basis.row(applied))
            matvecs += 1
            w, coeffs = basis.project_out(w, applied + 1)
            w, again = basis.project_out(w, applied + 1)
            beta_t = torch.linalg.vector_norm(w)
            column = torch.cat([(coeffs + again).to(beta_t.dtype), beta_t.reshape(1)]).double().cpu()  # one host sync
            if not torch.isfinite(column).all():
                raise FloatingPointError("operator returned non-finite values (NaN/Inf) in Lanczos")
            beta = float(column[-1])
            T[: applied + 1, applied] = column[:-1]
            T[applied, : applied + 1] = column[:-1]
            applied += 1
            evals, evecs = torch.linalg.eigh(T[:applied, :applied])
            res_min, res_max, rel, scale = _ritz_residuals(evals, evecs, beta)
            spectral = max(spectral, scale)
            if _breaks_down(beta, spectral, 0.0) or applied >= dim:  # invariant subspace: the Ritz values are exact
                return _result(basis, evals, evecs, 0.0, 0.0, 0.0, matvecs, True)
            if matvecs >= min(min_iter, dim) and rel <= tol:
                return _result(basis, evals, evecs, res_max, res_min, rel, matvecs, True)
            if matvecs >= max_iter:
                return _result(basis, evals, evecs, res_max, res_min, rel, matvecs, False)
            if applied == m:
                break  # basis full: restart
            basis.store(applied, w, beta_t)

