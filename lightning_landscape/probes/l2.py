"""L2 phase-transition probe: how far training is from the weight decay that collapses the model."""

from __future__ import annotations

import math
import statistics
from typing import Any, Literal

import torch

from lightning_landscape.l2.convention import CONVENTION_TEXT, group_decays
from lightning_landscape.l2.invariance import InvariantGroup, scale_invariant_groups
from lightning_landscape.l2.order import collapse_ratio, parameter_norms, squared_norm, trivial_loss
from lightning_landscape.linalg.reduction import dot
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
from lightning_landscape.validation import check_bool

ParamSet = Literal["decayed", "all", "weights"]
InvariantMode = Literal["exclude", "include"]


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
        per_layer: also log the norm of every parameter tensor (``norm/<name>``) and the effective
            learning rate of every scale-invariant group (``effective_lr/<layer>``).
        scale_invariant: ``"exclude"`` (default): weights whose output goes straight into a
            BatchNorm/LayerNorm/GroupNorm (detected once by tracing the forward pass, then checked
            numerically: ``L(cθ_g) = L(θ_g)``) are left out of the ray, of ``theta_sq``, ``beta_eff`` and
            the radial balance. Shrinking them never moves the function towards the trivial model, and
            their penalty can be made as small as one likes without changing it, so the collapse is
            decided by the other parameters; ``critical_beta`` stays a lower bound of the threshold of
            ``L + β‖θ‖²`` with that removable part of the penalty left out. ``"include"``: the whole-θ ray.
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

        fast_every_n_steps: measure this often while the tracked margin has fallen by 5 % since the last
            measurement (the weight decay is being raised): the regular interval is long because the ray
            costs forward passes, and a ramp must not slip through between two measurements.

    Until both hold, ``margin`` and ``critical_beta`` are logged with the state ``warming_up``
    (``ready/margin`` = 0). Between measurements ``margin_tracked`` follows the optimizer's current weight
    decay at every step (the last ``critical_beta`` over the current penalty): free, and what
    :class:`~lightning_landscape.alerts.L2Threshold` and the weight-decay controller watch.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8, bias=False), torch.nn.Linear(8, 1, bias=False))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=0.02)
        >>> x = torch.randn(64, 4); y = x @ torch.ones(4, 1)
        >>> ctx = ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=1, optimizer=opt)
        >>> result = L2Transition().run(ctx)
        >>> out = result.scalars
        >>> out["beta/group0"], sorted(k for k in out if not k.startswith(("norm/", "beta/", "weight_decay/")))
        (0.01, ['beta_eff', 'collapse_ratio', 'critical_beta', 'loss', 'loss_trivial', 'margin', 'margin_tracked', 'radial_balance', 'ray_argmax_scale', 'theta_sq'])
        >>> sorted(result.warming_up)  # untrained: logged, not judged
        ['critical_beta', 'margin', 'margin_tracked']
    """

    name = "l2_transition"
    group = "l2"
    needs_hessian = False
    default_every_n_steps = 200
    cost = "≈ 7 forward passes (warm-started ray; 22 cold) and one gradient"
    gated_keys = ("margin", "critical_beta", "margin_tracked")
    other_tags = {"convention": "text: the collapsing set and the weight-decay convention (once, and when it changes)"}
    scalar_tags = {
        "theta_sq": "‖θ‖² of the collapsing parameters (decayed ones by default, scale-invariant groups left out)",
        "loss": "probe-batch loss (without the penalty)",
        "loss_trivial": "probe-batch loss of the collapsed model (those parameters at 0)",
        "collapse_ratio": "(L_trivial − L)/L_trivial: 1 = perfect fit, 0 = collapsed, < 0 = worse than collapsed",
        "critical_beta": "β_ray = max_s [L(0) − L(sθ)]/(s²‖θ‖²): weight decay (penalty β‖θ‖², SGD wd = 2β) "
        "at which the collapsed model beats the whole current ray; ≤ true threshold; < 0 when the whole ray "
        "is worse than the collapsed model (e.g. at initialisation)",
        "margin": "critical_beta / beta_eff; < 1: collapse preferred along the ray (absent when β = 0)",
        "margin_tracked": "margin at every step: the last critical_beta over the penalty of the current weight decay "
        "(free; equals margin at a measurement)",
        "ray_argmax_scale": "s of the ray maximum: ≈ 0 continuous-type, interior (< 1) jump-type barrier",
        "radial_balance": "−(d/ds)L(sθ) at s=1 over 2β‖θ‖²: 1 in equilibrium with the decay, ≈ 0 while decay drains "
        "norm the loss does not need (the margin is judged only near equilibrium)",
        "ready/<key>": "1 once <key> (margin, critical_beta, margin_tracked) can carry a verdict (model learned, "
        "weights in radial equilibrium), else 0",
        "beta_eff": "‖θ‖²-weighted mean penalty β over the collapsing parameters (what margin divides by); "
        "tracked at every step from the optimizer's weight decay",
        "beta/group<i>": "penalty β of param group i (SGD/Adam: weight_decay/2; AdamW: frozen-preconditioner equivalent)",
        "weight_decay/group<i>": "raw optimizer weight_decay of param group i",
        "norm/<param>": "Frobenius norm of each collapsing parameter tensor",
        "invariant_sq": "‖θ‖² of the scale-invariant groups (weights feeding a BatchNorm/LayerNorm/GroupNorm), "
        "left out of the ray and of theta_sq",
        "invariant_groups": "number of scale-invariant groups found (traced, then checked L(cθ_g) = L(θ_g))",
        "effective_lr/max": "largest lr/‖θ_g‖² over the scale-invariant groups: the angular step size weight "
        "decay raises as it shrinks them",
        "effective_lr/median": "median lr/‖θ_g‖² over the scale-invariant groups",
        "effective_lr/<layer>": "lr/‖θ_g‖² of the scale-invariant group of one layer (with per_layer)",
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
        fast_every_n_steps: int | None = 25,
        scale_invariant: InvariantMode = "exclude",
    ) -> None:
        super().__init__(every_n_steps)
        self.params = check_choice("L2Transition.params", params, ("decayed", "all", "weights"))
        self.per_layer = check_bool("L2Transition.per_layer", per_layer)
        self.ray = check_bool("L2Transition.ray", ray)
        self.s_max = check_positive_float("L2Transition.s_max", s_max)
        self.num_scales = check_positive_int("L2Transition.num_scales", num_scales, 2)
        self.refine_steps = check_positive_int("L2Transition.refine_steps", refine_steps, 0)
        self.ready_collapse_ratio = check_number("L2Transition.ready_collapse_ratio", ready_collapse_ratio)
        if self.ready_collapse_ratio > 1:
            raise ValueError(f"L2Transition.ready_collapse_ratio must be <= 1, got {self.ready_collapse_ratio}")
        self.ready_balance = check_number("L2Transition.ready_balance", ready_balance)
        self.fast_every_n_steps = (None if fast_every_n_steps is None
                                   else check_positive_int("L2Transition.fast_every_n_steps", fast_every_n_steps))
        self.scale_invariant = check_choice("L2Transition.scale_invariant", scale_invariant, ("exclude", "include"))
        self._invariant: tuple[tuple[str, ...], list[InvariantGroup]] | None = None  # (parameter names, groups)
        self._argmax: float | None = None  # warm start of the ray search
        self._tracked: _TrackedMargin | None = None
        self._measured_margin: float | None = None
        self._hot = False
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
            "fast_every_n_steps": self.fast_every_n_steps,
            "scale_invariant": self.scale_invariant,
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

    def _invariant_groups(self, ctx: ProbeContext, loss_fn) -> list[InvariantGroup]:  # noqa: ANN001
        """Scale-invariant groups of the module, detected once per architecture (parameter names)."""
        names = tuple(n for n, _ in ctx.module.named_parameters())
        if self._invariant is None or self._invariant[0] != names:
            self._invariant = (names, scale_invariant_groups(ctx.module, loss_fn))
        return self._invariant[1]

    def run(self, ctx: ProbeContext) -> ProbeResult:
        decays = group_decays(ctx.optimizer) if ctx.optimizer is not None else []
        named, which = self._select(ctx, decays)
        out = ProbeResult()
        if not named:
            return out
        s = out.scalars

        def loss_fn() -> torch.Tensor:
            # under no_grad evaluate_loss is already averaged over ranks. Kept in its own precision:
            # rounding a float64 loss to float32 puts noise above the ray's float64 noise floor, and the
            # maximum over s of noise/s² then overestimates critical_beta (no longer a lower bound).
            with torch.no_grad():
                return ctx.evaluate_loss().detach()

        if self.scale_invariant == "exclude":
            invariant = self._invariant_groups(ctx, loss_fn)
            chosen_names = {n for n, _ in named}
            inv_names = {n for g in invariant for n in g.names if n in chosen_names}
            if inv_names and len(inv_names) < len(named):  # something must be left to collapse
                by_name = dict(named)
                s["invariant_sq"] = squared_norm([by_name[n] for n in sorted(inv_names)])
                s["invariant_groups"] = float(len(invariant))
                self._effective_lr(ctx, invariant, s)
                named = [(n, p) for n, p in named if n not in inv_names]
                which += f", without {len(invariant)} scale-invariant group(s) (weights feeding a normalisation)"
        params = [p for _, p in named]

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

        chosen = {id(p) for p in params}
        group_sq = {g.index: squared_norm([p for p in g.params if id(p) in chosen]) for g in decays}
        beta_eff = self._beta_eff(decays, group_sq, theta_sq, s)
        self._tracked = None
        if self.ray and theta_sq > 0 and math.isfinite(l_triv):
            est = ray_critical_beta(params, loss_fn, self.s_max, self.num_scales, refine_steps=self.refine_steps,
                                    loss_trivial=l_triv, guess=self._argmax)
            self._argmax = est.argmax_scale if math.isfinite(est.argmax_scale) else None
            if math.isfinite(est.critical_beta):
                s["critical_beta"] = est.critical_beta
                if math.isfinite(est.argmax_scale):  # NaN when the loss is flat along the ray (collapsed)
                    s["ray_argmax_scale"] = est.argmax_scale
                if beta_eff is not None and beta_eff > 0:
                    s["margin"] = s["margin_tracked"] = est.critical_beta / beta_eff
                    balance = self._radial_balance(ctx, params, beta_eff, theta_sq)
                    if math.isfinite(balance):
                        s["radial_balance"] = balance
                    why = self._not_ready(s.get("collapse_ratio", math.nan), balance)
                    if why:
                        out.warming_up.update({k: why for k in self.gated_keys})
                    self._tracked = _TrackedMargin.at_measurement(est.critical_beta, decays, group_sq, theta_sq,
                                                                  why or None)
                    self._measured_margin = s["margin"]
        description = f"Collapsing set: {which} ({len(params)} tensors). {CONVENTION_TEXT}"
        if description != self._described:  # the text once, and again only if it changes
            out.texts["convention"] = description
            self._described = description
        return out

    def _effective_lr(self, ctx: ProbeContext, groups: list[InvariantGroup], s: dict[str, float]) -> None:
        """``lr/‖θ_g‖²`` of each scale-invariant group (lr of the param group holding its weight)."""
        if ctx.optimizer is None:
            return
        lr_of = {id(p): float(g.get("lr", math.nan)) for g in getattr(ctx.optimizer, "param_groups", [])
                 for p in g["params"]}
        by_name = dict(ctx.module.named_parameters())
        values = []
        for g in groups:
            tensors = [by_name[n] for n in g.names]
            sq = squared_norm(tensors)
            lr = lr_of.get(id(tensors[0]), math.nan)
            if sq > 0 and math.isfinite(lr):
                values.append(lr / sq)
                if self.per_layer:
                    s[f"effective_lr/{g.layer}"] = lr / sq
        if values:
            s["effective_lr/max"] = max(values)
            s["effective_lr/median"] = float(statistics.median(values))

    @staticmethod
    def _radial_balance(ctx: ProbeContext, params: list[torch.Tensor], beta_eff: float, theta_sq: float) -> float:
        """``−θ·∇L / (2β‖θ‖²)``, the derivative ``(d/ds) L(sθ)`` at ``s = 1`` taken exactly from the probe
        batch's gradient (shared with the Hessian probes when they ran at this step; a finite difference
        along the ray is 20 % off for a three-layer net, whose ``L(sθ)`` is a degree-6 polynomial with a
        first derivative small next to the higher ones)."""
        try:
            grad = ctx.gradient()
        except RuntimeError:  # the loss has no graph (e.g. computed without gradients)
            return math.nan
        chosen = {id(p) for p in params}
        theta = ctx.space.flatten([p.detach() if id(p) in chosen else None for p in ctx.space.params])
        radial = float(dot(theta.double(), grad.double()))
        return -radial / (2.0 * beta_eff * theta_sq)

    def track(self, step: int, optimizer: Any, optimizer_info: Any) -> ProbeResult | None:
        """``margin_tracked``: the last ``critical_beta`` over the penalty implied by the optimizer's
        *current* weight decay (free: a weight-decay ramp or schedule is seen at every step)."""
        if self._tracked is None or optimizer is None:
            return None
        margin = self._tracked.margin(optimizer)
        if margin is None:
            return None
        self._hot = self._measured_margin is not None and margin < (1.0 - self.FAST_FALL) * self._measured_margin
        out = ProbeResult(scalars={"margin_tracked": margin, "beta_eff": self._tracked.critical_beta / margin})
        if self._tracked.warming is not None:
            out.warming_up["margin_tracked"] = self._tracked.warming
        return out

    #: Relative fall of the tracked margin since the last measurement that schedules a measurement every
    #: ``fast_every_n_steps`` (the weight decay is being raised).
    FAST_FALL = 0.05

    def is_due(self, step: int, previous: int | None = None) -> bool:
        if super().is_due(step, previous):
            return True
        fast = self.fast_every_n_steps
        return bool(self._hot and fast is not None and step // fast > (step - 1) // fast)

    def state_dict(self) -> dict[str, Any]:
        return {"argmax": self._argmax, "measured_margin": self._measured_margin,
                "tracked": None if self._tracked is None else self._tracked.state_dict(), "hot": self._hot}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._argmax = state.get("argmax")
        self._measured_margin = state.get("measured_margin")
        tracked = state.get("tracked")
        self._tracked = None if tracked is None else _TrackedMargin.from_state(tracked)
        self._hot = bool(state.get("hot", False))

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
    def _beta_eff(decays: list, group_sq: dict[int, float], theta_sq: float, s: dict[str, float]) -> float | None:
        """Log β per group; return ``Σ_g β_g‖θ_g‖²/‖θ‖²`` over the collapsing set (None if undefined);
        ``group_sq``: each group's ‖θ_g‖² over the collapsing set."""
        num, defined = 0.0, True
        for g in decays:
            s[f"weight_decay/group{g.index}"] = g.weight_decay
            if g.beta is not None:
                s[f"beta/group{g.index}"] = g.beta
            part = group_sq[g.index]
            if part > 0:
                if g.beta is None:
                    defined = False
                else:
                    num += g.beta * part
        if not decays or not defined or theta_sq == 0:
            return None
        s["beta_eff"] = num / theta_sq
        return s["beta_eff"]


class _TrackedMargin:
    """What the margin needs between measurements: ``critical_beta`` and, per param group, its penalty β,
    raw weight decay and share ``‖θ_g‖²/‖θ‖²`` of the collapsing norm at the measurement.

    The margin divides ``critical_beta`` by ``β_eff = Σ_g β_g ‖θ_g‖²/‖θ‖²``; between measurements each
    ``β_g`` follows its group's weight decay (``β_g · wd_now / wd_then``: exact for coupled decay, the
    frozen-preconditioner equivalent for AdamW), the rest is held.
    """

    def __init__(self, critical_beta: float, parts: list[tuple[int, float, float, str, float]],
                 warming: str | None) -> None:
        self.critical_beta, self.parts, self.warming = critical_beta, parts, warming

    @classmethod
    def at_measurement(cls, critical_beta: float, decays: list, group_sq: dict[int, float], theta_sq: float,
                       warming: str | None) -> "_TrackedMargin":
        parts = []
        for g in decays:
            share = group_sq[g.index] / theta_sq if theta_sq > 0 else 0.0
            if share > 0:
                parts.append((g.index, float(g.beta or 0.0), float(g.weight_decay), str(g.kind), share))
        return cls(critical_beta, parts, warming)

    def margin(self, optimizer: Any) -> float | None:
        groups = getattr(optimizer, "param_groups", [])
        beta = 0.0
        for index, beta_then, wd_then, kind, share in self.parts:
            if index >= len(groups):
                return None
            wd_now = float(groups[index].get("weight_decay", 0.0) or 0.0)
            if wd_then > 0:
                beta += beta_then * wd_now / wd_then * share
            elif kind in ("coupled", "unknown", "none"):
                beta += wd_now / 2.0 * share
            else:
                return None  # decoupled decay switched on since the measurement: no equivalent yet
        return self.critical_beta / beta if beta > 0 else None

    def state_dict(self) -> dict[str, Any]:
        return {"critical_beta": self.critical_beta, "parts": [list(p) for p in self.parts], "warming": self.warming}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "_TrackedMargin":
        parts = [(int(i), float(b), float(w), str(k), float(sh)) for i, b, w, k, sh in state["parts"]]
        return cls(float(state["critical_beta"]), parts, state.get("warming"))
