"""AlertManager: delivery, stop flag, rank-zero emit, state round-trip without re-firing, YAML, pickling."""

from __future__ import annotations

import logging
import pickle
import sys
import types
import warnings
from typing import Optional

import pytest

from lightning_landscape.alerts import (
    AlertManager,
    CallableSink,
    ChannelEntry,
    EdgeOfStability,
    Event,
    L2Threshold,
    LoggingSink,
    Sink,
    TensorBoardSink,
    Threshold,
    WebhookSink,
)
from lightning_landscape.control import WeightDecayController

EOS = "landscape/hessian/eos_ratio_tracked"
MARGIN = "landscape/l2/margin_tracked"


class Collect(Sink):
    def __init__(self, min_severity: str = "info") -> None:
        super().__init__(min_severity)
        self.events: list[Event] = []

    def emit(self, events):
        self.events.extend(events)


@pytest.fixture()
def user_module():
    """A throw-away importable module holding a user callback (what a YAML import path points at)."""
    mod = types.ModuleType("_ll_user_hooks")
    mod.seen = []
    mod.on_alert = lambda e: mod.seen.append(e)
    mod.not_callable = 3
    sys.modules[mod.__name__] = mod
    yield mod
    del sys.modules[mod.__name__]


def run_stream(manager, lo, hi, emit=True):
    fired = []
    for t in range(lo, hi):
        scalars = {EOS: 1.2 if 10 <= t < 40 or t >= 70 else 0.5, MARGIN: 3.0 if t < 50 else 1.2}
        events = [Event("channel_entry", t, 0, {"eps": 0.01}, "warning", "pair", key="fc:1-2")] if 20 <= t < 90 else []
        fired += [(t, e.rule, e.key) for e in manager.observe(t, t // 25, scalars, events, emit=emit)]
    return fired


def make_manager(sink=None, **kw):
    return AlertManager(
        rules=[EdgeOfStability(level=1.0, k=2, forecast_horizon=0), L2Threshold(k=2), ChannelEntry(cooldown_steps=20)],
        sinks=[sink or Collect()], **kw)


def test_observe_fires_each_alert_once_and_delivers():
    sink = Collect()
    m = make_manager(sink)
    fired = run_stream(m, 0, 100)
    assert fired == [(11, "edge_of_stability", "level"), (20, "channel_entry", "fc:1-2"),
                     (51, "l2_threshold", "margin"), (71, "edge_of_stability", "level")]
    assert [(e.step, e.rule) for e in sink.events] == [(t, r) for t, r, _ in fired]
    assert [e.step for e in m.history] == [t for t, _, _ in fired]
    assert not m.should_stop


def test_stop_on_sets_flag_with_reason():
    m = make_manager(stop_on=["l2_threshold"])
    run_stream(m, 0, 60)
    assert m.should_stop and m.stop_reason.rule == "l2_threshold" and m.stop_reason.step == 51


def test_emit_false_updates_state_but_does_not_deliver():
    sink = Collect()
    m = make_manager(sink)
    fired = run_stream(m, 0, 100, emit=False)
    assert fired and sink.events == []
    assert len(m.history) == len(fired)


def test_state_round_trip_does_not_refire():
    full = run_stream(make_manager(), 0, 100)
    for split in (15, 30, 55, 80):
        first = make_manager()
        before = run_stream(first, 0, split)
        state = pickle.loads(pickle.dumps(first.state_dict()))  # what a checkpoint does
        resumed = make_manager()
        resumed.load_state_dict(state)
        after = run_stream(resumed, split, 100)
        assert before + after == full, split
        assert [e.step for e in resumed.history] == [t for t, _, _ in full]
    # without the state, a resumed run would re-fire the latched alerts: the test can fail
    fresh = make_manager()
    assert run_stream(fresh, 55, 100)[0][1:] in {("edge_of_stability", ""), ("channel_entry", "fc:1-2")}
    assert run_stream(make_manager(), 55, 100) != [f for f in full if f[0] >= 55]


def test_load_state_restores_stop_flag_and_ignores_unknown_rules():
    m = make_manager(stop_on=["l2_threshold"])
    run_stream(m, 0, 60)
    state = m.state_dict()
    state["rules"]["gone"] = {}
    other = make_manager(stop_on=["l2_threshold"])
    with pytest.warns(RuntimeWarning, match="gone"):
        other.load_state_dict(state)
    assert other.should_stop and other.stop_reason.step == 51


def test_status_and_tensorboard_payload():
    tb = TensorBoardSink()
    m = AlertManager([EdgeOfStability(k=1), L2Threshold()], sinks=[tb])
    m.observe(5, 0, {EOS: 1.5, MARGIN: 3.0})
    assert m.status() == {"landscape/alerts/edge_of_stability": 1.0, "landscape/alerts/l2_threshold": 0.0}
    p = m.drain_tensorboard()
    assert p.scalars == m.status()
    (text,) = p.texts.values()
    assert "edge_of_stability" in text and "step 5" in text
    m.observe(6, 0, {EOS: 0.5})
    p = m.drain_tensorboard()
    assert p.scalars["landscape/alerts/edge_of_stability"] == 0.0 and p.texts == {}


def test_dispatch_sends_controller_events_without_rules_or_stop():
    sink = Collect()
    m = AlertManager([EdgeOfStability()], sinks=[sink], stop_on=["edge_of_stability"])
    ev = Event("weight_decay", 3, 0, {"new": 0.01}, "warning", "raised", key="group_0")
    m.dispatch([ev])
    assert sink.events == [ev] and not m.should_stop and list(m.history) == [ev]


def test_broken_sink_and_rule_only_warn():
    class Boom(Sink):
        def emit(self, events):
            raise RuntimeError("sink down")

    class BadRule(Threshold):
        def _observe(self, *a):
            raise ZeroDivisionError("bug")

    good = Collect()
    m = AlertManager([BadRule("x", level=1.0, name="bad"), EdgeOfStability(k=1)], sinks=[Boom(), good])
    with pytest.warns(RuntimeWarning) as rec:
        fired = m.observe(1, 0, {"x": 2.0, EOS: 2.0})
    msgs = " ".join(str(w.message) for w in rec)
    assert "bad" in msgs and "sink down" in msgs
    assert [e.rule for e in fired] == ["edge_of_stability"] and len(good.events) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.observe(2, 0, {"x": 2.0, EOS: 0.1})  # the broken rule is disabled: no new warning


def test_logging_sink_levels(caplog):
    sink = LoggingSink(min_severity="warning")
    with caplog.at_level(logging.INFO, logger="lightning_landscape.alerts"):
        sink.handle([Event("a", 1, 0, {}, "info", "i"), Event("b", 1, 0, {}, "warning", "w"),
                     Event("c", 1, 0, {}, "critical", "c")])
    assert [(r.levelname, r.getMessage().split()[1]) for r in caplog.records] == [("WARNING", "b"), ("CRITICAL", "c")]


def test_callable_sink_from_import_path(user_module):
    sink = CallableSink("_ll_user_hooks:on_alert")
    m = AlertManager([EdgeOfStability(k=1)], sinks=[sink])
    m.observe(1, 0, {EOS: 2.0})
    assert [e.rule for e in user_module.seen] == ["edge_of_stability"]
    assert pickle.loads(pickle.dumps(sink))._fn is user_module.on_alert
    for bad, word in [("_ll_user_hooks:nope", "no attribute"), ("_ll_missing_mod:f", "cannot import"),
                      ("_ll_user_hooks:not_callable", "not callable"), ("", "import path")]:
        with pytest.raises(ValueError, match=rf"CallableSink\.target.*{word}|{word}.*"):
            CallableSink(bad)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(rules=[EdgeOfStability(), EdgeOfStability()]), "unique"),
        (dict(rules=[EdgeOfStability()], stop_on=["l2_threshold"]), "stop_on"),
        (dict(rules=["edge_of_stability"]), "rules"),
        (dict(rules=[], sinks=[print]), "sinks"),
        (dict(rules=[], history_size=-1), "history_size"),
    ],
)
def test_manager_rejects_bad_arguments(kwargs, word):
    with pytest.raises((ValueError, TypeError), match=word):
        AlertManager(**kwargs)


def test_defaults_and_pickle():
    m = AlertManager()
    assert [type(s).__name__ for s in m.sinks] == ["LoggingSink", "TensorBoardSink"]
    assert len(m.rules) == 7
    m2 = AlertManager(sinks=[WebhookSink("http://127.0.0.1:9/x", timeout=0.2, retries=0), TensorBoardSink()])
    m2.observe(1, 0, {EOS: 2.0, "x": float("nan")})
    clone = pickle.loads(pickle.dumps(m2))  # ddp_spawn pickles callbacks (threads, queues dropped)
    assert clone.state_dict() == m2.state_dict()
    assert m2.close(timeout=1.0) in (True, False) and clone.close(timeout=0.1)


YAML = """
alerts:
  rules:
    - class_path: lightning_landscape.alerts.L2Threshold
      init_args: {margin_below: 1.5, collapse_fraction: 0.5, k: 2}
    - class_path: lightning_landscape.alerts.EdgeOfStability
      init_args: {level: 1.0, k: 3}
    - class_path: lightning_landscape.alerts.SharpnessSpike
    - class_path: lightning_landscape.alerts.ChannelEntry
      init_args: {cooldown_steps: 500}
    - class_path: lightning_landscape.alerts.Threshold
      init_args: {tag: landscape/flatness/sharpness, level: 0.5, rearm: 0.4, name: sam_sharpness}
    - class_path: lightning_landscape.alerts.NonFinite
  sinks:
    - class_path: lightning_landscape.alerts.LoggingSink
    - class_path: lightning_landscape.alerts.TensorBoardSink
    - class_path: lightning_landscape.alerts.WebhookSink
      init_args: {url: "http://127.0.0.1:9/hook", timeout: 2.0, retries: 1, min_severity: warning}
    - class_path: lightning_landscape.alerts.CallableSink
      init_args: {target: "_ll_user_hooks:on_alert"}
  stop_on: [l2_threshold]
controller:
  raise_factor: 1.5
  lower_factor: 0.5
  target_margin: 2.0
  min_wd: 1.0e-5
  max_wd: 0.05
  cooldown_steps: 200
  param_groups: [0]
"""


def _parser():
    jsonargparse = pytest.importorskip("jsonargparse")
    p = jsonargparse.ArgumentParser(exit_on_error=False)
    p.add_class_arguments(AlertManager, "alerts")
    p.add_class_arguments(WeightDecayController, "controller")
    return p


def _instantiate(parser, cfg):
    # jsonargparse >= 4.49 renamed instantiate_classes to instantiate
    return parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)


def test_yaml_configuration(user_module):
    p = _parser()
    cfg = _instantiate(p, p.parse_string(YAML))
    m, c = cfg.alerts, cfg.controller
    assert isinstance(m, AlertManager) and isinstance(c, WeightDecayController)
    assert m.rule_names == ["l2_threshold", "edge_of_stability", "sharpness_spike", "channel_entry",
                            "sam_sharpness", "nonfinite"]
    assert m.rules[0].margin.on == 1.5 and m.rules[3].cooldown_steps == 500 and m.rules[4].rearm == 0.4
    assert [type(s).__name__ for s in m.sinks] == ["LoggingSink", "TensorBoardSink", "WebhookSink", "CallableSink"]
    assert m.stop_on == ["l2_threshold"]
    assert (c.raise_factor, c.max_wd, c.param_groups) == (1.5, 0.05, [0])
    m.close(timeout=0.1)


@pytest.mark.parametrize(
    "bad",
    [
        YAML.replace("margin_below: 1.5", "margin_bellow: 1.5"),  # typo in an init arg
        YAML.replace("raise_factor: 1.5", "raise_factr: 1.5"),  # typo in the controller
        YAML.replace("k: 3}", "k: three}"),  # wrong type
    ],
)
def test_yaml_typos_rejected_at_parse_time(bad, user_module):
    p = _parser()
    with pytest.raises(Exception):
        p.parse_string(bad)


def test_yaml_bad_values_rejected_at_instantiation(user_module):
    p = _parser()
    cfg = p.parse_string(YAML.replace("stop_on: [l2_threshold]", "stop_on: [l2_treshold]"))
    with pytest.raises(ValueError, match="stop_on"):
        _instantiate(p, cfg)


class MonitorLike:
    """How the monitor will take them: ``Optional[...]`` constructor arguments of a callback."""

    def __init__(self, alerts: Optional[AlertManager] = None, weight_decay: Optional[WeightDecayController] = None):
        self.alerts, self.weight_decay = alerts, weight_decay


def test_yaml_nested_in_a_callback_argument():
    jsonargparse = pytest.importorskip("jsonargparse")
    p = jsonargparse.ArgumentParser(exit_on_error=False)
    p.add_class_arguments(MonitorLike, "monitor")
    yaml = """
monitor:
  alerts:
    rules:
      - class_path: L2Threshold            # short names resolve (imported in lightning_landscape.alerts)
        init_args: {margin_below: 1.5}
      - class_path: lightning_landscape.alerts.SharpnessSpike
    sinks:
      - class_path: LoggingSink
    stop_on: [l2_threshold]
  weight_decay:
    max_wd: 0.05
    cooldown_steps: 50
"""
    cfg = _instantiate(p, p.parse_string(yaml))
    m, c = cfg.monitor.alerts, cfg.monitor.weight_decay
    assert m.rule_names == ["l2_threshold", "sharpness_spike"] and m.stop_on == ["l2_threshold"]
    assert (c.max_wd, c.cooldown_steps) == (0.05, 50)
