"""lightning_landscape: PyTorch Lightning callbacks that watch the loss landscape while a model trains.

>>> from lightning_landscape import LandscapeMonitor, HessianSpectrum
>>> monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=100)])
"""

from lightning_landscape.callbacks import LandscapeMonitor, LandscapeMonitorWarning
from lightning_landscape.probes import (
    PROBES,
    HessianDensity,
    HessianSpectrum,
    HessianTrace,
    Probe,
    ProbeContext,
    ProbeResult,
)

__version__ = "0.1.0"

__all__ = [
    "PROBES",
    "HessianDensity",
    "HessianSpectrum",
    "HessianTrace",
    "LandscapeMonitor",
    "LandscapeMonitorWarning",
    "Probe",
    "ProbeContext",
    "ProbeResult",
    "__version__",
]
