"""The probe batch: which data the curvature is measured on.

``fixed`` (default) keeps the first training batch for the whole run, so measurements at different steps
differ only because the weights moved. ``cached`` keeps the first ``k`` batches and averages the loss
over them. ``current`` uses the batch of the step being measured (noisier, no extra memory).
Batches are captured from the training loop itself (``on_train_batch_start``) rather than drawn from the
dataloader, so the sampler's RNG and the data order are never touched.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Literal

import torch

ProbeBatchMode = Literal["fixed", "current", "cached"]


def _leading_sizes(batch: Any) -> list[int]:
    """The first dimension of every tensor (of at least one dimension) inside ``batch``."""
    if isinstance(batch, torch.Tensor):
        return [batch.shape[0]] if batch.ndim > 0 else []
    if isinstance(batch, dict):
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        return []
    return [size for v in values for size in _leading_sizes(v)]


def _batch_size(batch: Any) -> int | None:
    """The batch size: the leading dimension that *every* tensor in ``batch`` shares, else ``None``.

    Requiring all tensors to agree keeps a list of variable-length sequences (leading sizes 7, 5, 9: time,
    not samples) from being cut along time.

    >>> _batch_size((torch.ones(4, 2), torch.zeros(4))), _batch_size([torch.ones(7, 3), torch.ones(5, 3)])
    (4, None)
    """
    sizes = _leading_sizes(batch)
    return sizes[0] if sizes and all(s == sizes[0] for s in sizes) else None


def why_not_splittable(batch: Any) -> str | None:
    """Why ``batch`` has no batch dimension to cut (for warnings); ``None`` if it has one."""
    sizes = _leading_sizes(batch)
    if _batch_size(batch) is not None:
        return None
    if sizes:
        return (f"its tensors have different leading sizes {sorted(set(sizes))[:6]} (a list of variable-length "
                "samples?), so no dimension is known to be the batch; pad and stack it to allow cutting")
    if isinstance(batch, (torch.Tensor, dict, list, tuple)):
        return "it holds no tensor with a batch dimension"
    return f"it is a {type(batch).__name__}, not a tensor, dict, list or tuple of tensors"


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

    Empty batches (batch size 0) are never kept: the next non-empty one is. A batch whose rows cannot be
    found (a custom object, tensors with different leading sizes) is kept whole, and ``warn`` says once
    that ``max_samples`` could not apply.

    >>> cache = ProbeBatchCache("cached", num_batches=2)
    >>> for i in range(3):
    ...     cache.observe(torch.full((4,), float(i)))
    >>> [float(b[0]) for b in cache.batches(current=None)]
    [0.0, 1.0]
    """

    def __init__(self, mode: ProbeBatchMode = "fixed", num_batches: int = 1, max_samples: int | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        self.mode = mode
        self.num_batches = 1 if mode == "fixed" else num_batches
        self.max_samples = max_samples
        self._warn = warn if warn is not None else (lambda message: warnings.warn(message, UserWarning, stacklevel=4))
        self._warned: set[str] = set()
        self._batches: list[Any] = []

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._warn(message)

    def _copy(self, batch: Any) -> Any | None:
        """A detached, truncated copy of ``batch``; ``None`` for an empty batch."""
        size = _batch_size(batch)
        if size == 0:
            return None
        if size is None and self.max_samples is not None:
            self._warn_once("uncut", f"max_probe_samples={self.max_samples} cannot cut the probe batch: "
                                     f"{why_not_splittable(batch)}; it is used whole (custom batches: truncate "
                                     "them in loss_fn)")
        return detach_batch(batch, self.max_samples, size)

    def observe(self, batch: Any) -> None:
        """Called with every training batch; keeps copies while the cache is not full."""
        if self.mode != "current" and len(self._batches) < self.num_batches:
            kept = self._copy(batch)
            if kept is not None:
                self._batches.append(kept)

    def batches(self, current: Any) -> list[Any]:
        """The batches to measure on now (none while only empty batches were seen)."""
        if self.mode == "current":
            kept = None if current is None else self._copy(current)
            if current is not None and kept is None:
                self._warn_once("empty", "the current batch is empty: no measurement at this step (and whenever "
                                         "the measured step's batch is empty)")
            return [] if kept is None else [kept]
        return list(self._batches)

    def reset(self) -> None:
        self._batches = []
