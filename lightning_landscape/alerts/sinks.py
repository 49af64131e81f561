"""Where events go: Python logging, TensorBoard (text + 0/1 scalars), a user callable; the webhook is in
:mod:`lightning_landscape.alerts.webhook`.

Sinks never raise into training: :meth:`Sink.handle` filters by ``min_severity`` and turns an
exception of :meth:`Sink.emit` into a warning. The manager calls sinks on rank zero only.
"""

from __future__ import annotations

import logging
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

from lightning_landscape._imports import import_object
from lightning_landscape.alerts.events import Event, check_severity, severity_rank
from lightning_landscape.validation import check_bool


class Sink(ABC):
    """Base class of all sinks.

    Args:
        min_severity: events below this severity are not delivered.
    """

    def __init__(self, min_severity: str = "info") -> None:
        self.min_severity = check_severity(f"{type(self).__name__}.min_severity", min_severity)

    def handle(self, events: Sequence[Event]) -> None:
        """Filter by severity and deliver; exceptions become warnings (a sink never stops training)."""
        keep = [e for e in events if severity_rank(e.severity) >= severity_rank(self.min_severity)]
        if not keep:
            return
        try:
            self.emit(keep)
        except Exception as err:  # noqa: BLE001 - a broken sink must not break training
            warnings.warn(f"alert sink {self!r} failed: {type(err).__name__}: {err}", RuntimeWarning, stacklevel=2)

    @abstractmethod
    def emit(self, events: list[Event]) -> None:
        """Deliver events (already filtered)."""

    def update_status(self, status: Mapping[str, bool]) -> None:
        """Rule name -> in alarm, after every observation (only the TensorBoard sink uses it)."""

    def close(self, timeout: float | None = None) -> bool:
        """Flush and release resources, waiting at most ``timeout`` seconds; True if all delivered."""
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_severity={self.min_severity!r})"


_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.CRITICAL}


class LoggingSink(Sink):
    """Log each event through the standard :mod:`logging` module (``info`` → INFO, ``warning`` →
    WARNING, ``critical`` → CRITICAL) on the logger named ``logger``.

    >>> import logging, sys
    >>> handler = logging.StreamHandler(sys.stdout)
    >>> logging.getLogger("lightning_landscape.alerts").addHandler(handler)
    >>> LoggingSink().handle([Event("saddle", 5, 0, {}, "warning", "lambda_min < 0")])
    [WARNING] saddle (step 5, epoch 0): lambda_min < 0
    >>> logging.getLogger("lightning_landscape.alerts").removeHandler(handler)
    """

    def __init__(self, logger: str = "lightning_landscape.alerts", min_severity: str = "info") -> None:
        super().__init__(min_severity)
        if not isinstance(logger, str) or not logger:
            raise ValueError(f"LoggingSink.logger must be a non-empty logger name, got {logger!r}")
        self.logger = logger

    def emit(self, events: list[Event]) -> None:
        log = logging.getLogger(self.logger)
        for e in events:
            log.log(_LEVELS[e.severity], e.text())

    def __repr__(self) -> str:
        return f"LoggingSink(logger={self.logger!r}, min_severity={self.min_severity!r})"


@dataclass
class TensorBoardPayload:
    """What the monitor's writer should log at one step: ``scalars`` (full tag -> 0/1, one per rule) to
    every logger, ``texts`` (full tag -> markdown) to TensorBoard loggers only."""

    scalars: dict[str, float] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)


class TensorBoardSink(Sink):
    """Collects events as markdown text and the per-rule 0/1 alarm state for the monitor's writer,
    which drains it with :meth:`drain` (this sink does no I/O itself).

    Scalars: ``<prefix>/<rule>`` = 1 while the rule is in alarm (see each rule's ``active``), else 0,
    for every rule of the manager. Text: ``<prefix>/events``, one line per event.

    >>> sink = TensorBoardSink()
    >>> sink.update_status({"saddle": True, "nonfinite": False})
    >>> sink.handle([Event("saddle", 5, 0, {}, "warning", "lambda_min < 0")])
    >>> p = sink.drain()
    >>> p.scalars
    {'landscape/alerts/saddle': 1.0, 'landscape/alerts/nonfinite': 0.0}
    >>> p.texts["landscape/alerts/events"]
    '**[WARNING] saddle** (step 5, epoch 0): lambda_min < 0'
    >>> sink.drain().texts
    {}
    """

    def __init__(self, prefix: str = "landscape/alerts", min_severity: str = "info") -> None:
        super().__init__(min_severity)
        if not isinstance(prefix, str) or not prefix.strip("/"):
            raise ValueError(f"TensorBoardSink.prefix must be a non-empty tag prefix, got {prefix!r}")
        self.prefix = prefix.strip("/")
        self._lines: list[str] = []
        self._scalars: dict[str, float] = {}

    def emit(self, events: list[Event]) -> None:
        for e in events:
            key = f" [{e.key}]" if e.key else ""
            head = f"**[{e.severity.upper()}] {e.rule}{key}**"
            self._lines.append(f"{head} (step {e.step}, epoch {e.epoch}): {e.message}")

    def update_status(self, status: Mapping[str, bool]) -> None:
        self._scalars.update({f"{self.prefix}/{rule}": float(bool(on)) for rule, on in status.items()})

    def drain(self) -> TensorBoardPayload:
        """Return and clear what accumulated since the last call."""
        texts = {f"{self.prefix}/events": "\n\n".join(self._lines)} if self._lines else {}
        payload = TensorBoardPayload(dict(self._scalars), texts)
        self._lines, self._scalars = [], {}
        return payload

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lines"], state["_scalars"] = [], {}
        return state

    def __repr__(self) -> str:
        return f"TensorBoardSink(prefix={self.prefix!r}, min_severity={self.min_severity!r})"


def resolve_callable(target: str, name: str = "target") -> Callable[..., Any]:
    """Import ``"package.module:attr"`` or ``"package.module.attr"`` and check it is callable.

    >>> resolve_callable("json:dumps")({"a": 1})
    '{"a": 1}'
    """
    obj = import_object(target, name)
    if not callable(obj):
        raise ValueError(f"{name}={target!r} is not callable")
    return obj


class CallableSink(Sink):
    """Call a user function with each :class:`Event` (``batch=False``) or with the list of events of one
    observation (``batch=True``).

    Args:
        target: the function itself (Python), or its import path ``"package.module:function"`` (YAML).
            A path is imported when the sink is built: only because your own configuration names it.
        batch: one call per observation with the list of events, instead of one call per event.
        min_severity: events below this severity are not delivered.

    >>> seen = []
    >>> CallableSink(seen.append).handle([Event("saddle", 5, 0, {}, "info", "lambda_min < 0")])
    >>> seen[0].rule
    'saddle'
    >>> sink = CallableSink("builtins:print")
    >>> sink.handle([Event("saddle", 5, 0, {}, "info", "lambda_min < 0")])  # doctest: +ELLIPSIS
    Event(rule='saddle', step=5, ...)
    """

    def __init__(self, target: Union[str, Callable[..., Any]], batch: bool = False, min_severity: str = "info") -> None:
        super().__init__(min_severity)
        self.batch = check_bool("CallableSink.batch", batch)
        if isinstance(target, str):
            self._fn = resolve_callable(target, "CallableSink.target")
        elif callable(target):
            self._fn = target
        else:
            raise TypeError("CallableSink.target must be a callable or an import path 'package.module:function', "
                            f"got {type(target).__name__}")
        self.target = target

    def __getstate__(self) -> dict[str, Any]:  # ddp_spawn pickles callbacks: an import path is re-imported there
        state = dict(self.__dict__)
        if isinstance(self.target, str):
            state.pop("_fn", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if isinstance(self.target, str):
            self._fn = resolve_callable(self.target, "CallableSink.target")

    def emit(self, events: list[Event]) -> None:
        if self.batch:
            self._fn(list(events))
        else:
            for e in events:
                self._fn(e)

    def __repr__(self) -> str:
        target = self.target if isinstance(self.target, str) else getattr(
            self.target, "__qualname__", type(self.target).__name__)
        return f"CallableSink(target={target!r}, batch={self.batch}, min_severity={self.min_severity!r})"
