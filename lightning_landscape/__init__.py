"""lightning_landscape: PyTorch Lightning callbacks that watch the loss landscape while a model trains.

>>> from lightning_landscape import LandscapeMonitor, HessianSpectrum
>>> monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=100)])

Names are imported on first use (PEP 562), so ``import lightning_landscape.linalg`` and the other maths
subpackages never import Lightning, and a probe does not import the callback.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    "LandscapeMonitor": "lightning_landscape.callbacks",
    "LandscapeMonitorWarning": "lightning_landscape.callbacks",
    **{
        name: "lightning_landscape.probes"
        for name in (
            "PROBES",
            "ChannelDetector",
            "EscapeRadius",
            "HessianDensity",
            "HessianSpectrum",
            "HessianTrace",
            "L2Transition",
            "LandscapeSlice",
            "LossSurfaceGeometry",
            "Probe",
            "ProbeContext",
            "ProbeResult",
            "SaddleBranches",
            "Sharpness",
            "WeightDynamics",
        )
    },
}

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:  # what static tools see
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
