"""Where measurements go: scalars to every Lightning logger, extras to TensorBoard.

Scalars are written with ``logger.log_metrics(..., step=_batches_that_stepped)`` — the step Lightning
uses for the user's own ``self.log`` calls in the same batch — so the curves line up. Measurements are
rare and expensive, so they are written whenever they are made, independent of ``log_every_n_steps``.
Histograms, images, text and the custom-scalars layout go only to TensorBoard loggers, on rank zero.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from lightning_landscape._compat import loaded_classes
from lightning_landscape.probes.base import Histogram


def should_log(trainer: Any) -> bool:
    """Whether Lightning writes the user's own ``self.log`` values at this step (``log_every_n_steps``)."""
    connector = getattr(trainer, "_logger_connector", None)
    flag = getattr(connector, "should_update_logs", None)
    if isinstance(flag, bool):
        return flag
    every = int(getattr(trainer, "log_every_n_steps", 50) or 1)
    return int(getattr(trainer, "global_step", 0)) % every == 0


class MetricWriter:
    """Writes tagged values for one trainer.

    >>> MetricWriter.layout({"hessian": ["landscape/hessian/lambda_max", "landscape/hessian/lambda_min"]})
    {'landscape': {'hessian': ['Multiline', ['landscape/hessian/lambda_max', 'landscape/hessian/lambda_min']]}}
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    @property
    def is_global_zero(self) -> bool:
        return bool(getattr(self.trainer, "is_global_zero", True))

    def _tensorboards(self) -> list[Any]:
        if not self.is_global_zero:
            return []
        return [lg for lg in getattr(self.trainer, "loggers", []) if isinstance(lg, loaded_classes("loggers.TensorBoardLogger"))]

    @staticmethod
    def layout(groups: dict[str, list[str]], title: str = "landscape") -> dict[str, Any]:
        """A TensorBoard custom-scalars layout: one multi-line chart per group."""
        return {title: {name: ["Multiline", list(tags)] for name, tags in groups.items()}}

    def write_layout(self, groups: dict[str, list[str]], title: str = "landscape") -> None:
        for tb in self._tensorboards():
            tb.experiment.add_custom_scalars(self.layout(groups, title))

    def scalars(self, values: dict[str, float], step: int) -> None:
        """To every logger (rank zero) and to ``trainer.callback_metrics`` (every rank)."""
        if not values:
            return
        metrics = self.trainer.callback_metrics
        for tag, value in values.items():
            metrics[tag] = torch.tensor(float(value))
        if not self.is_global_zero:
            return
        as_floats = {k: float(v) for k, v in values.items()}  # plain floats: no dict/tensor values reach loggers
        for logger in getattr(self.trainer, "loggers", []):
            logger.log_metrics(as_floats, step=step)

    def histograms(self, values: dict[str, Histogram], step: int) -> None:
        for tb in self._tensorboards():
            for tag, hist in values.items():
                counts = hist.counts.double().cpu()
                edges = hist.edges.double().cpu()
                centers = 0.5 * (edges[1:] + edges[:-1])
                total = float(counts.sum())
                if total <= 0:
                    continue
                tb.experiment.add_histogram_raw(
                    tag,
                    min=float(edges[0]),
                    max=float(edges[-1]),
                    num=total,
                    sum=float((counts * centers).sum()),
                    sum_squares=float((counts * centers**2).sum()),
                    bucket_limits=edges[1:].tolist(),
                    bucket_counts=counts.tolist(),
                    global_step=step,
                )

    def images(self, values: dict[str, np.ndarray], step: int) -> None:
        for tb in self._tensorboards():
            for tag, image in values.items():
                tb.experiment.add_image(tag, image, global_step=step, dataformats="HWC")

    def texts(self, values: dict[str, str], step: int) -> None:
        for tb in self._tensorboards():
            for tag, text in values.items():
                tb.experiment.add_text(tag, text, global_step=step)

    def flush(self) -> None:
        for tb in self._tensorboards():
            tb.experiment.flush()


def prefixed(prefix: str, group: str, values: dict[str, Any]) -> dict[str, Any]:
    """``{key: v}`` -> ``{"<prefix>/<group>/<key>": v}``."""
    return {f"{prefix}/{group}/{key}": v for key, v in values.items()}


def tags_by_group(prefix: str, probes: Iterable[Any]) -> dict[str, list[str]]:
    """Charts for the custom-scalars layout: a probe's ``charts`` (title -> keys) or one chart of all its tags."""
    charts: dict[str, list[str]] = {}
    for probe in probes:
        own = getattr(probe, "charts", None) or {probe.name: list(probe.scalar_tags)}
        for title, keys in own.items():
            charts.setdefault(f"{probe.group}: {title}", []).extend(f"{prefix}/{probe.group}/{k}" for k in keys)
    return charts
