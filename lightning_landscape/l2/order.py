"""Order parameters of the L2 collapse: ‖θ‖², per-parameter norms, the trivial loss, the collapse ratio.

The *trivial* (collapsed) model is the one with every decayed parameter at zero — the point weight decay
drives the network to past the threshold. Its loss is measured by temporarily swapping the parameters'
values (:func:`swapped_values`), not by writing into them: an in-place write bumps the tensors' version
counters and would invalidate a Hessian graph that other probes built on the same parameters at the same
step (``HessianOperator`` raises "modified by an inplace operation" on its next HVP). The swap leaves the
original tensors untouched, so the restore is bit-exact by construction.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Iterator, Sequence

import torch

from lightning_landscape.linalg.reduction import reduce_sum
from lightning_landscape.sharded import after_write, is_sharded_tensor, local_view

LossFn = Callable[[], "torch.Tensor | float"]


@contextlib.contextmanager
def swapped_values(params: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> Iterator[None]:
    """Let ``params`` hold ``values`` inside the block, then give them their own tensors back.

    Works through ``.data`` so no in-place write (and no version-counter bump) touches the originals.

    >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    >>> with swapped_values([w], [torch.zeros(2)]):
    ...     print(w.tolist())
    [0.0, 0.0]
    >>> w.tolist(), w._version
    ([1.0, 2.0], 0)
    """
    if len(params) != len(values):
        raise ValueError(f"got {len(values)} values for {len(params)} parameters")
    if any(is_sharded_tensor(p) for p in params):
        # FSDP2 gathers each parameter from its own sharded storage, which the local tensor views but
        # ``.data`` does not reach: write in place and restore bit-exactly from a copy.
        locals_ = [local_view(p) for p in params]
        saved = [t.detach().clone() for t in locals_]
        try:
            with torch.no_grad():
                for p, t, v in zip(params, locals_, values):
                    if v.shape != p.shape:
                        raise ValueError(f"value of shape {tuple(v.shape)} for a parameter of shape {tuple(p.shape)}")
                    t.copy_(local_view(v))
            after_write()
            yield
        finally:
            with torch.no_grad():
                for t, original in zip(locals_, saved):
                    t.copy_(original)
            after_write()
        return
    originals = [p.data for p in params]
    try:
        for p, v in zip(params, values):
            if v.shape != p.shape:
                raise ValueError(f"value of shape {tuple(v.shape)} for a parameter of shape {tuple(p.shape)}")
            p.data = v.to(dtype=p.dtype, device=p.device)
        yield
    finally:
        for p, original in zip(params, originals):
            p.data = original


def evaluate(loss_fn: LossFn) -> float:
    """``float(loss_fn())`` without building a graph."""
    with torch.no_grad():
        value = loss_fn()
    return float(value.detach() if isinstance(value, torch.Tensor) else value)


def squared_norm(params: Iterable[torch.Tensor]) -> float:
    """``Σ‖p‖²`` in float64.

    >>> squared_norm([torch.tensor([3.0]), torch.tensor([[4.0]])])
    25.0
    """
    local = sum(float(local_view(p.detach()).double().pow(2).sum()) for p in params)
    return float(reduce_sum(torch.tensor(local, dtype=torch.float64)))  # sharded: the shards' squares added


def parameter_norms(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
    """Frobenius norm of each named tensor (the per-layer order parameters).

    >>> parameter_norms([("w", torch.tensor([3.0, 4.0]))])
    {'w': 5.0}
    """
    return {name: math.sqrt(squared_norm([p])) for name, p in named}


def scaled_loss(params: Sequence[torch.Tensor], loss_fn: LossFn, scale: float) -> float:
    """The loss with ``params`` multiplied by ``scale`` (all other parameters unchanged)."""
    with swapped_values(params, [p.detach() * scale for p in params]):
        return evaluate(loss_fn)


def trivial_loss(params: Sequence[torch.Tensor], loss_fn: LossFn) -> float:
    """The loss of the collapsed model: ``params`` at zero, everything else as it is.

    >>> net = torch.nn.Linear(2, 1, bias=False)
    >>> x, y = torch.randn(16, 2), torch.randn(16, 1)
    >>> loss = lambda: ((net(x) - y) ** 2).mean()
    >>> abs(trivial_loss(list(net.parameters()), loss) - float((y ** 2).mean())) < 1e-6
    True
    """
    return scaled_loss(params, loss_fn, 0.0)


def collapse_ratio(loss: float, loss_trivial: float) -> float:
    """``(L_trivial − L) / L_trivial``: 1 for a perfect fit, 0 when collapsed, < 0 when worse than trivial.

    >>> collapse_ratio(0.25, 1.0)
    0.75
    """
    if loss_trivial == 0.0:
        return 0.0 if loss == 0.0 else float("-inf")
    return (loss_trivial - loss) / loss_trivial
