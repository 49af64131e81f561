"""Geometry of the loss surface: mean, scalar, Ricci and Gauss–Kronecker curvature of the graph of L."""

from __future__ import annotations

import math
from typing import Any

import torch

from lightning_landscape.geometry.estimators import (
    estimate_geometry,
    krylov_sketch,
    ricci_from_hvp,
    ricci_second_form,
)
from lightning_landscape.geometry.exact import exact_geometry, full_hessian, ricci_curvature, section_gauss_kronecker
from lightning_landscape.linalg.reduction import norm
from lightning_landscape.probes.base import Probe, ProbeResult, check_positive_float, check_positive_int
from lightning_landscape.probes.context import ProbeContext


class LossSurfaceGeometry(Probe):
    """Curvature of the graph of the loss, ``{(θ, L(θ))} ⊂ R^{n+1}`` (not just of the Hessian).

    With ``g = ∇L``, ``q = 1 + |g|²`` and the shape operator ``S = q^{-1/2}(I + g gᵀ)⁻¹ H``: mean curvature
    ``tr S / n``, scalar curvature ``R = (tr S)² − tr S²``, Ricci curvature ``Ric(u, u)`` along the gradient
    and along the top Hessian eigenvector (u normalised in the induced metric), Gauss–Kronecker curvature
    ``K = det H / q^{(n+2)/2}``, and the inertia of H. Signs: a convex loss has positive curvatures.

    Up to ``exact_max_params`` parameters everything is exact: the dense Hessian is built from n HVPs and
    diagonalised in float64 (``exact`` = 1). Above it, one Lanczos run of ``lanczos_steps`` steps deflates
    ``num_samples`` Hutchinson probes (standard errors reported), gives an SLQ estimate of the inertia and
    the top-k Ritz pairs; ``K`` is then only reported for the k-dimensional section through the top-k
    (largest |λ|) Ritz vectors, as ``gauss_kronecker_topk_*`` (also logged in exact mode, from the exact
    eigenvectors). Cost above the threshold: ``lanczos_steps + num_samples + 3`` HVPs; memory: the
    ``lanczos_steps`` basis vectors plus about ten more (graph, gradient, a probe, ``Hg``, one product) —
    the Ritz vectors of the section are never formed (``Vᵀg`` comes from the Lanczos coefficients).

    Args:
        every_n_steps: measure after every this many optimizer steps.
        num_samples: Rademacher probe vectors for the trace moments (>= 3: pairs and jackknife).
        exact_max_params: compute exactly (n HVPs + dense eigendecomposition) up to this many parameters;
            0 always estimates.
        topk: dimension of the Ritz section for ``gauss_kronecker_topk_*``.
        lanczos_steps: Lanczos steps of the Krylov sketch (estimate mode), at least ``topk``.
        zero_tol: eigenvalues with ``|λ| <= zero_tol · max|λ|`` count as near zero.

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
    cost = "exact (n ≤ 500 params): n HVPs + dense eigh; else ≈ 41 HVPs"
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
    ) -> None:
        super().__init__(every_n_steps)
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
        }

    def run(self, ctx: ProbeContext) -> ProbeResult:
        op = ctx.hessian()
        start = op.num_matvecs
        g = op.gradient.detach()
        if not ctx.space.sharded and ctx.space.dim <= self.exact_max_params:  # dense: every product, one process
            scalars = self._exact(ctx, g)
        else:
            scalars = self._estimate(ctx, g)
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
        out = {
            "exact": 0.0,
            "mean_curvature": est.mean_curvature,
            "mean_curvature_stderr": est.mean_curvature_stderr,
            "scalar_curvature": est.scalar_curvature,
            "scalar_curvature_stderr": est.scalar_curvature_stderr,
            "num_negative": neg,
            "num_zero": zero,
            "num_positive": pos,
        }
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

    @staticmethod
    def _topk_scalars(sign: float, log_abs: float) -> dict[str, float]:
        out = {"gauss_kronecker_topk_sign": sign}
        if math.isfinite(log_abs):
            out["gauss_kronecker_topk_log_abs"] = log_abs
        return out
