"""A fixed, ordered list of parameters viewed as one flat vector."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn


class ParameterSpace:
    """Flatten / unflatten between a list of parameter tensors and one vector.

    The flat dtype is at least float32 (bf16/fp16 parameters get fp32 vectors) so that curvature maths
    keeps fp32 accuracy whatever the training precision.

    >>> layer = torch.nn.Linear(3, 2)
    >>> space = ParameterSpace.from_module(layer)
    >>> space.dim
    8
    >>> torch.equal(space.unflatten(space.flatten_params())[0], layer.weight.detach())
    True
    """

    def __init__(self, params: Sequence[torch.Tensor], names: Sequence[str] | None = None) -> None:
        if not params:
            raise ValueError("the model has no trainable parameters (none with requires_grad=True): nothing to measure")
        names = list(names) if names is not None else [f"param{i}" for i in range(len(params))]
        # One entry per tensor: a tied weight listed twice would count twice in every norm and product.
        seen: set[int] = set()
        kept = [(p, n) for p, n in zip(params, names) if not (id(p) in seen or seen.add(id(p)))]
        complex_names = [n for p, n in kept if p.is_complex()]
        if complex_names:
            raise ValueError(
                f"complex parameters are not supported ({complex_names}): the curvature of a real loss in "
                "complex parameters is not a real symmetric Hessian, so its eigenvalues, trace and density "
                "would be meaningless"
            )
        self.params = [p for p, _ in kept]
        self.names = [n for _, n in kept]
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dim = sum(self.numels)
        self.device = self.params[0].device
        self.dtype = torch.promote_types(self.params[0].dtype, torch.float32)

    #: Whether flat vectors hold this process's shard only (see ``ShardedParameterSpace``).
    sharded = False

    @property
    def global_dim(self) -> int:
        """Entries of the whole parameter vector (``dim`` unless sharded)."""
        return self.dim

    def local_tensors(self) -> list[torch.Tensor]:
        """The tensors a flat vector's pieces are written into, in place (the parameters themselves)."""
        return list(self.params)

    def gradient(self, loss: torch.Tensor) -> torch.Tensor:
        """The flat gradient of ``loss`` (``torch.autograd.grad``: no ``.grad`` field is touched)."""
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return self.flatten([None if g is None else g.detach() for g in grads])

    @classmethod
    def from_module(cls, module: nn.Module, include: Iterable[str] | None = None) -> "ParameterSpace":
        """All parameters of ``module`` that require grad (or only those named in ``include``)."""
        wanted = set(include) if include is not None else None
        named = [
            (n, p)
            for n, p in module.named_parameters()
            if p.requires_grad and (wanted is None or n in wanted)
        ]
        if wanted is not None and len(named) != len(wanted):
            missing = wanted - {n for n, _ in named}
            raise ValueError(f"unknown or frozen parameters: {sorted(missing)}")
        return cls([p for _, p in named], [n for n, _ in named])

    def flatten(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Concatenate per-parameter tensors (``None`` -> zeros) into one flat vector."""
        parts = [
            torch.zeros(n, dtype=self.dtype, device=self.device) if t is None else t.reshape(-1).to(self.dtype)
            for t, n in zip(tensors, self.numels)
        ]
        return torch.cat(parts)

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat vector into views shaped like the parameters (in the flat dtype)."""
        if vector.numel() != self.dim:
            raise ValueError(f"vector has {vector.numel()} entries, parameter space has {self.dim}")
        return [chunk.view(shape) for chunk, shape in zip(vector.split(self.numels), self.shapes)]

    def flatten_params(self) -> torch.Tensor:
        """The current parameter values as one detached flat vector (a copy)."""
        return self.flatten([p.detach() for p in self.params])

    def slices(self) -> dict[str, slice]:
        """Where each named parameter lives in the flat vector."""
        out, start = {}, 0
        for name, n in zip(self.names, self.numels):
            out[name] = slice(start, start + n)
            start += n
        return out
