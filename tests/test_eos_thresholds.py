"""Edge-of-stability thresholds pinned against ``torch.optim`` itself, and the Adam preconditioner against
the optimizer's own state.

The divergence point is found by running the real optimizer on a diagonal quadratic
``f(θ) = Σ_k λ_k θ_k² / 2`` with a fine geometric grid of curvatures ``λ_k``: every coordinate evolves on its
own (SGD and Adam act per coordinate), so one run bisects the whole grid. A coordinate is bounded when
``|θ_k|`` is still ≤ its start after ``STEPS`` steps; the threshold is the boundary between the bounded and
the unbounded curvatures. No formula of the library enters the measured side.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_landscape.optim_info import adam_preconditioner, describe_optimizer
from lightning_landscape.parameters import ParameterSpace

STEPS = 500
GRID = 2000  # geometric grid from 0.1/lr to 1000/lr: neighbours 0.46 % apart


def _divergence_point(make_optimizer, lr: float, prepare=None, scale: float = 1.0, steps: int = STEPS) -> float:
    """The curvature at which ``torch.optim`` stops being bounded on a 1-D quadratic (per grid coordinate).

    Unbounded: above its start after ``steps`` steps, or ever above 1e3 (a stable coordinate's transient
    stays within ~1/(1 − μ) = 10 of its start; the latch keeps an Adam coordinate whose own huge gradient
    finally moved its second moment, and so re-stabilised it, counted as the divergence it was)."""
    lam = torch.logspace(math.log10(0.1 * scale / lr), math.log10(1000 * scale / lr), GRID, dtype=torch.float64)
    theta = torch.nn.Parameter(torch.ones(GRID, dtype=torch.float64))
    opt = make_optimizer([theta])
    if prepare is not None:
        prepare(opt, theta)
    escaped = torch.zeros(GRID, dtype=torch.bool)
    for _ in range(steps):
        theta.grad = lam * theta.detach()  # ∇ Σ λθ²/2
        opt.step()
        escaped |= ~(theta.detach().abs() <= 1e3)  # NaN (overflow) counts as unbounded
    bounded = ((theta.detach().abs() <= 1.0) & ~escaped).tolist()
    first_bad = bounded.index(False)
    assert all(bounded[:first_bad]) and not any(bounded[first_bad:]), "stability must switch once along the grid"
    assert 0 < first_bad < GRID
    return math.sqrt(float(lam[first_bad - 1] * lam[first_bad]))


SGD_CASES = {
    "sgd": dict(),
    "heavy_ball": dict(momentum=0.9),
    "heavy_ball_0.5": dict(momentum=0.5),
    "nesterov": dict(momentum=0.9, nesterov=True),
    "nesterov_0.5": dict(momentum=0.5, nesterov=True),
    "dampening": dict(momentum=0.9, dampening=0.5),
    "dampening_0.2": dict(momentum=0.7, dampening=0.2),
    "dampening_without_momentum": dict(dampening=0.5),  # torch keeps no buffer: plain GD
}


@pytest.mark.parametrize("case", sorted(SGD_CASES))
def test_sgd_thresholds_match_where_torch_sgd_diverges(case: str) -> None:
    lr, kw = 0.1, SGD_CASES[case]
    measured = _divergence_point(lambda p: torch.optim.SGD(p, lr=lr, **kw), lr)
    info = describe_optimizer(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, **kw))
    assert info.eos_threshold() == pytest.approx(measured, rel=5e-3)


BETA2 = math.nextafter(1.0, 0.0)  # 1 − 1.1e-16: the largest β2 torch accepts


def _frozen_adam(v: float, v_max: float | None = None):
    """Freeze Adam's preconditioner. With β2 = 1 − 1.1e-16 a step adds ``1.1e-16 · g²`` to ``exp_avg_sq``:
    at ``lr = 1`` the curvatures near the threshold are λ ≈ 38·√v at most, so while ``|θ| ≤ 1e3`` (the
    divergence latch) ``v`` moves by < 1.1e-16 · 38² · 1e6 ≈ 2e-7 of itself — frozen, and a diverging
    coordinate cannot re-stabilise itself by inflating its own ``v`` before it is counted. A step count of
    1e18 makes both bias corrections 1 (β1^t = 0, β2^t = e^-111). AMSGrad's ``max_exp_avg_sq`` is set to
    ``v_max`` > ``v``: torch divides by it. ``P = √v̂ + ε`` is then constant."""

    def prepare(opt: torch.optim.Optimizer, theta: torch.nn.Parameter) -> None:
        theta.grad = torch.zeros_like(theta)
        opt.step()  # creates the state (a zero gradient moves nothing)
        st = opt.state[theta]
        st["step"] = torch.tensor(1e18, dtype=torch.float64)
        st["exp_avg"].zero_()
        st["exp_avg_sq"].fill_(v)
        if "max_exp_avg_sq" in st:
            st["max_exp_avg_sq"].fill_(v if v_max is None else v_max)

    return prepare


ADAM_CASES = [(cls, b1, ams) for cls in ("Adam", "AdamW") for b1 in (0.0, 0.5, 0.9) for ams in (False,)] + [
    ("Adam", 0.9, True), ("AdamW", 0.5, True)]


@pytest.mark.parametrize("cls,beta1,amsgrad", ADAM_CASES)
def test_adam_thresholds_match_where_torch_adam_diverges_with_a_frozen_preconditioner(cls, beta1, amsgrad) -> None:
    lr, v, v_max, eps, beta2 = 1.0, 4.0, 64.0, 1e-8, BETA2

    def make(params):
        return getattr(torch.optim, cls)(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=0.0,
                                         amsgrad=amsgrad)

    divisor = math.sqrt(v_max if amsgrad else v) + eps  # what torch divides the first moment by
    measured = _divergence_point(make, lr, _frozen_adam(v, v_max), scale=divisor)
    # The library: λmax(P⁻¹H) / threshold = 1 at the divergence point, i.e. λ* = threshold · P.
    theta = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = make([theta])
    _frozen_adam(v, v_max)(opt, theta)
    info = describe_optimizer(opt)
    p = adam_preconditioner(opt, ParameterSpace([theta]))
    assert float(p) == pytest.approx(divisor, rel=1e-12)
    assert info.eos_threshold() * float(p) == pytest.approx(measured, rel=5e-3)


# ---------------------------------------------------------------------------- the preconditioner on a model
def _flat_hessian(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    names = [n for n, _ in net.named_parameters()]
    params = [p for _, p in net.named_parameters()]
    sizes = [p.numel() for p in params]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        state = {n: c.view_as(p) for n, p, c in zip(names, params, torch.split(flat, sizes))}
        return ((torch.func.functional_call(net, state, (x,)) - y) ** 2).mean()

    return torch.autograd.functional.hessian(loss_of, torch.cat([p.detach().reshape(-1) for p in params]))


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_preconditioned_sharpness_matches_dense_eigvalsh_from_the_optimizer_state(cls: str, amsgrad: bool) -> None:
    """λmax(P^{-1/2} H P^{-1/2}) with P built here from the optimizer's state (bias corrections at t = 4,
    where (1 − β1ᵗ) = 0.34 matters; AMSGrad's max_exp_avg_sq, made to differ from exp_avg_sq)."""
    from lightning_landscape import HessianSpectrum
    from lightning_landscape.probes import ProbeContext

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    # β2 = 0.5: the second moment forgets fast, so after the large first gradient exp_avg_sq falls below
    # AMSGrad's running maximum.
    opt = getattr(torch.optim, cls)(net.parameters(), lr=0.01, betas=(0.9, 0.5), eps=1e-6, amsgrad=amsgrad)
    for i in range(4):
        opt.zero_grad()
        scale = 3.0 if i == 0 else 1.0  # a large first gradient: AMSGrad's maximum stays above exp_avg_sq
        (scale * ((net(x) - y) ** 2).mean()).backward()
        opt.step()
    parts = []
    for p in net.parameters():
        st, group = opt.state[p], opt.param_groups[0]
        b1, b2 = group["betas"]
        t = float(st["step"])
        v = st["max_exp_avg_sq"] if amsgrad else st["exp_avg_sq"]
        if amsgrad:
            assert not torch.equal(st["max_exp_avg_sq"], st["exp_avg_sq"])
        parts.append(((1 - b1**t) * ((v / (1 - b2**t)).sqrt() + group["eps"])).reshape(-1))
    P = torch.cat(parts)
    h = _flat_hessian(net, x, y)
    exact = float(torch.linalg.eigvalsh(P.rsqrt()[:, None] * h * P.rsqrt()[None, :]).max())

    ctx = ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=4, optimizer=opt,
                       optimizer_info=describe_optimizer(opt))
    assert torch.allclose(adam_preconditioner(opt, ctx.space), P, rtol=1e-12, atol=0)
    out = HessianSpectrum(adam_warmup_steps=0, tol=1e-10, max_iter=60, max_basis=None).run(ctx).scalars
    assert out["preconditioned_lambda_max"] == pytest.approx(exact, rel=1e-6)
    info = describe_optimizer(opt)
    assert out["eos_ratio"] == pytest.approx(exact * 0.01 * (1 - 0.9) / (2 + 2 * 0.9), rel=1e-6)
    assert info.eos_threshold() == pytest.approx(3800.0, rel=1e-12)  # (2 + 1.8) / (0.1 · 0.01)


def test_dampened_nesterov_threshold_matches_its_recurrence() -> None:
    """torch refuses Nesterov with dampening; the formula covers it anyway, checked against the update
    written out (``b ← μb + (1 − τ)g``, ``θ ← θ − η(g + μb)``) on the same grid."""
    from lightning_landscape.optim_info import OptimizerInfo

    mu, tau, lr = 0.9, 0.5, 0.1
    lam = torch.logspace(math.log10(0.1 / lr), math.log10(1000 / lr), GRID, dtype=torch.float64)
    theta, buf = torch.ones(GRID, dtype=torch.float64), torch.zeros(GRID, dtype=torch.float64)
    escaped = torch.zeros(GRID, dtype=torch.bool)
    for _ in range(STEPS):
        g = lam * theta
        buf = mu * buf + (1 - tau) * g
        theta = theta - lr * (g + mu * buf)
        escaped |= ~(theta.abs() <= 1e3)
    bounded = ((theta.abs() <= 1.0) & ~escaped).tolist()
    first_bad = bounded.index(False)
    assert all(bounded[:first_bad]) and not any(bounded[first_bad:])
    measured = math.sqrt(float(lam[first_bad - 1] * lam[first_bad]))
    info = OptimizerInfo("sgd", lr, momentum=mu, dampening=tau, nesterov=True)
    assert info.eos_threshold() == pytest.approx(measured, rel=5e-3)
