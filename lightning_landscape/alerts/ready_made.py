"""The ready-made rules: :class:`L2Threshold`, :class:`ChannelEntry`, :class:`Saddle`, :class:`SaddleBranch`,
:class:`EdgeOfStability`, :class:`SharpnessSpike`, :class:`NonFinite` (registry :data:`RULES`).

Every constructor argument has a simple type hint, so LightningCLI/jsonargparse builds rules from YAML
(``class_path: lightning_landscape.alerts.EdgeOfStability`` + ``init_args``).
"""

from __future__ import annotations

import math

from lightning_landscape.alerts.base import Rule, _fmt
from lightning_landscape.alerts.detectors import GrowthForecast, HysteresisDetector
from lightning_landscape.alerts.events import Event, check_severity
from lightning_landscape.alerts.generic import ChangePoint, EventRule
from lightning_landscape.alerts.runbook import runbook_action
from lightning_landscape.validation import check_number, check_positive_int


class L2Threshold(Rule):
    """The L2 phase-transition alarm, from two independent signals (each latching with hysteresis):

    * **margin** — ``landscape/l2/margin_tracked`` (critical β over the current β, at every step) at or below ``margin_below`` for
      ``k`` consecutive measurements: training is close to the weight decay at which the network
      collapses. Re-arms above ``margin_rearm`` (default ``1.2 * margin_below``). Severity ``severity``.
    * **collapse** — ``landscape/l2/collapse_ratio`` ``(L_trivial − L)/L_trivial`` fell to
      ``collapse_fraction`` of its best value so far (best ≥ ``min_best_collapse_ratio``, else the
      model never learnt anything worth losing): the collapse is happening. Re-arms when the ratio is
      back above ``collapse_rearm`` × best (default halfway between ``collapse_fraction`` and 1).
      Severity ``collapse_severity``.

    * **forecast** — the penalty β (``landscape/l2/beta_eff``, tracked at every step from the optimizer's
      weight decay) grows at a steady exponential rate over the last ``forecast_window`` steps — a
      weight-decay ramp — that would carry the tracked margin (≤ ``forecast_floor_margin``) below 1 within
      ``forecast_horizon`` steps. ``forecast_horizon=0`` switches it off. A one-hidden-layer net collapses
      continuously, and its ray margin (a lower bound) reaches ``margin_below`` only shortly before; the
      forecast warns earlier on any architecture, without a lower margin level for runs that hold still.

    Pass ``None`` to disable the margin or collapse signal. Events carry ``key`` ``"margin"``,
    ``"collapse"`` or ``"forecast"``.

    >>> r = L2Threshold(margin_below=1.5, k=2)
    >>> [s for s, m in enumerate([4, 3, 2, 1.4, 1.3, 1.2, 1.6, 2.0, 1.4, 1.4])
    ...  if r.observe(s, 0, {"landscape/l2/margin_tracked": m}, [])]
    [4, 9]
    """

    default_name = "l2_threshold"

    def __init__(
        self,
        *,
        margin_below: float | None = 1.5,
        margin_rearm: float | None = None,
        collapse_fraction: float | None = 0.5,
        collapse_rearm: float | None = None,
        min_best_collapse_ratio: float = 0.1,
        k: int = 2,
        margin_tag: str = "landscape/l2/margin_tracked",
        collapse_tag: str = "landscape/l2/collapse_ratio",
        forecast_horizon: int = 500,
        forecast_window: int = 100,
        forecast_floor_margin: float = 10.0,
        beta_tag: str = "landscape/l2/beta_eff",
        warmup_steps: int = 0,
        cooldown_steps: int = 0,
        severity: str = "warning",
        collapse_severity: str = "critical",
        name: str | None = None,
    ) -> None:
        cls = type(self).__name__
        super().__init__(name=name, severity=severity, warmup_steps=warmup_steps, cooldown_steps=cooldown_steps)
        if margin_below is None and collapse_fraction is None:
            raise ValueError(f"{cls}: margin_below and collapse_fraction cannot both be None")
        self.k = check_positive_int(f"{cls}.k", k, 1)
        self.margin_tag, self.collapse_tag = margin_tag, collapse_tag
        self.collapse_severity = check_severity(f"{cls}.collapse_severity", collapse_severity)
        self.min_best_collapse_ratio = check_number(f"{cls}.min_best_collapse_ratio", min_best_collapse_ratio, 0.0)
        self.margin: HysteresisDetector | None = None
        if margin_below is not None:
            on = check_number(f"{cls}.margin_below", margin_below, 0.0, strict=True)
            off = round(1.2 * on, 12) if margin_rearm is None else check_number(f"{cls}.margin_rearm", margin_rearm)
            if off < on:
                raise ValueError(f"{cls}.margin_rearm must be >= margin_below ({on}), got {off}")
            self.margin = HysteresisDetector(on=on, off=off, direction="below", k=self.k)
        self.collapse: HysteresisDetector | None = None
        if collapse_fraction is not None:
            on = check_number(f"{cls}.collapse_fraction", collapse_fraction, 0.0, strict=True)
            if on >= 1:
                raise ValueError(f"{cls}.collapse_fraction must be in (0, 1), got {on}")
            off = (1 + on) / 2 if collapse_rearm is None else check_number(f"{cls}.collapse_rearm", collapse_rearm)
            if not on <= off <= 1:
                raise ValueError(f"{cls}.collapse_rearm must be in [collapse_fraction ({on}), 1], got {off}")
            self.collapse = HysteresisDetector(on=on, off=off, direction="below", k=self.k)  # on ratio / best
        self.best_collapse_ratio = -math.inf
        self.beta_tag = str(beta_tag)
        horizon = check_positive_int(f"{cls}.forecast_horizon", forecast_horizon, 0)
        window = check_positive_int(f"{cls}.forecast_window", forecast_window, 4)
        floor = check_number(f"{cls}.forecast_floor_margin", forecast_floor_margin, 1.0, strict=True)
        # On 1/margin: it grows like the penalty β and "passes 1" when the margin falls below 1.
        self.forecast = GrowthForecast(level=1.0, horizon=horizon, window=window, floor=1.0 / floor) if horizon > 0 else None

    def _observe(self, step, epoch, scalars, events):
        out = []
        margin = float(scalars.get(self.margin_tag, math.nan))
        beta = float(scalars.get(self.beta_tag, math.nan))
        if (self.forecast is not None and margin > 0 and math.isfinite(margin) and beta > 0 and math.isfinite(beta)
                and self.forecast.update(step, 1.0 / margin, beta) and self._can_fire(step, "forecast")):
            eta = self.forecast.steps_to_level()
            out.append(self._event(
                step, epoch, {self.margin_tag: margin, "steps_to_margin_1": eta},
                f"weight decay is growing steadily (×{math.exp(self.forecast.rate() or 0.0):.4f}/step) with the L2 "
                f"margin at {_fmt(margin)}: at this rate the collapse is preferred in ~{eta:.0f} steps",
                key="forecast"))
        if self.margin is not None and self.margin_tag in scalars:
            m = float(scalars[self.margin_tag])
            if self.margin.update(m, self._can_fire(step, "margin")):
                out.append(self._event(
                    step, epoch, {self.margin_tag: m, "margin_below": self.margin.on},
                    f"L2 margin {_fmt(m)} <= {_fmt(self.margin.on)}: weight decay is within a factor "
                    f"{_fmt(m)} of the collapse threshold", key="margin"))
        if self.collapse is not None and self.collapse_tag in scalars:
            c = float(scalars[self.collapse_tag])
            if math.isfinite(c):
                self.best_collapse_ratio = max(self.best_collapse_ratio, c)
                best = self.best_collapse_ratio
                can_fire = self._can_fire(step, "collapse")
                if best >= self.min_best_collapse_ratio and self.collapse.update(c / best, can_fire):
                    out.append(self._event(
                        step, epoch, {self.collapse_tag: c, "best_collapse_ratio": best},
                        f"collapse: {self.collapse_tag} fell to {_fmt(c)} from a best of {_fmt(best)} "
                        f"(<= {_fmt(self.collapse.on)} x best)", key="collapse",
                        severity=self.collapse_severity))
        return out

    @property
    def active(self) -> bool:
        return any(d is not None and not d.armed for d in (self.margin, self.collapse, self.forecast))

    def config(self):
        return {"margin_below": self.margin.on if self.margin else None,
                "margin_rearm": self.margin.off if self.margin else None,
                "collapse_fraction": self.collapse.on if self.collapse else None,
                "collapse_rearm": self.collapse.off if self.collapse else None,
                "min_best_collapse_ratio": self.min_best_collapse_ratio, "k": self.k,
                "margin_tag": self.margin_tag, "collapse_tag": self.collapse_tag,
                "forecast_horizon": self.forecast.horizon if self.forecast else 0,
                "forecast_window": self.forecast.window if self.forecast else 100,
                "forecast_floor_margin": 1.0 / self.forecast.floor if self.forecast else 10.0,
                "beta_tag": self.beta_tag, "collapse_severity": self.collapse_severity, **super().config()}

    def state_dict(self):
        return {**super().state_dict(), "best_collapse_ratio": self.best_collapse_ratio,
                "margin": self.margin.state_dict() if self.margin else None,
                "collapse": self.collapse.state_dict() if self.collapse else None,
                "forecast": self.forecast.state_dict() if self.forecast else None}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.best_collapse_ratio = float(state.get("best_collapse_ratio", -math.inf))
        for attr in ("margin", "collapse", "forecast"):
            det, saved = getattr(self, attr), state.get(attr)
            if det is not None and saved is not None:
                det.load_state_dict(saved)


class EdgeOfStability(Rule):
    """The edge-of-stability alarm on ``landscape/hessian/eos_ratio_tracked`` (refreshed at every optimizer
    step from the last measured sharpness and the current learning rate — and, for Adam, the
    preconditioner's drift), from two signals, each latching:

    * **level** — the ratio ≥ ``level`` for ``k`` consecutive observations (re-arms below ``rearm``,
      default ``0.9·level``): the optimizer is past what it can follow now. A ratio near 1 is normal in
      large-learning-rate training (self-stabilisation), so the default level is 1.5; and since a
      measured ratio is exact to the Lanczos tolerance, one observation suffices (``k=1``). The monitor
      passes the tracked ratio on when it changes (a measurement, a learning-rate change), so ``k``
      counts those, not steps.
    * **forecast** — the optimizer's stability threshold (``landscape/hessian/eos_threshold``: 2/lr,
      (2+2μ)/lr, 38/lr for Adam) falls at a steady exponential rate over the last ``forecast_window`` steps
      — a learning-rate ramp — that would carry the ratio (≥ ``forecast_floor``) to ``forecast_level`` (the
      edge itself, 1) within ``forecast_horizon`` steps: announced while there is still time (on the
      scenario benchmark's SGD-momentum ramp the loss diverged at a measured ratio of 0.4–2, within ~50
      steps of the ratio's last doubling). The growth is the learning rate's only: progressive sharpening
      towards the edge at a fixed learning rate self-stabilises (gradient descent at the edge of
      stability) and is not forecast, nor is a linear warm-up. ``forecast_horizon=0`` switches it off.

    Events carry ``key`` ``"level"`` or ``"forecast"``.

    >>> r = EdgeOfStability(level=1.0, k=3, forecast_horizon=0)
    >>> [s for s, x in enumerate([0.5, 1.01, 1.02, 0.99, 1.01, 1.02, 1.03, 1.1])
    ...  if r.observe(s, 0, {"landscape/hessian/eos_ratio_tracked": x}, [])]
    [6]
    """

    default_name = "edge_of_stability"

    def __init__(
        self,
        *,
        level: float = 1.5,
        k: int = 1,
        rearm: float | None = None,
        forecast_level: float = 1.0,
        forecast_horizon: int = 500,
        forecast_window: int = 100,
        forecast_floor: float = 0.05,
        tag: str = "landscape/hessian/eos_ratio_tracked",
        threshold_tag: str = "landscape/hessian/eos_threshold",
        warmup_steps: int = 0,
        cooldown_steps: int = 0,
        severity: str = "warning",
        name: str | None = None,
    ) -> None:
        cls = type(self).__name__
        super().__init__(name=name, severity=severity, warmup_steps=warmup_steps, cooldown_steps=cooldown_steps)
        self.threshold_tag = str(threshold_tag)
        level = check_number(f"{cls}.level", level, 0.0, strict=True)
        off = 0.9 * level if rearm is None else check_number(f"{cls}.rearm", rearm)
        if off > level:
            raise ValueError(f"{cls}.rearm must be <= level ({level}), got {off}")
        self.k = check_positive_int(f"{cls}.k", k, 1)
        if not isinstance(tag, str) or not tag:
            raise ValueError(f"{cls}.tag must be a non-empty tag string, got {tag!r}")
        self.tag = tag
        self.detector = HysteresisDetector(on=level, off=off, direction="above", k=self.k)
        horizon = check_positive_int(f"{cls}.forecast_horizon", forecast_horizon, 0)
        window = check_positive_int(f"{cls}.forecast_window", forecast_window, 4)
        floor = check_number(f"{cls}.forecast_floor", forecast_floor, 0.0, strict=True)
        target = check_number(f"{cls}.forecast_level", forecast_level, 0.0, strict=True)
        self.forecast = GrowthForecast(level=target, horizon=horizon, window=window, floor=floor) if horizon > 0 else None

    def _observe(self, step, epoch, scalars, events):
        if self.tag not in scalars:
            return []
        x = float(scalars[self.tag])
        out = []
        if self.detector.update(x, self._can_fire(step, "level")):
            out.append(self._event(
                step, epoch, {self.tag: x, "level": self.detector.on},
                f"{self.tag} = {_fmt(x)} >= {_fmt(self.detector.on)}"
                + (f" for {self.k} consecutive observations" if self.k > 1 else "")
                + ": past the edge of stability at the current learning rate", key="level"))
        threshold = float(scalars.get(self.threshold_tag, math.nan))
        driver = 1.0 / threshold if threshold > 0 and math.isfinite(threshold) else None
        if (self.forecast is not None and driver is not None and self.forecast.update(step, x, driver)
                and self._can_fire(step, "forecast")):
            eta = self.forecast.steps_to_level()
            out.append(self._event(
                step, epoch, {self.tag: x, "level": self.forecast.level, "steps_to_level": eta},
                f"the learning rate is growing steadily (×{math.exp(self.forecast.rate() or 0.0):.4f}/step) with "
                f"{self.tag} = {_fmt(x)}: at this rate it passes {_fmt(self.forecast.level)} in ~{eta:.0f} steps",
                key="forecast"))
        return out

    @property
    def active(self) -> bool:
        return not self.detector.armed or (self.forecast is not None and not self.forecast.armed)

    def config(self):
        f = self.forecast
        return {"level": self.detector.on, "k": self.k, "rearm": self.detector.off,
                "forecast_level": f.level if f else 1.0,
                "forecast_horizon": f.horizon if f else 0, "forecast_window": f.window if f else 100,
                "forecast_floor": f.floor if f else 0.05, "tag": self.tag, "threshold_tag": self.threshold_tag,
                **super().config()}

    def state_dict(self):
        return {**super().state_dict(), "detector": self.detector.state_dict(),
                "forecast": self.forecast.state_dict() if self.forecast else None}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.detector.load_state_dict(state["detector"])
        if self.forecast is not None and state.get("forecast") is not None:
            self.forecast.load_state_dict(state["forecast"])


class SharpnessSpike(ChangePoint):
    """Upward change point of ``landscape/hessian/lambda_max`` on the log scale (CUSUM), with at
    least ``min_relative_change`` (default +25 %) against the baseline's prediction. The baseline
    follows a trend (``trend=True``: Holt's linear smoothing on log λmax), so steady progressive
    sharpening, exponential growth included, is predicted rather than alarmed on; a jump (e.g. a
    channel meeting the edge of stability, a learning-rate warm-up overshoot) fires.

    Measured (defaults) on λmax growing 0.5 % per measurement with 1 % / 5 % multiplicative noise:
    0 / 1 false alarms in 100 streams x 300 measurements; a +60 % jump caught within 5 measurements,
    with no false alarm, in 100 / 99 of 100 streams (68 of 100 at 10 % noise).

    >>> r = SharpnessSpike(warmup=5)
    >>> stream = [20 * 1.002 ** s for s in range(40)] + [40.0, 42.0]
    >>> [s for s, x in enumerate(stream) if r.observe(s, 0, {"landscape/hessian/lambda_max": x}, [])]
    [40]
    """

    default_name = "sharpness_spike"

    def __init__(
        self,
        *,
        tag: str = "landscape/hessian/lambda_max",
        drift: float = 1.0,
        threshold: float = 8.0,
        warmup: int = 8,
        smoothing: float = 0.05,
        log_scale: bool = True,
        min_relative_change: float = 0.25,
        min_relative_scale: float = 0.02,
        trend: bool = True,
        warmup_steps: int = 0,
        cooldown_steps: int = 0,
        severity: str = "warning",
        name: str | None = None,
    ) -> None:
        super().__init__(
            tag, direction="up", drift=drift, threshold=threshold, warmup=warmup, smoothing=smoothing,
            log_scale=log_scale, min_relative_change=min_relative_change, min_scale=0.0,
            min_relative_scale=min_relative_scale, trend=trend, warmup_steps=warmup_steps,
            cooldown_steps=cooldown_steps, severity=severity, name=name,
        )

    def config(self):
        cfg = super().config()
        for k in ("direction", "min_scale"):
            cfg.pop(k)
        return cfg


class _FixedEventRule(EventRule):
    """An :class:`EventRule` whose event is the class's ``default_name`` (not a setting of its own)."""

    def __init__(self, *, cooldown_steps: int = 1000, warmup_steps: int = 0, severity: str | None = None,
                 name: str | None = None) -> None:
        super().__init__(self.default_name, cooldown_steps=cooldown_steps, warmup_steps=warmup_steps,
                         severity=severity, name=name)

    def config(self):
        cfg = super().config()
        cfg.pop("event")
        return cfg


class ChannelEntry(_FixedEventRule):
    """Pass-through of the neuron probe's ``channel_entry`` events (a pair of neurons whose input
    weights merge while their output weights diverge), de-duplicated per ``key`` (layer and pair)."""

    default_name = "channel_entry"


class Saddle(_FixedEventRule):
    """Pass-through of ``saddle`` events (λmin < 0 with a small gradient), de-duplicated per key."""

    default_name = "saddle"


class SaddleBranch(_FixedEventRule):
    """Pass-through of ``saddle_branch`` events (the function is representable by a narrower network
    and the gradient is small), de-duplicated per key."""

    default_name = "saddle_branch"


class NonFinite(Rule):
    """NaN/Inf in any watched scalar (``tags``; default every scalar observed), latched per tag: a tag
    fires when it turns non-finite and again only after it has been seen finite. Also passes through
    ``nonfinite`` events emitted by the monitor/probes (de-duplicated per key within
    ``cooldown_steps``). ``allow_inf`` lists tags for which ``+inf`` is legitimate (the L2 margin is
    ``+inf`` without weight decay). ``flag_tags`` are 0/1 indicators that count as non-finite when > 0
    (the monitor logs ``landscape/monitor/nonfinite = 1`` when it skipped probes on NaN/Inf).

    >>> r = NonFinite(cooldown_steps=0)
    >>> stream = [1.0, float("nan"), float("nan"), 2.0, float("inf")]
    >>> [s for s, x in enumerate(stream) if r.observe(s, 0, {"landscape/hessian/trace": x}, [])]
    [1, 4]
    """

    default_name = "nonfinite"

    def __init__(
        self,
        *,
        tags: list[str] | None = None,
        allow_inf: list[str] | None = None,
        flag_tags: list[str] | None = None,
        cooldown_steps: int = 100,
        warmup_steps: int = 0,
        severity: str = "critical",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name, severity=severity, warmup_steps=warmup_steps, cooldown_steps=cooldown_steps)
        self.tags = None if tags is None else [str(t) for t in tags]
        self.allow_inf = ["landscape/l2/margin", "landscape/l2/critical_beta"] if allow_inf is None else [
            str(t) for t in allow_inf]
        self.flag_tags = ["landscape/monitor/nonfinite"] if flag_tags is None else [str(t) for t in flag_tags]
        self._latched: set[str] = set()
        self._passthrough = EventRule("nonfinite", cooldown_steps=cooldown_steps, severity=self.severity, name=self.name)
        self._fired_now = False

    def _bad(self, tag: str, x: float) -> bool:
        if tag in self.flag_tags:
            return not x <= 0  # a raised flag (or a NaN flag)
        return math.isnan(x) or (math.isinf(x) and not (x > 0 and tag in self.allow_inf))

    def _observe(self, step, epoch, scalars, events):
        watched = scalars.keys() if self.tags is None else [t for t in self.tags + self.flag_tags if t in scalars]
        new: dict[str, float] = {}
        for tag in watched:
            x = float(scalars[tag])
            if not self._bad(tag, x):
                self._latched.discard(tag)
            elif tag not in self._latched and self._can_fire(step, tag):
                self._latched.add(tag)
                new[tag] = x
        out = []
        if new:
            for tag in new:
                self._last_fire[tag] = step
            names = ", ".join(sorted(new))
            out.append(Event(self.name, step, epoch, new, self.severity,
                             f"non-finite values in {len(new)} tag(s): {names}", key="",
                             runbook=runbook_action(self.default_name)))
        out.extend(self._passthrough.observe(step, epoch, {}, events))
        self._fired_now = bool(out)
        return out

    @property
    def active(self) -> bool:
        return bool(self._latched) or self._fired_now

    def config(self):
        return {"tags": self.tags, "allow_inf": self.allow_inf, "flag_tags": self.flag_tags, **super().config()}

    def state_dict(self):
        return {**super().state_dict(), "latched": sorted(self._latched),
                "passthrough": self._passthrough.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._latched = set(state.get("latched", []))
        if "passthrough" in state:
            self._passthrough.load_state_dict(state["passthrough"])


#: Ready-made rules by name.
RULES: dict[str, type[Rule]] = {
    cls.default_name: cls
    for cls in (L2Threshold, ChannelEntry, Saddle, SaddleBranch, EdgeOfStability, SharpnessSpike, NonFinite)
}


def default_rules() -> list[Rule]:
    """One of each ready-made rule, with its defaults.

    >>> [r.name for r in default_rules()]
    ['l2_threshold', 'channel_entry', 'saddle', 'saddle_branch', 'edge_of_stability', 'sharpness_spike', 'nonfinite']
    """
    return [cls() for cls in RULES.values()]
