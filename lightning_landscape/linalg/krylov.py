"""The Krylov core shared by every Lanczos-based estimator in :mod:`lightning_landscape.linalg`.

Two forms of the Lanczos iteration live here, one implementation each:

* :class:`LanczosState` keeps the orthonormal basis (blocks of :class:`KrylovBasis`) and fully
  re-orthogonalises it: the extreme-eigenpair solver, ``lanczos_tridiagonal``, Hutch++'s Krylov sketch,
  SLQ's ``reorthogonalize=True`` path and geometry's Krylov sketch run on it.
* :class:`LanczosRecurrence` is the plain three-term recurrence with two vectors between steps (no basis,
  no re-orthogonalisation): SLQ's default path and :func:`~lightning_landscape.linalg.extreme_eigenvalues`.

Both share the start-vector check, the breakdown test and the tridiagonal assembly below.

>>> A = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
>>> rec = LanczosRecurrence(lambda v: A @ v, torch.ones(3, dtype=torch.float64))
>>> while rec.step() and len(rec.alphas) < 3:
...     pass
>>> torch.linalg.eigvalsh(tridiagonal(rec.alphas, rec.betas)).round(decimals=6).tolist()
[1.0, 2.0, 4.0]
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from lightning_landscape.linalg.reduction import dot, global_dim, norm, row_dots

Matvec = Callable[[torch.Tensor], torch.Tensor]


def tridiagonal(alphas: list[float], betas: list[float]) -> torch.Tensor:
    """The ``k × k`` Lanczos matrix ``T`` (float64) from ``k`` α's and the first ``k - 1`` β's."""
    k = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[: k - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


def start_vector_norm(v0: torch.Tensor) -> torch.Tensor:
    """The norm of a valid start vector (1-D, finite, non-zero); raises otherwise."""
    if v0.ndim != 1:
        raise ValueError(f"start vector must be 1-D, got shape {tuple(v0.shape)}")
    size = norm(v0)
    if not torch.isfinite(size) or size == 0:
        raise ValueError("start vector must be finite and non-zero")
    return size


def breaks_down(beta: float, max_alpha: float, max_beta: float) -> bool:
    """Whether a Lanczos step found an invariant subspace (β negligible against the spectral scale seen)."""
    return beta <= 1e-10 * max(max_alpha + max_beta, 1e-30)


def project_out(blocks: list[torch.Tensor], w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w - Qᵀ Q w, Q w)`` for ``Q`` given as row blocks: one classical Gram–Schmidt pass (deflation).

    All coefficients come from ``w`` itself (classical, not modified, Gram–Schmidt: one reduction per
    block). The result is a new vector, written in place after the first block (one allocation, not one
    per block); ``w`` is never modified, because a matvec may return a tensor it keeps.

    >>> Q = torch.eye(3, dtype=torch.float64)[:2]
    >>> project_out([Q], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))[0].tolist()
    [0.0, 0.0, 3.0]
    """
    coeffs = [row_dots(block, w) for block in blocks]
    out = w
    for i, (block, c) in enumerate(zip(blocks, coeffs)):
        out = torch.addmv(out, block.T, c, alpha=-1.0) if i == 0 else out.addmv_(block.T, c, alpha=-1.0)
    return out, torch.cat(coeffs)


_DGKS = 0.5**0.5  # re-orthogonalise again when one pass shrinks w below |w|/√2 (Daniel et al. 1976)


class KrylovBasis:
    """Orthonormal vectors kept as rows in blocks of ``BLOCK``, allocated only as the run needs them.

    Memory follows the steps actually taken rather than the cap: a warm-started run that converges in 3
    steps holds 4 vectors, not ``max_iter + 1`` or ``max_basis``. Every operation works block by block
    on views, so no block is ever copied.

    >>> basis = KrylovBasis(dim=3, capacity=2, dtype=torch.float64, device=torch.device("cpu"))
    >>> basis.store(0, torch.tensor([3.0, 0.0, 4.0], dtype=torch.float64), torch.tensor(5.0, dtype=torch.float64))
    >>> basis.rows(1).tolist(), basis.project_out(torch.tensor([3.0, 1.0, 4.0], dtype=torch.float64), 1)[1].tolist()
    ([[0.6, 0.0, 0.8]], [5.0])
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
        return project_out(self.views(k), w)

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


class LanczosState:
    """The incremental, fully re-orthogonalised iteration: ``lanczos_extremes`` (and its thick restart),
    ``lanczos_tridiagonal``, SLQ with ``reorthogonalize=True``, Hutch++'s Krylov sketch and geometry's
    ``krylov_sketch`` all drive it, each with its own stop rule.

    Cost per step besides the matvec: the three-term recurrence, one classical Gram–Schmidt pass
    against the whole basis (a second only when the DGKS test asks for it) and one host
    synchronisation (α and the norms travel together). The basis is a :class:`KrylovBasis`, so memory
    follows the steps taken. α is ``qᵀ A q`` (taken before ``β q_prev`` is subtracted), unlike
    :func:`recurrence_step`'s Paige ordering: with full re-orthogonalisation the two agree to rounding,
    and keeping each path's ordering keeps every estimator's numbers unchanged.

    >>> A = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    >>> state = LanczosState(lambda v: A @ v, torch.ones(3, dtype=torch.float64), max_steps=3)
    >>> while state.step():
    ...     pass
    >>> state.matvecs, torch.linalg.eigvalsh(tridiagonal(state.alphas, state.betas)).round(decimals=6).tolist()
    (3, [1.0, 2.0, 4.0])
    >>> torch.allclose(state.basis_rows() @ state.basis_rows().T, torch.eye(3, dtype=torch.float64))
    True
    """

    def __init__(self, matvec: Matvec, v0: torch.Tensor, max_steps: int, keep_residual: bool = False) -> None:
        norm = start_vector_norm(v0)
        self.keep_residual = keep_residual
        self.residual: tuple[torch.Tensor, torch.Tensor] | None = None  # (w, |w|) when stopped by max_steps
        self.matvec = matvec
        self.max_steps = min(max_steps, global_dim(v0.numel()))
        self.basis = KrylovBasis(v0.numel(), self.max_steps, v0.dtype, v0.device)
        self.basis.store(0, v0, norm)
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.matvecs = 0
        self.broke_down = False
        self.max_alpha = self.max_beta = 0.0

    def basis_rows(self, k: int | None = None) -> torch.Tensor:
        """The first ``k`` (default: all computed) basis vectors as the rows of one tensor."""
        return self.basis.rows(len(self.alphas) if k is None else k)

    def step(self) -> bool:
        """One Lanczos step; returns whether another step is possible."""
        j = len(self.alphas)
        q = self.basis.row(j)
        w = self.matvec(q)
        self.matvecs += 1
        alpha_t = dot(w, q)
        # Fused axpys, no host sync (α stays on the device); the first is out of place because a
        # matvec may return a tensor it keeps.
        w = torch.addcmul(w, q, alpha_t, value=-1.0)
        if j > 0:
            w.sub_(self.basis.row(j - 1), alpha=self.betas[j - 1])
        before = norm(w)
        # Full re-orthogonalisation (classical Gram–Schmidt, one pass against the whole basis). The
        # three-term recurrence has already removed the large components, so one pass normally
        # suffices; a second runs only when the first removed a lot (the DGKS criterion |w'| < |w|/√2).
        w, _ = self.basis.project_out(w, j + 1)
        beta_t = norm(w)
        alpha, before, beta = torch.stack([alpha_t.to(beta_t.dtype), before, beta_t]).tolist()  # one host sync
        if not (math.isfinite(alpha) and math.isfinite(before) and math.isfinite(beta)):
            # A NaN/Inf anywhere in A q propagates into α and the norms.
            raise FloatingPointError("operator returned non-finite values (NaN/Inf) in Lanczos")
        if beta < _DGKS * before:
            w, _ = self.basis.project_out(w, j + 1)
            beta_t = norm(w)
            beta = float(beta_t)
        self.alphas.append(alpha)
        self.betas.append(beta)
        self.max_alpha = max(self.max_alpha, abs(alpha))
        self.max_beta = max(self.max_beta, beta)
        if breaks_down(beta, self.max_alpha, self.max_beta):
            self.broke_down = True  # invariant subspace: Ritz values are exact eigenvalues
            return False
        if j + 1 >= self.max_steps:
            if self.keep_residual:
                self.residual = (w, beta_t)  # the next direction, for a thick restart
            return False
        self.basis.store(j + 1, w, beta_t)
        return True


def recurrence_step(
    w: torch.Tensor, q: torch.Tensor, q_prev: torch.Tensor | None, beta_prev: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``r = A q - β q_prev - α q`` and ``α`` (a device scalar), given ``w = A q``.

    Paige's ordering (α from the vector that already lacks the ``q_prev`` component), the one his
    finite-precision analysis covers. ``r`` is written into ``q_prev``'s storage, which the recurrence
    no longer needs, so a step allocates nothing but the matvec's output; ``w`` is never written,
    because a matvec may return a tensor it keeps.
    """
    if q_prev is None:
        alpha_t = dot(w, q)
        return torch.addcmul(w, q, alpha_t, value=-1.0), alpha_t
    r = torch.sub(w, q_prev, alpha=beta_prev, out=q_prev)
    alpha_t = dot(r, q)
    return r.addcmul_(q, alpha_t, value=-1.0), alpha_t


class LanczosRecurrence:
    """The plain three-term Lanczos recurrence: two parameter-sized vectors between steps, no basis.

    Without re-orthogonalisation, lost orthogonality shows up as copies ("ghosts") of converged Ritz
    values, never as wrong extremes or a wrong Gauss rule (Paige 1976; Greenbaum 1989), so it serves the
    estimators that need only ``T``. One host synchronisation per step (α and β together). ``v0`` is
    normalised in place and becomes the first Lanczos vector: pass a vector you can give up.

    >>> A = torch.diag(torch.tensor([-1.0, 3.0], dtype=torch.float64))
    >>> rec = LanczosRecurrence(lambda v: A @ v, torch.ones(2, dtype=torch.float64))
    >>> rec.step(), rec.step(), rec.broke_down  # an invariant subspace after dim steps
    (True, False, True)
    >>> sorted(round(x, 6) for x in torch.linalg.eigvalsh(tridiagonal(rec.alphas, rec.betas)).tolist())
    [-1.0, 3.0]
    """

    def __init__(self, matvec: Matvec, v0: torch.Tensor) -> None:
        self.matvec = matvec
        self.q = v0.div_(start_vector_norm(v0))
        self.q_prev: torch.Tensor | None = None
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.max_alpha = self.max_beta = 0.0
        self.broke_down = False

    @property
    def matvecs(self) -> int:
        """Operator applications so far (one per step)."""
        return len(self.alphas)

    def step(self) -> bool:
        """One step; returns ``False`` when it found an invariant subspace (the Ritz values are then exact)."""
        r, alpha_t = recurrence_step(self.matvec(self.q), self.q, self.q_prev, self.betas[-1] if self.betas else 0.0)
        beta_t = norm(r)
        alpha, beta = torch.stack([alpha_t.to(beta_t.dtype), beta_t]).tolist()  # one host sync
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            # A NaN/Inf anywhere in A q propagates into α and β.
            raise FloatingPointError("operator returned non-finite values (NaN/Inf) in Lanczos")
        self.alphas.append(alpha)
        self.betas.append(beta)
        self.max_alpha, self.max_beta = max(self.max_alpha, abs(alpha)), max(self.max_beta, beta)
        if breaks_down(beta, self.max_alpha, self.max_beta):
            self.broke_down = True
            return False
        self.q_prev, self.q = self.q, r.div_(beta_t)  # in place; β stays on the device: no second sync
        return True
