"""Streaming detectors on metric streams, and the ready-made rules of the mission.

A rule sees, at every observation, the scalars measured at that step (keyed by full tag, e.g.
``"landscape/l2/margin"``) and the events probes emitted, and returns the :class:`Event` objects it
fires. Rules are deliberately quiet: thresholds latch (fire once, re-arm only after the stream comes
back past ``off``), need ``k`` consecutive measurements, ignore everything before ``warmup_steps`` and
never fire twice within ``cooldown_steps``; pass-through rules de-duplicate by ``(rule, key)``.

Detectors (pure, no notion of rules): :class:`HysteresisDetector`, :class:`CusumDetector`, :class:`GrowthForecast`.
Building blocks: :class:`Threshold` (hysteresis, k-consecutive), :class:`ChangePoint` (two-sided
CUSUM on a standardised stream with an adaptive baseline) and :class:`EventRule` (pass-through).
Ready-made: :class:`L2Threshold`, :class:`ChannelEntry`, :class:`Saddle`, :class:`SaddleBranch`,
:class:`EdgeOfStability`, :class:`SharpnessSpike`, :class:`NonFinite` (registry :data:`RULES`).

Every constructor argument has a simple type hint, so LightningCLI/jsonargparse builds rules from YAML
(``class_path: lightning_landscape.alerts.EdgeOfStability`` + ``init_args``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping, Sequence

from lightning_landscape.validation import check_bool, check_choice, check_number, check_positive_int
from lightning_landscape.alerts.events import Event, as_event, check_severity
from lightning_landscape.alerts.runbook import runbook_action

# ----------------------------------------------------------------------------- validation helpers


def _check_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or "/" in value or value != value.strip():
        raise ValueError(f"{name} must be a non-empty string without '/' or surrounding spaces, got {value!r}")
    return value


def _fmt(x: float) -> str:
    return f"{x:.4g}"


# ----------------------------------------------------------------------------- pure detectors


class HysteresisDetector:
    """Latching threshold on one stream: fires after ``k`` consecutive values past ``on``, then stays
    silent until a value comes back past ``off`` (re-arm). Pure state machine, no notion of steps.

    ``direction="above"``: condition ``x >= on``, re-arm on ``x < off`` (``off <= on``).
    ``direction="below"``: condition ``x <= on``, re-arm on ``x > off`` (``off >= on``).
    NaN values are ignored (the :class:`NonFinite` rule reports them).

    >>> d = HysteresisDetector(on=1.0, off=0.8, direction="above", k=2)
    >>> [d.update(x) for x in [0.5, 1.1, 1.2, 1.3, 0.9, 1.2, 0.7, 1.1, 1.1]]
    [False, False, True, False, False, False, False, False, True]
    """

    def __init__(self, on: float, off: float, direction: str, k: int) -> None:
        self.on, self.off, self.direction, self.k = on, off, direction, k
        self.armed = True
        self.count = 0

    def condition(self, x: float) -> bool:
        return x >= self.on if self.direction == "above" else x <= self.on

    def rearms(self, x: float) -> bool:
        return x < self.off if self.direction == "above" else x > self.off

    def update(self, x: float, can_fire: bool = True) -> bool:
        """Feed one value; True when the detector fires. With ``can_fire=False`` (cooldown) it keeps
        counting but holds the alarm back: it fires at the first value after the cooldown."""
        if math.isnan(x):
            return False
        if not self.armed:
            if self.rearms(x):
                self.armed, self.count = True, 0
            return False
        self.count = self.count + 1 if self.condition(x) else 0
        if self.count >= self.k and can_fire:
            self.armed, self.count = False, 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"armed": self.armed, "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.armed, self.count = bool(state["armed"]), int(state["count"])


class CusumDetector:
    """Two-sided CUSUM (Page 1954) on the residuals of an adaptive baseline.

    The first ``warmup`` values fit the baseline: their mean (or, with ``trend=True``, a least-squares
    line) and residual standard deviation. Each later value ``y`` (``log x`` with ``log_scale``) is
    compared with the baseline's prediction ``p``: ``z = (y - p) / sigma``, with ``sigma`` floored at
    ``min_scale`` and at ``min_relative_scale`` times ``|p|`` (times 1 on the log scale, where
    differences already are relative), and ``S+ = max(0, S+ + z - drift)``, ``S- = max(0, S- - z -
    drift)``. An alarm is ``S > threshold`` in a watched direction, together with a raw relative change
    of at least ``min_relative_change`` against the prediction. The baseline learns from each value
    winsorised at ±3σ: an exponential moving average (``smoothing``) that pauses while a change is
    suspected (watched ``S > threshold / 2``); or, with ``trend=True``, Holt's linear smoothing that
    never pauses, so that a steady trend (progressive sharpening: exponential growth, linear on the log
    scale) is predicted rather than alarmed on -- at the price of absorbing small shifts: use it to
    catch jumps. After an alarm the baseline is re-fitted at the new level from the next ``warmup``
    values.

    Measured with the defaults (``drift=1, threshold=8, warmup=10, smoothing=0.05``), ``trend=False``,
    on Gaussian noise: 0 false alarms in 200 streams x 500 samples (two-sided), none on a slow drift of
    0.02σ per sample either, and a +3σ step detected after a median of 5 samples (90 % within 9).

    >>> d = CusumDetector(direction="up")
    >>> import random; rng = random.Random(0)
    >>> [d.update(10 + rng.gauss(0, 0.1)) for _ in range(200)].count("up")
    0
    >>> [d.update(10.3 + rng.gauss(0, 0.1)) for _ in range(10)].index("up")  # a +3 sigma step
    3
    """

    def __init__(
        self,
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
    ) -> None:
        self.direction, self.drift, self.threshold, self.warmup = direction, drift, threshold, warmup
        self.smoothing, self.log_scale, self.trend = smoothing, log_scale, trend
        self.min_relative_change, self.min_scale, self.min_relative_scale = (
            min_relative_change,
            min_scale,
            min_relative_scale,
        )
        self.reset()

    def reset(self) -> None:
        """Forget the baseline (re-fit it from the next ``warmup`` values)."""
        self.buffer: list[float] = []
        self.level, self.slope, self.var = 0.0, 0.0, 0.0
        self.s_pos = self.s_neg = 0.0

    @property
    def ready(self) -> bool:
        return len(self.buffer) >= self.warmup

    def _transform(self, x: float) -> float | None:
        if not math.isfinite(x):
            return None
        if self.log_scale:
            return math.log(x) if x > 0 else None
        return x

    def _raw(self, y: float) -> float:
        return math.exp(y) if self.log_scale else y

    def prediction(self) -> float:
        """The baseline's prediction for the next value (transformed units)."""
        return self.level + self.slope

    def baseline(self) -> float:
        """The prediction in the stream's own units."""
        return self._raw(self.prediction())

    def sigma(self, ref: float | None = None) -> float:
        ref = 1.0 if self.log_scale else abs(self.prediction() if ref is None else ref)
        return max(math.sqrt(max(self.var, 0.0)), self.min_scale, self.min_relative_scale * ref, 1e-300)

    def _fit(self) -> None:
        ys = self.buffer
        n = len(ys)
        mean = sum(ys) / n
        if self.trend and n >= 3:
            tm = (n - 1) / 2
            sxx = sum((t - tm) ** 2 for t in range(n))
            self.slope = sum((t - tm) * (y - mean) for t, y in enumerate(ys)) / sxx
            self.level = mean + self.slope * (n - 1 - tm)  # the fitted line at the last warm-up point
            dof = n - 2
        else:
            self.slope, self.level, dof = 0.0, mean, n - 1
        fitted = [self.level - self.slope * (n - 1 - t) for t in range(n)]
        self.var = sum((y - f) ** 2 for y, f in zip(ys, fitted)) / max(dof, 1)

    def update(self, x: float, can_fire: bool = True) -> str | None:
        """Feed one value; returns ``"up"``/``"down"`` on an alarm, else None. Non-finite values (and
        non-positive ones on the log scale) are skipped."""
        y = self._transform(x)
        if y is None:
            return None
        if not self.ready:
            self.buffer.append(y)
            if self.ready:
                self._fit()
            return None
        p = self.prediction()
        sig = self.sigma(p)
        z = (y - p) / sig
        self.s_pos = max(0.0, self.s_pos + z - self.drift)
        self.s_neg = max(0.0, self.s_neg - z - self.drift)
        base = self._raw(p)
        rel = (x - base) / abs(base) if base != 0 else math.copysign(math.inf, x - base)
        fired = None
        if self.direction in ("up", "both") and self.s_pos > self.threshold and rel >= self.min_relative_change:
            fired = "up"
        elif self.direction in ("down", "both") and self.s_neg > self.threshold and -rel >= self.min_relative_change:
            fired = "down"
        if fired is not None and can_fire:
            self.reset()
            self.buffer.append(y)  # the alarm value starts the new baseline
            if self.ready:
                self._fit()
            return fired
        watched = max(self.s_pos if self.direction != "down" else 0.0, self.s_neg if self.direction != "up" else 0.0)
        if self.trend or watched <= self.threshold / 2:
            # Learn, from the residual winsorised at +-3 sigma (symmetric, so the level stays
            # unbiased; learning only when S == 0 would censor the high side, bias the baseline low
            # and make S+ creep up on pure noise). Without a trend model, learning pauses while a
            # change is suspected; with one it never pauses (a paused trend model falls behind a
            # steady trend and alarms on it), so it is meant for jumps, not for small shifts.
            a = self.smoothing
            r = min(max(y - p, -3 * sig), 3 * sig)
            new_level = p + a * r
            if self.trend:
                self.slope += self.SLOPE_SMOOTHING * (new_level - self.level - self.slope)
            self.level = new_level
            self.var = (1 - a) * (self.var + a * r * r)
        else:  # a change is suspected: extrapolate, do not learn from it
            self.level = p
        return None

    #: Holt's trend smoothing (measured best of 0.05-0.3 for few false alarms on noisy growth).
    SLOPE_SMOOTHING = 0.3

    _STATE = ("buffer", "level", "slope", "var", "s_pos", "s_neg")

    def state_dict(self) -> dict[str, Any]:
        return {k: (list(getattr(self, k)) if k == "buffer" else getattr(self, k)) for k in self._STATE}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.buffer = [float(v) for v in state["buffer"]]
        for k in self._STATE[1:]:
            setattr(self, k, float(state[k]))


class GrowthForecast:
    """Forecasts a stream reaching ``level`` from its steady exponential growth (pure, no notion of rules).

    Keeps ``(step, log x)`` over the last ``window`` steps. The forecast holds when ``x ≥ floor``, the
    stream grew by at least ``min_growth`` over the window (least squares: noise does not), in both halves
    of it, at a rate that is not decelerating (recent half ≥ ``steadiness`` × older half: an exponential
    ramp passes, a linear warm-up — whose log-rate falls like 1/t — and a single jump at one measurement
    do not), and that recent rate carries ``x`` to ``level`` within ``horizon`` steps. Latches; re-arms
    once the stream falls below ``floor`` or stops growing. Why the defaults exclude every linear ramp
    ``x ∝ t``: its growth over a window ``W`` is ``ln(t/(t−W))`` (≥ ``ln 1.2`` only for ``t ≤ 6W``) while the
    ratio of its half-window slopes is ``(t − 3W/4)/(t − W/4)`` (≥ 0.92 only for ``t ≥ 6.6W``).

    >>> f = GrowthForecast(level=1.0, horizon=300, window=100, floor=0.05)
    >>> fired = [s for s in range(400) if f.update(s, 0.01 * 1.01 ** s)]  # x 1.01/step: 1.0 at step 463
    >>> fired  # 300 steps ahead (values are kept every window/20 = 5 steps)
    [165]
    >>> f = GrowthForecast(level=1.0, horizon=300, window=100, floor=0.05)
    >>> [s for s in range(1, 400) if f.update(s, 0.9 * min(s / 300, 1.0))]  # a linear warm-up to 0.9
    []
    """

    def __init__(self, level: float, horizon: int, window: int, floor: float, steadiness: float = 0.92,
                 min_growth: float = 0.2) -> None:
        self.level, self.horizon, self.window, self.floor, self.steadiness = level, horizon, window, floor, steadiness
        self.min_growth = min_growth
        self.points: list[tuple[int, float]] = []
        self.last = math.nan
        self.armed = True

    @staticmethod
    def _slope(pts: list[tuple[int, float]]) -> float | None:
        """Least-squares slope of ``log x`` against the step (robust to one noisy value)."""
        if len(pts) < 2:
            return None
        n = len(pts)
        ts = sum(p[0] for p in pts) / n
        ys = sum(p[1] for p in pts) / n
        sxx = sum((p[0] - ts) ** 2 for p in pts)
        return sum((p[0] - ts) * (p[1] - ys) for p in pts) / sxx if sxx > 0 else None

    def rate(self) -> float | None:
        """The recent log-growth rate per step if the growth is steady, else None."""
        pts = self.points
        if len(pts) < 4 or pts[-1][0] - pts[0][0] < self.window // 2:
            return None
        mid = (pts[0][0] + pts[-1][0]) / 2
        older = self._slope([p for p in pts if p[0] <= mid])
        recent = self._slope([p for p in pts if p[0] >= mid])
        if older is None or recent is None or older <= 0 or recent <= 0 or recent < self.steadiness * older:
            return None
        overall = self._slope(pts) or 0.0
        if overall * (pts[-1][0] - pts[0][0]) < math.log1p(self.min_growth):  # noise, not growth
            return None
        return recent

    def update(self, step: int, x: float, driver: float | None = None) -> bool:
        """Feed one value; True when the forecast fires. With ``driver``, the growth rate is that of the
        driver (e.g. the learning rate) and ``x`` only sets where the stream stands."""
        if not (x > 0 and math.isfinite(x)):
            return False
        grows = x if driver is None else driver
        if not (grows > 0 and math.isfinite(grows)):
            return False
        self.last = x
        # ~20 points per window are plenty for two least-squares slopes (and keep a per-step rule cheap):
        # values closer than window/20 steps to the last kept one are skipped.
        if self.points and 0 <= step - self.points[-1][0] < max(self.window // 20, 1):
            return False
        self.points = [p for p in self.points if p[0] > step - self.window] + [(step, math.log(grows))]
        rate = self.rate()
        if not self.armed:
            if x < self.floor or rate is None:
                self.armed = True
            return False
        if x < self.floor or x >= self.level or rate is None:
            return False
        if math.log(self.level / x) <= rate * self.horizon:
            self.armed = False
            return True
        return False

    def steps_to_level(self) -> float:
        rate = self.rate()
        if rate is None or not self.last > 0:
            return math.inf
        return max(math.log(self.level / self.last), 0.0) / rate

    def state_dict(self) -> dict[str, Any]:
        return {"points": [list(p) for p in self.points], "armed": self.armed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.points = [(int(s), float(y)) for s, y in state.get("points", [])]
        self.armed = bool(state.get("armed", True))


# ----------------------------------------------------------------------------- rule base


class Rule(ABC):
    """Base class of all rules.

    Args:
        name: the rule's name: ``Event.rule`` of what it fires, the tag ``landscape/alerts/<name>``, the
            key for ``AlertManager(stop_on=...)``. Unique within a manager.
        severity: severity of the events it fires.
        warmup_steps: observations with ``step < warmup_steps`` are ignored.
        cooldown_steps: no two events (with the same key) less than ``cooldown_steps`` steps apart.
    """

    default_name: ClassVar[str] = ""

    def __init__(
        self,
        name: str | None = None,
        severity: str = "warning",
        warmup_steps: int = 0,
        cooldown_steps: int = 0,
    ) -> None:
        cls = type(self).__name__
        self.name = _check_name(f"{cls}.name", name if name is not None else self.default_name)
        self.severity = check_severity(f"{cls}.severity", severity)
        self.warmup_steps = check_positive_int(f"{cls}.warmup_steps", warmup_steps, 0)
        self.cooldown_steps = check_positive_int(f"{cls}.cooldown_steps", cooldown_steps, 0)
        self._last_fire: dict[str, int] = {}  # key -> step of the last event fired
        self._step = -1  # step of the latest observation (for `active`)

    # -- helpers for subclasses
    def _can_fire(self, step: int, key: str = "") -> bool:
        last = self._last_fire.get(key)
        return last is None or step - last >= self.cooldown_steps

    def _event(self, step: int, epoch: int, values: dict[str, float], message: str, key: str = "",
               severity: str | None = None) -> Event:
        self._last_fire[key] = step
        return Event(self.name, step, epoch, values, severity or self.severity, message, key,
                     runbook_action(self.default_name))

    # -- the interface
    def observe(self, step: int, epoch: int, scalars: Mapping[str, float], events: Sequence[Event]) -> list[Event]:
        """Feed one observation; returns the events fired (usually none)."""
        self._step = step
        if step < self.warmup_steps:
            return []
        return self._observe(step, epoch, scalars, events)

    @abstractmethod
    def _observe(self, step: int, epoch: int, scalars: Mapping[str, float], events: Sequence[Event]) -> list[Event]:
        ...

    @property
    @abstractmethod
    def active(self) -> bool:
        """Whether the rule is in alarm now (the 0/1 scalar ``landscape/alerts/<name>``)."""

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "severity": self.severity, "warmup_steps": self.warmup_steps,
                "cooldown_steps": self.cooldown_steps}

    def state_dict(self) -> dict[str, Any]:
        return {"last_fire": dict(self._last_fire), "step": self._step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._last_fire = {str(k): int(v) for k, v in dict(state.get("last_fire", {})).items()}
        self._step = int(state.get("step", -1))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"


# ----------------------------------------------------------------------------- generic rules


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
        super().__init__(name if name is not None else (self.default_name or default), severity,
                         warmup_steps, cooldown_steps)
        self.detector = HysteresisDetector(self.level, self.rearm, self.direction, self.k)

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
        super().__init__(name if name is not None else (self.default_name or default), severity,
                         warmup_steps, cooldown_steps)
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
        cooldown_steps: int = 1000,
        warmup_steps: int = 0,
        severity: str | None = None,
        name: str | None = None,
    ) -> None:
        cls = type(self).__name__
        self.event = _check_name(f"{cls}.event", event)
        self.keep_severity = severity is None
        super().__init__(name if name is not None else (self.default_name or event),
                         "warning" if severity is None else severity, warmup_steps, cooldown_steps)
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


# ----------------------------------------------------------------------------- ready-made rules


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
        super().__init__(name, severity, warmup_steps, cooldown_steps)
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
            self.margin = HysteresisDetector(on, off, "below", self.k)
        self.collapse: HysteresisDetector | None = None
        if collapse_fraction is not None:
            on = check_number(f"{cls}.collapse_fraction", collapse_fraction, 0.0, strict=True)
            if on >= 1:
                raise ValueError(f"{cls}.collapse_fraction must be in (0, 1), got {on}")
            off = (1 + on) / 2 if collapse_rearm is None else check_number(f"{cls}.collapse_rearm", collapse_rearm)
            if not on <= off <= 1:
                raise ValueError(f"{cls}.collapse_rearm must be in [collapse_fraction ({on}), 1], got {off}")
            self.collapse = HysteresisDetector(on, off, "below", self.k)  # on ratio / best
        self.best_collapse_ratio = -math.inf
        self.beta_tag = str(beta_tag)
        horizon = check_positive_int(f"{cls}.forecast_horizon", forecast_horizon, 0)
        window = check_positive_int(f"{cls}.forecast_window", forecast_window, 4)
        floor = check_number(f"{cls}.forecast_floor_margin", forecast_floor_margin, 1.0, strict=True)
        # On 1/margin: it grows like the penalty β and "passes 1" when the margin falls below 1.
        self.forecast = GrowthForecast(1.0, horizon, window, 1.0 / floor) if horizon > 0 else None

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
        super().__init__(name, severity, warmup_steps, cooldown_steps)
        self.threshold_tag = str(threshold_tag)
        level = check_number(f"{cls}.level", level, 0.0, strict=True)
        off = 0.9 * level if rearm is None else check_number(f"{cls}.rearm", rearm)
        if off > level:
            raise ValueError(f"{cls}.rearm must be <= level ({level}), got {off}")
        self.k = check_positive_int(f"{cls}.k", k, 1)
        if not isinstance(tag, str) or not tag:
            raise ValueError(f"{cls}.tag must be a non-empty tag string, got {tag!r}")
        self.tag = tag
        self.detector = HysteresisDetector(level, off, "above", self.k)
        horizon = check_positive_int(f"{cls}.forecast_horizon", forecast_horizon, 0)
        window = check_positive_int(f"{cls}.forecast_window", forecast_window, 4)
        floor = check_number(f"{cls}.forecast_floor", forecast_floor, 0.0, strict=True)
        target = check_number(f"{cls}.forecast_level", forecast_level, 0.0, strict=True)
        self.forecast = GrowthForecast(target, horizon, window, floor) if horizon > 0 else None

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
        super().__init__(tag, "up", drift, threshold, warmup, smoothing, log_scale, min_relative_change,
                         0.0, min_relative_scale, trend, warmup_steps, cooldown_steps, severity, name)

    def config(self):
        cfg = super().config()
        for k in ("direction", "min_scale"):
            cfg.pop(k)
        return cfg


class ChannelEntry(EventRule):
    """Pass-through of the neuron probe's ``channel_entry`` events (a pair of neurons whose input
    weights merge while their output weights diverge), de-duplicated per ``key`` (layer and pair)."""

    default_name = "channel_entry"

    def __init__(self, cooldown_steps: int = 1000, warmup_steps: int = 0, severity: str | None = None,
                 name: str | None = None) -> None:
        super().__init__("channel_entry", cooldown_steps, warmup_steps, severity, name)

    def config(self):
        cfg = super().config()
        cfg.pop("event")
        return cfg


class Saddle(ChannelEntry):
    """Pass-through of ``saddle`` events (λmin < 0 with a small gradient), de-duplicated per key."""

    default_name = "saddle"

    def __init__(self, cooldown_steps: int = 1000, warmup_steps: int = 0, severity: str | None = None,
                 name: str | None = None) -> None:
        EventRule.__init__(self, "saddle", cooldown_steps, warmup_steps, severity, name)


class SaddleBranch(ChannelEntry):
    """Pass-through of ``saddle_branch`` events (the function is representable by a narrower network
    and the gradient is small), de-duplicated per key."""

    default_name = "saddle_branch"

    def __init__(self, cooldown_steps: int = 1000, warmup_steps: int = 0, severity: str | None = None,
                 name: str | None = None) -> None:
        EventRule.__init__(self, "saddle_branch", cooldown_steps, warmup_steps, severity, name)


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
        tags: list[str] | None = None,
        allow_inf: list[str] | None = None,
        flag_tags: list[str] | None = None,
        cooldown_steps: int = 100,
        warmup_steps: int = 0,
        severity: str = "critical",
        name: str | None = None,
    ) -> None:
        super().__init__(name, severity, warmup_steps, cooldown_steps)
        self.tags = None if tags is None else [str(t) for t in tags]
        self.allow_inf = ["landscape/l2/margin", "landscape/l2/critical_beta"] if allow_inf is None else [
            str(t) for t in allow_inf]
        self.flag_tags = ["landscape/monitor/nonfinite"] if flag_tags is None else [str(t) for t in flag_tags]
        self._latched: set[str] = set()
        self._passthrough = EventRule("nonfinite", cooldown_steps, 0, self.severity, name=self.name)
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
