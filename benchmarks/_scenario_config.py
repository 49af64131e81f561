"""The monitor under test: library defaults everywhere.

The scenario benchmark judges the library's *default* configuration, so this is the one place that
builds a monitor, and it sets nothing but the probe list, the history size (the benchmark needs every
event) and, for the controller runs, a default :class:`WeightDecayController`. Tune the library's
defaults, not this file; a scenario whose length makes a default interval useless is made longer
instead (see ``_scenario_runs.py``).
"""

from __future__ import annotations

from lightning_landscape import ChannelDetector, HessianSpectrum, L2Transition, LandscapeMonitor, SaddleBranches
from lightning_landscape.alerts import AlertManager
from lightning_landscape.control import WeightDecayController

#: Event rule name of a controller action (not an alert).
CONTROLLER_RULE = "weight_decay"


def build_monitor(controller: bool) -> LandscapeMonitor:
    """Every ready-made rule at its defaults, every probe at its defaults, no sinks (events are read
    from ``monitor.alerts.history``); ``controller`` adds a default weight-decay controller."""
    return LandscapeMonitor(
        probes=[HessianSpectrum(), L2Transition(), ChannelDetector(), SaddleBranches()],
        alerts=AlertManager(sinks=[], history_size=100000),  # every ready-made rule at its defaults
        weight_decay=WeightDecayController() if controller else None,
    )
