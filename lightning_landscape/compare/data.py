"""Evaluation data for offline comparisons: batches, the model inputs in a batch, a default loss.

``data`` is either a tuple of tensors sharing the first dimension (``(x, y)``, split into batches of
``batch_size``) or any iterable of batches (e.g. a ``DataLoader``; it is iterated once per evaluation).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

#: ``loss_fn(model, batch) -> scalar tensor`` (mean over the batch), as in the monitor's ``loss_fn``.
LossFn = Callable[[nn.Module, Any], torch.Tensor]
#: ``input_fn(batch) -> what model.forward takes``.
InputFn = Callable[[Any], Any]
Data = tuple[torch.Tensor, ...] | Iterable[Any]


def iter_batches(data: Data, batch_size: int | None = None) -> Iterator[Any]:
    """Yield batches; a tuple of tensors is chunked along dim 0 (``batch_size=None``: one batch).

    >>> x, y = torch.zeros(5, 2), torch.zeros(5)
    >>> [b[0].shape[0] for b in iter_batches((x, y), batch_size=2)]
    [2, 2, 1]
    """
    if isinstance(data, tuple) and data and all(isinstance(t, torch.Tensor) for t in data):
        n = data[0].shape[0]
        if any(t.shape[0] != n for t in data):
            raise ValueError("data: tensors in the tuple must share their first dimension")
        step = n if batch_size is None else batch_size
        for start in range(0, n, step):
            yield tuple(t[start : start + step] for t in data)
        return
    if isinstance(data, torch.Tensor):
        raise TypeError("data must be a tuple of tensors (x, y) or an iterable of batches, got a bare tensor")
    yield from data


def example_input(data: Data, input_fn: InputFn | None = None, max_samples: int = 64) -> Any:
    """The inputs of the first batch of ``data`` (at most ``max_samples`` rows of a tensor input): what a
    traced :func:`~lightning_landscape.compare.spec.permutation_spec` runs the model on."""
    batch = next(iter(iter_batches(data, None)), None)
    if batch is None:
        raise ValueError("data: no batches")
    inputs = (input_fn or default_inputs)(batch)
    return inputs[:max_samples] if isinstance(inputs, torch.Tensor) else inputs


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch (first dimension of its first tensor)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, (tuple, list)):
        return batch_size_of(batch[0])
    if isinstance(batch, dict):
        return batch_size_of(next(iter(batch.values())))
    raise TypeError(f"cannot tell the size of a batch of type {type(batch).__name__}")


def default_inputs(batch: Any) -> Any:
    """The first element of a tuple/list batch, else the batch itself."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """``model.landscape_loss(batch)`` if defined; otherwise cross-entropy for integer targets with
    2-D outputs, mean squared error for everything else."""
    if callable(getattr(model, "landscape_loss", None)):
        return model.landscape_loss(batch)
    x, y = batch[0], batch[1]
    out = model(x)
    if not torch.is_floating_point(y) and out.dim() == 2 and y.dim() == 1:
        return nn.functional.cross_entropy(out, y)
    return nn.functional.mse_loss(out, y.to(out.dtype).reshape(out.shape))


@torch.no_grad()
def mean_loss(
    model: nn.Module, data: Data, loss_fn: LossFn | None = None, batch_size: int | None = None
) -> float:
    """Sample-weighted mean of ``loss_fn`` over ``data``, in eval mode (modes restored)."""
    loss_fn = loss_fn or default_loss
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        total, count = 0.0, 0
        for batch in iter_batches(data, batch_size):
            n = batch_size_of(batch)
            total += float(loss_fn(model, batch)) * n
            count += n
    finally:
        for m, mode in modes:
            m.training = mode
    if count == 0:
        raise ValueError("data: no samples")
    return total / count


def classification_error(model: nn.Module, batch: Any) -> torch.Tensor:
    """Fraction of misclassified samples (a ``loss_fn`` for error-rate barriers)."""
    x, y = batch[0], batch[1]
    return (model(x).argmax(dim=1) != y).to(torch.float32).mean()
