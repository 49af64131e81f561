"""Probes: pure measurements on a module + loss closure (no Lightning imports)."""

from lightning_landscape.probes.base import PROBES, Histogram, Probe, ProbeResult
from lightning_landscape.probes.context import NonFiniteLossError, ProbeContext
from lightning_landscape.probes.spectrum import HessianDensity, HessianSpectrum, HessianTrace


def default_probes() -> list[Probe]:
    """The default suite: cheap, at intervals that keep the overhead to a few percent."""
    return [HessianSpectrum(), HessianTrace(), HessianDensity()]


__all__ = [
    "PROBES",
    "HessianDensity",
    "HessianSpectrum",
    "HessianTrace",
    "Histogram",
    "NonFiniteLossError",
    "Probe",
    "ProbeContext",
    "ProbeResult",
    "default_probes",
]
