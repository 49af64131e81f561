"""How the probe loss is computed: ``loss_fn``, ``landscape_loss`` or a muted ``training_step``.

Re-running ``training_step`` would re-run the user's ``self.log`` calls and torchmetrics updates, so
they are muted and restored around it. A dedicated ``loss_fn(pl_module, batch)`` or a module method
``landscape_loss(batch)`` avoids all of that and is preferred when the step does more than compute a loss.
"""

from __future__ import annotations

import contextlib
import copy
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
def muted_logging(module: nn.Module) -> Iterator[None]:
    """Silence ``self.log``/``self.log_dict`` and snapshot/restore torchmetrics states."""
    saved_attrs = {name: module.__dict__[name] for name in ("log", "log_dict") if name in module.__dict__}
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    module.log_dict = lambda *args, **kwargs: None  # type: ignore[method-assign]
    metric_states = []
    for metric in _metric_modules(module):
        names = list(getattr(metric, "_defaults", {}).keys())
        extra = ("_update_count", "_computed", "_forward_cache")
        state = {n: copy.deepcopy(getattr(metric, n)) for n in names + [e for e in extra if hasattr(metric, e)]}
        metric_states.append((metric, state))
    try:
        yield
    finally:
        for name in ("log", "log_dict"):
            if name in saved_attrs:
                module.__dict__[name] = saved_attrs[name]
            else:
                module.__dict__.pop(name, None)
        for metric, state in metric_states:
            for n, v in state.items():
                setattr(metric, n, v)


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
