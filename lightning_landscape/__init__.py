"""lightning_landscape: PyTorch Lightning callbacks that watch the loss landscape while a model trains.

>>> from lightning_landscape import LandscapeMonitor, HessianSpectrum
>>> monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=100)])
"""

from lightning_landscape.callbacks import LandscapeMonitor, LandscapeMonitorWarning
from lightning_landscape.probes import (
    PROBES,
    ChannelDetector,
    EscapeRadius,
    HessianDensity,
    HessianSpectrum,
    HessianTrace,
    L2Transition,
    LandscapeSlice,
    LossSurfaceGeometry,
    Probe,
    ProbeContext,
    ProbeResult,
    SaddleBranches,
    Sharpness,
    WeightDynamics,
)

__version__ = "0.1.0"

__all__ = [
    "PROBES",
    "ChannelDetector",
    "EscapeRadius",
    "L2Transition",
    "LandscapeSlice",
    "LossSurfaceGeometry",
    "SaddleBranches",
    "Sharpness",
    "WeightDynamics",
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
