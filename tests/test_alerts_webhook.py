"""WebhookSink against a real local HTTP server: payload, retries, and never stalling the caller."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lightning_landscape.alerts import AlertManager, EdgeOfStability, Event, NonFinite, WebhookSink


class Server:
    """A stdlib HTTP server on 127.0.0.1 (ephemeral port) recording POSTs; ``delay`` seconds before
    answering, ``status`` code. Stops itself in ``stop()`` (and at most ``lifetime`` s after start)."""

    def __init__(self, delay: float = 0.0, status: int = 200, lifetime: float = 30.0) -> None:
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"body": body, "content_type": self.headers["Content-Type"],
                                       "path": self.path})
                time.sleep(outer.delay)
                try:
                    self.send_response(outer.status)
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up (timeout)

            def log_message(self, *args):
                pass

        self.delay, self.status = delay, status
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(lifetime, self.stop)
        self.timer.daemon = True
        self.timer.start()

    def stop(self) -> None:
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = Server()
    yield s
    s.stop()


def events(step):
    return [Event("l2_threshold", step, 1, {"landscape/l2/margin": 1.2, "bad": float("nan")}, "critical",
                  "margin 1.2 <= 1.5", key="margin", runbook="Lower the weight decay.")]


def test_payload_received_and_well_formed(server):
    sink = WebhookSink(server.url, timeout=2.0, retries=0, headers={"X-Token": "t"})
    for step in (1, 2, 3):
        sink.handle(events(step))
    sink.handle([Event("saddle", 4, 1, {}, "info", "below min_severity")])  # filtered out
    assert sink.close(timeout=5.0)
    assert sink.sent == 3 and sink.failed == 0 and len(server.requests) == 3
    for i, req in enumerate(server.requests, start=1):
        assert req["content_type"] == "application/json" and req["path"] == "/hook"
        payload = json.loads(req["body"].decode("utf-8"), parse_constant=lambda c: pytest.fail(f"invalid JSON {c}"))
        assert payload["text"] == (f"[CRITICAL] l2_threshold [margin] (step {i}, epoch 1): margin 1.2 <= 1.5"
                                   " — what to do: Lower the weight decay.")
        assert payload["source"] == "lightning_landscape"
        (ev,) = payload["events"]
        assert ev == {"rule": "l2_threshold", "step": i, "epoch": 1, "severity": "critical", "key": "margin",
                      "message": "margin 1.2 <= 1.5", "values": {"landscape/l2/margin": 1.2, "bad": "nan"},
                      "runbook": "Lower the weight decay."}
        assert Event.from_dict({**ev, "values": {"landscape/l2/margin": 1.2}}).rule == "l2_threshold"


def test_manager_to_webhook_end_to_end(server):
    sink = WebhookSink(server.url, timeout=2.0, min_severity="info")
    m = AlertManager([EdgeOfStability(level=1.0, k=1), NonFinite()], sinks=[sink])
    m.observe(10, 0, {"landscape/hessian/eos_ratio_tracked": 1.3, "landscape/hessian/trace": float("inf")})
    assert m.close(timeout=5.0)
    (req,) = server.requests
    payload = json.loads(req["body"])
    assert [e["rule"] for e in payload["events"]] == ["edge_of_stability", "nonfinite"]
    assert payload["text"].count("\n") == 1


def training_loop(sink, steps=40, step_time=0.005):
    """A stand-in for training: work, then hand events to the sink at every step."""
    t0 = time.perf_counter()
    for step in range(steps):
        time.sleep(step_time)
        sink.handle(events(step))
    return time.perf_counter() - t0


@pytest.mark.parametrize("mode", ["dead", "slow"])
def test_dead_or_slow_endpoint_never_stalls_the_loop(mode):
    timeout = 0.3
    t0 = time.perf_counter()
    for _ in range(40):  # the same loop without a webhook
        time.sleep(0.005)
    baseline = time.perf_counter() - t0

    if mode == "dead":
        srv = Server()
        url = srv.url
        srv.stop()  # nothing listens there any more: connection refused
    else:
        srv = Server(delay=3.0)  # answers 10x slower than the timeout
        url = srv.url
    try:
        sink = WebhookSink(url, timeout=timeout, retries=2, backoff=0.05, max_queue=5)
        t0 = time.perf_counter()
        loop = training_loop(sink)
        closed = sink.close()  # default bound: the configured timeout
        total = time.perf_counter() - t0
    finally:
        if mode == "slow":
            srv.stop()
    assert loop < baseline + 0.5, (loop, baseline)  # the loop itself is not slowed down
    assert total < baseline + timeout + 0.5, (total, baseline)  # at most the timeout, once, at close
    assert not closed
    assert sink.sent == 0
    if mode == "slow":
        assert sink.dropped > 0  # bounded queue: the backlog is dropped, not buffered forever


@pytest.mark.parametrize(
    "status, retries, attempts",
    [(503, 2, 3), (400, 3, 1)],  # a server error is retried, then given up; a client error never is
)
def test_retry_policy_by_status(status: int, retries: int, attempts: int):
    srv = Server(status=status)
    try:
        sink = WebhookSink(srv.url, timeout=1.0, retries=retries, backoff=0.01)
        sink.handle(events(1))
        assert sink.close(timeout=5.0)
    finally:
        srv.stop()
    assert len(srv.requests) == attempts and sink.failed == 1 and str(status) in sink.last_error


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(url="ftp://x"), "url"),
        (dict(url="http://x", timeout=0), "timeout"),
        (dict(url="http://x", retries=-1), "retries"),
        (dict(url="http://x", max_queue=0), "max_queue"),
        (dict(url="http://x", backoff=float("inf")), "backoff"),
        (dict(url="http://x", min_severity="debug"), "min_severity"),
        (dict(url="http://x", headers={"a": 1}), "headers"),
    ],
)
def test_webhook_rejects_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=rf"WebhookSink\.{word}"):
        WebhookSink(**kwargs)


def test_reusable_after_close(server):
    sink = WebhookSink(server.url, timeout=2.0)
    sink.handle(events(1))
    assert sink.close(timeout=5.0)
    sink.handle(events(2))  # e.g. a second trainer.fit with the same callback
    assert sink.close(timeout=5.0)
    assert sink.sent == 2 and [json.loads(r["body"])["events"][0]["step"] for r in server.requests] == [1, 2]
