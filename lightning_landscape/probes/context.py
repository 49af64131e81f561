"""Everything a probe may use at one measurement, built lazily and shared between probes."""

from __future__ import annotations

import zlib
from typing import Any, Callable

import torch
from torch import nn

from lightning_landscape.hessian import (
    ChunkedHessianOperator,
    FiniteDifferenceHessianOperator,
    HessianOperator,
    LossChunk,
    Reduce,
)
from lightning_landscape.linalg.reduction import reduce_sum
from lightning_landscape.optim_info import OptimizerInfo
from lightning_landscape.parameters import ParameterSpace
from lightning_landscape.probes.shared import SharedValues, SharedView
from lightning_landscape.sharded import after_write

LossClosure = Callable[[], torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """The probe-batch loss or gradient is NaN/Inf: curvature probes are skipped."""


class ProbeContext:
    """The module, its loss on the probe batch, and a Hessian operator built on first use.

    All probes that run at the same step share one gradient graph (or, given ``loss_chunks`` —
    ``(weight, closure)`` pieces of the loss — a :class:`ChunkedHessianOperator` that keeps none). Random vectors come from
    :meth:`generator`, seeded from ``(seed, step, name)``, so every DDP rank draws the same vectors and
    the global RNG streams are never touched. What one probe measured for later ones goes in the typed
    :attr:`shared` (:class:`~lightning_landscape.probes.shared.SharedValues`).

    >>> net = torch.nn.Linear(3, 1)
    >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
    >>> ctx = ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=1)
    >>> ctx.hessian().dim
    4
    """

    def __init__(
        self,
        module: nn.Module,
        loss_closure: LossClosure,
        step: int,
        space: ParameterSpace | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        optimizer_info: OptimizerInfo | None = None,
        reduce_mean: Reduce | None = None,
        seed: int = 0,
        epoch: int = 0,
        batch: Any = None,
        loss_chunks: list[LossChunk] | None = None,
    ) -> None:
        self.module = module
        self.loss_closure = loss_closure
        self.step = step
        self.epoch = epoch
        self.space = space or ParameterSpace.from_module(module)
        self.optimizer = optimizer
        self.optimizer_info = optimizer_info
        self.reduce_mean = reduce_mean or (lambda t: t)
        self.seed = seed
        self.batch = batch
        self.shared = SharedValues()  # what one probe publishes for later ones (λmax, its Ritz vector, ...)
        # Memory-light mode: (weight, closure) pieces of the loss; the Hessian then keeps no graph.
        self.loss_chunks = loss_chunks
        self._operator: HessianOperator | ChunkedHessianOperator | None = None
        self._operator_versions: tuple[int, ...] = ()
        self._spent = 0  # HVPs of operators rebuilt during this measurement
        self._errors: list[float | None] = []  # finite-difference error estimates of rebuilt operators
        self._loss: float | None = None

    @property
    def extras(self) -> SharedView:
        """The published :attr:`shared` fields as a mapping by field name."""
        return SharedView(self.shared)

    def generator(self, name: str) -> torch.Generator:
        """A private generator on the parameters' device, identical on every rank.

        With sharded parameters each process draws the entries of its own shard, so the seed also
        depends on the shard (one seed everywhere would repeat one pattern in every shard: correlated
        entries, a biased trace estimate).
        """
        g = torch.Generator(device=self.space.device)
        shard = getattr(self.space, "rank", 0) if self.space.sharded else 0
        g.manual_seed((self.seed * 1_000_003 + self.step * 7919 + zlib.crc32(name.encode()) + 104_729 * shard) % (2**63))
        return g

    def evaluate_loss(self) -> torch.Tensor:
        """The probe-batch loss (a fresh forward pass).

        With grad enabled it is this rank's loss with its graph (differentiate it, then reduce the
        gradients — or use :meth:`gradient` / :meth:`hessian`). Under ``torch.no_grad()`` the value is
        already averaged over DDP ranks, so forward-only probes (loss along a ray, random walks) see the
        loss of the global probe batch and take the same decisions on every rank.
        """
        loss = self.loss_closure()
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise TypeError(f"the loss closure must return a scalar tensor, got {loss!r}")
        if not torch.is_grad_enabled() or not loss.requires_grad:
            # FSDP2: a forward pass without backward leaves the root's gathered parameters registered on
            # the module (``module.parameters()`` would list them); put the shards back.
            after_write()
            return self.reduce_mean(loss.detach())
        return loss

    def gradient(self, fresh: bool = False) -> torch.Tensor:
        """The flat gradient of the probe-batch loss, averaged over ranks.

        Shared with :meth:`hessian` unless ``fresh``: a fresh forward pass lets a caller that seeds the
        RNG (one dropout mask for all of its loss evaluations) get the gradient under the same mask.
        """
        if self._operator is not None and not fresh:
            return self._operator.gradient
        loss = self.evaluate_loss()
        if self.space.sharded:  # FSDP2's reduce-scatter already averaged it over the processes
            return self.space.gradient(loss)
        return self.reduce_mean(self.space.gradient(loss))

    def loss(self) -> float:
        """The probe-batch loss as a float (reduced across ranks), computed at most once."""
        if self._loss is None:
            if self._operator is not None:
                self._loss = float(self._operator.loss)
            else:
                with torch.no_grad():
                    self._loss = float(self.reduce_mean(self.evaluate_loss().detach().float()))
        return self._loss

    def _parameter_versions(self) -> tuple[int, ...]:
        return tuple(t._version for t in self.space.local_tensors())

    def hessian(self) -> HessianOperator | ChunkedHessianOperator | FiniteDifferenceHessianOperator:
        """The shared Hessian operator; raises :class:`NonFiniteLossError` on a NaN/Inf loss or gradient.

        A probe that moved the weights and restored them (in place) invalidates the saved graph, so the
        operator is rebuilt when any parameter's version counter changed since it was built. Sharded
        parameters (FSDP2) get the :class:`FiniteDifferenceHessianOperator`, which keeps no graph (its own
        products move and restore the weights; it records the versions they leave).
        """
        if self._operator is not None and getattr(self._operator, "versions", self._operator_versions) \
                != self._parameter_versions():
            self._spent += self._operator.num_matvecs
            self._errors.append(getattr(self._operator, "error_estimate", None))
            self._operator.release()
            self._operator = None
        if self._operator is None:
            if self.space.sharded:
                op = FiniteDifferenceHessianOperator(self.loss_closure, self.space)
            elif self.loss_chunks:
                op = ChunkedHessianOperator(self.loss_chunks, self.space, self.reduce_mean, seed=self.seed)
            else:
                op = HessianOperator(self.evaluate_loss(), self.space, self.reduce_mean)
            reduced = self.reduce_mean(op.loss.detach().float())
            if not torch.isfinite(reduced):
                raise NonFiniteLossError(f"probe-batch loss is {float(reduced)}")
            op.loss = reduced
            # Counted over every shard: one process must not stop while the others go on into a collective.
            if float(reduce_sum((~torch.isfinite(op.gradient)).sum().to(op.gradient.dtype))) > 0:
                raise NonFiniteLossError("probe-batch gradient has NaN/Inf entries")
            self._operator = op
            self._operator_versions = self._parameter_versions()
            self._loss = float(reduced)
        return self._operator

    @property
    def hvp_error(self) -> float | None:
        """The largest relative error estimate of a finite-difference Hessian-vector product at this
        measurement (sharded parameters); ``None`` when the products were exact (double backward)."""
        found = [e for e in [*self._errors, getattr(self._operator, "error_estimate", None)] if e is not None]
        return max(found) if found else None

    @property
    def num_matvecs(self) -> int:
        return self._spent + (0 if self._operator is None else self._operator.num_matvecs)

    def release(self) -> None:
        if self._operator is not None:
            self._operator.release()
