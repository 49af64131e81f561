"""The Hessian of a loss as a matrix-free linear operator on the flat parameter vector.

The gradient graph (``create_graph=True``) is built once per measurement and every Hessian-vector
product differentiates it again with ``retain_graph=True``: one backward pass per HVP instead of a
fresh double backward. Only ``torch.autograd.grad`` is used, so ``.grad`` fields (and accumulated
gradients) are never touched.
"""

from __future__ import annotations

from typing import Callable

import torch

from lightning_landscape.parameters import ParameterSpace

Reduce = Callable[[torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


class HessianOperator:
    """``v -> H v`` for ``H = ∇² loss`` with respect to ``space.params``.

    ``reduce`` is applied to every gradient and HVP (under DDP: an all-reduce mean, so every rank sees
    the Hessian of the global probe batch). Parameters the loss does not depend on have zero rows.

    >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    >>> op = HessianOperator((w ** 3).sum(), ParameterSpace([w]))
    >>> op.matvec(torch.tensor([1.0, 0.0]))  # H = diag(6 w)
    tensor([6., 0.])
    """

    def __init__(self, loss: torch.Tensor, space: ParameterSpace, reduce: Reduce | None = None) -> None:
        if loss.ndim != 0:
            raise ValueError(f"the loss must be a scalar tensor, got shape {tuple(loss.shape)}")
        if not loss.requires_grad:
            raise ValueError("the loss does not depend on any trainable parameter (no grad_fn)")
        self.space = space
        self.reduce = reduce or _identity
        self.loss = loss.detach()
        grads = torch.autograd.grad(loss, space.params, create_graph=True, allow_unused=True)
        # Only gradient entries that themselves depend on the parameters take part in HVPs.
        self._live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self._grads = [grads[i] for i in self._live]
        self.gradient = self.reduce(space.flatten([None if g is None else g.detach() for g in grads]))
        self.num_matvecs = 0

    @property
    def dim(self) -> int:
        return self.space.dim

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """One Hessian-vector product (counted in ``num_matvecs``)."""
        self.num_matvecs += 1
        if not self._grads:
            return self.reduce(torch.zeros_like(vector))
        parts = self.space.unflatten(vector)
        live_params = [self.space.params[i] for i in self._live]
        outputs = [parts[i].to(self.space.params[i].dtype) for i in self._live]
        hv = torch.autograd.grad(
            self._grads, live_params, grad_outputs=outputs, retain_graph=True, allow_unused=True
        )
        full: list[torch.Tensor | None] = [None] * len(self.space.params)
        for i, h in zip(self._live, hv):
            full[i] = None if h is None else h.detach()
        return self.reduce(self.space.flatten(full))

    __call__ = matvec

    def release(self) -> None:
        """Drop the gradient graph (frees its memory)."""
        self._grads = []
        self._live = []
