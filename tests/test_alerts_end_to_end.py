"""End-to-end evidence for the alerts and the controller with the real probes (the runs of ``examples/weight_decay_guard.py``,
which also draws the README curves, so the tested numbers and the plotted ones are the same runs).

1. A two-hidden-layer linear net on whitened teacher data (closed-form collapse threshold ``wd_c``)
   whose weight decay is ramped ×1.006 per step, watched by ``L2Transition`` + ``L2Threshold``:
   ``l2_threshold`` fires while the model still fits and before the collapse; with the
   ``WeightDecayController`` the same ramp ends with the model intact.
2. The channel toy (Martinelli et al.) under ``ChannelDetector``: the controller raises weight decay on
   ``channel_entry`` and the output weights end bounded (shrinking), while without it they keep growing.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning.pytorch")

_PATH = Path(__file__).resolve().parents[1] / "examples" / "weight_decay_guard.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("weight_decay_guard_example", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


ex = _load_example()

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's few-workers/log hints


@pytest.fixture(scope="module")
def ramp():
    return ex.ramp_run(controller=False), ex.ramp_run(controller=True)


@pytest.fixture(scope="module")
def toy():
    return ex.toy_run(controller=False), ex.toy_run(controller=True)


def _row(run, step):
    return next(r for r in run.rows if r["step"] == step)


def _last_row(run, step):
    """The last measurement at or before ``step`` (alerts on the tracked margin fire between measurements)."""
    return [r for r in run.rows if r["step"] <= step][-1]


def test_l2_threshold_fires_before_the_collapse(ramp):
    plain, _ = ramp
    wd_c, wd_sp = plain.info["wd_c"], plain.info["wd_sp"]
    fire = plain.first("l2_threshold", "margin")
    collapse = ex.collapse_step(plain)
    assert fire is not None and collapse is not None
    # warned well ahead (the ramp then still needs >= 10 measurements to collapse the net) ...
    assert collapse - fire >= 10 * ex.RAMP_EVERY
    at_fire = _last_row(plain, fire)
    # ... while the model still fits, at a weight decay below the closed-form threshold (the tracked margin
    # crosses 1.5 between two measurements: wd ≈ wd_c/1.5)
    assert at_fire["landscape/l2/collapse_ratio"] > 0.85
    assert at_fire["wd"] < wd_c / 1.3
    # the ray estimate is exact for whitened deep linear nets at a (near-)stationary point: β_ray = β_c
    assert at_fire["landscape/l2/critical_beta"] == pytest.approx(wd_c / 2, rel=0.01)
    # the up-sweep collapses only past the spinodal, and completely (collapse ratio ~ 0)
    assert _row(plain, collapse)["wd"] > wd_sp
    assert abs(plain.rows[-1]["landscape/l2/collapse_ratio"]) < 0.02
    # the rule's collapse signal confirms it, after the margin warning
    assert fire < plain.first("l2_threshold", "collapse") <= collapse
    assert not any(e.rule == "weight_decay" for e in plain.events)


def test_controller_stops_the_same_ramp_short_of_collapse(ramp):
    plain, guarded = ramp
    wd_c = guarded.info["wd_c"]
    changes = [e for e in guarded.events if e.rule == "weight_decay"]
    assert len(changes) >= 5 and all(e.values["new"] < e.values["old"] for e in changes)  # only lowers
    # identical runs until the controller first acts (it reads, it does not perturb)
    first = changes[0].step
    assert first < plain.first("l2_threshold", "margin") + 10 * ex.RAMP_EVERY
    same = [s for s in plain.steps() if s < first]
    assert len(same) > 20
    for s in same:
        assert _row(guarded, s)["landscape/l2/margin"] == pytest.approx(_row(plain, s)["landscape/l2/margin"], rel=1e-6)
    # the ramp kept pushing to the end (×1.006 per step), the controller kept the weight decay below wd_c/target
    last = guarded.rows[-1]
    assert changes[-1].step >= last["step"] - ex.RAMP_EVERY  # it acts on the tracked margin, between measurements
    assert last["wd"] == pytest.approx(wd_c / 2.0, rel=0.02)
    assert last["landscape/l2/weight_decay"] == last["wd"]
    margins = [r["landscape/l2/margin"] for r in guarded.rows if r["step"] >= first]
    assert min(margins) > 1.5  # the alert level is never reached ...
    # ... so the margin alarm stays quiet (the forecast may still say that a ramp keeps raising weight decay)
    assert not any(e.rule == "l2_threshold" and e.key == "margin" for e in guarded.events)
    # and the model is intact at the end, where the unguarded run has collapsed
    assert last["landscape/l2/collapse_ratio"] > 0.9
    assert min(r["landscape/l2/collapse_ratio"] for r in guarded.rows[5:]) > 0.9
    assert plain.rows[-1]["landscape/l2/collapse_ratio"] < 0.02


def test_channel_toy_controller_bounds_the_output_weights(toy):
    plain, guarded = toy
    entry = plain.first("channel_entry")
    assert entry is not None and guarded.first("channel_entry") == entry  # same trajectory until then
    at_entry = _row(plain, entry)
    assert _row(guarded, entry)["max_abs_a"] == pytest.approx(at_entry["max_abs_a"], rel=1e-6)
    # without the controller: still in the channel, output weights growing, ε shrinking
    assert not any(e.rule == "weight_decay" for e in plain.events)
    assert plain.info["end_max_abs_a"] > at_entry["max_abs_a"] + 0.1
    assert plain.info["end_eps"] < at_entry["eps"]
    # with it: one raise from 0 at the announcement, the weights shrink and the channel closes (ε grows back)
    raises = [e for e in guarded.events if e.rule == "weight_decay"]
    assert [(e.step, e.values["old"], e.values["new"]) for e in raises] == [(entry, 0.0, 1e-3)]
    assert guarded.rows[-1]["wd"] == 1e-3
    a_end = guarded.info["end_max_abs_a"]
    assert a_end < 0.9 * at_entry["max_abs_a"]
    assert a_end < plain.info["end_max_abs_a"] - 0.4
    after = [r["max_abs_a"] for r in guarded.rows if r["step"] > entry + ex.TOY_EVERY]
    assert all(b < a for a, b in zip(after, after[1:]))  # monotonically shrinking after the raise
    assert guarded.info["end_eps"] > at_entry["eps"] + 0.05
    assert guarded.rows[-1]["landscape/neurons/net.0/channel_score"] < 1.0
    assert all(math.isfinite(r["max_abs_a"]) for r in guarded.rows)
