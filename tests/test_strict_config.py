"""Construction refuses what would silently do something else: string booleans, empty probe lists,
tag prefixes TensorBoard would mangle, trigger names nothing emits, param groups the optimizer lacks;
``CallableSink`` takes a Python callable as well as an import path."""

from __future__ import annotations

import pickle

import pytest
import torch

from lightning_helpers import loaders, small_task, trainer
from lightning_landscape import (
    PROBES,
    HessianDensity,
    HessianSpectrum,
    L2Transition,
    LandscapeMonitor,
    Probe,
    ProbeResult,
    SaddleBranches,
    Sharpness,
    WeightDynamics,
)
from lightning_landscape.alerts import (
    AlertManager,
    CallableSink,
    ChangePoint,
    EdgeOfStability,
    Event,
    SharpnessSpike,
    Threshold,
)
from lightning_landscape.control import WeightDecayController
from lightning_landscape.scan.engine import ScanConfig
from lightning_landscape.tasks import MLPTask

BOOL_SETTINGS = [
    (lambda v: HessianSpectrum(warm_start=v), "warm_start"),
    (lambda v: HessianSpectrum(preconditioned_eos=v), "preconditioned_eos"),
    (lambda v: HessianDensity(reorthogonalize=v), "reorthogonalize"),
    (lambda v: LandscapeMonitor(measure_first_step=v), "measure_first_step"),
    (lambda v: L2Transition(per_layer=v), "per_layer"),
    (lambda v: L2Transition(ray=v), "ray"),
    (lambda v: WeightDynamics(checkpoint_init=v), "checkpoint_init"),
    (lambda v: SaddleBranches(compute_spectrum=v), "compute_spectrum"),
    (lambda v: Sharpness(adaptive=v), "adaptive"),
    (lambda v: CallableSink(print, batch=v), "batch"),
    (lambda v: ChangePoint("landscape/x", log_scale=v), "log_scale"),
    (lambda v: SharpnessSpike(trend=v), "trend"),
    (lambda v: MLPTask(input_dim=2, hidden=(3,), bias=v), "bias"),
    (lambda v: MLPTask(input_dim=2, hidden=(3,), batch_norm=v), "batch_norm"),
    (lambda v: ScanConfig(curvature=v), "curvature"),
    (lambda v: ScanConfig(ray=v), "ray"),
]


@pytest.mark.parametrize("value", ["no", "false", "False", 0, 1, None])
@pytest.mark.parametrize("build, name", BOOL_SETTINGS, ids=[n for _, n in BOOL_SETTINGS])
def test_booleans_must_be_real_bools(build, name, value) -> None:
    with pytest.raises(TypeError, match=rf"{name} must be a bool"):
        build(value)


@pytest.mark.parametrize("build, name", BOOL_SETTINGS, ids=[n for _, n in BOOL_SETTINGS])
def test_real_booleans_are_kept(build, name) -> None:
    built = build(False)
    holder = getattr(built, "detector", built)  # ChangePoint keeps its settings on its detector
    if hasattr(holder, name):
        assert getattr(holder, name) is False


def test_empty_probe_list_is_refused() -> None:
    with pytest.raises(ValueError, match="probes must name at least one probe"):
        LandscapeMonitor(probes=[])


@pytest.mark.parametrize("prefix", ["a b//c", "a//b", "/a", "a/", "", "a b", "tab\tx", "a\nb", "ü", "a/./b?"])
def test_tag_prefix_must_be_tensorboard_safe(prefix) -> None:
    with pytest.raises(ValueError, match="log_prefix must be '/'-separated segments"):
        LandscapeMonitor(log_prefix=prefix)


@pytest.mark.parametrize("prefix", ["landscape", "runs/fast-lr.1", "A_b/c2"])
def test_tag_prefix_accepts_plain_segments(prefix) -> None:
    assert LandscapeMonitor(log_prefix=prefix).log_prefix == prefix


class _Emitter(Probe):
    name = "test_emitter"
    group = "test"
    emits = ("my_event",)

    def run(self, ctx):
        return ProbeResult()


PROBES.pop("test_emitter", None)


def test_trigger_rules_must_name_an_event_or_an_alert_rule() -> None:
    with pytest.raises(ValueError, match=r"trigger_rules: \['chanel_entry'\].*allowed"):
        LandscapeMonitor(weight_decay=WeightDecayController(trigger_rules=["chanel_entry"]))
    with pytest.raises(ValueError, match=r"trigger_rules: \['edge_of_stability'\]"):  # no such rule configured
        LandscapeMonitor(weight_decay=WeightDecayController(trigger_rules=["edge_of_stability"]))
    alerts = AlertManager([EdgeOfStability(), Threshold("landscape/x", level=1.0, name="my_rule")], sinks=[])
    ok = LandscapeMonitor(alerts=alerts, weight_decay=WeightDecayController(
        trigger_rules=["edge_of_stability", "my_rule", "channel_entry", "saddle"]))
    assert ok.weight_decay.trigger_rules == ["edge_of_stability", "my_rule", "channel_entry", "saddle"]
    custom = _Emitter()  # a custom probe declares its own events
    assert LandscapeMonitor(probes=[custom], weight_decay=WeightDecayController(trigger_rules=["my_event"]))
    for bad in ("channel_entry", [""], [3]):
        with pytest.raises(ValueError, match="trigger_rules must be a list"):
            WeightDecayController(trigger_rules=bad)


def test_param_groups_out_of_range_is_refused_before_the_first_step() -> None:
    controller = WeightDecayController(param_groups=[5])
    t = trainer(max_steps=3, callbacks=[LandscapeMonitor(probes=["hessian_trace"], weight_decay=controller)])
    model = small_task()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"param_groups: indices \[5\] out of range, the optimizer has 1"):
        t.fit(model, loaders())
    assert t.global_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ---------------------------------------------------------------------------- CallableSink
def _collect(into: list):
    return lambda event: into.append(event.rule)


def test_callable_sink_accepts_a_python_callable() -> None:
    seen: list[str] = []
    sink = CallableSink(_collect(seen))
    batches: list[list[Event]] = []
    manager = AlertManager([EdgeOfStability(k=1)], sinks=[sink, CallableSink(batches.append, batch=True)])
    manager.observe(1, 0, {"landscape/hessian/eos_ratio_tracked": 2.0})
    assert seen == ["edge_of_stability"] and [[e.rule for e in b] for b in batches] == [["edge_of_stability"]]
    assert repr(sink) == "CallableSink(target='_collect.<locals>.<lambda>', batch=False, min_severity='info')"
    assert "<function" not in repr(manager)


def test_callable_sink_pickles_an_importable_callable_by_reference() -> None:
    sink = CallableSink(print, batch=True)
    clone = pickle.loads(pickle.dumps(sink))
    assert clone._fn is print and clone.batch is True
    assert CallableSink("builtins:print").target == "builtins:print"


@pytest.mark.parametrize("bad", [3, None, b"builtins:print"])
def test_callable_sink_refuses_what_is_neither_callable_nor_a_path(bad) -> None:
    with pytest.raises(TypeError, match="CallableSink.target must be a callable or an import path"):
        CallableSink(bad)
