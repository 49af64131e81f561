"""Hutch++ with its Krylov sketch held as scalars: no basis, a fixed handful of parameter-sized vectors.

:func:`~lightning_landscape.linalg.trace.hutchpp_trace` keeps the sketch's Lanczos basis Q (up to
``2·num_matvecs/3`` vectors) to deflate its Hutchinson vectors ``gᵢ``. Every deflated form it needs is a
function of scalars: with ``cᵢ = Q gᵢ`` and ``a = q_{k+1}ᵀ gᵢ`` (Lanczos relation
``AQᵀ = QᵀT + β q_{k+1} e_kᵀ``),

    uᵢᵀ A uᵢ = gᵢᵀ A gᵢ − cᵢᵀ T cᵢ − 2 β_k a cᵢ,ₖ          (uᵢ = gᵢ − Qᵀ cᵢ).

So the Rademacher vectors are drawn *before* the sketch, kept as packed sign bits (one byte holds eight
vectors: ⅛ of a parameter-sized vector each), and every Lanczos vector, as the plain three-term recurrence
makes it, is dotted with all of them. The recurrence keeps two vectors, not the basis; the sketch stops
before its vectors lose more than ``max(√ε, LOSS_TOL)`` of their orthogonality (a Ritz pair of residual ρ
costs the next vector ≈ ε‖A‖/ρ of it, Paige), so the identity above holds to that accuracy. The stop rule, the
planned number of samples, the start vector's fixed weight and the standard error are those of
``hutchpp_trace`` (same unbiasedness argument: k, Q and the plan depend on the start vector only).
"""

from __future__ import annotations

import math

import torch

from lightning_landscape.linalg.krylov import LanczosRecurrence, Matvec, tridiagonal
from lightning_landscape.linalg.operator import LinearOperator, required, resolve
from lightning_landscape.linalg.random import rademacher
from lightning_landscape.linalg.reduction import global_dim, reduce_sum
from lightning_landscape.linalg.trace import (
    TraceEstimate,
    _check_rel_tol,
    _continue_sketch,
    _planned_samples,
    _start_weight,
)

#: Loss of orthogonality the sketch may reach (at least √ε): a deflated form is then off by ≈ LOSS_TOL·‖A‖,
#: far below the spread of one Hutchinson sample (≈ √2·‖A‖_F), and T is Q A Qᵀ to that accuracy.
LOSS_TOL = 1e-4

#: Entries unpacked at a time when the sign bits meet a Lanczos vector (a (CHUNK, 8) float block: 1 MiB).
CHUNK = 1 << 15


def _sign_bits(count: int, dim: int, generator: torch.Generator,
               device: torch.device | str | None) -> list[torch.Tensor]:
    """``count`` Rademacher vectors as bits: byte tensor b holds vectors 8b … 8b+7 (uniform bytes: 8 fair bits)."""
    out = []
    for _ in range(math.ceil(count / 8)):
        out.append(torch.randint(0, 256, (dim,), generator=generator, device=generator.device, dtype=torch.uint8)
                   .to(device))
    return out


def _signs(bits: list[torch.Tensor], i: int, dtype: torch.dtype) -> torch.Tensor:
    """Rademacher vector ``i`` as a float vector (bit 1 → −1)."""
    return ((bits[i // 8] >> (i % 8)) & 1).to(dtype).mul_(-2.0).add_(1.0)


def _sign_products(bits: list[torch.Tensor], count: int, v: torch.Tensor) -> torch.Tensor:
    """``gᵢᵀ v`` for the first ``count`` packed vectors (float64), CHUNK entries at a time.

    Each byte is looked up in a 256 × 8 table of signs (one gather and one product per block of entries,
    a (CHUNK, 8) temporary of 1 MiB).
    """
    table = ((torch.arange(256, device=v.device)[:, None] >> torch.arange(8, device=v.device)) & 1).to(v.dtype)
    table = table.mul_(-2.0).add_(1.0)
    out = torch.zeros(count, dtype=torch.float64, device=v.device)
    for b, byte in enumerate(bits):
        n = min(8, count - 8 * b)
        if n <= 0:
            break
        part = torch.zeros(8, dtype=torch.float64, device=v.device)
        for start in range(0, v.numel(), CHUNK):
            signs = torch.nn.functional.embedding(byte[start:start + CHUNK].int(), table)  # (chunk, 8)
            part += (v[start:start + CHUNK] @ signs).double()
        out[8 * b:8 * b + n] = part[:n]
    return reduce_sum(out)  # sharded vectors: each process's entries, added


def hutchpp_trace_bounded(
    matvec: LinearOperator | Matvec,
    dim: int | None = None,
    num_matvecs: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    rel_tol: float | None = None,
) -> TraceEstimate:
    """Hutch++ with a Krylov sketch (as ``hutchpp_trace(sketch="krylov")``) in bounded memory.

    Memory: the recurrence's two vectors, one product, and ``⌈(num_matvecs − 1)/8⌉`` byte vectors of signs
    (a quarter of a float32 vector for the default 12 products); ``hutchpp_trace`` holds its sketch basis.

    >>> torch.manual_seed(0) and None
    >>> U = torch.linalg.qr(torch.randn(50, 50, dtype=torch.float64))[0]
    >>> A = U @ torch.diag(torch.logspace(2, -2, 50, dtype=torch.float64)) @ U.T
    >>> est = hutchpp_trace_bounded(lambda v: A @ v, 50, 30, torch.Generator().manual_seed(0), torch.float64)
    >>> abs(est.value - float(torch.trace(A))) < 4 * est.stderr + 1e-9
    True
    """
    matvec, dim, dtype, device = resolve(matvec, dim, dtype, device)
    n_all = global_dim(dim)  # counts and scales are of the whole vector; ``dim`` entries are allocated here
    budget, generator = required("num_matvecs", num_matvecs), required("generator", generator)
    if budget < 3:
        raise ValueError(f"num_matvecs must be >= 3 for Hutch++, got {budget}")
    _check_rel_tol(rel_tol)
    eps = torch.finfo(dtype).eps
    loss_tol = max(math.sqrt(eps), LOSS_TOL)
    k_max = max(1, min(n_all, (2 * budget) // 3))
    rec = LanczosRecurrence(matvec, rademacher(dim, generator, dtype, device))
    # The Hutchinson vectors, drawn now (independent of the start vector), and their coefficients Q gᵢ.
    count = budget - 1
    bits = _sign_bits(count, dim, generator, device)
    coeffs = [_sign_products(bits, count, rec.q)]
    captured: list[float] = []
    semi_orthogonal = True
    while True:
        more = rec.step()
        a, b = rec.alphas[-1], rec.betas[-1]
        captured.append((captured[-1] if captured else 0.0) + a * a + 2 * b * b)
        k = len(rec.alphas)
        if more:
            theta, s = torch.linalg.eigh(tridiagonal(rec.alphas, rec.betas))
            # q_{k+1} loses ≈ ε‖A‖/ρ of its orthogonality against a Ritz pair of residual ρ (Paige)
            semi_orthogonal = float((b * s[-1].abs()).min()) * loss_tol >= eps * max(float(theta.abs().max()), 1e-300)
            if not semi_orthogonal:
                break  # this step's vector would break the identity: the sketch ends one step earlier
            coeffs.append(_sign_products(bits, count, rec.q))  # q_{k+1}
        if not more or k >= k_max or not _continue_sketch(rec, n_all, budget, captured):  # type: ignore[arg-type]
            break
    del rec.q, rec.q_prev
    used = rec.matvecs
    if not semi_orthogonal:
        k -= 1  # Q = q_1 … q_{k}, next vector q_{k+1}: all semi-orthogonal (the last product is spent)
    exact = float(sum(rec.alphas[:k]))
    if k >= n_all:
        return TraceEstimate(exact, 0.0, used, torch.zeros(0, dtype=torch.float64), used)
    t = tridiagonal(rec.alphas[:k], rec.betas[:k])
    beta = 0.0 if rec.broke_down or k == 0 else rec.betas[k - 1]
    # (count, k): row i is Q gᵢ (k = 0: the first product already converged a pair, nothing to deflate)
    c_all = torch.stack(coeffs[:k], dim=1).cpu() if k else torch.zeros((count, 0), dtype=torch.float64)
    a_next = coeffs[k].cpu() if beta else torch.zeros(count, dtype=torch.float64)
    samples = budget - used
    if rel_tol is not None and samples > 0:
        samples = _planned_samples(rec, n_all, captured[-1], rel_tol, samples)  # type: ignore[arg-type]
    deflated, raw = [], []
    for i in range(samples):
        g = _signs(bits, i, dtype)
        ag = matvec(g)
        r = reduce_sum(torch.dot(g, ag)).double().cpu()
        del g, ag
        c = c_all[i]
        raw.append(float(r))
        deflated.append(float(r) - float(c @ t @ c) - 2.0 * beta * float(a_next[i]) * float(c[-1]))
    if not deflated:
        return TraceEstimate(exact, float("nan"), used, torch.zeros(0, dtype=torch.float64), used)
    s_, r_ = torch.tensor(deflated, dtype=torch.float64), torch.tensor(raw, dtype=torch.float64)
    w = _start_weight(budget)
    value = w * n_all * rec.alphas[0] + (1 - w) * (exact + float(s_.mean()))
    n = s_.numel()
    stderr = math.sqrt(w * w * float(r_.var()) + (1 - w) ** 2 * float(s_.var()) / n) if n > 1 else float("nan")
    return TraceEstimate(value, stderr, used + n, s_, used)
