"""Accuracy per unit of cost: the exact small-model path, the first measurement, adaptive trace budgets.

Ground truth is the Hessian from ``torch.autograd.functional.hessian`` (tests/exact.py) and ``eigvalsh``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from exact import exact_hessian
from lightning_landscape import HessianDensity, HessianSpectrum, HessianTrace, ProbeContext
from lightning_landscape.guards import probe_guard
from lightning_landscape.linalg import hutchinson_trace, hutchpp_trace
from lightning_landscape.linalg.trace import MIN_ADAPTIVE_SAMPLES
from models import perturb_to_saddle_region


def _tanh_mlp(width: int = 13, inputs: int = 8, seed: int = 0, dtype=torch.float64):
    """tanh MLP inputs-width-1 (8-13-1: 131 parameters) on a sine regression, moved to a point with
    negative curvature (λmin < 0: an indefinite Hessian, where a stochastic trace is at its worst)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(inputs, width), nn.Tanh(), nn.Linear(width, 1)).to(dtype)
    perturb_to_saddle_region(net)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(96, inputs, generator=g, dtype=dtype)
    y = torch.sin(x.sum(1, keepdim=True)) + 0.1 * torch.randn(96, 1, generator=g, dtype=dtype)

    def loss_of_output(forward):
        return nn.functional.mse_loss(forward(x), y)

    H, _ = exact_hessian(net, loss_of_output)
    return net, (lambda: loss_of_output(net)), H, (x, y)


def test_first_measurement_at_defaults_is_exact_on_a_small_model() -> None:
    net, closure, H, _ = _tanh_mlp()
    dim = sum(p.numel() for p in net.parameters())
    assert dim == 131
    evals = torch.linalg.eigvalsh(H)
    assert evals[0] < -0.05 * evals[-1]  # indefinite: a cold Lanczos run at tol 1e-2 misses λmin by > 1e-3
    with probe_guard(net):
        ctx = ProbeContext(net, closure, step=1)
        spec = HessianSpectrum().run(ctx).scalars  # the first measurement: no warm start
        trace = HessianTrace().run(ctx).scalars
        density = HessianDensity().run(ctx)
        spent = ctx.num_matvecs
    assert abs(spec["lambda_max"] - float(evals[-1])) <= 1e-6 * abs(float(evals[-1]))
    assert abs(spec["lambda_min"] - float(evals[0])) <= 1e-6 * abs(float(evals[0]))
    assert trace["trace"] == pytest.approx(float(torch.trace(H)), rel=1e-9)
    assert trace["trace_stderr"] == 0.0
    exact_negative = float((evals < -1e-3 * evals.abs().max()).double().mean())
    assert density.scalars["negative_mass"] == pytest.approx(exact_negative, abs=1e-12)
    assert float(density.histograms["density"].counts.sum()) == pytest.approx(dim)
    assert spent == dim  # one dense Hessian, shared by the three probes
    assert spec["lanczos_hvps"] == dim


def test_dense_hessian_equals_exact_and_its_eigenvalues_are_eigvalsh() -> None:
    net, closure, H, _ = _tanh_mlp(width=9, seed=3)
    with probe_guard(net):
        op = ProbeContext(net, closure, step=1).hessian()
        dense = op.dense()
        assert op.num_matvecs == H.shape[0]
        assert op.dense() is dense and op.num_matvecs == H.shape[0]  # built once
    torch.testing.assert_close(dense, H, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(torch.linalg.eigvalsh(dense), torch.linalg.eigvalsh(H), rtol=1e-9, atol=1e-11)


def test_dense_hessian_in_memory_light_mode_matches() -> None:
    """``hvp_chunks`` builds the dense Hessian column by column from the chunked products."""
    from lightning_landscape.hessian import ChunkedHessianOperator
    from lightning_landscape.parameters import ParameterSpace

    net, _, H, (x, y) = _tanh_mlp(width=6, seed=4)
    space = ParameterSpace.from_module(net)
    chunks = [(0.5, lambda: nn.functional.mse_loss(net(x[:48]), y[:48])),
              (0.5, lambda: nn.functional.mse_loss(net(x[48:]), y[48:]))]
    with probe_guard(net):
        op = ChunkedHessianOperator(chunks, space)
        torch.testing.assert_close(op.dense(), H, rtol=1e-9, atol=1e-11)
        assert op.num_matvecs == space.dim


def test_exact_path_can_be_switched_off() -> None:
    net, closure, H, _ = _tanh_mlp()
    with probe_guard(net):
        ctx = ProbeContext(net, closure, step=1)
        out = HessianTrace(exact_max_dim=0, num_matvecs=12).run(ctx).scalars
    assert out["trace_stderr"] > 0  # an estimate, not the dense trace
    assert ctx.num_matvecs <= 12


def test_cold_start_is_cheaper_and_the_warm_one_reaches_tol() -> None:
    """A model above the exact limit: the first measurement stops at cold_factor·tol, the next at tol."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 1)).double()
    perturb_to_saddle_region(net)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 16, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, :3].sum(1, keepdim=True))

    def closure():
        return nn.functional.mse_loss(net(x), y)

    with probe_guard(net):
        cheap, strict = HessianSpectrum(), HessianSpectrum(cold_factor=1.0)
        first = cheap.run(ProbeContext(net, closure, step=1)).scalars
        first_strict = strict.run(ProbeContext(net, closure, step=1)).scalars
        second = cheap.run(ProbeContext(net, closure, step=2)).scalars
    assert first["lanczos_hvps"] < first_strict["lanczos_hvps"]
    assert first["residual"] <= 5 * 1e-2 and first_strict["residual"] <= 1e-2
    assert second["residual"] <= 1e-2  # warm-started from the cheap run's vectors, held to tol


def test_cold_factor_is_validated() -> None:
    with pytest.raises(ValueError, match="cold_factor"):
        HessianSpectrum(cold_factor=0.5)
    with pytest.raises(ValueError, match="rel_tol"):
        HessianTrace(rel_tol=-1.0)


def _rotated(evals: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(evals.numel(), evals.numel(), generator=g, dtype=torch.float64))[0]
    return U @ torch.diag(evals) @ U.T


def test_planned_trace_stops_early_when_the_target_is_met() -> None:
    """Flat positive spectrum: one Rademacher form is already within a few % of the trace, so the plan takes
    the minimum number of samples, and the measured standard error meets the target."""
    A = _rotated(torch.linspace(1.0, 2.0, 400, dtype=torch.float64))
    exact = float(torch.trace(A))
    used, errors = [], []
    for seed in range(40):
        est = hutchpp_trace(lambda v: A @ v, 400, 24, torch.Generator().manual_seed(seed), torch.float64, rel_tol=0.1)
        used.append(est.num_matvecs)
        errors.append(est.value - exact)
        assert est.stderr <= 0.1 * abs(est.value)
    assert max(used) <= 2 + MIN_ADAPTIVE_SAMPLES + 1 < 24  # a sketch of 2 and the minimum of samples
    fixed = hutchpp_trace(lambda v: A @ v, 400, 24, torch.Generator().manual_seed(0), torch.float64)
    assert fixed.num_matvecs == 24  # without rel_tol the whole budget
    rms = math.sqrt(sum(e * e for e in errors) / len(errors))
    assert rms <= 0.02 * exact


def test_planned_trace_respects_the_budget_on_an_indefinite_spectrum() -> None:
    """Eigenvalues spread over [-1, 1.02] (trace 4 against a spread of ±16 per sample): the target is out of
    reach, the cap holds."""
    evals = torch.linspace(-1.0, 1.02, 400, dtype=torch.float64)
    A = _rotated(evals, seed=1)
    for budget in (5, 12, 24):
        est = hutchpp_trace(lambda v: A @ v, 400, budget, torch.Generator().manual_seed(budget), torch.float64,
                            rel_tol=0.1)
        assert est.num_matvecs == budget
        assert est.stderr > 0.1 * abs(est.value)  # honestly reported: the target was not met


def test_planned_trace_is_unbiased() -> None:
    """The plan depends on the sketch only: over many seeds the mean error is within 3 of its standard errors
    of zero on a spiky indefinite spectrum (where the planned sample count varies from seed to seed)."""
    evals = torch.cat([torch.tensor([30.0, 12.0, -8.0]), torch.linspace(-0.5, 1.0, 197)]).double()
    A = _rotated(evals, seed=2)
    exact = float(evals.sum())
    errors, counts = [], set()
    for seed in range(300):
        est = hutchpp_trace(lambda v: A @ v, 200, 20, torch.Generator().manual_seed(seed), torch.float64, rel_tol=0.05)
        errors.append(est.value - exact)
        counts.add(est.num_matvecs)
    e = torch.tensor(errors)
    assert len(counts) > 1  # the plan did adapt
    assert abs(float(e.mean())) <= 3 * float(e.std()) / math.sqrt(len(errors))


def test_hutchinson_stops_on_its_standard_error_and_respects_the_budget() -> None:
    A = _rotated(torch.linspace(1.0, 2.0, 300, dtype=torch.float64), seed=3)
    est = hutchinson_trace(lambda v: A @ v, 300, 30, torch.Generator().manual_seed(0), torch.float64, rel_tol=0.1)
    assert MIN_ADAPTIVE_SAMPLES <= est.num_matvecs < 30 and est.stderr <= 0.1 * abs(est.value)
    B = _rotated(torch.linspace(-1.0, 1.0, 300, dtype=torch.float64), seed=4)
    est = hutchinson_trace(lambda v: B @ v, 300, 9, torch.Generator().manual_seed(0), torch.float64, rel_tol=0.1)
    assert est.num_matvecs == 9
