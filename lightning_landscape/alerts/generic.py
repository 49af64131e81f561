"""Generic rules on any tag or event: :class:`Threshold` (hysteresis, k-consecutive), :class:`ChangePoint`
(two-sided CUSUM on a standardised stream with an adaptive baseline) and :class:`EventRule` (pass-through).

Every constructor argument has a simple type hint, so LightningCLI/jsonargparse builds rules from YAML.
"""

from __future__ import annotations

import math

from lightning_landscape.alerts.base import Rule, _check_name, _fmt
from lightning_landscape.alerts.detectors import CusumDetector, HysteresisDetector
from lightning_landscape.alerts.events import Event, as_event
from lightning_landscape.alerts.runbook import runbook_action
from lightning_landscape.validation import check_bool, check_choice, check_number, check_positive_int


class Threshold(Rule):
    """Fire when ``tag`` is past ``level`` (``>=`` with ``direction="above"``, ``<=`` with ``"below"``) for
    ``k`` consecutive measurements; re-arm only after it came back past ``rearm`` (hysteresis; default
    ``rearm = level``). (Not ``on``/``off``: YAML 1.1 reads those keys as booleans.)

    >>> r = Threshold("landscape/hessian/eos_ratio", level=1.0, rearm=0.9, k=2, name="eos")
    >>> fired = [r.observe(s, 0, {"landscape/hessian/eos_ratio": x}, []) for s, x in
    ...          enumerate([0.5, 1.1, 1.2, 1.3, 0.95, 1.2, 1.1, 0.8, 1.2, 1.2])]
    >>> [s for s, f in enumerate(fired) if f]
    [2, 9]
    """

    def __init__(
        self,
        tag: str,
        *,
        level: float,
        rearm: float | None = None,
        direction: str = "above",
        k: int = 1,
        warmup_steps: int = 0,
        cooldown_steps: int = 0,
        severity: str = "warning",
        name: str | None = None,
        message: str | None = None,
    ) -> None:
        cls = type(self).__name__
        if not isinstance(tag, str) or not tag:
            raise ValueError(f"{cls}.tag must be a non-empty tag string, got {tag!r}")
        self.tag = tag
        self.direction = check_choice(f"{cls}.direction", direction, ("above", "below"))
        self.level = check_number(f"{cls}.level", level)
        self.rearm = self.level if rearm is None else check_number(f"{cls}.rearm", rearm)
        if direction == "above" and self.rearm > self.level:
            raise ValueError(f"{cls}.rearm must be <= level ({self.level}) for direction='above', got {self.rearm}")
        if direction == "below" and self.rearm < self.level:
            raise ValueError(f"{cls}.rearm must be >= level ({self.level}) for direction='below', got {self.rearm}")
        self.k = check_positive_int(f"{cls}.k", k, 1)
        self.message = message
        default = f"{tag.rstrip('/').rsplit('/', 1)[-1]}_{direction}"
        super().__init__(name=name if name is not None else (self.default_name or default), severity=severity,
                         warmup_steps=warmup_steps, cooldown_steps=cooldown_steps)
        self.detector = HysteresisDetector(on=self.level, off=self.rearm, direction=self.direction, k=self.k)

    def _observe(self, step, epoch, scalars, events):
        if self.tag not in scalars:
            return []
        x = float(scalars[self.tag])
        if not self.detector.update(x, self._can_fire(step)):
            return []
        op = ">=" if self.direction == "above" else "<="
        msg = self.message or (
            f"{self.tag} = {_fmt(x)} {op} {_fmt(self.level)}"
            + (f" for {self.k} consecutive measurements" if self.k > 1 else "")
            + (f"; re-arms once it is {'below' if self.direction == 'above' else 'above'} {_fmt(self.rearm)}")
        )
        return [self._event(step, epoch, {self.tag: x, "threshold": self.level}, msg)]

    @property
    def active(self) -> bool:
        return not self.detector.armed

    def config(self):
        return {"tag": self.tag, "level": self.level, "rearm": self.rearm, "direction": self.direction, "k": self.k,
                **super().config()}

    def state_dict(self):
        return {**super().state_dict(), "detector": self.detector.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.detector.load_state_dict(state["detector"])


class ChangePoint(Rule):
    """Fire on a change point of ``tag`` (two-sided CUSUM, see :class:`CusumDetector`).

    >>> r = ChangePoint("landscape/hessian/lambda_max", warmup=5, name="cp")
    >>> stream = [10.0, 10.1, 9.9, 10.05, 9.95] * 4 + [14.0] * 3
    >>> [s for s, x in enumerate(stream) if r.observe(s, 0, {"landscape/hessian/lambda_max": x}, [])]
    [20]
    """

    def __init__(
        self,
        tag: str,
        *,
        direction: str = "up",
        drift: float = 1.0,
        threshold: float = 8.0,
        warmup: int = 10,
        smoothing: float = 0.05,
        log_scale: bool = False,
        min_relative_change: float = 0.0,
        min_scale: float = 0.0,
        min_relative_scale: float = 0.01,
        trend: bool = False,
        warmup_steps: int = 0,
        cooldown_steps: int = 0,
        severity: str = "warning",
        name: str | None = None,
    ) -> None:
        cls = type(self).__name__
        if not isinstance(tag, str) or not tag:
            raise ValueError(f"{cls}.tag must be a non-empty tag string, got {tag!r}")
        self.tag = tag
        self.detector = CusumDetector(
            direction=check_choice(f"{cls}.direction", direction, ("up", "down", "both")),
            drift=check_number(f"{cls}.drift", drift, 0.0),
            threshold=check_number(f"{cls}.threshold", threshold, 0.0, strict=True),
            warmup=check_positive_int(f"{cls}.warmup", warmup, 2),
            smoothing=check_number(f"{cls}.smoothing", smoothing, 0.0),
            log_scale=check_bool(f"{cls}.log_scale", log_scale),
            min_relative_change=check_number(f"{cls}.min_relative_change", min_relative_change, 0.0),
            min_scale=check_number(f"{cls}.min_scale", min_scale, 0.0),
            min_relative_scale=check_number(f"{cls}.min_relative_scale", min_relative_scale, 0.0),
            trend=check_bool(f"{cls}.trend", trend),
        )
        if self.detector.smoothing > 1:
            raise ValueError(f"{cls}.smoothing must be in [0, 1], got {smoothing}")
        default = f"{tag.rstrip('/').rsplit('/', 1)[-1]}_change"
        super().__init__(name=name if name is not None else (self.default_name or default), severity=severity,
                         warmup_steps=warmup_steps, cooldown_steps=cooldown_steps)
        self._active_until = -1

    def _observe(self, step, epoch, scalars, events):
        if self.tag not in scalars:
            return []
        x = float(scalars[self.tag])
        base = self.detector.baseline()
        fired = self.detector.update(x, self._can_fire(step))
        if fired is None:
            return []
        self._active_until = step + max(self.cooldown_steps, 1)
        rel = (x - base) / abs(base) if base else math.inf
        msg = (f"change point ({fired}) in {self.tag}: {_fmt(x)} against a baseline of {_fmt(base)} "
               f"({rel:+.1%})")
        return [self._event(step, epoch, {self.tag: x, "baseline": base, "relative_change": rel}, msg)]

    @property
    def active(self) -> bool:
        # In alarm during the cooldown that follows a change point (one observation if cooldown is 0).
        return self._step < self._active_until

    def config(self):
        d = self.detector
        return {"tag": self.tag, "direction": d.direction, "drift": d.drift, "threshold": d.threshold,
                "warmup": d.warmup, "smoothing": d.smoothing, "log_scale": d.log_scale,
                "min_relative_change": d.min_relative_change, "min_scale": d.min_scale,
                "min_relative_scale": d.min_relative_scale, "trend": d.trend, **super().config()}

    def state_dict(self):
        return {**super().state_dict(), "detector": self.detector.state_dict(), "active_until": self._active_until}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.detector.load_state_dict(state["detector"])
        self._active_until = int(state.get("active_until", -1))


class EventRule(Rule):
    """Pass through the events probes emit with ``Event.rule == event``, de-duplicated: an event
    whose ``(rule, key)`` was already *seen* less than ``cooldown_steps`` steps ago is suppressed, so a
    condition a probe reports at every measurement fires once (and again only after it has been absent
    for ``cooldown_steps``). ``severity=None`` keeps the probe's severity.

    >>> r = EventRule("channel_entry", cooldown_steps=100)
    >>> ev = lambda s: [Event("channel_entry", s, 0, {"eps": 0.01}, "warning", "pair 3-7", key="fc1:3-7")]
    >>> [s for s in range(0, 400, 50) if r.observe(s, 0, {}, ev(s) if s < 200 or s >= 350 else [])]
    [0, 350]
    """

    def __init__(
        self,
        event: str,
        *,
        cooldown_steps: int = 1000,
        warmup_steps: int = 0,
        severity: str | None = None,
        name: str | None = None,
    ) -> None:
        cls = type(self).__name__
        self.event = _check_name(f"{cls}.event", event)
        self.keep_severity = severity is None
        super().__init__(name=name if name is not None else (self.default_name or event),
                         severity="warning" if severity is None else severity, warmup_steps=warmup_steps,
                         cooldown_steps=cooldown_steps)
        self._last_seen: dict[str, int] = {}  # key -> step it was last reported

    def _observe(self, step, epoch, scalars, events):
        out: dict[str, Event] = {}
        for raw in events:
            ev = as_event(raw, step, epoch)
            if ev.rule != self.event:
                continue
            last = self._last_seen.get(ev.key)
            self._last_seen[ev.key] = step
            if ev.key in out or (last is not None and step - last < self.cooldown_steps):
                continue  # same key in this batch, or reported recently: a duplicate
            self._last_fire[ev.key] = step
            out[ev.key] = Event(self.name, ev.step, ev.epoch, ev.values,
                                ev.severity if self.keep_severity else self.severity, ev.message, ev.key,
                                ev.runbook or runbook_action(self.default_name or self.event))
        # forget keys that can no longer suppress anything (bounded state)
        horizon = step - self.cooldown_steps
        self._last_seen = {k: s for k, s in self._last_seen.items() if s > horizon or s == step}
        self._last_fire = {k: s for k, s in self._last_fire.items() if k in self._last_seen}
        return list(out.values())

    @property
    def active(self) -> bool:
        """In alarm while some key was reported within the last ``cooldown_steps`` steps."""
        return any(self._step - s < max(self.cooldown_steps, 1) for s in self._last_seen.values())

    def config(self):
        cfg = {"event": self.event, **super().config()}
        if self.keep_severity:
            cfg["severity"] = None
        return cfg

    def state_dict(self):
        return {**super().state_dict(), "last_seen": dict(self._last_seen)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._last_seen = {str(k): int(v) for k, v in dict(state.get("last_seen", {})).items()}
