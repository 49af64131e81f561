"""The rule contract: :class:`Rule` turns observations (scalars by tag, probe events) into :class:`Event` objects.

Rules are deliberately quiet: thresholds latch (fire once, re-arm only after the stream comes back past
``off``), need ``k`` consecutive measurements, ignore everything before ``warmup_steps`` and never fire
twice within ``cooldown_steps``; pass-through rules de-duplicate by ``(rule, key)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping, Sequence

from lightning_landscape.alerts.events import Event, check_severity
from lightning_landscape.alerts.runbook import runbook_action
from lightning_landscape.validation import check_positive_int


def _check_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or "/" in value or value != value.strip():
        raise ValueError(f"{name} must be a non-empty string without '/' or surrounding spaces, got {value!r}")
    return value


def _fmt(x: float) -> str:
    return f"{x:.4g}"


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
        *,
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
