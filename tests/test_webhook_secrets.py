"""A webhook URL and its headers are secrets: never shown, never sent anywhere but the configured URL.

Local ``http.server`` endpoints in threads: a redirect to another host and to ``ftp://``, a 500, an
unreachable port. After each: no secret in the log records, warnings, reprs, TensorBoard text or the
checkpoint; the redirect was not followed; the batch counts as failed.
"""

from __future__ import annotations

import logging
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lightning_helpers import loaders, small_task, trainer
from lightning_landscape import HessianSpectrum, LandscapeMonitor
from lightning_landscape.alerts import AlertManager, Event, LoggingSink, TensorBoardSink, Threshold, WebhookSink
from lightning_landscape.alerts.webhook import redact_url

PATH_SECRET, QUERY_SECRET, HEADER_SECRET = "T0K3NPATH", "Q53CR3T", "H3ADERSECRET"
SECRETS = (PATH_SECRET, QUERY_SECRET, HEADER_SECRET)


class Endpoint:
    """Records every request (method, path, headers); answers ``status`` with an optional ``Location``."""

    def __init__(self, status: int = 200, location: str | None = None) -> None:
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                       "body": body})
                self.send_response(outer.status)
                if outer.location:
                    self.send_header("Location", outer.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer  # noqa: N815

            def log_message(self, *args):
                pass

        self.status, self.location = status, location
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/services/{PATH_SECRET}?key={QUERY_SECRET}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def thief():
    """Another host (``localhost`` instead of ``127.0.0.1``, another port) that a redirect points to."""
    e = Endpoint()
    yield e
    e.stop()


def _event(step: int = 1) -> list[Event]:
    return [Event("edge_of_stability", step, 0, {"landscape/hessian/eos_ratio": 2.0}, "critical", "sharpness")]


def _deliver(url: str, caplog) -> tuple[WebhookSink, AlertManager, str]:
    sink = WebhookSink(url, timeout=2.0, retries=1, backoff=0.01, headers={"Authorization": f"Bearer {HEADER_SECRET}"})
    manager = AlertManager([Threshold("landscape/x", level=1.0, name="x")], sinks=[sink, TensorBoardSink(), LoggingSink()])
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manager.observe(1, 0, {"landscape/x": 5.0})
        manager.dispatch(_event(2))
        sink.close(timeout=5.0)
    tb = manager.drain_tensorboard()
    shown = "\n".join([caplog.text, repr(sink), repr(manager), str(sink.last_error), str(manager.state_dict()),
                       *tb.texts.values(), *(str(w.message) for w in caught)])
    return sink, manager, shown


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.parametrize("target", ["another_host", "ftp"])
def test_redirects_are_not_followed_and_count_as_failed(target, thief, caplog) -> None:
    location = thief.url("localhost") + "&stolen=1" if target == "another_host" else f"ftp://127.0.0.1:{thief.port}/x"
    endpoint = Endpoint(status=302, location=location)
    try:
        sink, _, shown = _deliver(endpoint.url(), caplog)
    finally:
        endpoint.stop()
    assert thief.requests == []  # nothing reached the other host, so neither the body nor the header
    assert [r["method"] for r in endpoint.requests] == ["POST", "POST"]  # two batches, each tried once (no retry)
    assert sink.sent == 0 and sink.failed == 2
    assert "302" in sink.last_error and "redirect not followed" in sink.last_error
    assert f"webhook http://127.0.0.1:{endpoint.port}/… failed: HTTP 302 redirect not followed" in caplog.text
    _assert_no_secret(shown)


@pytest.mark.parametrize("kind", ["500", "unreachable"])
def test_failures_never_show_the_url_or_headers(kind, caplog) -> None:
    endpoint = Endpoint(status=500)
    if kind == "unreachable":
        endpoint.stop()  # nothing listens on that port any more
    try:
        sink, _, shown = _deliver(endpoint.url(), caplog)
    finally:
        if kind == "500":
            endpoint.stop()
    assert sink.sent == 0 and sink.failed == 2
    assert len(endpoint.requests) == (4 if kind == "500" else 0)  # 500 is retried once per batch
    warnings_logged = [r for r in caplog.records if r.levelno >= logging.WARNING and "webhook" in r.getMessage()]
    assert warnings_logged and f"127.0.0.1:{endpoint.port}/…" in warnings_logged[0].getMessage()
    _assert_no_secret(shown)


def test_success_sends_only_to_the_configured_url(caplog) -> None:
    endpoint = Endpoint(status=200)
    try:
        sink, _, shown = _deliver(endpoint.url(), caplog)
    finally:
        endpoint.stop()
    assert sink.sent == 2 and sink.failed == 0
    assert endpoint.requests[0]["headers"]["Authorization"] == f"Bearer {HEADER_SECRET}"
    assert endpoint.requests[0]["path"] == f"/services/{PATH_SECRET}?key={QUERY_SECRET}"
    _assert_no_secret(shown)


def test_no_secret_in_the_checkpoint_or_tensorboard_of_a_run(tmp_path, caplog) -> None:
    endpoint = Endpoint(status=500)
    sink = WebhookSink(endpoint.url(), timeout=2.0, retries=0, headers={"Authorization": f"Bearer {HEADER_SECRET}"})
    manager = AlertManager([Threshold("landscape/hessian/lambda_max", level=0.0, name="sharp")],
                           sinks=[sink, TensorBoardSink(), LoggingSink()])
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)], alerts=manager)
    texts: dict[str, str] = {}
    t = trainer(max_steps=3, callbacks=[monitor])
    writer_texts = monitor._write

    def capture(tr, logged, step):  # what goes to TensorBoard as text
        texts.update(logged.texts)
        writer_texts(tr, logged, step)

    monitor._write = capture
    try:
        with caplog.at_level(logging.DEBUG):
            t.fit(small_task(), loaders(n=64, batch_size=16))
    finally:
        endpoint.stop()
    assert sink.failed >= 1 and len(endpoint.requests) >= 1  # the rule fired and the webhook was tried
    t.save_checkpoint(tmp_path / "run.ckpt")
    raw = (tmp_path / "run.ckpt").read_bytes()
    for secret in SECRETS:
        assert secret.encode() not in raw
    assert any("sharp" in v for v in texts.values())
    _assert_no_secret("\n".join([caplog.text, *texts.values(), repr(monitor.alerts)]))


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("http://", "host"),
        ("https:///path/only", "host"),
        ("ftp://example.com/x", "http"),
        ("file:///etc/passwd", "http"),
        ("http://example.com/a\r\nX-Injected: 1", "control characters"),
        ("http://example.com/a b", "whitespace"),
        (" http://example.com/a", "whitespace"),
        ("http://example.com:notaport/x", "not a valid URL"),
        (f"http://user:{PATH_SECRET}@example.com/x", "user:password"),
        (123, "string"),
    ],
)
def test_bad_urls_are_refused_at_construction_without_echoing_them(url, fragment) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        WebhookSink(url)
    assert "WebhookSink.url" in str(info.value) and fragment in str(info.value)
    assert PATH_SECRET not in str(info.value) and "/path/only" not in str(info.value)


def test_headers_with_line_breaks_are_refused_without_echoing_the_value() -> None:
    with pytest.raises(ValueError, match="Authorization") as info:
        WebhookSink("http://example.com/x", headers={"Authorization": f"Bearer {HEADER_SECRET}\r\nX-Evil: 1"})
    assert HEADER_SECRET not in str(info.value)
    with pytest.raises(ValueError, match="headers") as info:
        WebhookSink("http://example.com/x", headers={"Authorization": 5})
    assert "5" not in str(info.value).replace("headers", "")


def test_redact_url_keeps_scheme_host_and_port_only() -> None:
    assert redact_url(f"https://hooks.example.com/services/{PATH_SECRET}") == "https://hooks.example.com/…"
    assert redact_url(f"http://a:{PATH_SECRET}@h:81/?k={QUERY_SECRET}") == "http://h:81/…"
    assert redact_url("http://[::1]:8080/x") == "http://[::1]:8080/…"
    assert redact_url("https://example.com") == "https://example.com"


def test_url_from_the_environment_keeps_it_out_of_the_configuration(monkeypatch) -> None:
    url = f"https://hooks.example.com/services/{PATH_SECRET}"
    monkeypatch.setenv("LL_TEST_WEBHOOK", url)
    sink = WebhookSink(url_env="LL_TEST_WEBHOOK")
    assert sink.url == url and PATH_SECRET not in repr(sink)
    monkeypatch.delenv("LL_TEST_WEBHOOK")
    with pytest.raises(ValueError, match="LL_TEST_WEBHOOK.*not set"):
        WebhookSink(url_env="LL_TEST_WEBHOOK")
    with pytest.raises(ValueError, match="exactly one of url and url_env"):
        WebhookSink()
    with pytest.raises(ValueError, match="exactly one of url and url_env"):
        WebhookSink(url, url_env="LL_TEST_WEBHOOK")
