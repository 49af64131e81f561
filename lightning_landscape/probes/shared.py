"""What probes share at one measurement: typed fields instead of a string dictionary.

A probe lists the :class:`SharedValues` fields it publishes in ``provides`` and those it reuses when
present in ``needs``; :func:`~lightning_landscape.probes.base.order_probes` runs every provider before
the probes that need its fields, so a probe list never has to be ordered by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterator, MutableMapping, Sequence

import torch


@dataclass
class SharedValues:
    """Values one probe measured at this step that later probes reuse (``None`` until published).

    Attributes:
        lambda_max: largest Hessian eigenvalue (``HessianSpectrum``; ``SaddleBranches`` fills it from its
            own Lanczos when no spectrum ran).
        lambda_min: smallest Hessian eigenvalue (same sources).
        hessian_top_vector: unit eigenvector estimate of ``lambda_max`` (``HessianSpectrum``), flat over
            the parameter space.
        scalar_curvature: scalar curvature of the loss surface (``LossSurfaceGeometry``).
    """

    lambda_max: float | None = None
    lambda_min: float | None = None
    hessian_top_vector: torch.Tensor | None = None
    scalar_curvature: float | None = None


SHARED_FIELDS: frozenset[str] = frozenset(f.name for f in fields(SharedValues))


def check_shared_fields(owner: str, attribute: str, names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple, each a :class:`SharedValues` field (else a ``TypeError`` naming ``owner``)."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{owner}.{attribute} must be a tuple of field names, got {names!r}")
    unknown = sorted(set(names) - SHARED_FIELDS)
    if unknown:
        raise TypeError(f"{owner}.{attribute}: {unknown} are not shared values; known: {sorted(SHARED_FIELDS)}")
    return tuple(names)


class SharedView(MutableMapping[str, Any]):
    """``ctx.extras``: the published :class:`SharedValues` fields as a mapping (unset fields are absent)."""

    def __init__(self, values: SharedValues) -> None:
        self._values = values

    def _check(self, key: str) -> None:
        if key not in SHARED_FIELDS:
            raise KeyError(f"{key!r} is not a shared value; known: {sorted(SHARED_FIELDS)}")

    def __getitem__(self, key: str) -> Any:
        self._check(key)
        value = getattr(self._values, key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self._check(key)
        setattr(self._values, key, value)

    def __delitem__(self, key: str) -> None:
        self[key]  # KeyError when unset  # noqa: B018
        setattr(self._values, key, None)

    def __iter__(self) -> Iterator[str]:
        return (f.name for f in fields(self._values) if getattr(self._values, f.name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)
