"""The alerts package's shape: keyword-only settings, no rule that is another by accident, one set of names."""

from __future__ import annotations

import pytest

import lightning_landscape.alerts as alerts
import lightning_landscape.alerts.rules as rules
from lightning_landscape.alerts import ChannelEntry, Event, EventRule, Saddle, SaddleBranch, SharpnessSpike, Threshold


def test_pass_through_rules_are_distinct_classes() -> None:
    assert not isinstance(Saddle(), ChannelEntry) and not isinstance(SaddleBranch(), ChannelEntry)
    assert all(isinstance(r, EventRule) for r in (ChannelEntry(), Saddle(), SaddleBranch()))
    saddle = Saddle(cooldown_steps=0)
    fired = saddle.observe(3, 0, {}, [Event("saddle", 3, 0, {}, "warning", "m", key="k"),
                                      Event("channel_entry", 3, 0, {}, "warning", "m", key="k")])
    assert [(e.rule, e.key) for e in fired] == [("saddle", "k")]
    assert "event" not in saddle.config() and saddle.config()["name"] == "saddle"


def test_settings_after_the_subject_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        SharpnessSpike("landscape/hessian/lambda_max", 1.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        Threshold("landscape/x", 1.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        ChannelEntry(10)  # type: ignore[misc]
    spike = SharpnessSpike(threshold=5.0, cooldown_steps=3)
    assert spike.detector.threshold == 5.0 and spike.detector.direction == "up" and spike.cooldown_steps == 3


def test_rules_module_and_package_export_the_same_objects() -> None:
    for name in rules.__all__:
        if hasattr(alerts, name):
            assert getattr(alerts, name) is getattr(rules, name), name
