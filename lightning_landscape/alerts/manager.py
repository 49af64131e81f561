"""The :class:`AlertManager`: runs the rules on every observation, sends what fires to the sinks,
raises the stop flag, and keeps its state in the monitor's checkpoint state."""

from __future__ import annotations

import warnings
from collections import deque
from typing import Any, Mapping, Sequence

from lightning_landscape.alerts.events import Event, as_event
from lightning_landscape.alerts.rules import Rule, default_rules
from lightning_landscape.alerts.sinks import LoggingSink, Sink, TensorBoardPayload, TensorBoardSink


class AlertManager:
    """Rules + sinks + optional stop-training.

    Args:
        rules: the rules (default: :func:`~lightning_landscape.alerts.rules.default_rules`, one of each
            ready-made rule). Names must be unique.
        sinks: where fired events go (default: a :class:`LoggingSink` and a :class:`TensorBoardSink`).
            ``[]`` keeps events only in :attr:`history`.
        stop_on: rule names whose events set :attr:`should_stop` (the monitor then stops the Trainer).
        history_size: how many recent events :attr:`history` (and the checkpoint) keeps.

    Every rank should call :meth:`observe` with the same inputs (so the state, and hence the
    checkpoint, is identical everywhere) and pass ``emit=trainer.is_global_zero`` so that only rank
    zero talks to the sinks.

    >>> from lightning_landscape.alerts import EdgeOfStability, L2Threshold
    >>> m = AlertManager([EdgeOfStability(k=2), L2Threshold()], sinks=[], stop_on=["l2_threshold"])
    >>> m.observe(1, 0, {"landscape/hessian/eos_ratio_tracked": 1.6, "landscape/l2/margin_tracked": 3.0})
    []
    >>> [e.rule for e in m.observe(2, 0, {"landscape/hessian/eos_ratio_tracked": 1.7, "landscape/l2/margin_tracked": 1.2})]
    ['edge_of_stability']
    >>> m.status()
    {'landscape/alerts/edge_of_stability': 1.0, 'landscape/alerts/l2_threshold': 0.0}
    >>> [e.rule for e in m.observe(3, 0, {"landscape/l2/margin_tracked": 1.1})], m.should_stop
    (['l2_threshold'], True)
    """

    def __init__(
        self,
        rules: list[Rule] | None = None,
        sinks: list[Sink] | None = None,
        stop_on: list[str] | None = None,
        history_size: int = 100,
    ) -> None:
        self.rules: list[Rule] = default_rules() if rules is None else list(rules)
        for r in self.rules:
            if not isinstance(r, Rule):
                raise TypeError(f"AlertManager.rules must contain Rule objects, got {r!r}")
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"AlertManager.rules: rule names must be unique (pass name=...), duplicated: {dupes}")
        self.sinks: list[Sink] = [LoggingSink(), TensorBoardSink()] if sinks is None else list(sinks)
        for s in self.sinks:
            if not isinstance(s, Sink):
                raise TypeError(f"AlertManager.sinks must contain Sink objects, got {s!r}")
        self.stop_on = [] if stop_on is None else [str(n) for n in stop_on]
        unknown = [n for n in self.stop_on if n not in names]
        if unknown:
            raise ValueError(f"AlertManager.stop_on: unknown rule name(s) {unknown}; allowed: {names}")
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 0:
            raise ValueError(f"AlertManager.history_size must be an int >= 0, got {history_size!r}")
        self.history_size = history_size
        self.history: deque[Event] = deque(maxlen=history_size)
        self.should_stop = False
        self.stop_reason: Event | None = None
        self.last_step = -1
        self._broken: set[str] = set()

    @property
    def rule_names(self) -> list[str]:
        return [r.name for r in self.rules]

    def observe(
        self,
        step: int,
        epoch: int,
        scalars: Mapping[str, float],
        events: Sequence[Any] | None = None,
        emit: bool = True,
    ) -> list[Event]:
        """Feed one observation to every rule; deliver what fires to the sinks (if ``emit``).

        Args:
            step: optimizer steps taken (the monitor's logging step).
            epoch: current epoch.
            scalars: full tag -> value measured at this step (e.g. ``"landscape/l2/margin"``).
            events: the probes' ``ProbeResult.events`` (:class:`Event` objects or dicts), for the
                pass-through rules.
            emit: deliver to the sinks (pass ``trainer.is_global_zero``); the state is updated anyway.

        Returns:
            The events fired, in rule order.
        """
        step, epoch = int(step), int(epoch)
        incoming = [as_event(e, step, epoch) for e in (events or [])]
        fired: list[Event] = []
        for rule in self.rules:
            if rule.name in self._broken:
                continue
            try:
                fired.extend(rule.observe(step, epoch, scalars, incoming))
            except Exception as err:  # noqa: BLE001 - one broken rule must not stop training or the others
                self._broken.add(rule.name)
                warnings.warn(f"alert rule {rule.name!r} raised {type(err).__name__}: {err}; it is disabled",
                              RuntimeWarning, stacklevel=2)
        self.last_step = max(self.last_step, step)
        self._record(fired)
        status = self.active()
        for sink in self.sinks:
            sink.update_status(status)
        if emit:
            self._deliver(fired)
        return fired

    def dispatch(self, events: Sequence[Any], emit: bool = True) -> None:
        """Deliver events that did not come from a rule (e.g. the weight-decay controller's changes)
        to the sinks and the history; no rule sees them and they never stop training."""
        evs = [as_event(e) for e in events]
        self.history.extend(evs)
        if emit:
            self._deliver(evs)

    def _record(self, fired: list[Event]) -> None:
        self.history.extend(fired)
        for e in fired:
            if e.rule in self.stop_on and not self.should_stop:
                self.should_stop, self.stop_reason = True, e

    def _deliver(self, events: list[Event]) -> None:
        if events:
            for sink in self.sinks:
                sink.handle(events)

    def active(self) -> dict[str, bool]:
        """Rule name -> whether it is in alarm now."""
        return {r.name: bool(r.active) for r in self.rules}

    def status(self, prefix: str = "landscape/alerts") -> dict[str, float]:
        """Full tag -> 0/1 alarm state of every rule (log these to every logger)."""
        return {f"{prefix.strip('/')}/{name}": float(on) for name, on in self.active().items()}

    def drain_tensorboard(self) -> TensorBoardPayload:
        """Merge and clear what the :class:`TensorBoardSink` s collected (empty payload if none)."""
        out = TensorBoardPayload()
        for sink in self.sinks:
            if isinstance(sink, TensorBoardSink):
                p = sink.drain()
                out.scalars.update(p.scalars)
                for tag, text in p.texts.items():
                    out.texts[tag] = f"{out.texts[tag]}\n\n{text}" if tag in out.texts else text
        return out

    def close(self, timeout: float | None = None) -> bool:
        """Close every sink (webhooks wait at most ``timeout`` seconds each, default their own)."""
        ok = True
        for sink in self.sinks:
            try:
                ok = sink.close(timeout) and ok
            except Exception as err:  # noqa: BLE001
                warnings.warn(f"closing alert sink {sink!r} failed: {err}", RuntimeWarning, stacklevel=2)
                ok = False
        return ok

    def config(self) -> dict[str, Any]:
        """What identifies this manager's configuration (for state keys)."""
        return {"rules": [repr(r) for r in self.rules], "stop_on": list(self.stop_on)}

    def state_dict(self) -> dict[str, Any]:
        """Rule states, recent events and the stop flag (plain Python types)."""
        return {
            "rules": {r.name: r.state_dict() for r in self.rules},
            "history": [e.to_dict() for e in self.history],
            "should_stop": self.should_stop,
            "stop_reason": None if self.stop_reason is None else self.stop_reason.to_dict(),
            "last_step": self.last_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore; rules are matched by name (rules absent from ``state`` keep a fresh state, saved
        rules no longer configured are ignored with a warning)."""
        saved = dict(state.get("rules", {}))
        for rule in self.rules:
            if rule.name in saved:
                rule.load_state_dict(saved[rule.name])
        extra = sorted(set(saved) - set(self.rule_names))
        if extra:
            warnings.warn(f"AlertManager.load_state_dict: ignoring state of rules no longer configured: {extra}",
                          RuntimeWarning, stacklevel=2)
        self.history = deque((Event.from_dict(e) for e in state.get("history", [])), maxlen=self.history_size)
        self.should_stop = bool(state.get("should_stop", False))
        reason = state.get("stop_reason")
        self.stop_reason = None if reason is None else Event.from_dict(reason)
        self.last_step = int(state.get("last_step", -1))

    def __repr__(self) -> str:
        return f"AlertManager(rules={self.rules!r}, sinks={self.sinks!r}, stop_on={self.stop_on!r})"
