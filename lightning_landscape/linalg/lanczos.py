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

import torch

from lightning_landscape.linalg.krylov import (
    KrylovBasis,
    LanczosRecurrence,
    LanczosState,
    Matvec,
    breaks_down,
    tridiagonal,
)
from lightning_landscape.linalg.operator import LinearOperator, matvec_of
from lightning_landscape.linalg.reduction import global_dim, norm, row_norms


@dataclass
class LanczosResult:
    """Extreme Ritz pairs of a symmetric operator.

    ``residual_max`` / ``residual_min`` are absolute Ritz residuals ``|A u - θ u|``; ``relative_residual``
    is the larger of the two divided by the spectral scale.
    """

    lambda_max: float
    lambda_min: float
    vector_max: torch.Tensor | None  # None from :func:`extreme_values` (no basis: no Ritz vectors)
    vector_min: torch.Tensor | None
    residual_max: float
    residual_min: float
    relative_residual: float
    num_matvecs: int
    converged: bool
    ritz_values: torch.Tensor


def lanczos_tridiagonal(
    matvec: LinearOperator | Matvec, v0: torch.Tensor, num_steps: int
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
    state = LanczosState(matvec_of(matvec), v0, num_steps)
    while state.step():
        pass
    return tridiagonal(state.alphas, state.betas), state.basis_rows(), state.matvecs


def lanczos_extremes(
    matvec: LinearOperator | Matvec,
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
    matvec = matvec_of(matvec)
    capped = max_basis is not None and max_basis < min(max_iter, global_dim(v0.numel()))
    state = LanczosState(matvec, v0, max_basis if capped else max_iter, keep_residual=capped)
    del v0  # the basis holds a copy; the caller's expression need not stay alive
    converged = False
    while True:
        more = state.step()
        k = len(state.alphas)
        evals, evecs = torch.linalg.eigh(tridiagonal(state.alphas, state.betas))
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


def extreme_values(matvec: LinearOperator | Matvec, v0: torch.Tensor, max_iter: int, tol: float,
                   min_iter: int = 2) -> LanczosResult:
    """:func:`extreme_eigenvalues` with its residuals and cost: a :class:`LanczosResult` without vectors.

    Three parameter-sized vectors whatever ``max_iter`` is; ``vector_max`` / ``vector_min`` are ``None``.

    >>> A = torch.diag(torch.tensor([-2.0, 0.5, 1.0, 3.0], dtype=torch.float64))
    >>> r = extreme_values(lambda v: A @ v, torch.ones(4, dtype=torch.float64), 4, 1e-8)
    >>> round(r.lambda_max, 6), round(r.lambda_min, 6), r.num_matvecs, r.converged, r.vector_max
    (3.0, -2.0, 4, True, None)
    """
    rec = LanczosRecurrence(matvec_of(matvec), v0)
    evals = torch.zeros(1, dtype=torch.float64)
    res_min = res_max = rel = 0.0
    converged = False
    for j in range(max_iter):
        more = rec.step()
        evals, evecs = torch.linalg.eigh(tridiagonal(rec.alphas, rec.betas))
        if not more:  # invariant subspace: the Ritz values are exact
            res_min = res_max = rel = 0.0
            converged = True
            break
        res_min, res_max, rel, _ = _ritz_residuals(evals, evecs, rec.betas[-1])
        if j + 1 >= min_iter and rel <= tol:
            converged = True
            break
    return LanczosResult(float(evals[-1]), float(evals[0]), None, None, res_max, res_min, rel, rec.matvecs,
                         converged, evals)


def extreme_eigenvalues(matvec: LinearOperator | Matvec, v0: torch.Tensor, max_iter: int, tol: float,
                        min_iter: int = 2) -> tuple[float, float]:
    """``(λmax, λmin)`` of a symmetric operator by the plain Lanczos recurrence: three vectors, no basis.

    Only the two extreme *values* are needed here, and those the recurrence without re-orthogonalisation
    gets right: lost orthogonality makes copies of converged Ritz values, never wrong extremes (Paige
    1976). The stop rule is that of :func:`lanczos_extremes` — both extreme Ritz residuals ``|β sₖ|`` at
    most ``tol`` times the spectral scale — so memory is three parameter-sized vectors whatever
    ``max_iter`` is (:class:`~lightning_landscape.linalg.krylov.LanczosRecurrence`). ``v0`` is normalised
    in place.

    >>> A = torch.diag(torch.tensor([-2.0, 0.5, 1.0, 3.0], dtype=torch.float64))
    >>> [round(v, 6) for v in extreme_eigenvalues(lambda v: A @ v, torch.ones(4, dtype=torch.float64), 4, 1e-8)]
    [3.0, -2.0]
    """
    res = extreme_values(matvec, v0, max_iter, tol, min_iter)
    return res.lambda_max, res.lambda_min


def _ritz_residuals(evals: torch.Tensor, evecs: torch.Tensor, beta: float) -> tuple[float, float, float, float]:
    """``(|r_min|, |r_max|, relative residual, spectral scale)`` of the extreme Ritz pairs: ``|r| = |β sₖ|``."""
    res_min, res_max = abs(beta * float(evecs[-1, 0])), abs(beta * float(evecs[-1, -1]))
    scale = max(abs(float(evals[0])), abs(float(evals[-1])), 1e-30)
    return res_min, res_max, max(res_min, res_max) / scale, scale


def _result(
    basis: KrylovBasis, evals: torch.Tensor, evecs: torch.Tensor, res_max: float, res_min: float, rel: float,
    matvecs: int, converged: bool,
) -> LanczosResult:
    """Package the extreme Ritz pairs (both Ritz vectors in one pass over the basis)."""
    ends = basis.combine(evecs[:, [0, -1]])  # (2, dim): min and max as rows
    ends = ends.div_(row_norms(ends))  # in place: no third and fourth vector
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


def _thick_restart(
    state: LanczosState, evals: torch.Tensor, evecs: torch.Tensor, max_iter: int, tol: float, min_iter: int
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
    m, dim = basis.capacity, global_dim(basis.dim)
    w, beta_t = state.residual
    state.residual = None
    matvecs = state.matvecs
    spectral = max(state.max_alpha, max(abs(float(evals[0])), abs(float(evals[-1]))))
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
            beta_t = norm(w)
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
            if breaks_down(beta, spectral, 0.0) or applied >= dim:  # invariant subspace: the Ritz values are exact
                return _result(basis, evals, evecs, 0.0, 0.0, 0.0, matvecs, True)
            if matvecs >= min(min_iter, dim) and rel <= tol:
                return _result(basis, evals, evecs, res_max, res_min, rel, matvecs, True)
            if matvecs >= max_iter:
                return _result(basis, evals, evecs, res_max, res_min, rel, matvecs, False)
            if applied == m:
                break  # basis full: restart
            basis.store(applied, w, beta_t)

