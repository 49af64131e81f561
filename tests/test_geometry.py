"""Geometry of the loss surface against ground truth.

* closed-form surfaces: paraboloid of revolution (Gauss curvature a²/q²), hemisphere (all κ = 1/r);
* the Gauss-equation route (extrinsic) against the intrinsic Riemann tensor of G = I + ∇f∇fᵀ computed
  from Christoffel symbols by automatic differentiation, on a non-quadratic function at g ≠ 0;
* the moment formulas (tr S, R, Ric from one HVP) against the dense eigen-route;
* the matrix-free estimators against the exact Hessian of small tanh MLPs (MSE and cross-entropy) at
  init (g ≠ 0) and near a minimum, including standard-error calibration over many seeds;
* the probe: exact and estimate modes agree, argument validation, no side effects.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from exact import exact_hessian
from models import classification_data, loss_value, mlp, regression_data
from lightning_landscape.geometry import (
    estimate_geometry,
    exact_geometry,
    full_hessian,
    krylov_sketch,
    metric_root,
    ricci_curvature,
    ricci_from_hvp,
    scalar_curvature_from_moments,
    section_gauss_kronecker,
    symmetric_shape_operator,
    trace_shape_operator,
)
from lightning_landscape.probes import PROBES, ProbeContext
from lightning_landscape.probes.geometry import LossSurfaceGeometry

D64 = torch.float64


def _hess_grad(f, x):
    return torch.autograd.functional.hessian(f, x), torch.autograd.functional.jacobian(f, x)


# ------------------------------------------------------------------------------------------ closed forms


@pytest.mark.parametrize("a,point", [(1.0, (0.0, 0.0)), (2.0, (0.3, -0.4)), (0.5, (1.5, 2.0))])
def test_paraboloid_of_revolution(a: float, point: tuple[float, float]) -> None:
    """z = a(x²+y²)/2: κ_radial = a/q^{3/2}, κ_tangential = a/q^{1/2}, K = a²/q², R = 2K."""
    x = torch.tensor(point, dtype=D64)
    H, g = _hess_grad(lambda z: 0.5 * a * (z * z).sum(), x)
    q = 1 + a * a * float(x @ x)
    geo = exact_geometry(H, g)
    expected = sorted([a / q**1.5, a / q**0.5])
    assert torch.allclose(geo.principal_curvatures, torch.tensor(expected, dtype=D64), rtol=1e-12)
    assert geo.gauss_kronecker == pytest.approx(a * a / q**2, rel=1e-12)
    assert geo.scalar_curvature == pytest.approx(2 * a * a / q**2, rel=1e-12)
    assert geo.mean_curvature == pytest.approx(a * (2 + a * a * float(x @ x)) / (2 * q**1.5), rel=1e-12)
    # a surface's Ricci curvature is K in every direction
    for u in (g if float(g.abs().sum()) > 0 else torch.tensor([1.0, 0.0], dtype=D64), torch.tensor([0.3, 1.0], dtype=D64)):
        assert ricci_curvature(H, g, u) == pytest.approx(a * a / q**2, rel=1e-10)


def test_hemisphere_all_curvatures() -> None:
    """L = r − √(r² − |x|²): umbilic, κᵢ = 1/r; Ric(u,u) = (n−1)/r² for every u; K = r^{-n}."""
    n, r = 5, 1.7
    x = torch.tensor([0.3, -0.5, 0.8, 0.1, -0.6], dtype=D64)
    H, g = _hess_grad(lambda z: r - torch.sqrt(r * r - (z * z).sum()), x)
    geo = exact_geometry(H, g)
    assert float(g.norm()) > 0.5  # far from critical
    assert torch.allclose(geo.principal_curvatures, torch.full((n,), 1 / r, dtype=D64), rtol=1e-10)
    assert geo.scalar_curvature == pytest.approx(n * (n - 1) / r**2, rel=1e-10)
    assert geo.gauss_kronecker_log_abs == pytest.approx(-n * math.log(r), rel=1e-10)
    assert geo.gauss_kronecker_sign == 1.0
    gen = torch.Generator().manual_seed(0)
    for u in [g, torch.randn(n, generator=gen, dtype=D64), geo.hessian_eigenvectors[:, -1]]:
        assert ricci_curvature(H, g, u) == pytest.approx((n - 1) / r**2, rel=1e-10)
        assert ricci_from_hvp(g, u, H @ u, geo.trace_shape) == pytest.approx((n - 1) / r**2, rel=1e-10)
    # the matrix-free route on the same surface. H has two distinct eigenvalues, so Lanczos stops at a
    # 2-dimensional invariant subspace and the rest is left to the probes: within 4 standard errors.
    sketch = krylov_sketch(lambda v: H @ v, n, n, torch.Generator().manual_seed(1), D64)
    assert sketch.basis.shape[0] == 2
    est = estimate_geometry(lambda v: H @ v, g, 16, torch.Generator().manual_seed(2), sketch=sketch)
    assert abs(est.scalar_curvature - n * (n - 1) / r**2) < 4 * est.scalar_curvature_stderr
    assert abs(est.mean_curvature - 1 / r) < 4 * est.mean_curvature_stderr


def _intrinsic_curvature(f, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ricci tensor and metric of G(x) = I + ∇f ∇fᵀ from Christoffel symbols (no extrinsic geometry).

    Γ^k_ij = ½ G^{kl}(∂_i G_jl + ∂_j G_il − ∂_l G_ij); R^ρ_{σμν} = ∂_μ Γ^ρ_{νσ} − ∂_ν Γ^ρ_{μσ}
    + Γ^ρ_{μλ} Γ^λ_{νσ} − Γ^ρ_{νλ} Γ^λ_{μσ}; Ric_{σν} = R^ρ_{σρν}.
    """
    from torch.func import grad, jacfwd

    n = x.numel()

    def metric(z):
        gz = grad(f)(z)
        return torch.eye(n, dtype=z.dtype) + torch.outer(gz, gz)

    def christoffel(z):
        dG = jacfwd(metric)(z)  # dG[a, b, c] = ∂_c G_ab
        # t[i, j, l] = ∂_i G_jl + ∂_j G_il − ∂_l G_ij
        t = torch.einsum("jli->ijl", dG) + torch.einsum("ilj->ijl", dG) - dG
        return 0.5 * torch.einsum("kl,ijl->kij", torch.linalg.inv(metric(z)), t)

    gam = christoffel(x)  # gam[k, i, j] = Γ^k_ij
    dgam = jacfwd(christoffel)(x)  # dgam[k, i, j, m] = ∂_m Γ^k_ij
    riem = (
        torch.einsum("rnsm->rsmn", dgam)
        - torch.einsum("rmsn->rsmn", dgam)
        + torch.einsum("rml,lns->rsmn", gam, gam)
        - torch.einsum("rnl,lms->rsmn", gam, gam)
    )  # riem[ρ, σ, μ, ν]
    ricci = torch.einsum("rsrn->sn", riem)
    return ricci, metric(x)


def test_gauss_equation_matches_intrinsic_curvature() -> None:
    """Scalar and Ricci curvature from S (Gauss equation) = those of the metric G = I + ∇f∇fᵀ itself."""

    def f(z):
        return 0.4 * z[0] ** 3 - z[0] * z[1] ** 2 + 0.5 * z[1] * z[2] + 0.7 * z[2] ** 2 + 0.3 * torch.sin(z[0] + 2 * z[2])

    x = torch.tensor([0.4, -0.7, 0.9], dtype=D64)
    H, g = _hess_grad(f, x)
    assert float(g.norm()) > 0.5
    ricci, G = _intrinsic_curvature(f, x)
    scalar_intrinsic = float(torch.einsum("ij,ij->", torch.linalg.inv(G), ricci))
    geo = exact_geometry(H, g)
    assert geo.scalar_curvature == pytest.approx(scalar_intrinsic, rel=1e-9, abs=1e-12)
    assert abs(scalar_intrinsic) > 1e-2  # a non-trivial check
    gen = torch.Generator().manual_seed(0)
    for u in [g, torch.randn(3, generator=gen, dtype=D64), torch.tensor([0.0, 0.0, 1.0], dtype=D64)]:
        intrinsic = float(u @ ricci @ u / (u @ G @ u))
        assert ricci_curvature(H, g, u) == pytest.approx(intrinsic, rel=1e-9, abs=1e-12)


def test_sphere_intrinsic_sign_convention() -> None:
    """The intrinsic helper itself: a round hemisphere has Ric = (n−1)/r² G (positive)."""
    r = 2.0
    x = torch.tensor([0.2, 0.5, -0.3], dtype=D64)
    ricci, G = _intrinsic_curvature(lambda z: -torch.sqrt(r * r - (z * z).sum()), x)
    assert torch.allclose(ricci, 2 / r**2 * G, atol=1e-10)


# ------------------------------------------------------------------------------------------ formulas


def _random_point(n: int, seed: int, grad_scale: float, negative: int = 3):
    gen = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=D64))[0]
    lam = torch.cat([torch.linspace(-1.0, -0.1, negative, dtype=D64), torch.logspace(-3, 1.5, n - negative, dtype=D64)])
    H = U @ torch.diag(lam) @ U.T
    g = grad_scale * torch.randn(n, generator=gen, dtype=D64)
    return H, g


@pytest.mark.parametrize("grad_scale", [0.0, 0.3, 3.0])
def test_moment_formulas_match_eigen_route(grad_scale: float) -> None:
    """The moment closed forms for tr S and R (``geometry/estimators.py``), and Ric from one HVP, against the eigenvalues of S."""
    H, g = _random_point(30, 0, grad_scale)
    geo = exact_geometry(H, g)
    q = 1 + float(g @ g)
    trH, trH2, gHg, gH2g = float(torch.trace(H)), float((H * H).sum()), float(g @ H @ g), float((H @ g) @ (H @ g))
    assert trace_shape_operator(trH, gHg, q) == pytest.approx(geo.trace_shape, rel=1e-12, abs=1e-12)
    R = scalar_curvature_from_moments(trH**2, trH2, trH, gHg, gH2g, q)
    assert R == pytest.approx(geo.scalar_curvature, rel=1e-11, abs=1e-11)
    # and via the non-symmetric S = q^{-1/2} G⁻¹ H directly
    S = (torch.eye(30, dtype=D64) - torch.outer(g, g) / q) @ H / math.sqrt(q)
    assert float(torch.trace(S) ** 2 - torch.trace(S @ S)) == pytest.approx(geo.scalar_curvature, rel=1e-11, abs=1e-11)
    kappa = torch.sort(torch.linalg.eigvals(S).real).values
    assert torch.allclose(kappa, geo.principal_curvatures, atol=1e-10)
    # K = det S = det H / q^{(n+2)/2}
    sign, logabs = torch.linalg.slogdet(S)
    assert float(sign) == geo.gauss_kronecker_sign == -1.0  # three negative eigenvalues
    assert float(logabs) == pytest.approx(geo.gauss_kronecker_log_abs, rel=1e-10)
    assert (geo.num_negative, geo.num_zero, geo.num_positive) == (3, 0, 27)
    # the section through all n eigenvectors is the whole surface: K itself
    s_all, l_all = section_gauss_kronecker(geo.hessian_eigenvalues, geo.hessian_eigenvectors, g)
    assert s_all == geo.gauss_kronecker_sign and l_all == pytest.approx(geo.gauss_kronecker_log_abs, rel=1e-10)
    # a Krylov sketch spanning R^n makes the matrix-free estimate exact (deflation leaves nothing)
    sk = krylov_sketch(lambda v: H @ v, 30, 30, torch.Generator().manual_seed(1), D64)
    est = estimate_geometry(lambda v: H @ v, g, 3, torch.Generator().manual_seed(2), sketch=sk)
    assert est.scalar_curvature == pytest.approx(geo.scalar_curvature, rel=1e-9, abs=1e-9)
    assert est.scalar_curvature_stderr < 1e-9 * max(1.0, abs(geo.scalar_curvature))
    gen = torch.Generator().manual_seed(5)
    for u in [g if grad_scale else torch.ones(30, dtype=D64), torch.randn(30, generator=gen, dtype=D64)]:
        assert ricci_from_hvp(g, u, H @ u, geo.trace_shape) == pytest.approx(ricci_curvature(H, g, u), rel=1e-10, abs=1e-12)


def test_ricci_sums_to_scalar_curvature() -> None:
    """Σ Ric(eᵢ, eᵢ) over a G-orthonormal frame equals R (checks Ricci's normalisation independently)."""
    H, g = _random_point(12, 3, 1.0)
    geo = exact_geometry(H, g)
    # eigenvectors of A mapped back by G^{-1/2} form a G-orthonormal frame of principal directions
    _, w = torch.linalg.eigh(symmetric_shape_operator(H, g))
    frame = metric_root(g, -0.5) @ w
    total = sum(ricci_curvature(H, g, frame[:, i]) for i in range(12))
    assert total == pytest.approx(geo.scalar_curvature, rel=1e-10)


@pytest.mark.parametrize("spectrum", ["outliers", "symmetric"])
def test_estimator_unbiased_and_stderr_calibrated(spectrum: str) -> None:
    """Over 300 seeds: the mean of R̂ is within 4 SE of R, and |R̂ − R| < 2·stderr in ~95 % of runs.

    Plain Hutchinson (no deflation), g ≠ 0. "symmetric" (tr H ≈ 0, large ‖H‖_F) is where squaring one
    trace estimate instead of pairing independent ones would be biased by many standard errors.
    """
    n = 60
    H, g = _random_point(n, 1, 0.5)
    if spectrum == "symmetric":
        U = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(9), dtype=D64))[0]
        lam = torch.linspace(-1.0, 1.0, n, dtype=D64)
        H = U @ torch.diag(lam) @ U.T
    exact = exact_geometry(H, g).scalar_curvature
    errs, ses, tr_errs, tr_ses = [], [], [], []
    for seed in range(300):
        est = estimate_geometry(lambda v: H @ v, g, 8, torch.Generator().manual_seed(seed))
        errs.append(est.scalar_curvature - exact)
        ses.append(est.scalar_curvature_stderr)
    errs_t, ses_t = torch.tensor(errs), torch.tensor(ses)
    bias_se = float(errs_t.std() / math.sqrt(len(errs)))
    assert abs(float(errs_t.mean())) < 4 * bias_se
    coverage = float((errs_t.abs() < 2 * ses_t).double().mean())
    assert 0.85 < coverage <= 1.0, coverage
    # the jackknife SE tracks the actual spread; it errs on the safe side where the U-statistic is
    # degenerate (tr H ≈ 0: measured 1.6×)
    ratio = float(ses_t.pow(2).mean().sqrt() / errs_t.std())
    assert 0.8 < ratio < (1.3 if spectrum == "outliers" else 2.0), ratio


def test_deflation_reduces_error() -> None:
    """A Krylov sketch of 15 steps makes R far more accurate at the same number of probes."""
    n = 80
    H, g = _random_point(n, 2, 0.5)
    exact = exact_geometry(H, g).scalar_curvature
    plain = estimate_geometry(lambda v: H @ v, g, 8, torch.Generator().manual_seed(0))
    sk = krylov_sketch(lambda v: H @ v, n, 15, torch.Generator().manual_seed(1), D64)
    defl = estimate_geometry(lambda v: H @ v, g, 8, torch.Generator().manual_seed(0), sketch=sk)
    assert defl.scalar_curvature_stderr < 0.2 * plain.scalar_curvature_stderr
    assert abs(defl.scalar_curvature - exact) < 4 * defl.scalar_curvature_stderr
    assert sk.frobenius_sq == pytest.approx(float(((H @ sk.basis.T) ** 2).sum()), rel=1e-10)
    assert sk.trace == pytest.approx(float(torch.einsum("in,nm,im->", sk.basis, H, sk.basis)), rel=1e-10)


def test_slq_inertia_unbiased() -> None:
    """With converged Ritz values the one-run SLQ counts are unbiased (mean over 200 seeds).

    (With fewer steps than needed to resolve the band edges, Gauss quadrature smears the step function
    and the counts are biased: the probe's inertia above ``exact_max_params`` is an order of magnitude.)
    """
    n = 50
    gen = torch.Generator().manual_seed(4)
    U = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=D64))[0]
    lam = torch.cat([-torch.logspace(-2, 0, 7, dtype=D64), torch.zeros(5, dtype=D64), torch.logspace(-2, 1, n - 12, dtype=D64)])
    H = U @ torch.diag(lam) @ U.T
    counts = torch.tensor(
        [krylov_sketch(lambda v: H @ v, n, n, torch.Generator().manual_seed(s), D64).inertia(1e-4) for s in range(200)],
        dtype=D64,
    )
    mean, se = counts.mean(0), counts.std(0) / math.sqrt(200)
    assert abs(float(mean[0]) - 7) < 4 * float(se[0]) and abs(float(mean[1]) - 5) < 4 * float(se[1])
    assert float(counts[:, 0].std()) < math.sqrt(2 * 7)  # sd(zᵀPz) <= √(2k) for Rademacher z


# ------------------------------------------------------------------------------------------ small models


CASES = {
    "tanh_mse": (lambda: mlp(4, 8, 1, nn.Tanh), regression_data, "mse"),
    "tanh_ce": (lambda: mlp(4, 5, 3, nn.Tanh, seed=3), classification_data, "ce"),
}


def _near_minimum(net: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Realisable targets from the network itself (soft labels for cross-entropy), then a 1e-6 nudge.

    The unperturbed weights are an exact global minimum (g = 0, H = Gauss–Newton), so the nudged point
    is a near-critical point — cheaper and cleaner than training to convergence.
    """
    with torch.no_grad():
        out = net(x)
        y = out.clone() if kind == "mse" else torch.softmax(out, dim=1)
        gen = torch.Generator().manual_seed(11)
        for p in net.parameters():
            p.add_(1e-6 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return y


@pytest.fixture(scope="module", params=[(c, m) for c in CASES for m in ("init", "minimum")], ids=lambda p: f"{p[0]}-{p[1]}")
def model_point(request):
    case, where = request.param
    build, data, kind = CASES[case]
    net = build()
    x, y = data(n=128)
    if where == "minimum":
        y = _near_minimum(net, x, kind)
    H, g = exact_hessian(net, lambda fwd: loss_value(fwd(x), y, kind))
    return net, x, y, kind, where, H, g


def _ctx(net, x, y, kind, step=1):
    return ProbeContext(net, lambda: loss_value(net(x), y, kind), step=step)


def test_estimators_match_exact_on_models(model_point) -> None:
    net, x, y, kind, where, H, g = model_point
    n = H.shape[0]
    gnorm = float(g.norm())
    if where == "init":
        assert gnorm > 1e-2
    else:
        assert gnorm < 1e-4  # (q − 1 < 1e-8: the curvature of the graph is that of H)
    ctx = _ctx(net, x, y, kind)
    op = ctx.hessian()
    H_op = full_hessian(op.matvec, n, D64)
    assert torch.allclose(H_op, H, atol=1e-10)
    geo = exact_geometry(H, g)

    # partial Krylov sketches (m < n) + 16 probes: within 4 standard errors; more steps, smaller errors
    for m in (10, 20, 30):
        sketch = krylov_sketch(op.matvec, n, m, torch.Generator().manual_seed(m), D64)
        est = estimate_geometry(op.matvec, op.gradient, 16, torch.Generator().manual_seed(1), sketch=sketch)
        assert abs(est.scalar_curvature - geo.scalar_curvature) < 4 * est.scalar_curvature_stderr, m
        assert abs(est.trace_shape - geo.trace_shape) < 4 * est.trace_shape_stderr, m
        assert abs(est.mean_curvature - geo.mean_curvature) < 4 * est.mean_curvature_stderr, m
    rel = abs(est.scalar_curvature - geo.scalar_curvature) / abs(geo.scalar_curvature)
    assert rel < 0.1, rel

    # the closed forms with exact moments: exact to rounding
    q = 1 + float(g @ g)
    trH = float(torch.trace(H))
    R = scalar_curvature_from_moments(trH**2, float((H * H).sum()), trH, float(g @ H @ g), float((H @ g).norm() ** 2), q)
    assert R == pytest.approx(geo.scalar_curvature, rel=1e-10)
    if where == "minimum":  # at a critical point R = (tr H)² − tr H²
        assert geo.scalar_curvature == pytest.approx(trH**2 - float((H * H).sum()), rel=1e-8)

    # Ricci along the gradient and the top eigenvector, from one HVP and the exact tr S
    top = geo.hessian_eigenvectors[:, -1]
    for u in ([top, g] if where == "init" else [top]):
        assert ricci_from_hvp(g, u, op.matvec(u), geo.trace_shape) == pytest.approx(ricci_curvature(H, g, u), rel=1e-9)

    # top-k Gauss–Kronecker: a Lanczos run spanning R^n gives the exact eigenpairs of H
    full = krylov_sketch(op.matvec, n, n, torch.Generator().manual_seed(2), D64)
    vals, vecs = full.topk(4)
    s_ritz, l_ritz = section_gauss_kronecker(vals, vecs, g)
    s_ex, l_ex = geo.topk_gauss_kronecker(4, g)
    assert s_ritz == s_ex and l_ritz == pytest.approx(l_ex, rel=1e-8)
    # the Ritz values of that run are H's distinct eigenvalues, so the SLQ inertia bands see the right
    # eigenvalues (only their weights are random: see test_slq_inertia_unbiased)
    scale = float(geo.hessian_eigenvalues.abs().max())
    dist = (full.ritz_values[:, None] - geo.hessian_eigenvalues[None, :]).abs().min(dim=1).values
    assert float(dist.max()) < 1e-9 * scale
    neg, zero, pos = full.inertia(1e-5)
    assert neg + zero + pos == pytest.approx(n)
    if geo.num_negative == 0:
        assert neg == 0.0


# ------------------------------------------------------------------------------------------ the probe


@pytest.mark.parametrize("deflate", [False, True], ids=["bounded", "deflated"])
@pytest.mark.parametrize("case", list(CASES))
def test_probe_exact_vs_estimate_modes(case: str, deflate: bool) -> None:
    build, data, kind = CASES[case]
    net = build()
    x, y = data(n=128)
    H, g = exact_hessian(net, lambda fwd: loss_value(fwd(x), y, kind))
    n = H.shape[0]
    geo = exact_geometry(H, g)
    exact = LossSurfaceGeometry().run(_ctx(net, x, y, kind)).scalars
    assert exact["exact"] == 1.0 and exact["geometry_hvps"] == n
    assert exact["scalar_curvature"] == pytest.approx(geo.scalar_curvature, rel=1e-9)
    assert exact["mean_curvature"] == pytest.approx(geo.mean_curvature, rel=1e-9)
    assert exact["ricci_gradient"] == pytest.approx(ricci_curvature(H, g, g), rel=1e-9)
    assert exact["gauss_kronecker_log_abs"] == pytest.approx(geo.gauss_kronecker_log_abs, rel=1e-9)
    assert exact["gauss_kronecker_sign"] == geo.gauss_kronecker_sign
    assert exact["num_negative"] == geo.num_negative

    probe = LossSurfaceGeometry(exact_max_params=0, num_samples=16, lanczos_steps=25, topk=3, deflate=deflate)
    ctx = _ctx(net, x, y, kind)
    est = probe.run(ctx).scalars
    # deflated: sketch (+1 for its last column), Hg, probes, Hu_top; bounded: recurrence, Hg, probes (the top
    # Ritz vector's Hu comes from the Lanczos relation)
    hvps = (25 + 1) + 1 + 16 + 1 if deflate else 25 + 1 + 16
    assert est["exact"] == 0.0 and est["geometry_hvps"] == hvps
    for key in ("scalar_curvature", "mean_curvature", "ricci_gradient", "ricci_top"):
        assert abs(est[key] - exact[key]) <= 4 * est[f"{key}_stderr"] + 1e-9, key
    assert set(est) <= set(LossSurfaceGeometry.scalar_tags) and set(exact) <= set(LossSurfaceGeometry.scalar_tags)
    assert est["num_negative"] + est["num_zero"] + est["num_positive"] == pytest.approx(n)
    assert ctx.extras["scalar_curvature"] == est["scalar_curvature"]
    # the spectrum probe's top vector is reused for ricci_top when present
    ctx2 = _ctx(net, x, y, kind)
    ctx2.extras["hessian_top_vector"] = geo.hessian_eigenvectors[:, -1]
    est2 = probe.run(ctx2).scalars
    ex_top = ricci_curvature(H, g, geo.hessian_eigenvectors[:, -1])
    assert abs(est2["ricci_top"] - ex_top) <= 4 * est2["ricci_top_stderr"] + 1e-9


def test_probe_float32_model_is_exact_enough() -> None:
    """A float32 model: the exact mode reproduces the float64 ground truth to float32 accuracy."""
    net = mlp(4, 6, 1, nn.Tanh, dtype=torch.float32)
    x, y = regression_data(n=32, dtype=torch.float32)
    out = LossSurfaceGeometry().run(_ctx(net, x, y, "mse")).scalars
    net64 = mlp(4, 6, 1, nn.Tanh, dtype=D64)
    H, g = exact_hessian(net64, lambda fwd: loss_value(fwd(x.double()), y.double(), "mse"))
    geo = exact_geometry(H, g)
    assert out["scalar_curvature"] == pytest.approx(geo.scalar_curvature, rel=1e-4)
    assert out["mean_curvature"] == pytest.approx(geo.mean_curvature, rel=1e-4)
    assert out["ricci_gradient"] == pytest.approx(ricci_curvature(H, g, g), rel=1e-3)
    est = LossSurfaceGeometry(exact_max_params=0, num_samples=8).run(_ctx(net, x, y, "mse")).scalars
    for key in ("scalar_curvature", "mean_curvature", "ricci_gradient", "ricci_top"):
        assert abs(est[key] - out[key]) <= 4 * est[f"{key}_stderr"] + 1e-4 * abs(out[key]), key
    assert est["gauss_kronecker_topk_log_abs"] == pytest.approx(out["gauss_kronecker_topk_log_abs"], abs=1e-3)


def test_probe_leaves_model_untouched() -> None:
    net = mlp(4, 6, 1, nn.Tanh)
    x, y = regression_data(n=16)
    before = [p.detach().clone() for p in net.parameters()]
    rng = torch.get_rng_state()
    for probe in (LossSurfaceGeometry(), LossSurfaceGeometry(exact_max_params=0, num_samples=4, lanczos_steps=10)):
        probe.run(_ctx(net, x, y, "mse"))
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters()))
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(rng, torch.get_rng_state())


def test_probe_registration_and_validation() -> None:
    assert PROBES["loss_geometry"] is LossSurfaceGeometry
    p = LossSurfaceGeometry()
    assert p.group == "geometry" and p.every_n_steps == 1000
    for kwargs, word in [
        ({"num_samples": 2}, "num_samples"),
        ({"exact_max_params": -1}, "exact_max_params"),
        ({"topk": 0}, "topk"),
        ({"lanczos_steps": 3, "topk": 5}, "lanczos_steps"),
        ({"zero_tol": 0.0}, "zero_tol"),
        ({"zero_tol": 2.0}, "zero_tol"),
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"num_samples": 4.5}, "num_samples"),
    ]:
        with pytest.raises((ValueError, TypeError), match=word):
            LossSurfaceGeometry(**kwargs)
    assert all(k in p.scalar_tags for keys in p.charts.values() for k in keys)


def test_monitor_end_to_end_does_not_change_training(tmp_path) -> None:
    """Under LandscapeMonitor the tags are logged, and training is bit-identical to a run without it."""
    from lightning_helpers import loaders, small_task, trainer

    from lightning_landscape.callbacks import LandscapeMonitor

    def fit(callbacks):
        torch.manual_seed(0)
        model = small_task(input_dim=4, hidden=(6,), dropout=0.2)
        trainer(max_steps=4, callbacks=callbacks).fit(model, loaders(n=64, batch_size=16, input_dim=4))
        return model

    monitor = LandscapeMonitor(probes=[LossSurfaceGeometry(every_n_steps=2)], on_error="raise")
    with_probe = fit([monitor])
    without = fit([])
    assert all(torch.equal(a, b) for a, b in zip(with_probe.parameters(), without.parameters()))
    values = monitor.summary()["last_values"]
    for key in ("scalar_curvature", "mean_curvature", "ricci_top", "gauss_kronecker_sign", "num_negative", "exact"):
        assert f"landscape/geometry/{key}" in values, key
    assert values["landscape/geometry/exact"] == 1.0 and math.isfinite(values["landscape/geometry/scalar_curvature"])


def test_bounded_ritz_pairs_survive_ghosts() -> None:
    """Plain float32 Lanczos (no basis) past convergence: the outliers get ghost copies with non-unit Ritz
    vectors and spurious values appear; the pairs the bounded probe uses are still the exact top-|λ| eigenvalues,
    their gradient projections |vᵀg| and, through the Lanczos relation, Ricci along the top eigenvector."""
    from lightning_landscape.geometry.estimators import ricci_from_moments
    from lightning_landscape.linalg.krylov import tridiagonal
    from lightning_landscape.probes.geometry import _recurrence_run

    n = 300
    gen = torch.Generator().manual_seed(3)
    U = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=D64))[0]
    lam = torch.cat([torch.tensor([40.0, 25.0, -18.0, 12.0, 9.0], dtype=D64), torch.linspace(-1.0, 2.0, n - 5, dtype=D64)])
    H = U @ torch.diag(lam) @ U.T
    g = 0.3 * torch.randn(n, generator=gen, dtype=D64)
    H32, g32 = H.float(), g.float()
    run = _recurrence_run(lambda v: H32 @ v, torch.randn(n, generator=gen).sign(), 60, g32)
    theta = torch.linalg.eigvalsh(tridiagonal(run.alphas, run.betas))
    assert int(((theta - 40.0).abs() < 1e-4).sum()) >= 2  # the run has ghosts of λmax: the case under test
    pairs = run.ritz_pairs(torch.finfo(torch.float32).eps)
    evals, evecs = torch.linalg.eigh(H)
    order = evals.abs().argsort(descending=True)[:5]
    for pair, i in zip(pairs[:5], order.tolist()):
        assert pair.value == pytest.approx(float(evals[i]), rel=1e-6)
        # the pair's Ritz vector has residual ≈ √ε·‖H‖ (float32): |yᵀg| to about that over the gap
        assert abs(pair.g_y) == pytest.approx(abs(float(evecs[:, i] @ g)), rel=2e-3)
    geo = exact_geometry(H, g)
    q = 1 + float(g @ g)
    top = max(pairs, key=lambda p: p.value)
    th, g_u, tail = top.value_at_step, top.g_y, top.tail
    ric = ricci_from_moments(1.0, th, th * th + tail * tail, g_u, th * g_u + tail * top.g_next, q, geo.trace_shape)
    assert ric == pytest.approx(ricci_curvature(H, g, evecs[:, -1]), rel=1e-4)
