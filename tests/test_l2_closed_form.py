"""Closed-form L2 thresholds of deep linear nets against brute force and against trained networks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_landscape.l2 import (
    cross_moment_norm,
    deep_linear_critical_beta,
    deep_linear_radius,
    deep_linear_spinodal,
    linear_critical_beta,
    whiten,
)
from lightning_landscape.tasks import build_mlp, make_teacher_student


def _reduced_gain(b: float, depth: int, beta: float, r: np.ndarray) -> np.ndarray:
    """F(r) − F(0) = −2br + r² + βD r^{2/D}: negative somewhere iff the trained solution beats collapse."""
    d = depth + 1
    return -2 * b * r + r**2 + beta * d * r ** (2.0 / d)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_critical_beta_matches_brute_force(depth: int) -> None:
    b = 1.7
    r = np.linspace(1e-9, 2 * b, 400_001)
    lo, hi = 0.0, 5.0
    for _ in range(60):  # bisection on "min_r F(r) − F(0) < 0"
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _reduced_gain(b, depth, mid, r).min() < 0 else (lo, mid)
    assert deep_linear_critical_beta(b, depth) == pytest.approx(lo, rel=1e-5)


@pytest.mark.parametrize("depth", [2, 3])
def test_spinodal_is_where_the_trained_branch_disappears(depth: int) -> None:
    b, d = 1.3, depth + 1
    r = np.linspace(1e-6, 2 * b, 200_001)
    beta_sp = deep_linear_spinodal(b, depth)
    for beta, has_branch in ((0.995 * beta_sp, True), (1.005 * beta_sp, False)):
        dF = -2 * b + 2 * r + 2 * beta * r ** (2.0 / d - 1)  # F'(r) / 1
        assert bool(((dF[:-1] < 0) & (dF[1:] >= 0)).any()) == has_branch  # a local minimum at r > 0


def test_formulas_and_conventions() -> None:
    b = 2.0
    assert deep_linear_critical_beta(b, 1) == b
    assert deep_linear_critical_beta(b, 2) == pytest.approx((b / 2) ** (4 / 3))
    assert deep_linear_critical_beta(b, 0) == math.inf
    assert deep_linear_spinodal(b, 1) == b
    assert deep_linear_spinodal(b, 2) == pytest.approx(3 * (b / 4) ** (4 / 3))
    assert deep_linear_radius(b, 2, deep_linear_critical_beta(b, 2)) == pytest.approx(b / 2, rel=1e-6)
    with pytest.raises(ValueError, match="hidden_layers"):
        deep_linear_critical_beta(1.0, -1)
    x, y = make_teacher_student(128, 4, 1, 3, "linear", 0.1, seed=3)
    with pytest.raises(ValueError, match="whitened"):
        linear_critical_beta(x, y, 2)
    assert linear_critical_beta(x, y, 1) == pytest.approx(float((x.T @ y / 128).norm()), rel=1e-6)


def _data(seed: int = 0, n: int = 256, d: int = 6, whitened: bool = True):
    x, y = make_teacher_student(n, d, 1, 3, "linear", 0.1, seed=seed)
    x, y = x.double(), (y - y.mean()).double()
    if whitened:
        x = whiten(x)
    else:
        x = x * torch.linspace(0.4, 1.6, d, dtype=torch.float64)  # anisotropic second moment
    return x, y


def _train(net: torch.nn.Module, x, y, beta: float, steps: int = 4000, lr: float = 0.05) -> tuple[float, float]:
    """Full-batch heavy-ball GD on L + β‖θ‖²; returns (loss, objective)."""
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=2 * beta)  # wd = 2β (package convention)
    for _ in range(steps):
        loss = ((net(x) - y) ** 2).mean()
        grads = torch.autograd.grad(loss, params)
        gn = math.sqrt(sum(float((g + 2 * beta * p.detach()).pow(2).sum()) for g, p in zip(grads, params)))
        if gn < 1e-9:
            break
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    with torch.no_grad():
        loss = float(((net(x) - y) ** 2).mean())
    return loss, loss + beta * sum(float(p.detach().pow(2).sum()) for p in params)


def _net(depth: int, d: int = 6, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_mlp(d, [6] * depth, 1, "linear", bias=False).double()


@pytest.mark.parametrize("whitened", [True, False])
def test_one_hidden_layer_threshold_on_trained_nets(whitened: bool) -> None:
    """β_c = ‖E[xy]‖ for one hidden layer, whitened or not: ordered just below, collapsed just above."""
    x, y = _data(whitened=whitened)
    beta_c = linear_critical_beta(x, y, 1)
    net = _net(1)
    _train(net, x, y, 0.5 * beta_c)
    sizes = []
    for frac in (0.97, 1.03):
        _train(net, x, y, frac * beta_c, steps=6000)
        sizes.append(sum(float(p.detach().pow(2).sum()) for p in net.parameters()))
    assert sizes[0] > 1e-3 and sizes[1] < 1e-6
    if whitened:  # ‖θ‖² = 2r with r = b − β on the balanced solution
        net2 = _net(1)
        _train(net2, x, y, 0.5 * beta_c)
        theta_sq = sum(float(p.detach().pow(2).sum()) for p in net2.parameters())
        assert theta_sq == pytest.approx(2 * deep_linear_radius(beta_c, 1, 0.5 * beta_c), rel=1e-3)


def test_two_hidden_layers_global_threshold_on_trained_nets() -> None:
    """β_c = (‖E[xy]‖/2)^{4/3}: below it the trained net beats the collapsed one, above it (metastable
    until the spinodal) it does not; the radius at β_c is b/2 (the size of the jump)."""
    x, y = _data()
    b = cross_moment_norm(x, y)
    beta_c = linear_critical_beta(x, y, 2)
    l_trivial = float((y**2).mean())
    net = _net(2)
    _train(net, x, y, 0.5 * beta_c)
    results = {}
    for frac in (0.95, 1.05):
        loss, objective = _train(net, x, y, frac * beta_c, steps=6000)
        results[frac] = objective - l_trivial
        w = [m.weight for m in net if isinstance(m, torch.nn.Linear)]
        v = w[2] @ w[1] @ w[0]
        assert float(v.norm()) == pytest.approx(deep_linear_radius(b, 2, frac * beta_c, "trained"), rel=2e-3)
    assert results[0.95] < 0 < results[1.05]
