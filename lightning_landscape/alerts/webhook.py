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

A webhook URL is a credential (Slack's carries its token in the path). It is shown only as
``scheme://host:port/…`` in logs, warnings, errors and reprs; headers are never shown. Redirects are
never followed (a 3xx counts as a failure): following one would resend the body, and with urllib the
extra headers (e.g. ``Authorization``), to whatever host the answer names.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import queue
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from lightning_landscape.alerts.events import Event
from lightning_landscape.alerts.sinks import Sink

log = logging.getLogger(__name__)

_STOP = object()
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")  # whitespace and control characters (CR/LF: header injection)


def redact_url(url: Any) -> str:
    """``scheme://host[:port]/…``: what may be shown of a webhook URL (no user info, path or query).

    >>> redact_url("https://user:pw@hooks.slack.com/services/T000/B000/XXXX?token=1")
    'https://hooks.slack.com/…'
    >>> redact_url("http://127.0.0.1:8080")
    'http://127.0.0.1:8080'
    >>> redact_url("not a url")
    '<url hidden>'
    """
    try:
        parts = urllib.parse.urlsplit(str(url))
        host, port = parts.hostname, parts.port
    except ValueError:
        return "<url hidden>"
    if not parts.scheme or not host or _UNSAFE.search(host):
        return "<url hidden>"
    host = f"[{host}]" if ":" in host else host
    netloc = host if port is None else f"{host}:{port}"
    rest = "/…" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{netloc}{rest}"


def _check_url(url: Any) -> str:
    """An ``http(s)://host…`` URL without whitespace or control characters; errors never echo it."""
    if not isinstance(url, str):
        raise TypeError(f"WebhookSink.url must be a string, got {type(url).__name__}")
    if _UNSAFE.search(url):
        raise ValueError("WebhookSink.url must not contain whitespace or control characters (CR/LF), "
                         f"got a URL for {redact_url(url.strip())}")
    try:
        parts = urllib.parse.urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises on a non-numeric or out-of-range port
    except ValueError as err:
        raise ValueError(f"WebhookSink.url is not a valid URL ({redact_url(url)}): {type(err).__name__}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"WebhookSink.url must start with http:// or https://, got scheme {parts.scheme!r}")
    if not host:
        raise ValueError(f"WebhookSink.url must name a host (http(s)://host/...), got {redact_url(url)}")
    if "@" in parts.netloc:  # urllib would take "user:pw@host" for the host name
        raise ValueError("WebhookSink.url must not carry user:password@; pass credentials in "
                         f"headers={{'Authorization': ...}} (URL for {redact_url(url)})")
    return url


def _opener() -> urllib.request.OpenerDirector:
    """HTTP(S) only, no redirect handler: a 3xx reaches us as an ``HTTPError`` instead of being followed."""
    opener = urllib.request.OpenerDirector()
    handlers: list[Any] = [urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), urllib.request.HTTPHandler(),
                           urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()]
    if hasattr(urllib.request, "HTTPSHandler"):  # Python built without ssl has none
        handlers.append(urllib.request.HTTPSHandler())
    for handler in handlers:
        opener.add_handler(handler)
    return opener


class WebhookSink(Sink):
    """POST alert events as JSON to ``url`` from a background thread.

    Args:
        url: ``http://`` or ``https://`` endpoint (e.g. a Slack incoming-webhook URL). Treated as a secret:
            shown only as ``scheme://host:port/…``. Redirects are not followed (counted as failures).
        timeout: seconds per HTTP attempt; also the default bound of :meth:`close`.
        retries: extra attempts after a failed one (connection error, timeout, 429, 5xx).
        backoff: seconds before the first retry, doubled after each.
        max_queue: pending payloads kept at most; beyond that new ones are dropped (``dropped``).
        headers: extra HTTP headers (e.g. an authorization token); never shown, never sent elsewhere.
        url_env: instead of ``url``: the name of an environment variable holding it, so the URL stays out
            of configuration files (LightningCLI copies the configuration into the log directory).
        min_severity: events below this severity are not sent (default ``"warning"``).

    The counters ``sent``, ``failed`` and ``dropped`` and ``last_error`` say what happened.

    >>> sink = WebhookSink("http://127.0.0.1:9/hook/SECRET", timeout=0.5, retries=0)
    >>> sink
    WebhookSink(url='http://127.0.0.1:9/…', timeout=0.5, retries=0, min_severity='warning')
    >>> WebhookSink.payload([Event("saddle", 5, 0, {"lambda_min": -0.2}, "warning", "negative curvature")])["text"]
    '[WARNING] saddle (step 5, epoch 0): negative curvature'
    >>> sink.close()
    True
    """

    def __init__(
        self,
        url: str | None = None,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.5,
        max_queue: int = 100,
        headers: dict[str, str] | None = None,
        min_severity: str = "warning",
        url_env: str | None = None,
    ) -> None:
        super().__init__(min_severity)
        if (url is None) == (url_env is None):
            raise ValueError("WebhookSink: give exactly one of url and url_env")
        if url_env is not None:
            if not isinstance(url_env, str) or not url_env:
                raise ValueError(f"WebhookSink.url_env must name an environment variable, got {url_env!r}")
            url = os.environ.get(url_env)
            if not url:
                raise ValueError(f"WebhookSink.url_env: the environment variable {url_env!r} is not set or empty")
        _check_url(url)
        for name, value in (("timeout", timeout), ("backoff", backoff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"WebhookSink.{name} must be a finite number >= 0, got {value!r}")
        if timeout <= 0:
            raise ValueError(f"WebhookSink.timeout must be > 0 seconds, got {timeout!r}")
        for name, value, low in (("retries", retries, 0), ("max_queue", max_queue, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"WebhookSink.{name} must be an int >= {low}, got {value!r}")
        if headers is not None and (not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items())):
            raise ValueError("WebhookSink.headers must map strings to strings "
                             f"(names: {sorted(map(str, headers)) if isinstance(headers, dict) else type(headers).__name__})")
        for k, v in (headers or {}).items():
            if not k or _UNSAFE.search(k) or "\r" in v or "\n" in v:
                raise ValueError(f"WebhookSink.headers: header {k.strip()!r} has an empty name, or whitespace or "
                                 "control characters where they are not allowed (CR/LF in a value)")
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
                log.warning("webhook %s: queue full (%d pending), dropping alerts", self.redacted_url, self.max_queue)

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

    @property
    def redacted_url(self) -> str:
        """The URL as it may be shown: ``scheme://host:port/…``."""
        return redact_url(self.url)

    def _scrub(self, text: str) -> str:
        """``text`` without the URL, its path, query or user info, or any header value."""
        parts = urllib.parse.urlsplit(self.url)
        secrets = [self.url, parts.netloc, parts.path, parts.query, parts.fragment, *self.headers.values()]
        host = parts.hostname or ""
        for secret in sorted({x for x in secrets if x and x not in (host, "/")}, key=len, reverse=True):
            text = text.replace(secret, self.redacted_url if secret == self.url else "…")
        return text

    def _send(self, body: bytes, abandon: threading.Event) -> None:
        err = ""
        for attempt in range(self.retries + 1):
            if attempt and abandon.wait(self.backoff * 2 ** (attempt - 1)):
                break  # closing: stop retrying
            try:
                req = urllib.request.Request(
                    self.url, data=body, method="POST",
                    headers={"Content-Type": "application/json", "User-Agent": "lightning-landscape", **self.headers},
                )
                with _opener().open(req, timeout=self.timeout) as resp:
                    resp.read()
                self.sent += 1
                return
            except urllib.error.HTTPError as e:
                e.close()
                if 300 <= e.code < 400:
                    err = (f"HTTP {e.code} redirect not followed (webhook redirects are never followed; "
                           "configure the final URL)")
                    break
                err = f"HTTP {e.code} {e.reason}"
                if 400 <= e.code < 500 and e.code != 429:
                    break  # the request is wrong: retrying will not help
            except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, timeouts, refused, bad responses
                err = f"{type(e).__name__}: {e}"
        self.failed += 1
        self.last_error = self._scrub(err)
        (log.warning if self.failed == 1 else log.debug)("webhook %s failed: %s", self.redacted_url, self.last_error)

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
        return (f"WebhookSink(url={self.redacted_url!r}, timeout={self.timeout}, retries={self.retries}, "
                f"min_severity={self.min_severity!r})")
