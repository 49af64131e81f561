"""What the optimizer implies for curvature: its edge-of-stability threshold and preconditioner.

Edge of stability (Cohen et al. 2021, 2022): an optimizer is stable on a quadratic only while its sharpness
stays below a threshold set by its hyper-parameters. On ``f(θ) = λθ²/2`` (``g = λθ``, ``a = η λ``) torch's SGD
with momentum μ and dampening τ runs ``b ← μ b + c g`` with ``c = 1 − τ`` (``c = 1`` when ``μ = 0``: torch
keeps no buffer then; its very first step sets ``b = g`` undampened, a transient only) and

* heavy ball, ``θ ← θ − η b``: with ``u = η b = θ_t − θ_{t+1}`` this is
  ``θ_{t+1} = (1 + μ − c a) θ_t − μ θ_{t−1}``, characteristic polynomial ``z² − (1 + μ − c a) z + μ``.
  For ``0 ≤ μ < 1`` both roots lie inside the unit circle iff ``p(1) = c a > 0`` and
  ``p(−1) = 2 + 2μ − c a > 0`` (Jury; ``|μ| < 1`` holds): stable iff ``λ < (2 + 2μ) / ((1 − τ) η)``
  (2/η for plain GD; dampening 0.5 doubles the threshold);
* Nesterov, ``θ ← θ − η (g + μ b)``: on ``(θ_t, u_{t−1})`` the map is
  ``[[1 − a − μ c a, −μ²], [c a, μ]]``, trace ``1 + μ − a(1 + μ c)``, determinant ``μ (1 − a)``;
  the root that leaves first crosses −1 (``p(−1) = 2 + 2μ − a (1 + μ + μ c) = 0``), so stable iff
  ``λ < (2 + 2μ) / ((1 + μ + μ(1 − τ)) η)`` = ``(2 + 2μ)/((1 + 2μ) η)`` (torch requires τ = 0 here).

Adam(W) with a frozen preconditioner is the dampened heavy ball with ``μ = τ = β1`` on ``P⁻¹H``: it is judged
on ``λmax(P⁻¹H)`` with ``P = (1 − β1^t) diag(√v̂ + ε)`` (``v̂`` from ``max_exp_avg_sq`` under AMSGrad,
as torch divides by it) against ``(2 + 2β1)/((1 − β1) η)`` (= 38/η at β1 = 0.9). Tests pin every threshold
against the divergence point of ``torch.optim`` itself on a diagonal quadratic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_landscape.parameters import ParameterSpace
from lightning_landscape.sharded import local_view


@dataclass(frozen=True)
class OptimizerInfo:
    """The hyper-parameters of the first param group that curvature rules need."""

    kind: str  # "sgd", "adam", "adamw", "adaptive" (other per-coordinate methods) or "other"
    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    beta1: float = 0.0
    beta2: float = 0.0
    eps: float = 0.0
    weight_decay: float = 0.0

    @property
    def is_adaptive(self) -> bool:
        return self.kind in ("adam", "adamw")

    def eos_threshold(self) -> float:
        """The sharpness at which the optimizer stops being stable (preconditioned for Adam)."""
        if self.lr <= 0:
            return float("inf")
        if self.is_adaptive:
            return (2.0 + 2.0 * self.beta1) / ((1.0 - self.beta1) * self.lr)
        mu = self.momentum
        c = 1.0 - self.dampening if mu != 0 else 1.0  # torch keeps no buffer (no dampening) without momentum
        if self.nesterov:
            return (2.0 + 2.0 * mu) / ((1.0 + mu + mu * c) * self.lr)
        if c <= 0:
            return float("inf")  # dampening 1: the buffer never takes in a new gradient
        return (2.0 + 2.0 * mu) / (c * self.lr)


_OTHER_ADAPTIVE: tuple[type, ...] = tuple(
    getattr(torch.optim, name) for name in ("NAdam", "RAdam", "Adamax", "RMSprop", "Adagrad", "Adadelta", "Adafactor")
    if hasattr(torch.optim, name)
)


def describe_optimizer(optimizer: torch.optim.Optimizer | None) -> OptimizerInfo | None:
    """Read the first param group of a torch optimizer.

    >>> p = torch.nn.Parameter(torch.zeros(1))
    >>> info = describe_optimizer(torch.optim.SGD([p], lr=0.1, momentum=0.9))
    >>> info.kind, round(info.eos_threshold(), 6)
    ('sgd', 38.0)
    """
    if optimizer is None or not optimizer.param_groups:
        return None
    group = optimizer.param_groups[0]
    lr = float(group.get("lr", 0.0))
    wd = float(group.get("weight_decay", 0.0) or 0.0)
    if isinstance(optimizer, torch.optim.AdamW) or (
        isinstance(optimizer, torch.optim.Adam) and bool(group.get("decoupled_weight_decay", False))
    ):
        kind = "adamw"
    elif isinstance(optimizer, torch.optim.Adam):
        kind = "adam"
    elif isinstance(optimizer, torch.optim.SGD):
        kind = "sgd"
    elif isinstance(optimizer, _OTHER_ADAPTIVE):
        kind = "adaptive"  # no exact stability criterion implemented: only an unpreconditioned ratio is reported
    else:
        kind = "other"
    if kind in ("adam", "adamw"):
        b1, b2 = group.get("betas", (0.9, 0.999))
        return OptimizerInfo(kind, lr, beta1=float(b1), beta2=float(b2), eps=float(group.get("eps", 1e-8)), weight_decay=wd)
    return OptimizerInfo(
        kind,
        lr,
        momentum=float(group.get("momentum", 0.0) or 0.0),
        dampening=float(group.get("dampening", 0.0) or 0.0),
        nesterov=bool(group.get("nesterov", False)),
        weight_decay=wd,
    )


def adam_preconditioner(optimizer: torch.optim.Optimizer, space: ParameterSpace) -> torch.Tensor | None:
    """The diagonal ``P = (1 - β1^t)(√(v/(1 - β2^t)) + ε)`` over ``space`` as one flat vector (``v`` is
    ``max_exp_avg_sq`` under AMSGrad: what torch divides by).

    Parameters the optimizer does not update (no Adam state: unused, or not in this optimizer) get
    ``P = inf`` — the preconditioned step never moves them, so ``P^{-1/2} = 0`` removes them from
    ``P⁻¹H``. ``None`` before the first step (no parameter has state).
    """
    parts = []
    any_state = False
    for p, numel in zip(space.params, space.numels):  # numels: the local shards' under FSDP2
        state = optimizer.state.get(p)
        if not state or "exp_avg_sq" not in state:
            parts.append(torch.full((numel,), float("inf"), dtype=space.dtype, device=space.device))
            continue
        any_state = True
        group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
        b1, b2 = group["betas"]
        t = float(state["step"])
        v = state["max_exp_avg_sq"] if group.get("amsgrad") and "max_exp_avg_sq" in state else state["exp_avg_sq"]
        v_hat = local_view(v.detach()).to(space.dtype) / (1.0 - b2**t)  # FSDP2: the state is sharded like p
        parts.append(((1.0 - b1**t) * (v_hat.sqrt() + group["eps"])).reshape(-1))
    return torch.cat(parts) if any_state else None


def adam_steps(optimizer: torch.optim.Optimizer) -> int:
    """The largest ``step`` count in an Adam-style optimizer's state (0 before the first step).

    >>> p = torch.nn.Parameter(torch.zeros(2)); opt = torch.optim.Adam([p])
    >>> adam_steps(opt)
    0
    >>> p.grad = torch.ones(2); opt.step(); adam_steps(opt)
    1
    """
    steps = [float(st["step"]) for st in optimizer.state.values() if isinstance(st, dict) and "step" in st]
    return int(max(steps)) if steps else 0
