"""Lanczos, Hutch++/Hutchinson and SLQ against dense eigendecompositions."""

from __future__ import annotations

import pytest
import torch

from lightning_landscape.linalg import (
    hutchinson_trace,
    hutchpp_trace,
    lanczos_extremes,
    lanczos_tridiagonal,
    spectral_density,
)


def _matrix(n: int, seed: int, spectrum: torch.Tensor | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    if spectrum is None:
        spectrum = torch.randn(n, generator=g, dtype=torch.float64)
    return q @ torch.diag(spectrum) @ q.T


@pytest.mark.parametrize("seed", range(5))
def test_lanczos_extremes_match_eigh(seed: int) -> None:
    A = _matrix(80, seed)
    evals = torch.linalg.eigvalsh(A)
    r = lanczos_extremes(lambda v: A @ v, torch.ones(80, dtype=torch.float64), max_iter=80, tol=1e-10)
    assert r.converged
    assert r.lambda_max == pytest.approx(float(evals[-1]), rel=1e-8)
    assert r.lambda_min == pytest.approx(float(evals[0]), rel=1e-8)
    # The Ritz vectors are eigenvectors and the reported residuals are honest.
    for lam, vec, res in ((r.lambda_max, r.vector_max, r.residual_max), (r.lambda_min, r.vector_min, r.residual_min)):
        true_res = float(torch.linalg.vector_norm(A @ vec - lam * vec))
        assert true_res < 1e-6
        assert res <= 1e-6


def test_residual_stop_rule_is_honest() -> None:
    """At a loose tolerance the reported relative residual is below tol and equals the true one."""
    spectrum = torch.cat([torch.tensor([50.0, 20.0, -8.0]), torch.linspace(-1, 1, 497)]).double()
    A = _matrix(500, 0, spectrum)
    r = lanczos_extremes(lambda v: A @ v, torch.randn(500, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), max_iter=60, tol=1e-2)
    assert r.converged and r.relative_residual <= 1e-2
    true = max(
        float(torch.linalg.vector_norm(A @ r.vector_max - r.lambda_max * r.vector_max)),
        float(torch.linalg.vector_norm(A @ r.vector_min - r.lambda_min * r.vector_min)),
    ) / max(abs(r.lambda_max), abs(r.lambda_min))
    assert true == pytest.approx(r.relative_residual, rel=1e-3, abs=1e-6)
    # Residual bound on the eigenvalue error: |θ - λ| <= residual.
    assert abs(r.lambda_max - 50.0) <= r.residual_max + 1e-9
    assert abs(r.lambda_min + 8.0) <= r.residual_min + 1e-9


def test_negative_dominant_eigenvalue_is_lambda_min_not_lambda_max() -> None:
    A = _matrix(30, 1, torch.cat([torch.tensor([-10.0]), torch.linspace(0, 1, 29)]).double())
    r = lanczos_extremes(lambda v: A @ v, torch.ones(30, dtype=torch.float64), max_iter=30, tol=1e-10)
    assert r.lambda_max == pytest.approx(1.0, rel=1e-8)
    assert r.lambda_min == pytest.approx(-10.0, rel=1e-8)


def test_warm_start_needs_fewer_matvecs() -> None:
    spectrum = torch.cat([torch.tensor([30.0, -5.0]), torch.rand(298, generator=torch.Generator().manual_seed(0))]).double()
    A = _matrix(300, 2, spectrum)
    cold = lanczos_extremes(lambda v: A @ v, torch.randn(300, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), max_iter=100, tol=1e-3)
    # A slightly moved operator, started from the previous Ritz vectors.
    B = A + 1e-3 * _matrix(300, 3)
    v0 = cold.vector_max + cold.vector_min
    warm = lanczos_extremes(lambda v: B @ v, v0, max_iter=100, tol=1e-3)
    assert warm.converged and cold.converged
    assert warm.num_matvecs < cold.num_matvecs / 2


def test_invariant_subspace_breakdown_gives_exact_values() -> None:
    A = torch.diag(torch.tensor([3.0, 1.0, -2.0, 5.0], dtype=torch.float64))
    r = lanczos_extremes(lambda v: A @ v, torch.tensor([1.0, 0, 1.0, 0], dtype=torch.float64), max_iter=10, tol=1e-12)
    assert r.converged and r.num_matvecs == 2
    assert (r.lambda_min, r.lambda_max) == (pytest.approx(-2.0), pytest.approx(3.0))


def test_lanczos_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_iter"):
        lanczos_extremes(lambda v: v, torch.ones(3), max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        lanczos_extremes(lambda v: v, torch.ones(3), tol=0.0)
    with pytest.raises(ValueError, match="non-zero"):
        lanczos_extremes(lambda v: v, torch.zeros(3))
    with pytest.raises(FloatingPointError):
        lanczos_extremes(lambda v: v * float("nan"), torch.ones(3))


def _basis_allocations(monkeypatch, run):
    """Rows of every (rows, 400) tensor allocated by ``run()`` (the Lanczos basis blocks), and its result."""
    rows: list[int] = []
    original_empty = torch.empty

    def watching_empty(*size, **kwargs):
        out = original_empty(*size, **kwargs)
        if out.ndim == 2 and out.shape[1] == 400:
            rows.append(out.shape[0])
        return out

    monkeypatch.setattr(torch, "empty", watching_empty)
    try:
        return rows, run()
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("max_basis, extra_cost", [(3, 4.0), (4, 2.0), (8, 1.5)])
def test_thick_restart_keeps_the_basis_small_and_the_answer_exact(max_basis: int, extra_cost: float, monkeypatch) -> None:
    """A capped basis restarts from the two extreme Ritz vectors; values and residuals stay honest."""
    spectrum = torch.cat([torch.tensor([50.0, 20.0, -8.0]), torch.linspace(-1, 1, 397)]).double()
    A = _matrix(400, 5, spectrum)
    v0 = torch.randn(400, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    rows, r = _basis_allocations(monkeypatch, lambda: lanczos_extremes(lambda v: A @ v, v0, max_iter=300, tol=1e-8, max_basis=max_basis))
    assert sum(rows) == max_basis and max(rows) <= 4  # blocks of 4 up to max_basis vectors, never more
    assert r.converged and r.num_matvecs > max_basis  # it did restart
    assert r.lambda_max == pytest.approx(50.0, rel=1e-9)
    assert r.lambda_min == pytest.approx(-8.0, rel=1e-9)
    for lam, vec, res in ((r.lambda_max, r.vector_max, r.residual_max), (r.lambda_min, r.vector_min, r.residual_min)):
        true_res = float(torch.linalg.vector_norm(A @ vec - lam * vec))
        assert true_res == pytest.approx(res, rel=1e-3, abs=1e-9)  # |β s| is the true residual after restarts
    full = lanczos_extremes(lambda v: A @ v, v0, max_iter=300, tol=1e-8)
    assert r.num_matvecs <= extra_cost * full.num_matvecs  # restarts cost few extra products


def test_basis_memory_follows_the_steps_taken(monkeypatch) -> None:
    """A run that converges in 3 products allocates one block of 4 vectors, whatever max_basis is."""
    spectrum = torch.cat([torch.tensor([50.0, -8.0]), torch.linspace(-1, 1, 398)]).double()
    A = _matrix(400, 2, spectrum)
    evals, evecs = torch.linalg.eigh(A)
    v0 = evecs[:, -1] + evecs[:, 0] + 1e-4 * torch.randn(400, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for max_basis in (None, 8, 16):
        rows, r = _basis_allocations(monkeypatch, lambda: lanczos_extremes(lambda v: A @ v, v0, max_iter=40, tol=1e-2, max_basis=max_basis))
        assert r.converged and r.num_matvecs <= 3
        assert rows == [4], (max_basis, rows)
        assert r.vector_max.data_ptr() != r.vector_min.data_ptr()
        assert float(torch.linalg.vector_norm(r.vector_max)) == pytest.approx(1.0, rel=1e-12)
        assert float(torch.linalg.vector_norm(r.vector_min)) == pytest.approx(1.0, rel=1e-12)


def test_thick_restart_at_loose_tolerance_and_on_small_operators() -> None:
    spectrum = torch.cat([torch.tensor([50.0, 20.0, -8.0]), torch.linspace(-1, 1, 497)]).double()
    A = _matrix(500, 0, spectrum)
    v0 = torch.randn(500, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r = lanczos_extremes(lambda v: A @ v, v0, max_iter=60, tol=1e-2, max_basis=4)
    assert r.converged and r.relative_residual <= 1e-2
    assert abs(r.lambda_max - 50.0) <= r.residual_max + 1e-9 and abs(r.lambda_min + 8.0) <= r.residual_min + 1e-9
    small = torch.diag(torch.tensor([3.0, 1.0, -2.0, 5.0, 0.5], dtype=torch.float64))
    r = lanczos_extremes(lambda v: small @ v, torch.ones(5, dtype=torch.float64), max_iter=50, tol=1e-12, max_basis=3)
    assert r.converged and (r.lambda_min, r.lambda_max) == (pytest.approx(-2.0), pytest.approx(5.0))
    with pytest.raises(ValueError, match="max_basis"):
        lanczos_extremes(lambda v: v, torch.ones(3), max_basis=2)
    with pytest.raises(FloatingPointError):
        lanczos_extremes(lambda v: v * float("nan"), torch.ones(10), max_iter=20, max_basis=4)


def test_tridiagonal_is_orthonormal_projection() -> None:
    A = _matrix(40, 4)
    T, Q, mv = lanczos_tridiagonal(lambda v: A @ v, torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(2)), 15)
    assert mv == 15
    torch.testing.assert_close(Q @ Q.T, torch.eye(15, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(Q @ A @ Q.T, T, atol=1e-8, rtol=0)


@pytest.mark.parametrize("estimator", [hutchinson_trace, hutchpp_trace])
def test_trace_estimators_unbiased_with_calibrated_stderr(estimator) -> None:
    spectrum = torch.cat([torch.tensor([40.0, 25.0, 10.0]), torch.randn(197, generator=torch.Generator().manual_seed(5))]).double()
    A = _matrix(200, 5, spectrum)
    exact = float(torch.trace(A))
    errors, stderrs = [], []
    for seed in range(40):
        est = estimator(lambda v: A @ v, 200, 30, torch.Generator().manual_seed(seed), torch.float64)
        errors.append(est.value - exact)
        stderrs.append(est.stderr)
    errors_t, se = torch.tensor(errors), torch.tensor(stderrs)
    assert abs(errors_t.mean()) < 3 * errors_t.std() / 40**0.5 + 1e-9  # unbiased
    # Calibrated from both sides: E[stderr²]/E[error²] (measured 0.96 Hutchinson, 1.5 Hutch++; half or twice
    # the true stderr gives 0.25 or 4), ~68 % within one stderr, most within two.
    assert 0.5 <= float(se.pow(2).mean() / errors_t.pow(2).mean()) <= 2.2
    assert 0.5 <= float((errors_t.abs() <= se).double().mean()) <= 0.9
    assert float((errors_t.abs() <= 2 * se).double().mean()) >= 0.8


def test_hutchpp_beats_hutchinson_on_a_spiky_spectrum() -> None:
    spectrum = torch.cat([torch.logspace(3, 1, 10), 0.01 * torch.randn(190, generator=torch.Generator().manual_seed(0))]).double()
    A = _matrix(200, 6, spectrum)
    exact = float(torch.trace(A))
    err_h = [hutchinson_trace(lambda v: A @ v, 200, 30, torch.Generator().manual_seed(s), torch.float64).value - exact for s in range(20)]
    err_pp = [hutchpp_trace(lambda v: A @ v, 200, 30, torch.Generator().manual_seed(s), torch.float64).value - exact for s in range(20)]
    assert torch.tensor(err_pp).pow(2).mean() < 0.1 * torch.tensor(err_h).pow(2).mean()


def test_slq_moments_match_exact() -> None:
    spectrum = torch.linspace(-2, 6, 120).double()
    A = _matrix(120, 7, spectrum)
    d = spectral_density(lambda v: A @ v, 120, num_probes=20, num_steps=30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert d.trace() == pytest.approx(float(spectrum.sum()), rel=0.1, abs=5.0)
    edges, counts = d.histogram(bins=8)
    assert float(counts.sum()) == pytest.approx(120)
    assert float(edges[0]) == pytest.approx(-2.0, abs=0.05) and float(edges[-1]) == pytest.approx(6.0, abs=0.05)
    # A flat spectrum: every bin holds roughly 1/8 of the eigenvalues.
    assert float(counts.min()) > 0.4 * 120 / 8
    grid = torch.linspace(-4, 8, 400, dtype=torch.float64)
    area = torch.trapezoid(d.density(grid, sigma=0.3), grid)
    assert float(area) == pytest.approx(1.0, abs=0.02)
