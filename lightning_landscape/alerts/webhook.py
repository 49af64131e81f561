"""A webhook sink that never stalls training: JSON POSTs from a background thread.

The payload has a Slack-compatible ``text`` field (Slack, Mattermost, Teams' incoming webhooks and
most chat bridges display it) plus the structured events::

    {"text": "[CRITICAL] l2_threshold (step 1200, epoch 3): ...", "source": "lightning_landscape",
     "events": [{"rule": ..., "step": ..., "epoch": ..., "values": {...}, "severity": ..., ...}]}

:meth:`WebhookSink.emit` only enqueues (``put_nowait`` on a bounded queue; when it is full the batch
is dropped and counted in ``dropped``). The sender thread POSTs with ``timeout`` seconds per attempt
and retries ``retries`` times with exponential back-off on connection errors, timeouts, HTTP 429 and
5xx. :meth:`WebhookSink.close` waits at most ``timeout`` seconds (by default the per-request
timeout) and then abandons what is left: a dead or slow endpoint costs training at most that much,
once, at the end.
"""

from __future__ import annotations

import json
import logging
import http.client
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from lightning_landscape.alerts.events import Event
from lightning_landscape.alerts.sinks import Sink

log = logging.getLogger(__name__)

_STOP = object()


class WebhookSink(Sink):
    """POST alert events as JSON to ``url`` from a background thread.

    Args:
        url: ``http://`` or ``https://`` endpoint (e.g. a Slack incoming-webhook URL).
        timeout: seconds per HTTP attempt; also the default bound of :meth:`close`.
        retries: extra attempts after a failed one (connection error, timeout, 429, 5xx).
        backoff: seconds before the first retry, doubled after each.
        max_queue: pending payloads kept at most; beyond that new ones are dropped (``dropped``).
        headers: extra HTTP headers (e.g. an authorization token).
        min_severity: events below this severity are not sent (default ``"warning"``).

    The counters ``sent``, ``failed`` and ``dropped`` and ``last_error`` say what happened.

    >>> sink = WebhookSink("http://127.0.0.1:9/hook", timeout=0.5, retries=0)
    >>> WebhookSink.payload([Event("saddle", 5, 0, {"lambda_min": -0.2}, "warning", "negative curvature")])["text"]
    '[WARNING] saddle (step 5, epoch 0): negative curvature'
    >>> sink.close()
    True
    """

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.5,
        max_queue: int = 100,
        headers: dict[str, str] | None = None,
        min_severity: str = "warning",
    ) -> None:
        super().__init__(min_severity)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"WebhookSink.url must start with http:// or https://, got {url!r}")
        for name, value in (("timeout", timeout), ("backoff", backoff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"WebhookSink.{name} must be a finite number >= 0, got {value!r}")
        if timeout <= 0:
            raise ValueError(f"WebhookSink.timeout must be > 0 seconds, got {timeout!r}")
        for name, value, low in (("retries", retries, 0), ("max_queue", max_queue, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"WebhookSink.{name} must be an int >= {low}, got {value!r}")
        if headers is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise ValueError(f"WebhookSink.headers must map strings to strings, got {headers!r}")
        self.url, self.timeout, self.retries, self.backoff = url, float(timeout), retries, float(backoff)
        self.max_queue, self.headers = max_queue, dict(headers or {})
        self._init_runtime()

    # -- runtime (not pickled: ddp_spawn pickles callbacks)
    def _init_runtime(self) -> None:
        self.sent = self.failed = self.dropped = 0
        self.last_error: str | None = None
        self._open()

    def _open(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self.max_queue)
        self._abandon = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __getstate__(self) -> dict[str, Any]:
        keep = ("url", "timeout", "retries", "backoff", "max_queue", "headers", "min_severity")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    @staticmethod
    def payload(events: list[Event]) -> dict[str, Any]:
        """The JSON body for one batch of events."""
        return {
            "text": "\n".join(e.text() for e in events),
            "source": "lightning_landscape",
            "events": [e.to_dict() for e in events],
        }

    def emit(self, events: list[Event]) -> None:
        if self._closed:  # used again after close() (e.g. a second fit): a fresh queue and sender
            self._open()
        body = json.dumps(self.payload(events), allow_nan=False).encode("utf-8")
        self._ensure_thread()
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("webhook %s: queue full (%d pending), dropping alerts", self.url, self.max_queue)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                # the thread gets its own queue and abandon flag: after close() + reopen, an old
                # sender still finishing a request never takes work from the new queue
                self._thread = threading.Thread(target=self._run, args=(self._queue, self._abandon),
                                                name="landscape-webhook", daemon=True)
                self._thread.start()

    def _run(self, q: queue.Queue[Any], abandon: threading.Event) -> None:
        while True:
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                if abandon.is_set():
                    return  # closed and _STOP could not be queued (queue was full): leave anyway
                continue
            try:
                if item is _STOP:
                    return
                if abandon.is_set():
                    self.failed += 1
                else:
                    self._send(item, abandon)
            finally:
                q.task_done()

    def _send(self, body: bytes, abandon: threading.Event) -> None:
        err: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt and abandon.wait(self.backoff * 2 ** (attempt - 1)):
                break  # closing: stop retrying
            try:
                req = urllib.request.Request(
                    self.url, data=body, method="POST",
                    headers={"Content-Type": "application/json", "User-Agent": "lightning-landscape", **self.headers},
                )
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    resp.read()
                self.sent += 1
                return
            except urllib.error.HTTPError as e:
                err = e
                if 400 <= e.code < 500 and e.code != 429:
                    break  # the request is wrong: retrying will not help
            except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, timeouts, refused, bad responses
                err = e
        self.failed += 1
        self.last_error = f"{type(err).__name__}: {err}"
        (log.warning if self.failed == 1 else log.debug)("webhook %s failed: %s", self.url, self.last_error)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued was sent (or failed), at most ``timeout`` seconds
        (default: the per-request ``timeout``). True if the queue drained."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + (self.timeout if timeout is None else max(0.0, timeout))
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Flush for at most ``timeout`` seconds (default: the per-request ``timeout``), then stop the
        sender and abandon whatever is still pending (the daemon thread never blocks exit)."""
        drained = self.flush(timeout)
        self._closed = True
        self._abandon.set()
        if self._thread is not None:
            try:
                self._queue.put_nowait(_STOP)
            except queue.Full:
                pass  # the daemon thread drains and dies with the process
        return drained

    def __repr__(self) -> str:
        return (f"WebhookSink(url={self.url!r}, timeout={self.timeout}, retries={self.retries}, "
                f"min_severity={self.min_severity!r})")
