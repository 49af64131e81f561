"""Closed-form L2 thresholds of deep linear networks (after Ziyin & Ueda 2022, "Exact phase transitions
in deep learning"). The derivation, with its conventions, is in ``docs/l2_theory.md``; in short:

Conventions: ``L(θ) = E[(f(x) − y)²]`` (torch ``mse_loss``, mean reduction, no ½), penalty ``β‖θ‖²`` on
every weight, ``f(x) = W_D ⋯ W_1 x`` with ``D = hidden_layers + 1`` weight matrices and no biases, scalar
output. ``b = E[x y]`` and ``Σ = E[x xᵀ]``; "whitened" means ``Σ = I``. (Torch SGD/Adam
``weight_decay = 2β``; with a ½MSE loss every β below halves.)

For the end-to-end vector ``v = W_D⋯W_1`` the smallest ``‖θ‖²`` that represents it is ``D‖v‖^{2/D}``
(balanced, rank one), so with whitened inputs the problem reduces to the radius ``r = ‖v‖`` along ``b``:

    F(r) = E[y²] − 2‖b‖r + r² + βD r^{2/D}

* ``D = 2`` (one hidden layer): ``β_c = ‖b‖`` — and this holds for any Σ (the reduced problem is convex,
  with the nuclear norm); the minimiser ``r* = ‖b‖ − β`` goes to 0 continuously (second order).
* ``D ≥ 3``: ``F(r*) = F(0)`` and ``F'(r*) = 0`` give ``r* = ‖b‖(D−2)/(D−1)`` and
  ``β_c = ‖b‖/(D−1) · (‖b‖(D−2)/(D−1))^{(D−2)/D}``; two hidden layers: ``β_c = (‖b‖/2)^{4/3}``, the
  radius jumps from ``‖b‖/2`` to 0 (first order). The trained branch survives as a local minimum up
  to the spinodal ``β_sp = D/(D−2) · (‖b‖(D−2)/(2(D−1)))^{2(D−1)/D}`` (= 3(‖b‖/4)^{4/3} ≈ 1.19 β_c for
  two hidden layers), and the collapsed point is a local minimum for every β > 0: sweeping β up
  collapses at ``β_sp``, sweeping back down never recovers (hysteresis).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "cross_moment_norm",
    "deep_linear_critical_beta",
    "deep_linear_order",
    "deep_linear_radius",
    "deep_linear_spinodal",
    "is_whitened",
    "linear_critical_beta",
    "whiten",
]


def whiten(x: torch.Tensor) -> torch.Tensor:
    """``x Σ^{-1/2}`` with ``Σ = xᵀx/N`` (second moment, not centred: the nets have no biases).

    >>> x = whiten(torch.randn(100, 3, dtype=torch.float64))
    >>> torch.allclose(x.T @ x / 100, torch.eye(3, dtype=torch.float64))
    True
    """
    if x.ndim != 2 or x.shape[0] < x.shape[1]:
        raise ValueError(f"x must be (N, d) with N >= d, got shape {tuple(x.shape)}")
    xd = x.double()
    sigma = xd.T @ xd / xd.shape[0]
    evals, evecs = torch.linalg.eigh(sigma)
    if float(evals.min()) <= 1e-12 * float(evals.max()):
        raise ValueError("x has a singular second-moment matrix: cannot whiten")
    inv_sqrt = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    return (xd @ inv_sqrt).to(x.dtype)


def is_whitened(x: torch.Tensor, tol: float = 1e-3) -> bool:
    """Whether ``xᵀx/N`` is the identity to within ``tol`` (max abs entry)."""
    xd = x.double()
    sigma = xd.T @ xd / xd.shape[0]
    return bool((sigma - torch.eye(x.shape[1], dtype=torch.float64)).abs().max() <= tol)


def cross_moment_norm(x: torch.Tensor, y: torch.Tensor) -> float:
    """``‖E[x yᵀ]‖₂ / k`` (spectral norm; ``k`` outputs, as torch's mean-reduced MSE averages over them).

    For a scalar target this is ``‖E[x y]‖``.

    >>> x = torch.eye(2).repeat(50, 1); y = x @ torch.tensor([[3.0], [4.0]])
    >>> round(cross_moment_norm(x, y), 6)    # E[xy] = (1.5, 2) — x is not whitened here
    2.5
    """
    yd = y.double().reshape(y.shape[0], -1)
    b = x.double().T @ yd / x.shape[0]
    return float(torch.linalg.matrix_norm(b, ord=2)) / yd.shape[1]


def _check_depth(hidden_layers: int) -> int:
    if isinstance(hidden_layers, bool) or not isinstance(hidden_layers, int) or hidden_layers < 0:
        raise ValueError(f"hidden_layers must be an int >= 0, got {hidden_layers!r}")
    return hidden_layers + 1


def deep_linear_critical_beta(b_norm: float, hidden_layers: int) -> float:
    """``β_c`` of a deep linear net with whitened inputs, ``b_norm = ‖E[xy]‖`` (module conventions).

    ``hidden_layers = 0`` (ridge regression) never collapses completely: ``inf``.

    >>> deep_linear_critical_beta(2.0, 1), deep_linear_critical_beta(2.0, 2)
    (2.0, 1.0)
    >>> round(deep_linear_critical_beta(3.0, 3), 6)   # b/3 · (2b/3)^{1/2}
    1.414214
    """
    d = _check_depth(hidden_layers)
    if b_norm < 0:
        raise ValueError(f"b_norm must be >= 0, got {b_norm}")
    if d == 1:
        return math.inf
    if d == 2:
        return float(b_norm)
    r = b_norm * (d - 2) / (d - 1)
    return b_norm / (d - 1) * r ** ((d - 2) / d)


def deep_linear_spinodal(b_norm: float, hidden_layers: int) -> float:
    """Largest β at which the trained (non-trivial) branch is still a local minimum.

    Equals ``β_c`` for one hidden layer; above it for two or more (the up-sweep collapses here).

    >>> round(deep_linear_spinodal(2.0, 2) / deep_linear_critical_beta(2.0, 2), 4)   # 3 / 2^{4/3}
    1.1906
    """
    d = _check_depth(hidden_layers)
    if d <= 2:
        return deep_linear_critical_beta(b_norm, hidden_layers)
    r_s = b_norm * (d - 2) / (2 * (d - 1))
    return d / (d - 2) * r_s ** (2 * (d - 1) / d)


def deep_linear_radius(b_norm: float, hidden_layers: int, beta: float, branch: str = "global") -> float:
    """``‖v‖`` of the end-to-end map at the minimum, with whitened inputs (``‖θ‖² = D·r^{2/D}``).

    ``branch="global"``: the global minimiser (0 above ``β_c``); ``"trained"``: the non-trivial local
    minimum while it exists (up to the spinodal), i.e. what an up-sweep follows.

    >>> deep_linear_radius(2.0, 1, 0.5)
    1.5
    >>> round(deep_linear_radius(2.0, 2, 1.0), 9), deep_linear_radius(2.0, 2, 1.01)   # jump at β_c = 1 from b/2
    (1.0, 0.0)
    """
    d = _check_depth(hidden_layers)
    if branch not in ("global", "trained"):
        raise ValueError(f"branch must be 'global' or 'trained', got {branch!r}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if d == 1:
        return b_norm / (1.0 + beta)
    if d == 2:
        return max(b_norm - beta, 0.0)
    limit = deep_linear_critical_beta(b_norm, hidden_layers) if branch == "global" else deep_linear_spinodal(b_norm, hidden_layers)
    if beta > limit * (1 + 1e-12):
        return 0.0
    if beta == 0:
        return float(b_norm)
    # largest root of r + β r^{2/D − 1} = b, between the spinodal radius and b (bisection: monotone there)
    lo = (beta * (d - 2) / d) ** (d / (2 * (d - 1)))
    hi = float(b_norm)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid + beta * mid ** (2.0 / d - 1.0) < b_norm:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def deep_linear_order(hidden_layers: int) -> str:
    """``"continuous"`` for one hidden layer, ``"jump"`` for two or more, ``"none"`` without hidden layers."""
    d = _check_depth(hidden_layers)
    return "none" if d == 1 else "continuous" if d == 2 else "jump"


def linear_critical_beta(x: torch.Tensor, y: torch.Tensor, hidden_layers: int, tol: float = 1e-3) -> float:
    """``β_c`` from data. One hidden layer: any input covariance (``‖E[xyᵀ]‖₂/k``). Two or more: the
    inputs must be whitened (``xᵀx/N = I`` within ``tol``; see :func:`whiten`) and the target scalar.

    >>> g = torch.Generator().manual_seed(0)
    >>> x = whiten(torch.randn(200, 4, generator=g)); y = x[:, :1] * 2.0
    >>> round(linear_critical_beta(x, y, 1), 6), round(linear_critical_beta(x, y, 2), 6)
    (2.0, 1.0)
    """
    d = _check_depth(hidden_layers)
    b = cross_moment_norm(x, y)
    if d >= 3:
        if not is_whitened(x, tol):
            raise ValueError("the closed form for >= 2 hidden layers needs whitened inputs: pass whiten(x)")
        if y.reshape(y.shape[0], -1).shape[1] != 1:
            raise ValueError("the closed form for >= 2 hidden layers is for a scalar target")
    return deep_linear_critical_beta(b, hidden_layers)
