"""Matrix-free linear algebra on a symmetric operator: a :class:`LinearOperator` or a bare ``matvec(v) -> A v``.

Pure torch: nothing here knows about models, losses or Lightning.
"""

from lightning_landscape.linalg.dense import dense_density, dense_extremes, dense_trace
from lightning_landscape.linalg.krylov import KrylovBasis, LanczosRecurrence, LanczosState
from lightning_landscape.linalg.lanczos import (
    LanczosResult,
    extreme_eigenvalues,
    extreme_values,
    lanczos_extremes,
    lanczos_tridiagonal,
)
from lightning_landscape.linalg.operator import CallableOperator, LinearOperator, MatrixOperator
from lightning_landscape.linalg.random import rademacher
from lightning_landscape.linalg.slq import SpectralDensity, spectral_density
from lightning_landscape.linalg.trace import TraceEstimate, hutchinson_trace, hutchpp_trace

__all__ = [
    "CallableOperator",
    "LinearOperator",
    "MatrixOperator",
    "KrylovBasis",
    "LanczosRecurrence",
    "LanczosResult",
    "LanczosState",
    "SpectralDensity",
    "TraceEstimate",
    "dense_density",
    "dense_extremes",
    "dense_trace",
    "extreme_eigenvalues",
    "extreme_values",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos_extremes",
    "lanczos_tridiagonal",
    "rademacher",
    "spectral_density",
]
