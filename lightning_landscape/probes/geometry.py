"""Geometry of the loss surface: mean, scalar, Ricci and Gauss–Kronecker curvature of the graph of L."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from lightning_landscape.geometry.estimators import (
    KrylovSketch,
    estimate_geometry,
    geometry_from_samples,
    krylov_sketch,
    ricci_from_hvp,
    ricci_from_moments,
    ricci_second_form,
)
from lightning_landscape.geometry.exact import exact_geometry, full_hessian, ricci_curvature, section_gauss_kronecker
from lightning_landscape.linalg.dot import dot64
from lightning_landscape.linalg.krylov import LanczosRecurrence, tridiagonal
from lightning_landscape.linalg.random import rademacher
from lightning_landscape.linalg.reduction import global_dim, norm
from lightning_landscape.probes.base import Probe, ProbeResult, check_bool, check_positive_float, check_positive_int
from lightning_landscape.probes.context import ProbeContext


class LossSurfaceGeometry(Probe):
    """Curvature of the graph of the loss, ``{(θ, L(θ))} ⊂ R^{n+1}`` (not just of the Hessian).

    With ``g = ∇L``, ``q = 1 + |g|²`` and the shape operator ``S = q^{-1/2}(I + g gᵀ)⁻¹ H``: mean curvature
    ``tr S / n``, scalar curvature ``R = (tr S)² − tr S²``, Ricci curvature ``Ric(u, u)`` along the gradient
    and along the top Hessian eigenvector (u normalised in the induced metric), Gauss–Kronecker curvature
    ``K = det H / q^{(n+2)/2}``, and the inertia of H. Signs: a convex loss has positive curvatures.

    Up to ``exact_max_params`` parameters everything is exact: the dense Hessian is built from n HVPs and
    diagonalised in float64 (``exact`` = 1). Above it, ``K`` is only reported for the k-dimensional section
    through the top-k (largest |λ|) Ritz vectors, as ``gauss_kronecker_topk_*`` (also logged in exact mode,
    from the exact eigenvectors), and the rest is estimated with standard errors:

    * default (``deflate=False``, memory-bounded): one run of the plain three-term Lanczos recurrence of
      ``lanczos_steps`` steps from a Rademacher vector — no basis kept, two vectors between steps — gives the
      SLQ estimate of the inertia; the coefficients ``q_jᵀg`` accumulated on the way give ``Vᵀg`` and, with
      the Lanczos relation ``H Q = Q T + β q_{m+1} e_mᵀ``, the Ricci curvature along the top Ritz vector
      without forming it. Ghost copies and spurious Ritz values are filtered out, and each Ritz vector is
      taken at the step where its residual first falls below √ε‖H‖, before orthogonality along it is lost
      (Paige; see ``_RecurrenceRun.ritz_pairs``). The trace moments come from ``num_samples`` Rademacher
      probes plus the recurrence's own start vector (plain Hutchinson, no deflation). Cost
      ``lanczos_steps + num_samples + 1`` HVPs (+1 with the spectrum's top vector); memory: graph and
      gradient, two vectors and one product (``tests/test_probe_memory.py``).
    * ``deflate=True``: the Lanczos basis is kept and fully re-orthogonalised, and it deflates the probes
      (Hutch++-style, exact on the outlying eigenvalues that dominate the variance of R: standard errors
      several times smaller on spectra with a few dominant outliers) — at ``lanczos_steps`` + about ten
      parameter-sized vectors of memory and ``lanczos_steps + num_samples + 3`` HVPs.

    Args:
        every_n_steps: measure after every this many optimizer steps.
        num_samples: Rademacher probe vectors for the trace moments (>= 3: pairs and jackknife).
        exact_max_params: compute exactly (n HVPs + dense eigendecomposition) up to this many parameters;
            0 always estimates.
        topk: dimension of the Ritz section for ``gauss_kronecker_topk_*``.
        lanczos_steps: Lanczos steps of the Krylov sketch (estimate mode), at least ``topk``.
        zero_tol: eigenvalues with ``|λ| <= zero_tol · max|λ|`` count as near zero.
        deflate: keep the Lanczos basis and deflate the trace probes with it (see above; memory grows with
            ``lanczos_steps``).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        >>> x, y = torch.randn(32, 3), torch.randn(32, 1)
        >>> ctx = ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=1)
        >>> out = LossSurfaceGeometry().run(ctx).scalars
        >>> out["exact"], out["num_negative"] + out["num_zero"] + out["num_positive"]
        (1.0, 21.0)
    """

    name = "loss_geometry"
    group = "geometry"
    needs_hessian = True
    needs = ("hessian_top_vector",)
    provides = ("scalar_curvature",)
    default_every_n_steps = 1000
    cost = "exact (n ≤ 500 params): n HVPs + dense eigh; else ≈ 39 HVPs (deflate=True: ≈ 41)"
    scalar_tags = {
        "mean_curvature": "mean curvature tr(S)/n of the graph of L (average principal curvature)",
        "mean_curvature_stderr": "standard error of mean_curvature (0 when exact)",
        "scalar_curvature": "scalar curvature R = (tr S)² − tr(S²) = Σ_{i≠j} κᵢκⱼ of the graph of L",
        "scalar_curvature_stderr": "jackknife standard error of scalar_curvature over probe vectors (0 when exact)",
        "ricci_gradient": "Ricci curvature Ric(u,u) of the graph along the gradient (u G-unit); absent if g = 0",
        "ricci_top": "Ricci curvature Ric(u,u) along the top Hessian eigenvector (u G-unit)",
        "ricci_gradient_stderr": "standard error of ricci_gradient (0 when exact)",
        "ricci_top_stderr": "standard error of ricci_top (0 when exact)",
        "gauss_kronecker": "Gauss–Kronecker curvature det H / q^{(n+2)/2} (exact mode; absent if outside float64)",
        "gauss_kronecker_log_abs": "log|K| of the Gauss–Kronecker curvature (exact mode; absent if H singular)",
        "gauss_kronecker_sign": "sign of K = sign det H (exact mode): (-1)^(number of negative eigenvalues), 0 if singular",
        "gauss_kronecker_topk_log_abs": "log|K_k|, Gauss–Kronecker curvature of the section through the top-k "
        "(largest |λ|) eigen/Ritz vectors: Π λᵢ / (1 + |Vᵀg|²)^{(k+2)/2}",
        "gauss_kronecker_topk_sign": "sign of K_k (product of the signs of the top-k eigen/Ritz values)",
        "num_negative": "number of negative Hessian eigenvalues (exact, or SLQ estimate)",
        "num_zero": "number of near-zero Hessian eigenvalues, |λ| <= zero_tol·max|λ| (exact, or SLQ estimate)",
        "num_positive": "number of positive Hessian eigenvalues (exact, or SLQ estimate)",
        "gradient_norm": "|∇L| on the probe batch (q = 1 + |g|²)",
        "exact": "1 if computed from the dense Hessian, 0 if estimated",
        "geometry_hvps": "Hessian-vector products this measurement used",
    }
    charts = {
        "mean and scalar curvature": ["mean_curvature", "scalar_curvature"],
        "Ricci curvature": ["ricci_gradient", "ricci_top"],
        "Gauss–Kronecker (log|K|)": ["gauss_kronecker_log_abs", "gauss_kronecker_topk_log_abs"],
        "inertia": ["num_negative", "num_zero", "num_positive"],
    }

    def __init__(
        self,
        every_n_steps: int | None = None,
        num_samples: int = 8,
        exact_max_params: int = 500,
        topk: int = 5,
        lanczos_steps: int = 30,
        zero_tol: float = 1e-5,
        deflate: bool = False,
    ) -> None:
        super().__init__(every_n_steps)
        self.deflate = check_bool("LossSurfaceGeometry.deflate", deflate)
        self.num_samples = check_positive_int("LossSurfaceGeometry.num_samples", num_samples, 3)
        self.exact_max_params = check_positive_int("LossSurfaceGeometry.exact_max_params", exact_max_params, 0)
        self.topk = check_positive_int("LossSurfaceGeometry.topk", topk)
        self.lanczos_steps = check_positive_int("LossSurfaceGeometry.lanczos_steps", lanczos_steps, 2)
        if self.lanczos_steps < self.topk:
            raise ValueError(
                f"LossSurfaceGeometry.lanczos_steps must be >= topk ({self.topk}), got {self.lanczos_steps}"
            )
        self.zero_tol = check_positive_float("LossSurfaceGeometry.zero_tol", zero_tol)
        if self.zero_tol >= 1:
            raise ValueError(f"LossSurfaceGeometry.zero_tol must be in (0, 1), got {self.zero_tol}")

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "num_samples": self.num_samples,
            "exact_max_params": self.exact_max_params,
            "topk": self.topk,
            "lanczos_steps": self.lanczos_steps,
            "zero_tol": self.zero_tol,
            "deflate": self.deflate,
        }

    def run(self, ctx: ProbeContext) -> ProbeResult:
        op = ctx.hessian()
        start = op.num_matvecs
        g = op.gradient.detach()
        if not ctx.space.sharded and ctx.space.dim <= self.exact_max_params:  # dense: every product, one process
            scalars = self._exact(ctx, g)
        elif self.deflate:
            scalars = self._estimate(ctx, g)
        else:
            scalars = self._estimate_bounded(ctx, g)
        scalars["gradient_norm"] = float(norm(g.double()))
        scalars["geometry_hvps"] = float(op.num_matvecs - start)
        ctx.shared.scalar_curvature = scalars["scalar_curvature"]
        return ProbeResult(scalars=scalars)

    def _exact(self, ctx: ProbeContext, g: torch.Tensor) -> dict[str, float]:
        op = ctx.hessian()
        h = full_hessian(op.matvec, ctx.space.dim, ctx.space.dtype, ctx.space.device)
        if not torch.isfinite(h).all():
            raise FloatingPointError("the Hessian has NaN/Inf entries")
        geo = exact_geometry(h, g, self.zero_tol)
        top = geo.hessian_eigenvectors[:, -1]
        out = {
            "exact": 1.0,
            "mean_curvature": geo.mean_curvature,
            "mean_curvature_stderr": 0.0,
            "scalar_curvature": geo.scalar_curvature,
            "scalar_curvature_stderr": 0.0,
            "ricci_top": ricci_curvature(h, g, top),
            "ricci_top_stderr": 0.0,
            "gauss_kronecker_sign": geo.gauss_kronecker_sign,
            "num_negative": float(geo.num_negative),
            "num_zero": float(geo.num_zero),
            "num_positive": float(geo.num_positive),
        }
        if geo.gradient_norm > 0:
            out["ricci_gradient"] = ricci_curvature(h, g, g)
            out["ricci_gradient_stderr"] = 0.0
        if math.isfinite(geo.gauss_kronecker_log_abs):
            out["gauss_kronecker_log_abs"] = geo.gauss_kronecker_log_abs
            k_value = geo.gauss_kronecker
            if math.isfinite(k_value) and k_value != 0.0:
                out["gauss_kronecker"] = k_value
        sign_k, log_k = geo.topk_gauss_kronecker(self.topk, g)
        out.update(self._topk_scalars(sign_k, log_k))
        return out

    def _estimate(self, ctx: ProbeContext, g: torch.Tensor) -> dict[str, float]:
        op = ctx.hessian()
        space = ctx.space
        gen = ctx.generator(self.name)
        sketch = krylov_sketch(op.matvec, space.dim, self.lanczos_steps, gen, space.dtype, space.device)
        hg = op.matvec(g)
        est = estimate_geometry(op.matvec, g, self.num_samples, gen, sketch=sketch, h_gradient=hg)
        neg, zero, pos = sketch.inertia(self.zero_tol)
        out = {**_estimated_curvatures(est), "num_negative": neg, "num_zero": zero, "num_positive": pos}
        # The top direction the spectrum probe logged λmax for, when it ran first; else our own Ritz vector.
        top = ctx.shared.hessian_top_vector
        if not isinstance(top, torch.Tensor) or top.numel() != space.dim or not torch.isfinite(top).all():
            top = sketch.top_vector()
        top = top.detach().to(dtype=g.dtype, device=g.device).reshape(-1)
        # One direction at a time: u and Hu of the top direction are released before the gradient's.
        for key in ("ricci_top", "ricci_gradient"):
            if key == "ricci_top":
                u, hu = top, op.matvec(top)
                del top
            elif float(norm(g)) > 0:
                u, hu = g, hg
            else:
                continue
            out[key] = ricci_from_hvp(g, u, hu, est.trace_shape)
            out[f"{key}_stderr"] = abs(ricci_second_form(g, u, hu)) * est.trace_shape_stderr
            del u, hu
        # K_k needs only Vᵀg: taken from the Lanczos coefficients, the k Ritz vectors are never formed.
        idx = sketch.topk_indices(self.topk)
        vg = sketch.ritz_projections(idx, g)
        out.update(self._topk_scalars(*section_gauss_kronecker(sketch.ritz_values[idx], torch.eye(vg.numel(),
                                                                dtype=torch.float64), vg)))
        return out

    def _estimate_bounded(self, ctx: ProbeContext, g: torch.Tensor) -> dict[str, float]:
        """The memory-bounded estimate: no basis, one product's vectors at a time (see the class docstring)."""
        op = ctx.hessian()
        space = ctx.space
        gen = ctx.generator(self.name)
        run = _recurrence_run(op.matvec, rademacher(space.dim, gen, space.dtype, space.device), self.lanczos_steps, g)
        # Hg: its inner products are all the curvatures need (Ricci along g too); the vector goes at once.
        hg = op.matvec(g)
        a, b, g2 = dot64(g, hg), dot64(hg, hg), dot64(g, g)
        del hg
        q = 1.0 + g2
        # Trace moments: the recurrence's Rademacher start vector s is one sample (sᵀHs = n·α₁,
        # |Hs|² = n·(α₁² + β₁²)), then num_samples fresh probes, one probe and its product at a time.
        n_all = space.global_dim  # sᵀHs = n·α₁ for the whole vector (sharded: every process's entries)
        t = [n_all * run.alphas[0]]
        f = [n_all * (run.alphas[0] ** 2 + (run.betas[0] ** 2 if run.betas else 0.0))]
        for _ in range(self.num_samples):
            z = rademacher(space.dim, gen, space.dtype, space.device)
            hz = op.matvec(z)
            t.append(dot64(z, hz))
            f.append(dot64(hz, hz))
            del z, hz
        est = geometry_from_samples(torch.tensor(t, dtype=torch.float64), torch.tensor(f, dtype=torch.float64),
                                    a, b, q, n_all, len(run.alphas) + 1 + self.num_samples)
        out = _estimated_curvatures(est)
        out["num_negative"], out["num_zero"], out["num_positive"] = run.sketch(n_all).inertia(self.zero_tol)
        if g2 > 0:  # u = g: |u|² = gᵀu = |g|², uᵀHu = gᵀHu = gᵀHg, |Hu|² = |Hg|²
            out["ricci_gradient"] = ricci_from_moments(g2, a, b, g2, a, q, est.trace_shape)
            out["ricci_gradient_stderr"] = abs(a / math.sqrt(q) / (g2 + g2 * g2)) * est.trace_shape_stderr
        pairs = run.ritz_pairs(torch.finfo(space.dtype).eps)
        top = ctx.shared.hessian_top_vector
        if isinstance(top, torch.Tensor) and top.numel() == space.dim and bool(torch.isfinite(top).all()):
            u = top.detach().to(dtype=g.dtype, device=g.device).reshape(-1)
            hu = op.matvec(u)
            out["ricci_top"] = ricci_from_hvp(g, u, hu, est.trace_shape)
            out["ricci_top_stderr"] = abs(ricci_second_form(g, u, hu)) * est.trace_shape_stderr
            del u, hu
        else:  # the top Ritz vector y (unit): yᵀHy = θ, Hy = θ y + β s_j q_{j+1}
            pair = max(pairs, key=lambda p: p.value)
            th, g_u, tail = pair.value_at_step, pair.g_y, pair.tail
            g_hu = th * g_u + tail * pair.g_next
            out["ricci_top"] = ricci_from_moments(1.0, th, th * th + tail * tail, g_u, g_hu, q, est.trace_shape)
            out["ricci_top_stderr"] = abs(th / math.sqrt(q) / (1.0 + g_u * g_u)) * est.trace_shape_stderr
        if getattr(op, "error_estimate", None) is not None:
            # Finite-difference products (sharded parameters): ghost copies and spurious Ritz values of the
            # basis-free run are told apart at the products' rounding level, which their error (≈ 1e-4)
            # swamps; the top-k section is then not measured (absent, not a wrong value). deflate=True
            # (a kept, re-orthogonalised basis) measures it.
            return out
        section = pairs[: self.topk]  # decreasing |θ|
        vals = torch.tensor([p.value for p in section], dtype=torch.float64)
        vg = torch.tensor([p.g_y for p in section], dtype=torch.float64)
        out.update(self._topk_scalars(*section_gauss_kronecker(vals, torch.eye(vals.numel(), dtype=torch.float64), vg)))
        return out

    @staticmethod
    def _topk_scalars(sign: float, log_abs: float) -> dict[str, float]:
        out = {"gauss_kronecker_topk_sign": sign}
        if math.isfinite(log_abs):
            out["gauss_kronecker_topk_log_abs"] = log_abs
        return out


class _RitzPair(NamedTuple):
    """A Ritz value of the whole run and, at the step j its Ritz vector y comes from, ``yᵀHy``, ``yᵀg``,
    ``β_j s_j`` and ``q_{j+1}ᵀg`` (so ``Hy = θ_j y + β_j s_j q_{j+1}``)."""

    value: float
    value_at_step: float
    g_y: float
    tail: float
    g_next: float


def _estimated_curvatures(est: Any) -> dict[str, float]:
    """The scalars both estimates report the same way (mean and scalar curvature with their errors)."""
    return {
        "exact": 0.0,
        "mean_curvature": est.mean_curvature,
        "mean_curvature_stderr": est.mean_curvature_stderr,
        "scalar_curvature": est.scalar_curvature,
        "scalar_curvature_stderr": est.scalar_curvature_stderr,
    }


@dataclass
class _RecurrenceRun:
    """One plain Lanczos run (no basis): α, β and the coefficients ``c_j = q_jᵀg`` of the gradient along
    the Lanczos vectors ``q_1 … q_{m+1}`` (``m + 1`` of them unless the run found an invariant subspace)."""

    alphas: list[float]
    betas: list[float]
    coefficients: list[float]

    def sketch(self, dim: int) -> KrylovSketch:
        """The whole run as an SLQ sample (ghost copies of converged values share their weight): the inertia."""
        t = tridiagonal(self.alphas, self.betas)
        theta, s = torch.linalg.eigh(t)
        beta = self.betas[len(self.alphas) - 1] if len(self.betas) >= len(self.alphas) else 0.0
        return KrylovSketch(blocks=[], tridiagonal=t, ritz_values=theta, ritz_coefficients=s,
                            trace=float(torch.trace(t)), frobenius_sq=0.0, dim=dim, num_matvecs=len(self.alphas), residual_norm=beta)

    def _eig(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.linalg.eigh(tridiagonal(self.alphas[:j], self.betas[:j]))

    def ritz_pairs(self, eps: float) -> list[_RitzPair]:
        """The distinct Ritz values of the run with a unit Ritz vector ``y`` each, by decreasing |θ|.

        Without re-orthogonalisation a converged Ritz value gets ghost copies whose Ritz vectors ``y = Q s``
        are no longer unit (measured 0.3–1.4), and unconverged *spurious* values appear (Cullum & Willoughby:
        simple eigenvalues of T that T without its first row and column shares). Spurious values are dropped
        (the values themselves, from the whole run, are accurate: Paige). Each value's pair is taken at the
        first step j where its residual ρ is below √ε‖H‖ (``eps``: the vectors' machine epsilon): the Lanczos
        vectors have then lost at most ≈ ε‖H‖/ρ ≤ √ε of their orthogonality along it, so its Ritz vector is
        unit to that accuracy (no ghost has begun to form) and ``yᵀg = sᵀc`` with ``c = Q g`` accumulated on
        the way; a value that never gets there is taken from the whole run. ``β_j s_j`` and ``q_{j+1}ᵀg``
        give ``Hy = θ y + β_j s_j q_{j+1}`` (the Lanczos relation, which holds without orthogonality).
        """
        m = len(self.alphas)
        theta, s = self._eig(m)
        scale = max(float(theta.abs().max()), 1e-300)
        close = _GHOST_TOL * scale
        if m > 1:
            hat = torch.linalg.eigvalsh(tridiagonal(self.alphas[1:m], self.betas[1:m]))
        else:
            hat = theta.new_empty(0)
        values: list[float] = []
        for i in range(m):
            th = float(theta[i])
            copies = int(((theta - th).abs() <= close).sum())
            spurious = copies == 1 and hat.numel() > 0 and float((hat - th).abs().min()) <= _SPURIOUS_TOL * scale
            if not spurious and not any(abs(th - v) <= close for v in values):
                values.append(th)
        pairs = []
        floor = math.sqrt(eps) * scale
        steps = [self._eig(j) for j in range(1, m)] + [(theta, s)]
        for th in sorted(values, key=abs, reverse=True):
            j, i = m, int((theta - th).abs().argmin())  # unconverged to √ε: the whole run's (single) pair
            for step, (tj, sj) in enumerate(steps, start=1):
                k = int((tj - th).abs().argmin())
                beta = self.betas[step - 1] if len(self.betas) >= step else 0.0
                single = int(((tj - tj[k]).abs() <= close).sum()) == 1
                if single and beta * abs(float(sj[-1, k])) <= floor:  # converged to √ε: no ghost yet
                    j, i = step, k
                    break
            tj, sj = steps[j - 1]
            col = sj[:, i]
            c = torch.tensor(self.coefficients[:j], dtype=torch.float64)
            beta = self.betas[j - 1] if len(self.betas) >= j else 0.0
            c_next = self.coefficients[j] if len(self.coefficients) > j else 0.0
            pairs.append(_RitzPair(th, float(tj[i]), float(col @ c), beta * float(col[-1]), c_next))
        return pairs


#: Ritz values within this fraction of the spectral scale are copies of one value (ghosts of a converged
#: eigenvalue agree to about its squared residual; distinct eigenvalues that close are one for Lanczos too).
_GHOST_TOL = 1e-6
#: A simple Ritz value this close to an eigenvalue of T without its first row and column is spurious (its
#: first component vanishes: Cullum & Willoughby 1985); genuine values sit far further away.
_SPURIOUS_TOL = 1e-10


def _recurrence_run(matvec: Any, v0: torch.Tensor, steps: int, gradient: torch.Tensor) -> _RecurrenceRun:
    """``steps`` steps of the plain recurrence from ``v0`` (normalised in place), recording ``q_jᵀg`` as it goes."""
    rec = LanczosRecurrence(matvec, v0)
    coefficients = [dot64(rec.q, gradient)]
    for _ in range(min(steps, global_dim(v0.numel()))):
        if not rec.step():
            break
        coefficients.append(dot64(rec.q, gradient))
    return _RecurrenceRun(rec.alphas, rec.betas, coefficients)
