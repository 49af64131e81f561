"""Each rule on synthetic streams: fires once, respects hysteresis/k/warm-up/cooldown, silent on noise,
state round-trips mid-stream."""

from __future__ import annotations

import math
import random

import pytest

from lightning_landscape.alerts import (
    RULES,
    ChangePoint,
    ChannelEntry,
    EdgeOfStability,
    Event,
    EventRule,
    L2Threshold,
    NonFinite,
    Saddle,
    SaddleBranch,
    SharpnessSpike,
    Threshold,
    default_rules,
)

TAG = "landscape/test/x"


def fire_steps(rule, stream, tag=TAG, events=None, steps=None):
    """Feed ``stream`` (values, or None for 'not measured') and return the steps that fired."""
    out = []
    for i, x in enumerate(stream):
        step = i if steps is None else steps[i]
        scal = {} if x is None else {tag: x}
        ev = [] if events is None else events(step)
        if rule.observe(step, step // 100, scal, ev):
            out.append(step)
    return out


def noise(seed, n, mean=0.0, sd=1.0):
    rng = random.Random(seed)
    return [mean + rng.gauss(0, sd) for _ in range(n)]


# --------------------------------------------------------------------------- Threshold


def test_threshold_fires_once_on_a_sustained_crossing():
    r = Threshold(TAG, level=1.0, rearm=0.8)
    assert fire_steps(r, [0.1] * 10 + [1.5] * 50) == [10]
    assert r.active


def test_threshold_hysteresis_rearms_only_below_off():
    r = Threshold(TAG, level=1.0, rearm=0.5)
    # oscillating between 0.9 and 1.1 (never below rearm) fires only once
    stream = [0.0] + [1.1, 0.9] * 20 + [0.4] + [1.2] * 3
    fired = fire_steps(r, stream)
    assert fired == [1, 42]
    assert r.active


def test_threshold_without_hysteresis_refires_on_each_crossing():
    r = Threshold(TAG, level=1.0)  # rearm = level
    assert fire_steps(r, [0.0, 1.1, 0.9, 1.1, 0.9, 1.1]) == [1, 3, 5]


def test_threshold_k_consecutive_ignores_isolated_spikes():
    r = Threshold(TAG, level=1.0, k=3)
    stream = [0.0, 2.0, 0.0, 2.0, 2.0, 0.0, 2.0, 2.0, 2.0, 2.0]
    assert fire_steps(r, stream) == [8]


def test_threshold_below_direction():
    r = Threshold(TAG, level=1.0, rearm=1.5, direction="below", k=2)
    assert fire_steps(r, [3.0, 0.9, 0.8, 0.7, 1.2, 0.9, 0.9, 1.6, 0.5, 0.5]) == [2, 9]


def test_threshold_warmup_ignores_early_measurements():
    r = Threshold(TAG, level=1.0, warmup_steps=5)
    assert fire_steps(r, [2.0] * 10) == [5]


def test_threshold_cooldown_holds_back_then_fires_if_condition_persists():
    r = Threshold(TAG, level=1.0, cooldown_steps=10)
    # crossing at 0, re-arm at 1, crossing again at 2..: held back until step 10
    stream = [2.0, 0.0] + [2.0] * 12
    assert fire_steps(r, stream) == [0, 10]
    # a condition that vanishes during the cooldown never fires
    r = Threshold(TAG, level=1.0, cooldown_steps=10)
    assert fire_steps(r, [2.0, 0.0, 2.0, 0.0] + [0.0] * 10) == [0]


def test_threshold_silent_on_noise_below_level():
    for seed in range(20):
        r = Threshold(TAG, level=5.0, rearm=4.0, k=2)
        assert fire_steps(r, noise(seed, 1000)) == []  # 5 sigma, twice in a row


def test_threshold_ignores_missing_and_nan():
    r = Threshold(TAG, level=1.0, k=2)
    assert fire_steps(r, [2.0, None, float("nan"), 2.0]) == [3]


def test_threshold_event_content():
    r = Threshold(TAG, level=1.0, severity="critical", name="big_x")
    (ev,) = r.observe(7, 2, {TAG: 3.0}, [])
    assert (ev.rule, ev.step, ev.epoch, ev.severity) == ("big_x", 7, 2, "critical")
    assert ev.values == {TAG: 3.0, "threshold": 1.0}
    assert TAG in ev.message and ">=" in ev.message


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(tag=TAG, level=1.0, rearm=2.0), "rearm"),
        (dict(tag=TAG, level=1.0, rearm=0.5, direction="below"), "rearm"),
        (dict(tag=TAG, level=1.0, direction="up"), "direction"),
        (dict(tag=TAG, level=1.0, k=0), "k"),
        (dict(tag=TAG, level=float("nan")), "level"),
        (dict(tag=TAG, level=1.0, severity="loud"), "severity"),
        (dict(tag=TAG, level=1.0, cooldown_steps=-1), "cooldown_steps"),
        (dict(tag=TAG, level=1.0, warmup_steps=1.5), "warmup_steps"),
        (dict(tag="", level=1.0), "tag"),
        (dict(tag=TAG, level=1.0, name="a/b"), "name"),
    ],
)
def test_threshold_rejects_bad_arguments(kwargs, word):
    with pytest.raises((ValueError, TypeError), match=rf"Threshold\.{word}"):
        Threshold(**kwargs)


# --------------------------------------------------------------------------- change point


def test_change_point_silent_on_noise_and_fires_once_on_a_step():
    false_alarms = 0
    for seed in range(30):
        r = ChangePoint(TAG, direction="both")
        false_alarms += len(fire_steps(r, noise(seed, 400, 10.0, 0.5)))
    assert false_alarms == 0
    delays = []
    for seed in range(30):
        r = ChangePoint(TAG, direction="up")
        stream = noise(seed, 200, 10.0, 0.5) + noise(seed + 1000, 200, 12.0, 0.5)  # +4 sigma step at 200
        fired = fire_steps(r, stream)
        assert len(fired) == 1 and 200 <= fired[0] < 220, fired  # once, after the step, then silent
        delays.append(fired[0] - 200)
    assert sorted(delays)[15] <= 6


def test_change_point_down_and_direction_filter():
    stream = noise(0, 100, 10.0, 0.5) + noise(1, 50, 7.0, 0.5)
    assert fire_steps(ChangePoint(TAG, direction="up"), stream) == []
    (s,) = fire_steps(ChangePoint(TAG, direction="down"), stream)
    assert 100 <= s < 110


def test_change_point_absorbs_slow_drift():
    # 0.02 sigma per sample: 10 sigma over the stream, but never a change point
    for seed in range(10):
        stream = [10 + 0.01 * t + e for t, e in enumerate(noise(seed, 500, 0.0, 0.5))]
        assert fire_steps(ChangePoint(TAG, direction="both"), stream) == []


def test_change_point_min_relative_change_and_cooldown():
    base = noise(3, 50, 10.0, 0.01)
    step = [10.5] * 20  # +5 %: a clear CUSUM alarm
    assert fire_steps(ChangePoint(TAG, min_relative_change=0.1), base + step) == []
    assert len(fire_steps(ChangePoint(TAG, min_relative_change=0.01), base + step)) == 1
    # two steps 10 samples apart, cooldown 30: the second is held back until the cooldown ends
    r = ChangePoint(TAG, warmup=5, cooldown_steps=30)
    stream = base + [11.0] * 10 + [13.0] * 40
    fired = fire_steps(r, stream)
    assert fired[0] == 50 and len(fired) == 2 and fired[1] >= 80


def test_sharpness_spike_on_progressive_sharpening():
    # lambda_max growing 0.5 % per measurement with 1 % noise, then jumping by 60 %
    rng = random.Random(0)
    stream = [20 * 1.005**t * (1 + 0.01 * rng.gauss(0, 1)) for t in range(300)]
    stream += [stream[-1] * 1.6 * (1 + 0.01 * rng.gauss(0, 1)) for _ in range(30)]
    r = SharpnessSpike()
    assert fire_steps(r, stream, tag="landscape/hessian/lambda_max") == [300]
    assert not r.active  # cooldown 0: in alarm only at the observation that fired
    r = SharpnessSpike(cooldown_steps=5)
    for t, x in enumerate(stream[:301]):
        out = r.observe(t, 0, {"landscape/hessian/lambda_max": x}, [])
    assert r.active and out[0].values["relative_change"] > 0.4
    r.observe(305, 0, {}, [])
    assert not r.active
    # the same jump without the trend model: the lagging baseline alarms on the smooth growth too
    assert len(fire_steps(SharpnessSpike(trend=False), stream, tag="landscape/hessian/lambda_max")) > 1


def test_sharpness_spike_skips_nonpositive_on_log_scale():
    r = SharpnessSpike(warmup=3)
    assert fire_steps(r, [1.0, -2.0, 1.01, 0.0, 0.99, 1.0, float("nan"), 1.0], tag="landscape/hessian/lambda_max") == []


# --------------------------------------------------------------------------- pass-through


def channel(key="fc:1-2"):
    return Event("channel_entry", 0, 0, {"eps": 1e-3}, "warning", "pair", key=key)


def test_event_rule_dedup_fires_once_for_a_persistent_condition():
    r = ChannelEntry(cooldown_steps=100)
    # reported every 10 steps for 500 steps: one event
    assert fire_steps(r, [None] * 50, events=lambda s: [channel()], steps=list(range(0, 500, 10))) == [0]
    assert r.active


def test_event_rule_keys_are_independent_and_rearm_after_absence():
    r = ChannelEntry(cooldown_steps=100)
    seen = []
    for step in range(0, 600, 10):
        evs = []
        if step < 200 or step >= 400:
            evs.append(channel("a"))
        if step >= 150:
            evs.append(channel("b"))
        seen += [(step, e.key) for e in r.observe(step, 0, {}, evs)]
    # a: at 0, absent 200..390 (>= 100 steps), back at 400; b: once at 150
    assert seen == [(0, "a"), (150, "b"), (400, "a")]


def test_event_rule_cooldown_zero_passes_everything_once_per_step():
    r = EventRule("saddle", cooldown_steps=0)
    ev = Event("saddle", 0, 0, {}, "info", "x")
    assert len(r.observe(1, 0, {}, [ev, ev])) == 1  # duplicates in one batch collapse
    assert len(r.observe(2, 0, {}, [ev])) == 1


def test_pass_through_rules_accept_dicts_fill_step_and_ignore_other_rules():
    r = Saddle()
    out = r.observe(42, 3, {}, [{"rule": "saddle", "values": {"lambda_min": -0.5}, "severity": "info"},
                                {"rule": "channel_entry"}])
    (ev,) = out
    assert (ev.rule, ev.step, ev.epoch, ev.severity, ev.values) == ("saddle", 42, 3, "info", {"lambda_min": -0.5})
    b = SaddleBranch(severity="critical", name="branch")
    (ev,) = b.observe(5, 0, {}, [Event("saddle_branch", 5, 0, {}, "info", "narrower")])
    assert (ev.rule, ev.severity) == ("branch", "critical")


def test_pass_through_respects_warmup():
    r = ChannelEntry(warmup_steps=50, cooldown_steps=20)
    assert fire_steps(r, [None] * 10, events=lambda s: [channel()], steps=list(range(0, 100, 10))) == [50]


# --------------------------------------------------------------------------- ready-made rules


def test_l2_threshold_margin_fires_once_with_hysteresis_and_is_silent_on_noise():
    r = L2Threshold(margin_below=1.5, k=2, collapse_fraction=None)
    margin = [4.0, 3.0, 2.0, 1.45, 1.4, 1.3, 1.55, 1.45, 1.4, 1.3, 1.2]  # wobbles below 1.8: no re-arm
    assert fire_steps(r, margin, tag="landscape/l2/margin_tracked") == [4]
    assert r.active
    for seed in range(10):  # noise well above the level
        r = L2Threshold()
        stream = [max(0.01, 3.0 + 0.3 * e) for e in noise(seed, 500)]
        assert fire_steps(r, stream, tag="landscape/l2/margin_tracked") == []


def test_l2_threshold_collapse_ratio_falling():
    r = L2Threshold(margin_below=None, collapse_fraction=0.5, k=2)
    # learning (ratio rises to 0.9), then the first-order collapse: 0.9 -> 0.05 and stays there
    stream = [0.0, 0.3, 0.6, 0.85, 0.9, 0.88, 0.9, 0.5, 0.05, 0.04, 0.05, 0.04]
    fired = []
    for i, c in enumerate(stream):
        fired += [(i, e.key, e.severity) for e in r.observe(i, 0, {"landscape/l2/collapse_ratio": c}, [])]
    assert fired == [(9, "collapse", "critical")]  # 0.05/0.9 <= 0.5 at 8 and 9 (k=2)
    # a model that never learnt (best < min_best_collapse_ratio) is not "collapsing"
    r = L2Threshold(margin_below=None)
    assert fire_steps(r, [0.05, 0.02, 0.0, 0.01], tag="landscape/l2/collapse_ratio") == []


def test_l2_threshold_noise_on_collapse_ratio_is_silent():
    for seed in range(10):
        r = L2Threshold()
        stream = [min(1.0, 0.8 + 0.05 * e) for e in noise(seed, 500)]
        assert fire_steps(r, stream, tag="landscape/l2/collapse_ratio") == []


def test_edge_of_stability_k_measurements_and_rearm():
    r = EdgeOfStability(level=1.0, k=3, forecast_horizon=0)
    s = [0.5, 1.1, 1.1, 0.95, 1.1, 1.1, 1.1, 1.2, 0.95, 1.1, 1.1, 1.1, 0.85, 1.1, 1.1, 1.1]
    assert fire_steps(r, s, tag="landscape/hessian/eos_ratio_tracked") == [6, 15]
    for seed in range(10):
        r = EdgeOfStability()
        assert fire_steps(r, [0.8 + 0.05 * e for e in noise(seed, 500)], tag="landscape/hessian/eos_ratio_tracked") == []


def test_edge_of_stability_forecasts_a_learning_rate_ramp_but_not_a_warm_up_or_sharpening():
    tag, thr = "landscape/hessian/eos_ratio_tracked", "landscape/hessian/eos_threshold"

    def run(ratios, lrs):
        r = EdgeOfStability()
        return {e.key: e.step for s, (x, lr) in enumerate(zip(ratios, lrs))
                for e in r.observe(s, 0, {tag: x, thr: 2.0 / lr}, [])}

    # A learning-rate ramp (x1.005/step): the ratio reaches 1 at step 924; forecast 500 steps ahead.
    lrs = [0.01 * 1.005**s for s in range(1100)]
    ratios = [lr for lr in lrs]  # λmax = 2: ratio = λ lr / 2 = lr
    fired = run(ratios, lrs)
    edge = next(s for s, x in enumerate(ratios) if x >= 1.0)
    assert abs(fired["forecast"] - (edge - 500)) <= 5  # the horizon ahead (values kept every 5 steps)
    assert fired["level"] == next(s for s, x in enumerate(ratios) if x >= 1.5)  # k = 1
    # Linear warm-ups to 1.2 (100 to 3000 steps), then constant: the level fires (1.2 < 1.5: it does not),
    # and there is no forecast.
    for length in (100, 300, 1000, 3000):
        lrs = [min((s + 1) / length, 1.0) for s in range(length + 500)]
        assert run([1.2 * lr for lr in lrs], lrs) == {}
    # Progressive sharpening at a fixed learning rate (x1.005/step up to 1.2, measured every 25 steps):
    # gradient descent self-stabilises at the edge; no forecast.
    ratios = [min(0.05 * 1.005 ** (25 * (s // 25)), 1.2) for s in range(1500)]
    assert run(ratios, [0.1] * 1500) == {}


def test_nonfinite_latches_per_tag_and_passes_events_through():
    r = NonFinite(cooldown_steps=0)
    out = r.observe(1, 0, {"a": float("nan"), "b": 1.0, "landscape/l2/margin": math.inf}, [])
    assert [sorted(e.values) for e in out] == [["a"]] and out[0].severity == "critical"
    assert r.observe(2, 0, {"a": float("nan"), "b": float("-inf")}, [])[0].values.keys() == {"b"}
    assert r.observe(3, 0, {"a": float("nan"), "b": float("-inf")}, []) == []
    assert r.active
    assert r.observe(4, 0, {"a": 1.0, "b": 1.0}, []) == [] and not r.active
    assert len(r.observe(5, 0, {"a": float("inf")}, [])) == 1
    ev = Event("nonfinite", 6, 0, {}, "warning", "probe batch has NaN", key="probe_batch")
    (got,) = r.observe(6, 0, {}, [ev])
    assert got.rule == "nonfinite" and got.severity == "critical" and got.key == "probe_batch"
    # watched tags only
    r = NonFinite(tags=["x"])
    assert r.observe(1, 0, {"y": float("nan")}, []) == []
    # the monitor's flag: 1 when it skipped probes on NaN/Inf
    r = NonFinite(cooldown_steps=0)
    flag = "landscape/monitor/nonfinite"
    assert [len(r.observe(s, 0, {flag: v}, [])) for s, v in enumerate([0.0, 1.0, 1.0, 0.0, 1.0])] == [0, 1, 0, 0, 1]


def test_registry_and_defaults():
    assert set(RULES) == {"l2_threshold", "channel_entry", "saddle", "saddle_branch", "edge_of_stability",
                          "sharpness_spike", "nonfinite"}
    assert [r.name for r in default_rules()] == list(RULES)
    for r in default_rules():
        assert repr(r).startswith(type(r).__name__)


# --------------------------------------------------------------------------- state round-trip


def _streams():
    rng = random.Random(7)
    lam = [20 * (1 + 0.01 * rng.gauss(0, 1)) for _ in range(60)] + [40.0] * 10
    lam += [40 * (1 + 0.01 * rng.gauss(0, 1)) for _ in range(60)]
    margin = [3.0 - 0.03 * t + 0.05 * rng.gauss(0, 1) for t in range(130)]
    eos = [0.9 + 0.15 * math.sin(t / 5) for t in range(130)]
    nan = [float("nan") if 30 <= t < 40 or t > 100 else 1.0 for t in range(130)]
    return {
        "landscape/hessian/lambda_max": lam,
        "landscape/l2/margin": margin,
        "landscape/l2/collapse_ratio": [0.9 if t < 90 else 0.1 for t in range(130)],
        "landscape/hessian/eos_ratio_tracked": eos,
        "landscape/hessian/trace": nan,
        TAG: [1.2 + math.sin(t / 4) for t in range(130)],
    }


def _events(t):
    evs = []
    if 20 <= t < 70 and t % 5 == 0:
        evs.append(Event("channel_entry", t, 0, {"eps": 0.01}, "warning", "pair", key="fc:1-2"))
    if t % 7 == 0:
        evs.append(Event("saddle", t, 0, {}, "info", "s"))
        evs.append(Event("saddle_branch", t, 0, {}, "info", "b", key=f"k{t // 50}"))
        evs.append(Event("nonfinite", t, 0, {}, "warning", "n"))
    return evs


ROUND_TRIP_RULES = [
    lambda: SharpnessSpike(),
    lambda: L2Threshold(k=2),
    lambda: EdgeOfStability(level=1.0, k=2),
    lambda: NonFinite(cooldown_steps=20),
    lambda: ChannelEntry(cooldown_steps=30),
    lambda: Saddle(cooldown_steps=20),
    lambda: SaddleBranch(cooldown_steps=10),
    lambda: Threshold(TAG, level=1.5, rearm=0.5, k=2, cooldown_steps=15),
    lambda: ChangePoint(TAG, direction="both", warmup=5, cooldown_steps=10),
]


@pytest.mark.parametrize("make", ROUND_TRIP_RULES)
@pytest.mark.parametrize("split", [25, 65, 95])
def test_state_round_trip_continues_identically(make, split):
    import copy

    streams = _streams()

    def feed(rule, lo, hi):
        out = []
        for t in range(lo, hi):
            out += [e.to_dict() for e in rule.observe(t, 0, {k: v[t] for k, v in streams.items()}, _events(t))]
        return out

    full = make()
    expected = feed(full, 0, 130)
    first = make()
    before = feed(first, 0, split)
    state = copy.deepcopy(first.state_dict())
    resumed = make()
    resumed.load_state_dict(state)
    after = feed(resumed, split, 130)
    assert before + after == expected
    assert expected, "the stream should make every rule fire at least once"


def test_l2_threshold_forecasts_a_weight_decay_ramp_but_not_a_steady_margin():
    margin_tag, beta_tag = "landscape/l2/margin_tracked", "landscape/l2/beta_eff"
    # β ×1.0025/step from 0.01 with critical β 0.2: the margin 20/1.0025^s passes 1 at step 1200.
    r = L2Threshold(margin_below=None)
    fired = [(s, e.key) for s in range(1300)
             for e in r.observe(s, 0, {margin_tag: 20 / 1.0025**s, beta_tag: 0.01 * 1.0025**s}, [])]
    cross = math.ceil(math.log(20) / math.log(1.0025))
    assert len(fired) == 1 and fired[0][1] == "forecast" and abs(fired[0][0] - (cross - 500)) <= 5
    # Constant weight decay, a margin that wobbles (measurements) or falls (norm growth while learning): silent.
    for seed in range(5):
        r = L2Threshold(margin_below=None)
        assert fire_steps(r, [max(0.5, 3.0 + 0.3 * e) for e in noise(seed, 1000)], tag=margin_tag) == []
        r = L2Threshold(margin_below=None)
        assert [s for s in range(1500) if r.observe(s, 0, {margin_tag: 5 / 1.002**s, beta_tag: 0.01}, [])] == []
