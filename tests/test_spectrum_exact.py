"""Spectrum probes against the exact Hessian (torch.autograd.functional.hessian) of small models."""

from __future__ import annotations

import pytest
import torch

from exact import exact_hessian
from lightning_landscape import HessianDensity, HessianSpectrum, HessianTrace, ProbeContext
from lightning_landscape.guards import probe_guard
from models import MODEL_CASES, loss_value, perturb_to_saddle_region


def _setup(case: str, saddle: bool):
    build, data, kind = MODEL_CASES[case]
    model = build()
    model.train()
    if saddle:
        perturb_to_saddle_region(model)
    x, y = data()

    def loss_of_output(forward):
        torch.manual_seed(1234)  # same dropout mask for the probe and the exact Hessian
        return loss_value(forward(x), y, kind)

    def closure():
        return loss_of_output(model)

    H, g = exact_hessian(model, loss_of_output)
    return model, closure, H, g


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
@pytest.mark.parametrize("saddle", [False, True], ids=["init", "perturbed"])
def test_operator_matches_exact_hessian(case: str, saddle: bool) -> None:
    model, closure, H, g = _setup(case, saddle)
    with probe_guard(model):
        ctx = ProbeContext(model, closure, step=1)
        op = ctx.hessian()
        v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(op.gradient, g, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
@pytest.mark.parametrize("saddle", [False, True], ids=["init", "perturbed"])
def test_extreme_eigenvalues_within_1e_3_relative(case: str, saddle: bool) -> None:
    model, closure, H, _ = _setup(case, saddle)
    evals = torch.linalg.eigvalsh(H)
    with probe_guard(model):
        ctx = ProbeContext(model, closure, step=1)
        out = HessianSpectrum(max_iter=H.shape[0], tol=1e-8, exact_max_dim=0).run(ctx).scalars
    scale = evals.abs().max()
    assert abs(out["lambda_max"] - evals[-1]) <= 1e-3 * abs(evals[-1])
    assert abs(out["lambda_min"] - evals[0]) <= 1e-3 * max(abs(evals[0]), 1e-6 * scale)
    if saddle and case.startswith("tanh"):
        assert evals[0] < 0 and out["lambda_min"] < 0  # a point with negative curvature is covered


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_without_ritz_vectors_the_extremes_are_as_accurate(case: str) -> None:
    """``ritz_vectors=False`` (plain recurrence, no basis): the same 1e-3 against the exact Hessian, cold
    every time, and nothing shared (no top vector for loss_geometry, no warm start kept)."""
    model, closure, H, _ = _setup(case, True)
    evals = torch.linalg.eigvalsh(H)
    probe = HessianSpectrum(max_iter=3 * H.shape[0], tol=1e-8, exact_max_dim=0, ritz_vectors=False)
    for step in (1, 2):
        with probe_guard(model):
            ctx = ProbeContext(model, closure, step=step)
            out = probe.run(ctx).scalars
        scale = evals.abs().max()
        assert abs(out["lambda_max"] - evals[-1]) <= 1e-3 * abs(evals[-1])
        assert abs(out["lambda_min"] - evals[0]) <= 1e-3 * max(abs(evals[0]), 1e-6 * scale)
        assert ctx.shared.hessian_top_vector is None and probe._vectors == []


def test_lambda_max_is_not_largest_magnitude_at_a_saddle() -> None:
    model, closure, H, _ = _setup("tanh_mse", saddle=True)
    evals = torch.linalg.eigvalsh(H)
    assert abs(evals[0]) > 0  # sanity
    with probe_guard(model):
        out = HessianSpectrum(max_iter=H.shape[0], tol=1e-8, exact_max_dim=0).run(ProbeContext(model, closure, step=1)).scalars
    assert out["lambda_max"] == pytest.approx(float(evals[-1]), rel=1e-3)
    assert out["lambda_max"] > out["lambda_min"]


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
@pytest.mark.parametrize("method", ["hutchpp", "hutchinson"])
def test_trace_within_three_standard_errors(case: str, method: str) -> None:
    model, closure, H, _ = _setup(case, saddle=True)
    exact = float(torch.trace(H))
    with probe_guard(model):
        out = HessianTrace(num_matvecs=30, method=method, rel_tol=None, exact_max_dim=0).run(ProbeContext(model, closure, step=7)).scalars
    assert out["trace_stderr"] >= 0
    assert abs(out["trace"] - exact) <= 3 * out["trace_stderr"] + 1e-8 * abs(exact)


def test_trace_standard_error_is_calibrated() -> None:
    """Over 60 seeds the reported stderr matches the actual error from both sides: E[stderr²] ≈ E[error²]
    (an estimator reporting half or twice the true stderr lands at 0.25 or 4), ~68 % of errors within one
    stderr and ~95 % within two (a stderr ×10 puts every error inside one; ×0.3, most outside two)."""
    model, closure, H, _ = _setup("tanh_mse", saddle=True)
    exact = float(torch.trace(H))
    errors, stderrs = [], []
    with probe_guard(model):
        for step in range(60):
            out = HessianTrace(num_matvecs=12, method="hutchinson", rel_tol=None, exact_max_dim=0).run(ProbeContext(model, closure, step=step)).scalars
            errors.append(out["trace"] - exact)
            stderrs.append(out["trace_stderr"])
    err, se = torch.tensor(errors), torch.tensor(stderrs)
    assert 0.5 <= float(se.pow(2).mean() / err.pow(2).mean()) <= 2.0  # measured 0.90
    assert 0.5 <= float((err.abs() <= se).double().mean()) <= 0.9  # measured 0.70
    assert float((err.abs() <= 2 * se).double().mean()) >= 0.8  # measured 0.87


def test_density_matches_exact_eigenvalues() -> None:
    model, closure, H, _ = _setup("tanh_mse", saddle=True)
    evals = torch.linalg.eigvalsh(H)
    n = H.shape[0]
    with probe_guard(model):
        ctx = ProbeContext(model, closure, step=3)
        out = HessianDensity(num_probes=4, num_steps=n, bins=30, exact_max_dim=0, stderr_tol=None).run(ctx)
    hist = out.histograms["density"]
    assert float(hist.counts.sum()) == pytest.approx(n, rel=1e-9)
    assert float(hist.edges[0]) == pytest.approx(float(evals[0]), rel=1e-6, abs=1e-8)
    assert float(hist.edges[-1]) == pytest.approx(float(evals[-1]), rel=1e-6)
    # Against the exact quadrature of the probe's own start vectors (0.564): without reorthogonalisation the
    # ghost nodes smear the step at zero by ~0.007 here; a constant 0.5 or the fraction of negative
    # eigenvalues (0.53) is off by > 0.03.
    assert out.scalars["negative_mass"] == pytest.approx(_negative_mass_of_start_vectors(H, ctx, 4), abs=0.02)


def _negative_mass_of_start_vectors(H: torch.Tensor, ctx: ProbeContext, num_probes: int) -> float:
    """What SLQ with as many steps as dimensions must give: Gauss quadrature is then exact, each start vector
    v puts weight (u_i·v)²/‖v‖² on eigenvalue λ_i, so the negative mass is the mean over the probe's own
    Rademacher vectors (drawn from its generator) of the weight on λ_i < −1e-3·max|λ|."""
    from lightning_landscape.linalg import rademacher

    evals, evecs = torch.linalg.eigh(H)
    gen = ctx.generator("hessian_density")
    V = torch.stack([rademacher(H.shape[0], gen, H.dtype) for _ in range(num_probes)])
    weights = (V @ evecs) ** 2 / V.pow(2).sum(-1, keepdim=True)
    negative = evals < -1e-3 * evals.abs().max()
    return float(weights[:, negative].sum(-1).mean())
