"""Streaming rules on the monitor's metric streams (one import path for all of them).

The pieces live in their own modules: pure detectors in :mod:`~lightning_landscape.alerts.detectors`, the
:class:`Rule` contract in :mod:`~lightning_landscape.alerts.base`, the generic rules (:class:`Threshold`,
:class:`ChangePoint`, :class:`EventRule`) in :mod:`~lightning_landscape.alerts.generic` and the ready-made
ones in :mod:`~lightning_landscape.alerts.ready_made`.
"""

from lightning_landscape.alerts.base import Rule
from lightning_landscape.alerts.detectors import CusumDetector, GrowthForecast, HysteresisDetector
from lightning_landscape.alerts.generic import ChangePoint, EventRule, Threshold
from lightning_landscape.alerts.ready_made import (
    RULES,
    ChannelEntry,
    EdgeOfStability,
    L2Threshold,
    NonFinite,
    Saddle,
    SaddleBranch,
    SharpnessSpike,
    default_rules,
)

__all__ = [
    "RULES",
    "ChangePoint",
    "ChannelEntry",
    "CusumDetector",
    "EdgeOfStability",
    "EventRule",
    "GrowthForecast",
    "HysteresisDetector",
    "L2Threshold",
    "NonFinite",
    "Rule",
    "Saddle",
    "SaddleBranch",
    "SharpnessSpike",
    "Threshold",
    "default_rules",
]
