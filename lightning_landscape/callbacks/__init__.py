"""The Lightning layer: callbacks (thin; all maths lives in probes and linalg)."""

from lightning_landscape.callbacks.monitor import LandscapeMonitor, LandscapeMonitorWarning

__all__ = ["LandscapeMonitor", "LandscapeMonitorWarning"]
