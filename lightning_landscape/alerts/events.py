"""The :class:`Event`: what a rule (or a probe, or the controller) reports, and how it travels.

Probes may put :class:`Event` objects (preferred) or plain dicts with at least a ``"rule"`` key into
``ProbeResult.events``; :func:`as_event` turns either into an :class:`Event`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


def check_severity(name: str, value: Any) -> str:
    """Validate a severity argument, naming it in the error."""
    if value not in SEVERITIES:
        raise ValueError(f"{name} must be one of {list(SEVERITIES)}, got {value!r}")
    return value


def severity_rank(severity: str) -> int:
    """0 for ``info``, 1 for ``warning``, 2 for ``critical``."""
    return _RANK[severity]


def _json_safe(x: float) -> float | str:
    # JSON has no NaN/Inf: keep the information as a string rather than emit invalid JSON.
    x = float(x)
    return x if math.isfinite(x) else str(x)


@dataclass
class Event:
    """One alert, probe event or controller action.

    Attributes:
        rule: name of the rule (or probe event kind) that produced it, e.g. ``"l2_threshold"``.
        step: optimizer steps taken when it was observed.
        epoch: current epoch.
        values: the numbers behind it (tag or key -> value).
        severity: ``"info"``, ``"warning"`` or ``"critical"``.
        message: one human-readable line.
        key: identity used for de-duplication (e.g. ``"layers.2:3-7"`` for a neuron pair); ``""`` if
            the rule has a single identity.
        runbook: what to do about it (ready-made rules fill it from
            :data:`~lightning_landscape.alerts.runbook.RUNBOOK`); shown after the message.

    >>> e = Event("edge_of_stability", step=120, epoch=1, values={"eos_ratio": 1.04}, severity="warning",
    ...           message="eos_ratio >= 1.0 for 3 measurements")
    >>> e.to_dict()["values"]
    {'eos_ratio': 1.04}
    >>> Event.from_dict(e.to_dict()) == e
    True
    >>> e.text()
    '[WARNING] edge_of_stability (step 120, epoch 1): eos_ratio >= 1.0 for 3 measurements'
    """

    rule: str
    step: int = 0
    epoch: int = 0
    values: dict[str, float] = field(default_factory=dict)
    severity: str = "warning"
    message: str = ""
    key: str = ""
    runbook: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.rule, str) or not self.rule:
            raise ValueError(f"Event.rule must be a non-empty string, got {self.rule!r}")
        check_severity("Event.severity", self.severity)
        self.step, self.epoch = int(self.step), int(self.epoch)
        self.values = {str(k): float(v) for k, v in dict(self.values).items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite values become the strings ``"nan"``, ``"inf"``, ``"-inf"``)."""
        return {
            "rule": self.rule,
            "step": self.step,
            "epoch": self.epoch,
            "values": {k: _json_safe(v) for k, v in self.values.items()},
            "severity": self.severity,
            "message": self.message,
            "key": self.key,
            "runbook": self.runbook,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Event":
        """Inverse of :meth:`to_dict` (also accepts the looser dicts probes may emit)."""
        return cls(
            rule=str(d["rule"]),
            step=int(d.get("step", 0)),
            epoch=int(d.get("epoch", 0)),
            values={k: float(v) for k, v in dict(d.get("values", {})).items()},
            severity=str(d.get("severity", "warning")),
            message=str(d.get("message", "")),
            key=str(d.get("key", "")),
            runbook=str(d.get("runbook", "")),
        )

    def text(self) -> str:
        """One line for logs, TensorBoard text and chat messages (with the runbook's action, if any)."""
        where = f"step {self.step}, epoch {self.epoch}"
        key = f" [{self.key}]" if self.key else ""
        todo = f" — what to do: {self.runbook}" if self.runbook else ""
        return f"[{self.severity.upper()}] {self.rule}{key} ({where}): {self.message}{todo}"


def as_event(obj: Any, step: int | None = None, epoch: int | None = None) -> Event:
    """Coerce a probe's event (an :class:`Event` or a dict with a ``"rule"`` key) into an Event.

    ``step``/``epoch`` fill in values the probe left out (a dict without them, or an Event with
    ``step == 0``).

    >>> as_event({"rule": "saddle", "values": {"lambda_min": -0.3}}, step=40).step
    40
    """
    if isinstance(obj, Event):
        ev = dataclasses.replace(obj)  # never mutate the probe's object
    elif isinstance(obj, Mapping) and "rule" in obj:
        ev = Event.from_dict(obj)
    else:
        raise TypeError(f"a probe event must be an Event or a dict with a 'rule' key, got {obj!r}")
    if step is not None and ev.step == 0:
        ev.step = int(step)
    if epoch is not None and ev.epoch == 0:
        ev.epoch = int(epoch)
    return ev
