"""Exact curvature of the graph of L, ``{(θ, L(θ))} ⊂ R^{n+1}``, from the full Hessian and gradient.

Notation: ``g = ∇L``, ``H = ∇²L``, ``q = 1 + |g|²``. In the parameter coordinates the induced metric is
``G = I + g gᵀ`` and, for the upward normal ``(−g, 1)/√q``, the shape operator is
``S = q^{-1/2} G⁻¹ H`` (so a convex L has positive curvatures). ``S`` is self-adjoint for ``G`` but not
symmetric; in the G-orthonormal coordinates ``y = G^{1/2} x`` it becomes the symmetric matrix

    A = G^{-1/2} H G^{-1/2} / √q,     G^{±1/2} = I + (q^{±1/2} − 1) ĝ ĝᵀ   (ĝ = g/|g|),

whose eigenvalues are the principal curvatures κᵢ. From them:

* mean curvature ``tr S / n`` (the average of the κᵢ);
* scalar curvature ``R = (tr S)² − tr(S²) = Σ_{i≠j} κᵢ κⱼ`` (Gauss equation; ``2K`` for a surface);
* Ricci curvature in a tangent direction u, normalised to G-unit length:
  ``Ric(u, u) = (tr S) ⟨Su, u⟩_G − ⟨Su, Su⟩_G``;
* Gauss–Kronecker curvature ``K = det S = det H / q^{(n+2)/2}`` (kept as sign and log|K|, it over- and
  underflows for moderate n).

Everything here is dense linear algebra in float64 and is meant for n up to a few thousand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Matvec = Callable[[torch.Tensor], torch.Tensor]


def full_hessian(matvec: Matvec, dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """The dense Hessian from ``dim`` Hessian-vector products with the unit vectors, symmetrised, float64.

    >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    >>> full_hessian(lambda v: A @ v, 2)
    tensor([[2., 1.],
            [1., 3.]], dtype=torch.float64)
    """
    cols = []
    for i in range(dim):
        e = torch.zeros(dim, dtype=dtype, device=device)
        e[i] = 1.0
        cols.append(matvec(e).detach().to(torch.float64).cpu())
    h = torch.stack(cols, dim=1)
    return 0.5 * (h + h.T)


def _as64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def metric_root(gradient: torch.Tensor, power: float) -> torch.Tensor:
    """``G^power`` for ``G = I + g gᵀ`` (eigenvalue ``q`` along g, 1 across), as a dense float64 matrix.

    >>> g = torch.tensor([3.0, 4.0])
    >>> G = torch.eye(2, dtype=torch.float64) + torch.outer(g, g).double()
    >>> bool(torch.allclose(metric_root(g, 0.5) @ metric_root(g, 0.5), G))
    True
    """
    g = _as64(gradient).reshape(-1)
    n = g.numel()
    g2 = float(g @ g)
    eye = torch.eye(n, dtype=torch.float64)
    if g2 == 0.0:
        return eye
    q = 1.0 + g2
    return eye + (q**power - 1.0) / g2 * torch.outer(g, g)


def symmetric_shape_operator(hessian: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """``A = G^{-1/2} H G^{-1/2} / √q``: symmetric, similar to the shape operator S, float64.

    >>> H = torch.diag(torch.tensor([1.0, 2.0]))
    >>> symmetric_shape_operator(H, torch.zeros(2))  # at a critical point S = H
    tensor([[1., 0.],
            [0., 2.]], dtype=torch.float64)
    """
    h = _as64(hessian)
    h = 0.5 * (h + h.T)
    g = _as64(gradient).reshape(-1)
    q = 1.0 + float(g @ g)
    root = metric_root(g, -0.5)
    a = root @ h @ root / math.sqrt(q)
    return 0.5 * (a + a.T)


def principal_curvatures(hessian: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """The principal curvatures κᵢ (eigenvalues of S), ascending, float64.

    >>> H = torch.eye(2) * 2.0; g = torch.tensor([1.0, 0.0])   # z = x² + y² at (1/2, 0)
    >>> principal_curvatures(H, g)   # 2/q^{3/2} along the slope, 2/q^{1/2} across (q = 2)
    tensor([0.7071, 1.4142], dtype=torch.float64)
    """
    return torch.linalg.eigvalsh(symmetric_shape_operator(hessian, gradient))


def ricci_curvature(hessian: torch.Tensor, gradient: torch.Tensor, direction: torch.Tensor) -> float:
    """``Ric(u, u)`` of the graph for the tangent direction ``u`` (parameter coordinates), G-normalised.

    Computed in G-orthonormal coordinates: ``y = G^{1/2} u / |G^{1/2} u|``,
    ``Ric = tr(A) yᵀA y − |A y|²``.

    >>> H = torch.eye(3) * 2.0   # paraboloid z = |x|² at its vertex: κ = 2, Ric = (n−1) κ² = 8
    >>> ricci_curvature(H, torch.zeros(3), torch.tensor([1.0, 0.0, 0.0]))
    8.0
    """
    a = symmetric_shape_operator(hessian, gradient)
    y = metric_root(gradient, 0.5) @ _as64(direction).reshape(-1)
    norm = float(torch.linalg.vector_norm(y))
    if norm == 0.0:
        raise ValueError("direction must be non-zero")
    y = y / norm
    ay = a @ y
    return float(torch.trace(a) * (y @ ay) - ay @ ay)


def gauss_kronecker(hessian: torch.Tensor, gradient: torch.Tensor) -> tuple[float, float]:
    """``K = det H / q^{(n+2)/2}`` as ``(sign, log|K|)``; sign 0 and log −inf for a singular H.

    >>> H = torch.eye(2) * 2.0
    >>> s, la = gauss_kronecker(H, torch.tensor([1.0, 0.0]))   # 4 / 2² = 1
    >>> s, round(la, 12)
    (1.0, 0.0)
    """
    h = _as64(hessian)
    g = _as64(gradient).reshape(-1)
    q = 1.0 + float(g @ g)
    sign, logabs = torch.linalg.slogdet(0.5 * (h + h.T))
    if float(sign) == 0.0:
        return 0.0, -math.inf
    return float(sign), float(logabs) - 0.5 * (h.shape[0] + 2) * math.log(q)


def section_gauss_kronecker(values: torch.Tensor, vectors: torch.Tensor,
                            gradient: torch.Tensor) -> tuple[float, float]:
    """Gauss–Kronecker curvature of the k-dimensional section of the graph through ``span(vectors)``.

    For orthonormal ``vectors`` V (k columns) that diagonalise H on their span (eigen- or Ritz vectors
    with ``Vᵀ H V = diag(values)``), the restriction ``c ↦ L(θ + V c)`` has gradient ``Vᵀ g`` and Hessian
    ``diag(values)``, so ``K_k = Π values / (1 + |Vᵀ g|²)^{(k+2)/2}``. Returned as ``(sign, log|K_k|)``.

    >>> section_gauss_kronecker(torch.tensor([2.0, -3.0]), torch.eye(3)[:, :2], torch.zeros(3))[0]
    -1.0
    """
    vals = _as64(values).reshape(-1)
    k = vals.numel()
    vg = _as64(vectors).reshape(-1, k).T @ _as64(gradient).reshape(-1)
    qk = 1.0 + float(vg @ vg)
    if bool((vals == 0).any()):
        return 0.0, -math.inf
    sign = float(torch.prod(torch.sign(vals)))
    return sign, float(torch.log(vals.abs()).sum()) - 0.5 * (k + 2) * math.log(qk)


def inertia(values: torch.Tensor, zero_tol: float) -> tuple[int, int, int]:
    """Counts of (negative, near-zero, positive) values; near zero means ``|λ| <= zero_tol · max|λ|``.

    >>> inertia(torch.tensor([-1.0, 1e-9, 0.5, 2.0]), 1e-6)
    (1, 1, 2)
    """
    vals = _as64(values).reshape(-1)
    band = zero_tol * float(vals.abs().max()) if vals.numel() else 0.0
    zero = int((vals.abs() <= band).sum())
    neg = int((vals < -band).sum())
    return neg, zero, vals.numel() - neg - zero


@dataclass
class ExactGeometry:
    """Curvatures of the graph of L at one point, computed from the dense Hessian (see module docs).

    ``hessian_eigenvalues``/``hessian_eigenvectors`` (columns) are those of H itself (ascending);
    ``num_negative/num_zero/num_positive`` are H's inertia, which equals S's (Sylvester).
    """

    principal_curvatures: torch.Tensor
    hessian_eigenvalues: torch.Tensor
    hessian_eigenvectors: torch.Tensor
    gradient_norm: float
    q: float
    trace_shape: float
    mean_curvature: float
    scalar_curvature: float
    gauss_kronecker_sign: float
    gauss_kronecker_log_abs: float
    num_negative: int
    num_zero: int
    num_positive: int

    @property
    def dim(self) -> int:
        return self.principal_curvatures.numel()

    @property
    def gauss_kronecker(self) -> float:
        """``K`` itself; 0.0 or ±inf where it leaves the float64 range (use sign and log|K|)."""
        if self.gauss_kronecker_sign == 0.0:
            return 0.0
        if self.gauss_kronecker_log_abs > 709.0:
            return self.gauss_kronecker_sign * math.inf
        return self.gauss_kronecker_sign * math.exp(self.gauss_kronecker_log_abs)

    def topk_gauss_kronecker(self, k: int, gradient: torch.Tensor) -> tuple[float, float]:
        """``section_gauss_kronecker`` through the k eigenvectors of H of largest |λ|."""
        k = min(k, self.dim)
        idx = torch.argsort(self.hessian_eigenvalues.abs(), descending=True)[:k]
        return section_gauss_kronecker(self.hessian_eigenvalues[idx], self.hessian_eigenvectors[:, idx], gradient)


def exact_geometry(hessian: torch.Tensor, gradient: torch.Tensor, zero_tol: float = 1e-5) -> ExactGeometry:
    """All curvatures of the graph of L from the dense Hessian and the gradient (float64).

    Example — the lower hemisphere ``L(x) = r − √(r² − |x|²)`` of radius r has every principal curvature
    ``1/r`` at every point, so ``R = n(n−1)/r²`` and ``K = r^{-n}``:

    >>> r, x = 2.0, torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    >>> f = lambda z: r - torch.sqrt(r**2 - (z * z).sum())
    >>> H = torch.autograd.functional.hessian(f, x)
    >>> g = torch.autograd.functional.jacobian(f, x)
    >>> geo = exact_geometry(H, g)
    >>> round(geo.mean_curvature, 10), round(geo.scalar_curvature, 10), round(geo.gauss_kronecker, 10)
    (0.5, 1.5, 0.125)
    """
    h = _as64(hessian)
    h = 0.5 * (h + h.T)
    g = _as64(gradient).reshape(-1)
    if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] != g.numel():
        raise ValueError(f"hessian must be n×n and gradient n-long, got {tuple(h.shape)} and {g.numel()}")
    q = 1.0 + float(g @ g)
    kappa = principal_curvatures(h, g)
    evals, evecs = torch.linalg.eigh(h)
    tr_s = float(kappa.sum())
    scalar = tr_s**2 - float(kappa @ kappa)
    sign, logabs = gauss_kronecker(h, g)
    neg, zero, pos = inertia(evals, zero_tol)
    return ExactGeometry(
        principal_curvatures=kappa,
        hessian_eigenvalues=evals,
        hessian_eigenvectors=evecs,
        gradient_norm=math.sqrt(q - 1.0),
        q=q,
        trace_shape=tr_s,
        mean_curvature=tr_s / kappa.numel(),
        scalar_curvature=scalar,
        gauss_kronecker_sign=sign,
        gauss_kronecker_log_abs=logabs,
        num_negative=neg,
        num_zero=zero,
        num_positive=pos,
    )
