"""How the probe loss is computed: ``loss_fn``, ``landscape_loss`` or a muted ``training_step``.

Re-running ``training_step`` would re-run the user's ``self.log`` calls and torchmetrics updates, so
they are muted and restored around it. A dedicated ``loss_fn(pl_module, batch)`` or a module method
``landscape_loss(batch)`` avoids all of that and is preferred when the step does more than compute a loss.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def _metric_modules(module: nn.Module) -> list[nn.Module]:
    try:
        from torchmetrics import Metric
    except ImportError:  # pragma: no cover
        return []
    return [m for m in module.modules() if isinstance(m, Metric)]


@contextlib.contextmanager
def _muted_log_methods(module: nn.Module) -> Iterator[None]:
    """``module.log``/``log_dict`` are no-ops inside the block and the user's own afterwards, whatever fails."""
    saved = {name: module.__dict__[name] for name in ("log", "log_dict") if name in module.__dict__}
    try:
        module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
        module.log_dict = lambda *args, **kwargs: None  # type: ignore[method-assign]
        yield
    finally:
        for name in ("log", "log_dict"):
            if name in saved:
                module.__dict__[name] = saved[name]
            else:
                module.__dict__.pop(name, None)


@contextlib.contextmanager
def preserved_metric(metric: nn.Module) -> Iterator[None]:
    """Give a torchmetrics ``Metric`` back every attribute it had (states, update count, caches).

    Nothing is deep-copied: ``_forward_cache``/``_computed`` may carry the user's autograd graph (a
    ``MeanMetric`` fed the loss), and copying a non-leaf tensor raises. Instead the attributes are
    saved by reference and the states, which ``update`` changes in place (``+=``) or by appending,
    are swapped for detached copies while the block runs; the originals are never touched.

    >>> import torchmetrics
    >>> m = torchmetrics.MeanMetric(); loss = torch.tensor(2.0, requires_grad=True) * 3
    >>> _ = m(loss)
    >>> with preserved_metric(m):
    ...     _ = m(torch.tensor(100.0))
    >>> float(m.compute()), m._forward_cache is not None and m._forward_cache.requires_grad
    (6.0, True)
    """
    saved = dict(metric.__dict__)
    try:
        for name in getattr(metric, "_defaults", {}):
            value = saved.get(name)
            if isinstance(value, torch.Tensor):
                metric.__dict__[name] = value.detach().clone()
            elif isinstance(value, list):
                metric.__dict__[name] = list(value)  # list states grow by append; their tensors stay untouched
        yield
    finally:
        for name in [n for n in metric.__dict__ if n not in saved]:
            del metric.__dict__[name]
        metric.__dict__.update(saved)


@contextlib.contextmanager
def muted_logging(module: nn.Module) -> Iterator[None]:
    """Silence ``self.log``/``self.log_dict`` and give every torchmetrics metric its state back on exit.

    Exception-safe both ways: if entering fails midway (or the block raises), everything already
    changed is put back, so the user's logging never stays muted.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(_muted_log_methods(module))
        for metric in _metric_modules(module):
            stack.enter_context(preserved_metric(metric))
        yield


def extract_loss(output: Any) -> torch.Tensor:
    """The loss from a ``training_step`` output (a tensor or a mapping with ``"loss"``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and isinstance(output.get("loss"), torch.Tensor):
        return output["loss"]
    raise TypeError(
        "training_step must return the loss (a tensor or a dict with 'loss') for the landscape monitor; "
        f"got {type(output).__name__}. Pass `loss_fn=` to LandscapeMonitor or define `landscape_loss(batch)`."
    )


def resolve_loss(module: nn.Module, loss_fn: LossFn | None) -> tuple[Callable[[Any], torch.Tensor], str]:
    """A function ``batch -> loss`` and the name of where it came from."""
    if loss_fn is not None:
        return (lambda batch: loss_fn(module, batch)), "loss_fn"
    custom = getattr(module, "landscape_loss", None)
    if callable(custom):
        return custom, "landscape_loss"
    if getattr(module, "automatic_optimization", True) is False:
        raise ValueError(
            "the LightningModule uses manual optimization, so its training_step cannot serve as the loss: "
            "pass `loss_fn=` to LandscapeMonitor or define `landscape_loss(self, batch)` on the module"
        )

    def from_training_step(batch: Any) -> torch.Tensor:
        with muted_logging(module):
            return extract_loss(module.training_step(batch, 0))

    return from_training_step, "training_step"


def batches_loss(loss_of_batch: Callable[[Any], torch.Tensor], batches: list[Any]) -> Callable[[], torch.Tensor]:
    """A closure for the mean loss over ``batches``."""

    def closure() -> torch.Tensor:
        losses = [loss_of_batch(b) for b in batches]
        return losses[0] if len(losses) == 1 else torch.stack(losses).mean()

    return closure
