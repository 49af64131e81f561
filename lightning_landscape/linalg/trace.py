"""Stochastic trace estimators with a standard error: Hutchinson and Hutch++.

Hutch++ (Meyer, Musco, Musco & Woodruff 2021) takes ``tr(Qᵀ A Q)`` exactly on a sketch ``Q`` of the
dominant range and runs Hutchinson only on the deflated remainder ``(I - QQᵀ) A (I - QQᵀ)``. The default
sketch here is a Krylov (Lanczos) basis whose size is chosen from the spectrum it sees: deflation pays
when a few outliers carry much of ``‖A‖_F`` and costs budget when the bulk dominates (as in the
Hessians of trained MLPs, where classic Hutch++ is *worse* than Hutchinson at equal HVPs). The start
vector of the Lanczos run is itself a Rademacher vector, so its quadratic form is one more Hutchinson
sample, mixed in with a fixed weight (see ``hutchpp_trace`` for why that keeps the estimate unbiased).
The reported standard error estimates the standard deviation of the returned value from the samples
of the stochastic parts (the exact part contributes none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from lightning_landscape.linalg.krylov import LanczosState, Matvec, tridiagonal
from lightning_landscape.linalg.operator import LinearOperator, required, resolve
from lightning_landscape.linalg.random import rademacher
from lightning_landscape.linalg.reduction import dot, global_dim, is_sharded, row_dots


@dataclass
class TraceEstimate:
    """A trace estimate, its standard error and the number of operator applications spent.

    ``samples`` are the quadratic forms behind the stochastic part (for pooling / diagnostics): for
    Hutchinson ``value == samples.mean()``; for Hutch++ they are the deflated forms, and the Krylov
    default also mixes in its start vector's form (``value`` is not ``exact + samples.mean()`` there).
    """

    value: float
    stderr: float
    num_matvecs: int
    samples: torch.Tensor
    sketch_matvecs: int = 0  # operator applications spent on the Hutch++ sketch (0 for Hutchinson)


#: Fewest stochastic samples an adaptive budget takes (a standard error from 2 samples is too rough to stop on).
MIN_ADAPTIVE_SAMPLES = 3


def _check_rel_tol(rel_tol: float | None) -> None:
    if rel_tol is not None and not (isinstance(rel_tol, (int, float)) and math.isfinite(rel_tol) and rel_tol > 0):
        raise ValueError(f"rel_tol must be a positive number or None, got {rel_tol!r}")


def _stderr(samples: torch.Tensor) -> float:
    n = samples.numel()
    return float(samples.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")


def hutchinson_trace(
    matvec: LinearOperator | Matvec,
    dim: int | None = None,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    rel_tol: float | None = None,
) -> TraceEstimate:
    """``tr(A) ≈ mean(zᵀ A z)`` over Rademacher ``z``.

    ``num_samples`` is the budget. With ``rel_tol`` the loop stops earlier, once at least
    ``MIN_ADAPTIVE_SAMPLES`` samples give ``stderr ≤ rel_tol·|value|`` (a stop on the samples' own spread:
    not exactly unbiased, unlike the planned budget of :func:`hutchpp_trace`).

    >>> A = torch.diag(torch.arange(1.0, 6.0))
    >>> est = hutchinson_trace(lambda v: A @ v, 5, 8, torch.Generator().manual_seed(0))
    >>> est.value  # Rademacher probes are exact on diagonal matrices
    15.0

    ``matvec`` may be a :class:`~lightning_landscape.linalg.operator.LinearOperator`, which supplies
    ``dim``, ``dtype`` and ``device``:

    >>> from lightning_landscape.linalg import MatrixOperator
    >>> hutchinson_trace(MatrixOperator(A), num_samples=8, generator=torch.Generator().manual_seed(0)).value
    15.0
    """
    matvec, dim, dtype, device = resolve(matvec, dim, dtype, device)
    num_samples, generator = required("num_samples", num_samples), required("generator", generator)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    _check_rel_tol(rel_tol)
    samples = []
    for _ in range(num_samples):
        z = rademacher(dim, generator, dtype, device)
        samples.append(dot(z, matvec(z)).double())
        if rel_tol is not None and len(samples) >= MIN_ADAPTIVE_SAMPLES:
            s = torch.stack(samples).cpu()
            if _stderr(s) <= rel_tol * abs(float(s.mean())):
                break
    s = torch.stack(samples).cpu()
    return TraceEstimate(float(s.mean()), _stderr(s), s.numel(), s)


def hutchpp_trace(
    matvec: LinearOperator | Matvec,
    dim: int | None = None,
    num_matvecs: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    sketch: Literal["krylov", "random"] = "krylov",
    rel_tol: float | None = None,
) -> TraceEstimate:
    """Hutch++: exact trace on a sketched dominant subspace + Hutchinson on the deflated rest.

    Budget: ``num_matvecs`` operator applications (at least 3). With ``rel_tol`` (Krylov sketch only) the
    number of Hutchinson samples is *planned* from the sketch (``_planned_samples``): the fewest (at least
    ``MIN_ADAPTIVE_SAMPLES``) predicted to bring the standard error to ``rel_tol·|tr A|``, never more than
    the budget leaves. The plan uses the sketch's data only, so the estimate stays exactly unbiased (the
    argument below); the reported standard error is the measured one. ``sketch`` chooses the subspace Q:

    * ``"krylov"`` (default): a Lanczos run from one Rademacher vector ``s``. Its ``k`` HVPs give both
      the basis and ``QᵀAQ = T`` (so ``tr(QᵀAQ) = Σα`` costs nothing extra, where the classic sketch
      pays ``2k``), and Krylov vectors align with the extreme eigenvectors far better than one power
      step. ``k`` is chosen on the fly (``_continue_sketch``): Lanczos continues while one more vector
      is predicted to remove more of the Hutchinson variance (∝ the deflated Frobenius norm
      ``‖A‖²_F − ‖T‖²_F − 2β_k²``) than one more Hutchinson sample would. A flat spectrum therefore
      costs two HVPs of sketch and a spiky one is deflated until its outliers have converged.

      The returned value is ``c·y + (1 − c)·x`` where ``x = Σα + mean(uᵢᵀ A uᵢ)`` is the deflated
      Hutch++ estimate (``uᵢ = (I − QQᵀ) gᵢ`` for fresh Rademacher ``gᵢ``), ``y = sᵀAs = dim·α₁`` is the
      start vector's own Hutchinson sample, and ``c`` is a fixed weight that depends on
      ``num_matvecs`` only (``_start_weight``). Why this is exactly unbiased:

      1. ``k`` and ``Q`` are functions of ``s`` alone, and the ``gᵢ`` are drawn independently of ``s``,
         so ``E[x | s] = tr(QᵀAQ) + tr((I−QQᵀ)A(I−QQᵀ)) = tr(A)`` for *every* ``s``: stopping Lanczos
         on what it has seen cannot bias ``x``. Deciding ``k`` from the ``gᵢ`` would.
      2. ``E[y] = tr(A)`` (Rademacher ``s``), and ``y`` is uncorrelated with ``x``:
         ``Cov(x, y) = E[(E[x | s] − tr A)(y − tr A)] = 0``.
      3. Hence ``E[c·y + (1−c)·x] = tr(A)`` for any constant ``c``, with variance
         ``c²·Var(y) + (1−c)²·Var(x)``. A weight that depends on the data would not do: ``c(s)`` is
         correlated with ``y`` (both depend on ``s``) and ``c(gᵢ)`` with ``x``.

      The fixed ``c`` trades the two regimes: on a flat spectrum ``Var(x) ≈ Var(y)/(m−2)`` and
      ``c = 1/(m−1)`` gives the variance of ``m − 1`` Hutchinson samples instead of ``m − 2`` (the
      sketch's second HVP is the price of finding out that the spectrum is flat); on a spiky one
      ``Var(x)`` is tiny and ``c²·Var(y)`` would become the floor. ``c`` is therefore ``1/(m−1)`` at
      the default budget of 12 HVPs and below, and falls as ``(12/m)²/(m−1)`` above it, faster than
      Hutch++'s own error, so that large budgets keep their gains on spiky spectra. The same floor
      applies when the sketch captures the whole range of ``A`` (rank below the sketch size): ``x`` is
      then exact and the error is ``c·(y − tr A)``, about ``1/(m−1)`` of one Hutchinson sample's.
    * ``"random"``: the original algorithm (Meyer et al. 2021): ``m/3`` Rademacher sketch vectors,
      ``Q = orth(A S)``, ``tr(QᵀAQ)`` with ``m/3`` more HVPs, Hutchinson on the last third.

    >>> torch.manual_seed(0) and None
    >>> U = torch.linalg.qr(torch.randn(50, 50, dtype=torch.float64))[0]
    >>> A = U @ torch.diag(torch.logspace(2, -2, 50, dtype=torch.float64)) @ U.T
    >>> est = hutchpp_trace(lambda v: A @ v, 50, 30, torch.Generator().manual_seed(0), torch.float64)
    >>> abs(est.value - float(torch.trace(A))) < 4 * est.stderr + 1e-9
    True

    The standard error: ``Var(x)`` is estimated by the sample variance of the deflated forms over
    their number, ``Var(y)`` by the sample variance of the *undeflated* forms ``gᵢᵀAgᵢ`` of the same
    vectors (free: ``A gᵢ`` is computed anyway), so ``stderr² = c²·s²_raw + (1−c)²·s²_defl / n``
    is an unbiased estimate of the variance of the returned value.

    ``matvec`` may be a :class:`~lightning_landscape.linalg.operator.LinearOperator` (then ``dim``,
    ``dtype`` and ``device`` come from it).
    """
    matvec, dim, dtype, device = resolve(matvec, dim, dtype, device)
    num_matvecs, generator = required("num_matvecs", num_matvecs), required("generator", generator)
    if num_matvecs < 3:
        raise ValueError(f"num_matvecs must be >= 3 for Hutch++, got {num_matvecs}")
    if sketch not in ("krylov", "random"):
        raise ValueError(f"sketch must be 'krylov' or 'random', got {sketch!r}")
    _check_rel_tol(rel_tol)
    if sketch == "random":
        if rel_tol is not None:
            raise ValueError("rel_tol needs the Krylov sketch (sketch='krylov')")
        if is_sharded():  # its QR of the sketch would need a distributed (TSQR) factorisation
            raise ValueError("sketch='random' does not support sharded parameters; use sketch='krylov'")
        return _hutchpp_random(matvec, dim, num_matvecs, generator, dtype, device)
    return _hutchpp_krylov(matvec, dim, num_matvecs, generator, dtype, device, rel_tol)


_START_WEIGHT_BUDGET = 12  # the HessianTrace default; the start sample's weight decays above it
_CONVERGED = 0.1  # Ritz pairs with |A z − θ z| ≤ 0.1 |θ| count as single eigenvalues in the ‖A‖²_F estimate
_REMAINING_FLOOR = 0.05  # never assume less than 5 % of the captured mass is left (outliers yet unseen)


def _start_weight(budget: int) -> float:
    """Fixed weight of the start vector's quadratic form (depends on the budget only: see ``hutchpp_trace``)."""
    return min(1.0, (_START_WEIGHT_BUDGET / budget) ** 2) / (budget - 1)


def _frobenius_estimate(state: LanczosState, dim: int) -> float:
    """``‖A‖²_F`` from the Lanczos run: each Ritz value weighted by the number of eigenvalues it stands for.

    Gauss quadrature of the start vector's spectral measure gives ``‖A s‖² = dim·Σ τⱼ² θⱼ²`` (``τⱼ`` the
    first component of Ritz vector ``j``). Where a converged Ritz pair is one isolated eigenvalue,
    ``dim·τⱼ²`` is a χ²₁-like count that is often far below 1 (the start vector barely touches the
    outlier), so the one-vector estimate misses most of a spiky spectrum's mass; counting converged
    pairs once and every other pair at least once fixes that.
    """
    theta, Y = torch.linalg.eigh(tridiagonal(state.alphas, state.betas))
    residual = state.betas[-1] * Y[-1].abs()
    count = torch.where(residual <= _CONVERGED * theta.abs(), 1.0, (dim * Y[0] ** 2).clamp(min=1.0))
    return float((count * theta**2).sum())


def _continue_sketch(state: LanczosState, dim: int, budget: int, captured: list[float]) -> bool:
    """Whether one more Lanczos vector is predicted to beat one more Hutchinson sample.

    ``captured[j]`` is ``‖A‖²_F − ‖(I−P)A(I−P)‖²_F = ‖T‖²_F + 2β²`` after ``j + 1`` vectors; the
    Hutchinson variance is ∝ the rest. One more sample divides the remaining variance by ``n + 1``
    instead of ``n`` (worth ≈ remaining / n); one more vector removes its capture. Captures come in
    bursts as Ritz values converge onto outliers, so the gain is averaged over the last two steps.
    Uses the Krylov data only (never the Hutchinson vectors), so stopping here keeps the estimate unbiased.
    """
    k = len(captured)
    if k < 2:  # the first, random vector captures ~1/dim of the mass by construction
        return True
    remaining = _deflated_mass(state, dim, captured[-1])
    window = min(2, k - 1)
    gain = (captured[-1] - captured[-1 - window]) / window
    return gain > remaining / (budget - k)


def _deflated_mass(state: LanczosState, dim: int, captured: float) -> float:
    """``‖(I−P)A(I−P)‖²_F`` predicted from the Krylov data (the quantity ``_continue_sketch`` weighs)."""
    fro = max(_frobenius_estimate(state, dim), captured)
    return max(fro - captured, _REMAINING_FLOOR * captured)


def _planned_samples(state: LanczosState, dim: int, captured: float, rel_tol: float, available: int) -> int:
    """Hutchinson samples predicted to give ``stderr ≤ rel_tol·|tr A|``, from the sketch alone.

    A Rademacher form of the deflated operator ``B`` has variance ``2(‖B‖²_F − Σ Bᵢᵢ²) ≤ 2‖B‖²_F``; the
    trace is guessed by the start vector's own form ``dim·α₁`` and the sketch's exact part, whichever is
    larger in magnitude (an indefinite Hessian whose trace is small against its spread gets the whole budget).
    """
    variance = 2.0 * _deflated_mass(state, dim, captured)
    guess = max(abs(dim * state.alphas[0]), abs(float(sum(state.alphas))))
    if not guess > 0:
        return available
    needed = math.ceil(variance / (rel_tol * guess) ** 2) if math.isfinite(variance) else available
    return max(min(needed, available), min(MIN_ADAPTIVE_SAMPLES, available))


def _hutchpp_krylov(
    matvec: Matvec, dim: int, budget: int, generator: torch.Generator, dtype: torch.dtype,
    device: torch.device | str | None, rel_tol: float | None = None,
) -> TraceEstimate:
    n_all = global_dim(dim)  # counts and scales are of the whole vector; ``dim`` entries are allocated here
    k_max = max(1, min(n_all, (2 * budget) // 3))
    state = LanczosState(matvec, rademacher(dim, generator, dtype, device), min(k_max + 1, n_all))
    captured: list[float] = []
    while True:
        more = state.step()
        a, b = state.alphas[-1], state.betas[-1]
        captured.append((captured[-1] if captured else 0.0) + a * a + 2 * b * b)
        k = len(state.alphas)
        if not more or state.broke_down or k >= k_max or not _continue_sketch(state, n_all, budget, captured):
            break
    exact = float(sum(state.alphas))
    used = state.matvecs
    if k >= n_all:
        return TraceEstimate(exact, 0.0, used, torch.zeros(0, dtype=torch.float64), used)
    Q = state.basis_rows(k)  # (k, dim), orthonormal rows
    beta = 0.0 if state.broke_down else state.betas[k - 1]
    q_next = state.basis_rows(k + 1)[k] if beta else None
    samples = budget - used
    if rel_tol is not None and samples > 0:
        samples = _planned_samples(state, n_all, captured[-1], rel_tol, samples)
    deflated, raw = [], []
    for _ in range(samples):
        g = rademacher(dim, generator, dtype, device)
        Ag = matvec(g)
        c = row_dots(Q, g)
        u = g - Q.T @ c
        # uᵀA u with A u = A g − A Q c and A Q = Q T + β q_{k+1} e_kᵀ (uᵀQ = 0): no extra HVP.
        z = dot(u, Ag)
        if q_next is not None:
            z = z - beta * dot(u, q_next) * c[-1]
        deflated.append(z)
        raw.append(dot(g, Ag))
    if not deflated:
        return TraceEstimate(exact, float("nan"), used, torch.zeros(0, dtype=torch.float64), used)
    forms = torch.stack(deflated + raw).double().cpu()  # one host sync
    s, r = forms[: len(deflated)], forms[len(deflated) :]
    w = _start_weight(budget)
    value = w * n_all * state.alphas[0] + (1 - w) * (exact + float(s.mean()))  # sᵀAs = dim·α₁ for s = √dim·q₁
    n = s.numel()
    stderr = math.sqrt(w * w * float(r.var()) + (1 - w) ** 2 * float(s.var()) / n) if n > 1 else float("nan")
    return TraceEstimate(value, stderr, used + n, s, used)


def _hutchpp_random(
    matvec: Matvec, dim: int, num_matvecs: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device | str | None
) -> TraceEstimate:
    sketch = min(num_matvecs // 3, dim)
    remaining = num_matvecs - 2 * sketch
    S = torch.stack([rademacher(dim, generator, dtype, device) for _ in range(sketch)], dim=1)
    AS = torch.stack([matvec(S[:, i]) for i in range(sketch)], dim=1)
    Q, _ = torch.linalg.qr(AS)
    exact = float(sum(torch.dot(Q[:, i], matvec(Q[:, i])) for i in range(sketch)))  # one host sync
    used = 2 * sketch
    if remaining <= 0 or sketch >= dim:
        return TraceEstimate(exact, 0.0, used, torch.zeros(0, dtype=torch.float64), used)
    samples = []
    for _ in range(remaining):
        g = rademacher(dim, generator, dtype, device)
        g = g - Q @ (Q.T @ g)
        Ag = matvec(g)
        Ag = Ag - Q @ (Q.T @ Ag)
        samples.append(torch.dot(g, Ag).double())
    s = torch.stack(samples).cpu()
    return TraceEstimate(exact + float(s.mean()), _stderr(s), used + remaining, s, used)
