"""Make a measurement invisible to training.

Everything a probe may disturb is saved and restored: the global RNG streams (torch CPU and CUDA,
NumPy, ``random``), every buffer (BatchNorm running statistics and ``num_batches_tracked`` change on a
train-mode forward), the train/eval flags of every submodule, and the parameter values when a probe
perturbs them. Grad mode is forced on and inference mode off, because validation/test hooks run
under ``no_grad``/``inference_mode``; ``torch.compile``d code runs eagerly, since compiled graphs
cannot be differentiated twice.
"""

from __future__ import annotations

import contextlib
import random
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn


def restore_all(steps: list[Callable[[], object]]) -> None:
    """Run every restore step even if one fails, then raise the first failure.

    A guard that stopped restoring at its first error would leave the rest of the state changed.

    >>> done = []
    >>> restore_all([lambda: done.append(1), lambda: 1 / 0, lambda: done.append(3)])
    Traceback (most recent call last):
    ...
    ZeroDivisionError: division by zero
    >>> done
    [1, 3]
    """
    first: BaseException | None = None
    for step in steps:
        try:
            step()
        except BaseException as err:  # noqa: BLE001 - KeyboardInterrupt too: finish restoring first
            first = first if first is not None else err
    if first is not None:
        raise first


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Restore the global RNG states on exit (a framework-free ``isolate_rng``)."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        restore_all([
            lambda: torch.set_rng_state(cpu),
            lambda: cuda is not None and torch.cuda.set_rng_state_all(cuda),
            lambda: np.random.set_state(np_state),
            lambda: random.setstate(py_state),
        ])


@contextlib.contextmanager
def preserved_buffers(module: nn.Module) -> Iterator[None]:
    """Restore every buffer's value (in place, so references held elsewhere stay valid)."""
    saved = [(m, name, b, b.detach().clone()) for m in module.modules() for name, b in m._buffers.items() if b is not None]
    try:
        yield
    finally:

        def put_back(owner: nn.Module, name: str, original: torch.Tensor, copy: torch.Tensor) -> None:
            if owner._buffers.get(name) is not original:
                owner._buffers[name] = original  # the probe replaced the tensor object: put it back
            with torch.no_grad():
                original.copy_(copy)

        restore_all([lambda s=s: put_back(*s) for s in saved])


@contextlib.contextmanager
def preserved_modes(module: nn.Module) -> Iterator[None]:
    """Restore ``training`` of every submodule."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        restore_all([lambda m=m, mode=mode: setattr(m, "training", mode) for m, mode in modes])


@contextlib.contextmanager
def preserved_parameters(module: nn.Module) -> Iterator[None]:
    """Restore every parameter's value bit-exactly (for probes that move the weights)."""
    saved = [(p, p.detach().clone()) for p in module.parameters()]
    try:
        yield
    finally:
        with torch.no_grad():
            restore_all([lambda p=p, copy=copy: p.copy_(copy) for p, copy in saved])


@contextlib.contextmanager
def _eager() -> Iterator[None]:
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if set_stance is None:  # torch < 2.6
        yield
        return
    with set_stance("force_eager"):
        yield


@contextlib.contextmanager
def probe_guard(module: nn.Module, autocast_off: bool = True) -> Iterator[None]:
    """All guards a measurement needs, in one context.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Dropout(0.5))
    >>> before = net[1].running_mean.clone(); state = torch.get_rng_state()
    >>> with probe_guard(net):
    ...     _ = net(torch.randn(4, 2))
    >>> torch.equal(net[1].running_mean, before), torch.equal(torch.get_rng_state(), state)
    (True, True)
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(isolated_rng())
        stack.enter_context(preserved_modes(module))
        stack.enter_context(preserved_buffers(module))
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(_eager())
        if autocast_off:
            for device_type in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield
