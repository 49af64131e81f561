"""L2 phase-transition probe: how far training is from the weight decay that collapses the model."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from lightning_landscape.l2.convention import CONVENTION_TEXT, group_decays
from lightning_landscape.l2.order import collapse_ratio, parameter_norms, squared_norm, trivial_loss
from lightning_landscape.l2.ray import ray_critical_beta
from lightning_landscape.probes.base import (
    Probe,
    ProbeResult,
    check_choice,
    check_number,
    check_positive_float,
    check_positive_int,
)
from lightning_landscape.probes.context import ProbeContext

ParamSet = Literal["decayed", "all", "weights"]


class L2Transition(Probe):
    """Order parameters of the L2 collapse and the critical weight decay along the current ray.

    Penalty convention ``loss + β‖θ‖²``: SGD/Adam (coupled) ``weight_decay = 2β``; AdamW has no exact
    penalty and its ``beta`` is the frozen-preconditioner equivalent (see
    :mod:`lightning_landscape.l2.convention`). ``critical_beta`` is a lower bound on the true
    threshold (exact for deep linear nets with whitened inputs), so ``margin`` errs towards alarm:
    ``margin < 1`` means the collapsed model already beats every point on the current ray.

    Args:
        every_n_steps: measure after every this many optimizer steps.
        params: which parameters collapse: ``"decayed"`` (those in param groups with
            ``weight_decay > 0``; all trainable parameters if no group decays), ``"all"`` trainable
            parameters, or ``"weights"`` (trainable tensors with ≥ 2 dimensions).
        per_layer: also log the norm of every parameter tensor (``norm/<name>``).
        ray: estimate ``critical_beta`` / ``margin`` (``num_scales + refine_steps`` forward passes).
        s_max: largest scale of the ray ``s·θ``.
        num_scales: points of the log-spaced grid ``s ∈ [s_max/64, s_max]``.
        refine_steps: extra forward passes refining the maximum.
        ready_collapse_ratio: the margin is judged (by rules and the weight-decay controller) only once the
            model has learned: ``collapse_ratio`` at least this. At initialisation the trained state is no
            better than the collapsed one and the margin is ~0 by construction — true, but not news.
        ready_balance: ... and only once the weights sit in radial equilibrium with the decay:
            ``radial_balance = −(d/ds) L(sθ)|ₛ₌₁ / (2β‖θ‖²)`` at least this (1 at a stationary point of
            ``L + β‖θ‖²``; ≈ 0 while weight decay is still draining norm the loss does not need, e.g.
            initialisation noise, or on weights feeding a BatchNorm/LayerNorm, which are scale-invariant).
            Off equilibrium the ray through θ is far from the best direction and ``critical_beta`` is a
            loose bound that says nothing about the collapse. Costs one forward and backward pass.

    Until both hold, ``margin`` and ``critical_beta`` are logged with the state ``warming_up``
    (``ready/margin`` = 0).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8, bias=False), torch.nn.Linear(8, 1, bias=False))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=0.02)
        >>> x = torch.randn(64, 4); y = x @ torch.ones(4, 1)
        >>> ctx = ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=1, optimizer=opt)
        >>> result = L2Transition().run(ctx)
        >>> out = result.scalars
        >>> out["beta/group0"], sorted(k for k in out if not k.startswith(("norm/", "beta/", "weight_decay/")))
        (0.01, ['beta_eff', 'collapse_ratio', 'critical_beta', 'loss', 'loss_trivial', 'margin', 'radial_balance', 'ray_argmax_scale', 'theta_sq'])
        >>> sorted(result.warming_up)  # untrained: logged, not judged
        ['critical_beta', 'margin']
    """

    name = "l2_transition"
    group = "l2"
    needs_hessian = False
    default_every_n_steps = 50
    cost = "≈ 13–21 forward passes and one gradient"
    gated_keys = ("margin", "critical_beta")
    scalar_tags = {
        "theta_sq": "‖θ‖² of the collapsing parameters (decayed ones by default)",
        "loss": "probe-batch loss (without the penalty)",
        "loss_trivial": "probe-batch loss of the collapsed model (those parameters at 0)",
        "collapse_ratio": "(L_trivial − L)/L_trivial: 1 = perfect fit, 0 = collapsed, < 0 = worse than collapsed",
        "critical_beta": "β_ray = max_s [L(0) − L(sθ)]/(s²‖θ‖²): weight decay (penalty β‖θ‖², SGD wd = 2β) "
        "at which the collapsed model beats the whole current ray; ≤ true threshold; < 0 when the whole ray "
        "is worse than the collapsed model (e.g. at initialisation)",
        "margin": "critical_beta / beta_eff; < 1: collapse preferred along the ray (absent when β = 0)",
        "ray_argmax_scale": "s of the ray maximum: ≈ 0 continuous-type, interior (< 1) jump-type barrier",
        "radial_balance": "−(d/ds)L(sθ) at s=1 over 2β‖θ‖²: 1 in equilibrium with the decay, ≈ 0 while decay drains "
        "norm the loss does not need (the margin is judged only near equilibrium)",
        "ready/margin": "1 once the margin can carry a verdict (model learned, weights in radial equilibrium), else 0",
        "beta_eff": "‖θ‖²-weighted mean penalty β over the collapsing parameters (what margin divides by)",
        "beta/group<i>": "penalty β of param group i (SGD/Adam: weight_decay/2; AdamW: frozen-preconditioner equivalent)",
        "weight_decay/group<i>": "raw optimizer weight_decay of param group i",
        "norm/<param>": "Frobenius norm of each collapsing parameter tensor",
    }

    def __init__(
        self,
        every_n_steps: int | None = None,
        params: ParamSet = "decayed",
        per_layer: bool = True,
        ray: bool = True,
        s_max: float = 2.0,
        num_scales: int = 12,
        refine_steps: int = 8,
        ready_collapse_ratio: float = 0.5,
        ready_balance: float = 0.5,
    ) -> None:
        super().__init__(every_n_steps)
        self.params = check_choice("L2Transition.params", params, ("decayed", "all", "weights"))
        self.per_layer = bool(per_layer)
        self.ray = bool(ray)
        self.s_max = check_positive_float("L2Transition.s_max", s_max)
        self.num_scales = check_positive_int("L2Transition.num_scales", num_scales, 2)
        self.refine_steps = check_positive_int("L2Transition.refine_steps", refine_steps, 0)
        self.ready_collapse_ratio = check_number("L2Transition.ready_collapse_ratio", ready_collapse_ratio)
        if self.ready_collapse_ratio > 1:
            raise ValueError(f"L2Transition.ready_collapse_ratio must be <= 1, got {self.ready_collapse_ratio}")
        self.ready_balance = check_number("L2Transition.ready_balance", ready_balance)
        self._described: str | None = None

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "params": self.params,
            "per_layer": self.per_layer,
            "ray": self.ray,
            "s_max": self.s_max,
            "num_scales": self.num_scales,
            "refine_steps": self.refine_steps,
            "ready_collapse_ratio": self.ready_collapse_ratio,
            "ready_balance": self.ready_balance,
        }

    def _select(self, ctx: ProbeContext, decays: list) -> tuple[list[tuple[str, torch.Tensor]], str]:
        named = [(n, p) for n, p in ctx.module.named_parameters() if p.requires_grad]
        if self.params == "weights":
            return [(n, p) for n, p in named if p.ndim >= 2], "trainable tensors with >= 2 dims"
        if self.params == "decayed":
            ids = {id(p) for g in decays if g.decays for p in g.params}
            chosen = [(n, p) for n, p in named if id(p) in ids]
            if chosen:
                groups = [g.index for g in decays if g.decays]
                return chosen, f"parameters of param groups {groups} (weight_decay > 0)"
            return named, "all trainable parameters (no param group has weight_decay > 0)"
        return named, "all trainable parameters"

    def run(self, ctx: ProbeContext) -> ProbeResult:
        decays = group_decays(ctx.optimizer) if ctx.optimizer is not None else []
        named, which = self._select(ctx, decays)
        out = ProbeResult()
        if not named:
            return out
        params = [p for _, p in named]
        s = out.scalars

        def loss_fn() -> torch.Tensor:
            with torch.no_grad():  # under no_grad evaluate_loss is already averaged over ranks
                return ctx.evaluate_loss().detach().float()

        loss = ctx.loss()
        l_triv = trivial_loss(params, loss_fn)
        theta_sq = squared_norm(params)
        s["theta_sq"] = theta_sq
        s["loss"] = loss
        s["loss_trivial"] = l_triv
        if math.isfinite(loss) and math.isfinite(l_triv):
            s["collapse_ratio"] = collapse_ratio(loss, l_triv)
        if self.per_layer:
            s.update({f"norm/{n}": v for n, v in parameter_norms(named).items()})

        beta_eff = self._beta_eff(decays, params, theta_sq, s)
        if self.ray and theta_sq > 0 and math.isfinite(l_triv):
            est = ray_critical_beta(params, loss_fn, self.s_max, self.num_scales, refine_steps=self.refine_steps,
                                    loss_trivial=l_triv)
            if math.isfinite(est.critical_beta):
                s["critical_beta"] = est.critical_beta
                if math.isfinite(est.argmax_scale):  # NaN when the loss is flat along the ray (collapsed)
                    s["ray_argmax_scale"] = est.argmax_scale
                ctx.extras["critical_beta"] = est.critical_beta
                if beta_eff is not None and beta_eff > 0:
                    s["margin"] = est.critical_beta / beta_eff
                    ctx.extras["l2_margin"] = s["margin"]
                    balance = self._radial_balance(ctx, params, beta_eff, theta_sq)
                    if math.isfinite(balance):
                        s["radial_balance"] = balance
                    why = self._not_ready(s.get("collapse_ratio", math.nan), balance)
                    if why:
                        out.warming_up.update({"margin": why, "critical_beta": why})
        description = f"Collapsing set: {which} ({len(params)} tensors). {CONVENTION_TEXT}"
        if description != self._described:  # the text once, and again only if it changes
            out.texts["convention"] = description
            self._described = description
        return out

    @staticmethod
    def _radial_balance(ctx: ProbeContext, params: list[torch.Tensor], beta_eff: float, theta_sq: float) -> float:
        """``−θ·∇L / (2β‖θ‖²)``, the derivative ``(d/ds) L(sθ)`` at ``s = 1`` taken exactly (one backward
        pass; a finite difference along the ray is 20 % off for a three-layer net, whose ``L(sθ)`` is a
        degree-6 polynomial with a first derivative small next to the higher ones)."""
        loss = ctx.evaluate_loss()
        if not loss.requires_grad:
            return math.nan
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        dot = sum((p.detach().double() * g.double()).sum() for p, g in zip(params, grads) if g is not None)
        dot = ctx.reduce_mean(torch.as_tensor(dot, dtype=torch.float64, device=params[0].device))
        return -float(dot) / (2.0 * beta_eff * theta_sq)

    def _not_ready(self, ratio: float, balance: float) -> str:
        """Why the margin cannot carry a verdict now ("" when it can)."""
        if not ratio >= self.ready_collapse_ratio:
            return (f"the model has not learned enough for a collapse to be news: collapse_ratio {ratio:.3g} < "
                    f"ready_collapse_ratio {self.ready_collapse_ratio:g}")
        if not balance >= self.ready_balance:
            return (f"the weights are not in equilibrium with the decay (radial_balance {balance:.3g} < "
                    f"ready_balance {self.ready_balance:g}): the ray through them is a loose bound")
        return ""

    @staticmethod
    def _beta_eff(decays: list, params: list[torch.Tensor], theta_sq: float, s: dict[str, float]) -> float | None:
        """Log β per group; return ``Σ_g β_g‖θ_g‖²/‖θ‖²`` over the collapsing set (None if undefined)."""
        chosen = {id(p) for p in params}
        num, defined = 0.0, True
        for g in decays:
            s[f"weight_decay/group{g.index}"] = g.weight_decay
            if g.beta is not None:
                s[f"beta/group{g.index}"] = g.beta
            part = squared_norm([p for p in g.params if id(p) in chosen])
            if part > 0:
                if g.beta is None:
                    defined = False
                else:
                    num += g.beta * part
        if not decays or not defined or theta_sq == 0:
            return None
        s["beta_eff"] = num / theta_sq
        return s["beta_eff"]
