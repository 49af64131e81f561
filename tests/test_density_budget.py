"""The density's budget adapts to accuracy: start vectors are added until negative_mass's standard error is
within ``stderr_tol``, or the ``num_probes`` budget is spent; the reported error is the vectors' real spread."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_landscape import HessianDensity, ProbeContext
from lightning_landscape.guards import probe_guard
from lightning_landscape.linalg import rademacher, spectral_density
from test_spectrum_exact import _setup


def _exact_masses(H: torch.Tensor, ctx: ProbeContext, count: int) -> torch.Tensor:
    """Each of the probe's Rademacher start vectors' exact weight on λ < −1e-3·max|λ| (Gauss quadrature with
    as many steps as dimensions is exact: weight (u_i·v)²/‖v‖² on λ_i)."""
    evals, evecs = torch.linalg.eigh(H)
    gen = ctx.generator("hessian_density")
    V = torch.stack([rademacher(H.shape[0], gen, H.dtype) for _ in range(count)])
    weights = (V @ evecs) ** 2 / V.pow(2).sum(-1, keepdim=True)
    return weights[:, evals < -1e-3 * evals.abs().max()].sum(-1)


def test_reported_stderr_is_the_spread_of_the_start_vectors() -> None:
    model, closure, H, _ = _setup("tanh_mse", saddle=True)
    n = H.shape[0]
    with probe_guard(model):
        ctx = ProbeContext(model, closure, step=3)
        out = HessianDensity(num_probes=5, num_steps=n, exact_max_dim=0, reorthogonalize=True,
                             stderr_tol=None).run(ctx)
    masses = _exact_masses(H, ctx, 5)
    assert out.scalars["negative_mass"] == pytest.approx(float(masses.mean()), abs=1e-6)
    assert out.scalars["negative_mass_stderr"] == pytest.approx(float(masses.std()) / math.sqrt(5), rel=1e-5)


def test_stops_at_two_vectors_once_within_tolerance_and_uses_the_budget_otherwise() -> None:
    model, closure, H, _ = _setup("tanh_mse", saddle=True)
    n = H.shape[0]
    with probe_guard(model):
        ctx = ProbeContext(model, closure, step=3)
        spread = float(_exact_masses(H, ctx, 2).std()) / math.sqrt(2)  # the error two vectors report
        loose = HessianDensity(num_probes=6, num_steps=n, exact_max_dim=0, reorthogonalize=True,
                               stderr_tol=1.01 * spread)
        tight = HessianDensity(num_probes=6, num_steps=n, exact_max_dim=0, reorthogonalize=True,
                               stderr_tol=1e-9)
        before = ctx.num_matvecs
        loose_out = loose.run(ctx)
        loose_cost = ctx.num_matvecs - before
        tight_out = tight.run(ProbeContext(model, closure, step=3))
        # The vectors of a stopped run are those of a two-vector run from the same generator, in order.
        reference = spectral_density(ctx.hessian().matvec, n, 2, n, ctx.generator("hessian_density"),
                                     torch.float64, reorthogonalize=True)
    assert loose_cost == 2 * n  # stopped after the second vector
    assert loose_out.scalars["negative_mass_stderr"] <= 1.01 * spread
    assert loose_out.histograms["density"].counts.sum() == pytest.approx(n, rel=1e-9)
    ref_edges, ref_counts = reference.histogram(60)
    torch.testing.assert_close(loose_out.histograms["density"].counts, ref_counts)
    assert tight_out.scalars["negative_mass_stderr"] == pytest.approx(
        float(_exact_masses(H, ctx, 6).std()) / math.sqrt(6), rel=1e-5)  # the whole budget of six vectors


def test_exact_path_reports_zero_error_and_one_vector_reports_none() -> None:
    model, closure, H, _ = _setup("tanh_mse", saddle=True)
    with probe_guard(model):
        exact = HessianDensity().run(ProbeContext(model, closure, step=3))
        single = HessianDensity(num_probes=1, num_steps=10, exact_max_dim=0).run(ProbeContext(model, closure, step=3))
    evals = torch.linalg.eigvalsh(H)
    assert exact.scalars["negative_mass"] == pytest.approx(float((evals < -1e-3 * evals.abs().max()).double().mean()))
    assert exact.scalars["negative_mass_stderr"] == 0.0
    assert "negative_mass_stderr" not in single.scalars and "negative_mass_stderr" in single.not_measured


def test_stderr_tol_is_validated() -> None:
    with pytest.raises(ValueError, match="stderr_tol"):
        HessianDensity(stderr_tol=0.0)
