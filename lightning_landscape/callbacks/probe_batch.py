"""The probe batch: which data the curvature is measured on.

``fixed`` (default) keeps the first training batch for the whole run, so measurements at different steps
differ only because the weights moved. ``cached`` keeps the first ``k`` batches and averages the loss
over them. ``current`` uses the batch of the step being measured (noisier, no extra memory).
Batches are captured from the training loop itself (``on_train_batch_start``) rather than drawn from the
dataloader, so the sampler's RNG and the data order are never touched.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch

ProbeBatchMode = Literal["fixed", "current", "cached"]


def _batch_size(batch: Any) -> int | None:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim > 0 else None
    if isinstance(batch, dict):
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        return None
    for v in values:
        size = _batch_size(v)
        if size is not None:
            return size
    return None


def _map_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``batch`` with ``fn`` applied to every tensor inside (dicts, lists, tuples, namedtuples kept)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return type(batch)((k, _map_tensors(v, fn)) for k, v in batch.items())
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_map_tensors(v, fn) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_map_tensors(v, fn) for v in batch)
    return batch


def _rows(batch: Any, start: int, stop: int, size: int) -> Any:
    """Rows ``start:stop`` of every tensor whose first dimension is the batch size (views)."""
    return _map_tensors(batch, lambda t: t[start:stop] if t.ndim > 0 and t.shape[0] == size else t)


def detach_batch(batch: Any, max_samples: int | None = None, size: int | None = None) -> Any:
    """A detached copy of ``batch`` (tensors cloned), optionally truncated to ``max_samples`` rows.

    Truncation applies to every tensor whose first dimension equals the batch size.

    >>> b = detach_batch({"x": torch.ones(8, 2), "y": [torch.zeros(8)]}, max_samples=3)
    >>> tuple(b["x"].shape), tuple(b["y"][0].shape)
    ((3, 2), (3,))
    """
    if size is None:
        size = _batch_size(batch)
    if max_samples is not None and size is not None:
        batch = _rows(batch, 0, max_samples, size)
    return _map_tensors(batch, lambda t: t.detach().clone())


def split_batch(batch: Any, parts: int) -> list[tuple[float, Any]]:
    """``batch`` as up to ``parts`` row slices (views), each with its fraction of the rows.

    Slices every tensor whose first dimension equals the batch size (the rule of :func:`detach_batch`);
    a batch whose size cannot be found comes back whole.

    >>> [(w, tuple(b[0].shape)) for w, b in split_batch((torch.ones(5, 2), torch.zeros(5)), 2)]
    [(0.6, (3, 2)), (0.4, (2, 2))]
    """
    size = _batch_size(batch)
    if size is None or size < 2 or parts < 2:
        return [(1.0, batch)]
    parts = min(parts, size)
    bounds = [(i * size + parts - 1) // parts for i in range(parts + 1)]  # ceil: earlier slices are the larger
    return [((stop - start) / size, _rows(batch, start, stop, size)) for start, stop in zip(bounds, bounds[1:])]


class ProbeBatchCache:
    """Keeps the probe batches according to ``mode``.

    >>> cache = ProbeBatchCache("cached", num_batches=2)
    >>> for i in range(3):
    ...     cache.observe(torch.full((4,), float(i)))
    >>> [float(b[0]) for b in cache.batches(current=None)]
    [0.0, 1.0]
    """

    def __init__(self, mode: ProbeBatchMode = "fixed", num_batches: int = 1, max_samples: int | None = None) -> None:
        self.mode = mode
        self.num_batches = 1 if mode == "fixed" else num_batches
        self.max_samples = max_samples
        self._batches: list[Any] = []

    def observe(self, batch: Any) -> None:
        """Called with every training batch; keeps copies while the cache is not full."""
        if self.mode != "current" and len(self._batches) < self.num_batches:
            self._batches.append(detach_batch(batch, self.max_samples))

    def batches(self, current: Any) -> list[Any]:
        """The batches to measure on now."""
        if self.mode == "current":
            return [] if current is None else [detach_batch(current, self.max_samples)]
        return list(self._batches)

    def reset(self) -> None:
        self._batches = []
