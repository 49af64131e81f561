"""The probe contract: a small object that turns a :class:`ProbeContext` into named values.

Probes import no Lightning: they can be run on a bare ``nn.Module`` with a loss closure. The callback
decides *when* a probe runs (``every_n_steps``) and *where* its values go (tags
``<prefix>/<group>/<key>``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import torch

from lightning_landscape.probes.shared import check_shared_fields
from lightning_landscape.validation import check_bool, check_choice, check_number, check_positive_float, check_positive_int  # noqa: F401

if TYPE_CHECKING:
    from lightning_landscape.probes.context import ProbeContext

#: Registry of probe classes by ``name`` (filled by subclassing :class:`Probe`).
PROBES: dict[str, type["Probe"]] = {}


@dataclass
class Histogram:
    """Bin edges (``len(counts) + 1`` of them) and counts, as TensorBoard draws them."""

    edges: torch.Tensor
    counts: torch.Tensor


@dataclass
class ProbeResult:
    """What one probe measured at one step. Keys are relative to the probe's group.

    Two kinds of "not yet" are kept apart from the values:

    * ``warming_up``: key -> why. The value *is* in ``scalars`` and is logged, but it cannot carry a
      verdict yet (an L2 margin before the model has learned, Adam's preconditioned sharpness before its
      second-moment estimate has warmed up): rules and the weight-decay controller do not see it.
    * ``not_measured``: key -> why. Nothing could be measured (no neuron layer found, a window still
      filling), so the key is absent from ``scalars`` — never a 0 that reads as "healthy".
    """

    scalars: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # HWC uint8
    texts: dict[str, str] = field(default_factory=dict)
    events: list[Any] = field(default_factory=list)
    warming_up: dict[str, str] = field(default_factory=dict)
    not_measured: dict[str, str] = field(default_factory=dict)


class Probe(ABC):
    """Base class of all probes.

    Subclasses set ``name`` (registry key), ``group`` (tag group), ``needs_hessian``,
    ``default_every_n_steps`` and ``scalar_tags`` (key -> one-line meaning, used for docs and the
    TensorBoard layout), and implement :meth:`run`. A probe that reuses what another measured at the
    same step declares it: ``provides`` / ``needs`` name fields of
    :class:`~lightning_landscape.probes.shared.SharedValues` (``ctx.shared``), and the monitor runs
    providers first.
    """

    name: ClassVar[str] = ""
    group: ClassVar[str] = ""
    needs_hessian: ClassVar[bool] = False
    default_every_n_steps: ClassVar[int] = 100
    scalar_tags: ClassVar[dict[str, str]] = {}
    #: Whether ``measure_first_step`` includes this probe (expensive ones skip the step-1 baseline).
    measure_at_first_step: ClassVar[bool] = True
    #: One-line cost of a measurement, for the README table (e.g. "≤ max_iter HVPs").
    cost: ClassVar[str] = ""
    #: Optional TensorBoard charts: title -> keys drawn together (default: one chart of all tags).
    charts: ClassVar[dict[str, list[str]] | None] = None
    #: Histogram, image and text tags (key -> "kind: meaning"), for the README tag table.
    other_tags: ClassVar[dict[str, str]] = {}
    #: Keys whose verdict may be held back while they warm up (``ProbeResult.warming_up``): the monitor
    #: logs ``<group>/ready/<key>`` (0/1) for them at every measurement.
    gated_keys: ClassVar[tuple[str, ...]] = ()
    #: ``ctx.shared`` fields this probe publishes for the probes that run after it at the same step.
    provides: ClassVar[tuple[str, ...]] = ()
    #: ``ctx.shared`` fields this probe reuses when published: it runs after every probe providing one.
    needs: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.provides = check_shared_fields(cls.__name__, "provides", cls.provides)
        cls.needs = check_shared_fields(cls.__name__, "needs", cls.needs)
        if cls.name:
            PROBES[cls.name] = cls

    def __init__(self, every_n_steps: int | None = None) -> None:
        self.every_n_steps = check_positive_int(
            f"{type(self).__name__}.every_n_steps",
            self.default_every_n_steps if every_n_steps is None else every_n_steps,
        )

    def is_due(self, step: int, previous: int | None = None) -> bool:
        """Whether to measure after optimizer step ``step`` (1-based count of steps taken).

        With ``previous`` (the step of the last check), a multiple of ``every_n_steps`` crossed since then
        counts too, so a ``global_step`` that advances by more than one (several optimizers) misses nothing.        """
        n = self.every_n_steps
        if previous is None:
            return step % n == 0
        return step // n > previous // n

    @abstractmethod
    def run(self, ctx: "ProbeContext") -> ProbeResult:
        """Measure. Must not change the module (the caller guards RNG, buffers and modes)."""

    def track(self, step: int, optimizer: Any, optimizer_info: Any) -> ProbeResult | None:
        """Free estimates between measurements, called after every optimizer step that does not measure.

        No forward pass, no gradient: only what the last measurement and the optimizer's current state
        imply (e.g. the edge-of-stability ratio at the current learning rate). Values go to the rules at
        every step and to the loggers at the trainer's logging cadence. Default: none.
        """
        return None

    def config(self) -> dict[str, Any]:
        """The constructor arguments that identify this probe (state keys, reports)."""
        return {"every_n_steps": self.every_n_steps}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def order_probes(probes: Sequence[Probe]) -> list[Probe]:
    """The order in which to run ``probes`` at one measurement.

    Every probe runs after the probes that provide a field it needs; among probes free to run, those
    that need the Hessian go first (they share one gradient graph, which a probe that perturbs the
    weights would invalidate), then the given order. Cycles fall back to the given order.

    >>> from lightning_landscape.probes import ChannelDetector, HessianSpectrum, HessianTrace
    >>> [p.name for p in order_probes([ChannelDetector(), HessianTrace(), HessianSpectrum()])]
    ['hessian_trace', 'hessian_spectrum', 'channels']
    """
    probes = list(probes)
    providers = {i: set(p.provides) for i, p in enumerate(probes)}
    waits_for = {
        i: {j for j in providers if j != i and providers[j] & set(p.needs)} for i, p in enumerate(probes)
    }
    order: list[int] = []
    while len(order) < len(probes):
        ready = [i for i in range(len(probes)) if i not in order and not waits_for[i] - set(order)]
        if not ready:  # a cycle of declarations: keep the remaining probes in the given order
            ready = [i for i in range(len(probes)) if i not in order]
        order.append(min(ready, key=lambda i: (not probes[i].needs_hessian, i)))
    return [probes[i] for i in order]
