"""Probes: pure measurements on a module + loss closure (no Lightning imports).

Importing this package registers every built-in probe in :data:`PROBES` (names usable in
``LandscapeMonitor(probes=[...])`` and in YAML).
"""

from lightning_landscape.probes.base import PROBES, Histogram, Probe, ProbeResult, order_probes
from lightning_landscape.probes.context import NonFiniteLossError, ProbeContext
from lightning_landscape.probes.flatness import EscapeRadius, LandscapeSlice, Sharpness
from lightning_landscape.probes.geometry import LossSurfaceGeometry
from lightning_landscape.probes.l2 import L2Transition
from lightning_landscape.probes.shared import SharedValues
from lightning_landscape.probes.neurons import ChannelDetector, SaddleBranches, WeightDynamics
from lightning_landscape.probes.spectrum import HessianDensity, HessianSpectrum, HessianTrace


def default_probes() -> list[Probe]:
    """The default suite: cheap, at intervals that keep the overhead low."""
    return [HessianSpectrum(), HessianTrace(), HessianDensity()]


__all__ = [
    "PROBES",
    "ChannelDetector",
    "EscapeRadius",
    "HessianDensity",
    "HessianSpectrum",
    "HessianTrace",
    "Histogram",
    "L2Transition",
    "LandscapeSlice",
    "LossSurfaceGeometry",
    "NonFiniteLossError",
    "Probe",
    "ProbeContext",
    "ProbeResult",
    "SaddleBranches",
    "SharedValues",
    "Sharpness",
    "WeightDynamics",
    "default_probes",
    "order_probes",
]
