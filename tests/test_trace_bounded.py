"""Hutch++ with the sketch held as scalars (``hutchpp_trace_bounded``): the same estimator as the
basis-keeping ``hutchpp_trace`` — unbiased, calibrated, deflating outliers — on the matrices of test_trace."""

from __future__ import annotations

import math
from functools import cache

import pytest
import torch

from lightning_landscape.linalg import hutchinson_trace, hutchpp_trace
from lightning_landscape.linalg.hutchpp_bounded import hutchpp_trace_bounded
from test_trace import DIM, _matrix


@cache
def _errors(kind: str, budget: int, seeds: int, dtype: torch.dtype = torch.float64):
    A = _matrix(kind).to(dtype)
    exact = float(torch.trace(A.double()))
    err, se, err_h, sketch = [], [], [], []
    for seed in range(seeds):
        est = hutchpp_trace_bounded(lambda v: A @ v, DIM, budget, torch.Generator().manual_seed(seed), dtype)
        assert est.num_matvecs == budget
        err.append(est.value - exact)
        se.append(est.stderr)
        sketch.append(est.sketch_matvecs)
        plain = hutchinson_trace(lambda v: A @ v, DIM, budget, torch.Generator().manual_seed(seed), dtype)
        err_h.append(plain.value - exact)
    as64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return as64(err), as64(se), as64(err_h), sketch


CASES = [("bulk", 12, torch.float64), ("spiky", 12, torch.float64), ("spiky", 24, torch.float64), ("spiky", 24, torch.float32)]


@pytest.mark.parametrize("kind,budget,dtype", CASES)
def test_bounded_hutchpp_is_unbiased_and_calibrated(kind: str, budget: int, dtype: torch.dtype) -> None:
    """Mean error within 4 s.e. (also paired against Hutchinson on the same seeds); E[stderr²] ≈ MSE.

    float32 at 24 products: the outliers converge inside the sketch, where the plain recurrence loses
    orthogonality; the sketch stops while it is semi-orthogonal, or the scalar identity would be biased."""
    err, se, err_h, _ = _errors(kind, budget, 200, dtype)
    assert abs(float(err.mean())) <= 4 * float(err.std()) / math.sqrt(err.numel())
    diff = err - err_h
    assert abs(float(diff.mean())) <= 4 * float(diff.std()) / math.sqrt(diff.numel())
    ratio = float(se.pow(2).mean() / err.pow(2).mean())
    assert 0.65 <= ratio <= 1.5, ratio


def test_bounded_hutchpp_deflates_like_the_basis_version() -> None:
    """Spiky spectrum, 24 products: the error drops ≥ 4× below Hutchinson's, as with the kept basis, and the
    MSE stays within 1.5× of the basis-keeping estimator's on the same seeds (same sketch rule)."""
    err, _, err_h, sketch = _errors("spiky", 24, 200)
    assert sum(sketch) / len(sketch) >= 8
    assert float(err.pow(2).mean()) <= float(err_h.pow(2).mean()) / 16
    A = _matrix("spiky")
    exact = float(torch.trace(A))
    kept = torch.tensor([hutchpp_trace(lambda v: A @ v, DIM, 24, torch.Generator().manual_seed(s), torch.float64).value - exact
                         for s in range(200)])
    assert float(err.pow(2).mean()) <= 1.5 * float(kept.pow(2).mean())


def test_bounded_hutchpp_bulk_costs_no_more_than_the_basis_version() -> None:
    err, _, err_h, sketch = _errors("bulk", 12, 200)
    assert float(err.pow(2).mean() / err_h.pow(2).mean()) <= 1.25
    assert max(sketch) <= 3


def test_bounded_hutchpp_is_exact_on_a_low_rank_operator_spanned_by_the_sketch() -> None:
    """Rank 3: the sketch finds the invariant subspace; the deflated forms vanish and only the start vector's
    fixed-weight sample is left, so the error is tiny against a plain Hutchinson sample's."""
    U = torch.linalg.qr(torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    A = U @ torch.diag(torch.tensor([5.0, 2.0, -1.0], dtype=torch.float64)) @ U.T
    est = hutchpp_trace_bounded(lambda v: A @ v, 50, 12, torch.Generator().manual_seed(1), torch.float64)
    assert est.samples.abs().max() < 1e-10
    assert abs(est.value - 6.0) <= 1.0 / 11 * 20  # the start sample's weight 1/11 times its own spread


def test_bounded_deflated_forms_equal_the_explicit_projection() -> None:
    """Each sample is uᵀAu for u = (I − QᵀQ)g, with Q the sketch's Lanczos vectors and g the sample's Rademacher
    vector (both read off the operator's inputs), to rounding: the scalar identity, term by term (a form missing
    the ``2β a c_k`` term is still unbiased, so only this comparison sees it)."""
    A = _matrix("spiky")
    inputs: list[torch.Tensor] = []

    def matvec(v: torch.Tensor) -> torch.Tensor:
        inputs.append(v.clone())
        return A @ v

    est = hutchpp_trace_bounded(matvec, DIM, 12, torch.Generator().manual_seed(5), torch.float64)
    k = est.sketch_matvecs
    Q = torch.stack(inputs[:k])
    assert torch.allclose(Q @ Q.T, torch.eye(k, dtype=torch.float64), atol=1e-8)
    gs = inputs[k:]
    assert len(gs) == est.samples.numel() > 0 and all(bool((g.abs() == 1).all()) for g in gs)
    for g, form in zip(gs, est.samples.tolist()):
        u = g - Q.T @ (Q @ g)
        assert form == pytest.approx(float(u @ A @ u), rel=1e-9, abs=1e-9)
