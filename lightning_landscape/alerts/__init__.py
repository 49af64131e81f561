"""Alerts: streaming rules on the monitor's metric streams, the events they fire, and where they go.

>>> from lightning_landscape.alerts import AlertManager, EdgeOfStability
>>> manager = AlertManager(rules=[EdgeOfStability(k=1)], sinks=[])
>>> [e.rule for e in manager.observe(10, 0, {"landscape/hessian/eos_ratio_tracked": 1.6})]
['edge_of_stability']
"""

from lightning_landscape.alerts.events import SEVERITIES, Event, as_event
from lightning_landscape.alerts.manager import AlertManager
from lightning_landscape.alerts.base import Rule
from lightning_landscape.alerts.detectors import CusumDetector, HysteresisDetector
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
from lightning_landscape.alerts.sinks import CallableSink, LoggingSink, Sink, TensorBoardPayload, TensorBoardSink
from lightning_landscape.alerts.webhook import WebhookSink
from lightning_landscape.alerts.runbook import RUNBOOK, RunbookEntry, runbook_action

__all__ = [
    "RULES",
    "RUNBOOK",
    "RunbookEntry",
    "runbook_action",
    "SEVERITIES",
    "AlertManager",
    "CallableSink",
    "ChangePoint",
    "ChannelEntry",
    "CusumDetector",
    "EdgeOfStability",
    "Event",
    "EventRule",
    "HysteresisDetector",
    "L2Threshold",
    "LoggingSink",
    "NonFinite",
    "Rule",
    "Saddle",
    "SaddleBranch",
    "SharpnessSpike",
    "Sink",
    "TensorBoardPayload",
    "TensorBoardSink",
    "Threshold",
    "WebhookSink",
    "as_event",
    "default_rules",
]
