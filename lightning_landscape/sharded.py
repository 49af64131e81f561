"""Parameters sharded across processes by FSDP2 (``fully_shard``): a flat view of this process's shards.

Under FSDP2 every parameter is a ``DTensor`` split along its first dimension over the data-parallel
processes. :class:`ShardedParameterSpace` makes every parameter-sized vector of the library a vector of
this process's shard only (the local pieces of the parameters, concatenated), so a measurement's memory
per process scales with the shard, not the model. Inner products of such vectors are partial sums; the
measurement runs inside :func:`~lightning_landscape.linalg.reduction.sharded_reduction` with
:meth:`ShardedParameterSpace.all_reduce_sum`, which adds them over the shard group.

Gradients come from ``loss.backward()`` through FSDP2's own hooks (its reduce-scatter averages them over
the processes): ``torch.autograd.grad`` with respect to the sharded parameters finds them unused in the
graph, because the forward pass runs on unsharded copies. The parameters' ``.grad`` fields are set aside
and put back, so the user's gradients are untouched.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from lightning_landscape.parameters import ParameterSpace


def _dtensor_class() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return None
    return DTensor


def is_sharded_tensor(t: Any) -> bool:
    """Whether ``t`` is a ``DTensor`` (a parameter sharded by FSDP2 or tensor parallelism)."""
    cls = _dtensor_class()
    return cls is not None and isinstance(t, cls)


def has_sharded_parameters(module: nn.Module) -> bool:
    """Whether ``module`` is sharded by FSDP2 (any ``fully_shard`` module, or any trainable ``DTensor``).

    The modules count too: after a forward pass without backward FSDP2 leaves the root's parameters
    gathered, as plain tensors.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        FSDPModule = ()  # type: ignore[assignment,misc]  # noqa: N806
    if FSDPModule and any(isinstance(m, FSDPModule) for m in module.modules()):
        return True
    return any(p.requires_grad and is_sharded_tensor(p) for p in module.parameters())


_AFTER_WRITE: ContextVar[Callable[[], None] | None] = ContextVar("lightning_landscape_after_write", default=None)


@contextlib.contextmanager
def writes_resync(callback: Callable[[], None] | None) -> Iterator[None]:
    """Within the block, :func:`after_write` calls ``callback`` (the sharded space's :meth:`reshard`)."""
    token = _AFTER_WRITE.set(callback)
    try:
        yield
    finally:
        _AFTER_WRITE.reset(token)


def after_write() -> None:
    """Call after writing parameter shards in place, before the next forward pass.

    FSDP2 keeps a module's gathered (unsharded) parameters after a forward pass when it does not reshard
    after forward (its default for the root module) or when no backward follows (a forward-only probe):
    the next forward would then run on the stale gathered copy, not on the shards just written. Resharding
    frees that copy, so the next forward gathers the new values (and training after the measurement
    gathers the restored ones).
    """
    callback = _AFTER_WRITE.get()
    if callback is not None:
        callback()


def local_view(t: torch.Tensor) -> torch.Tensor:
    """This process's piece of ``t`` (``t`` itself unless it is a ``DTensor``); writes to it write ``t``."""
    if is_sharded_tensor(t):
        return t._local_tensor  # the storage itself (``to_local()`` returns it too, but not under autograd)
    return t


class ShardedParameterSpace(ParameterSpace):
    """Flat vectors over this process's shards of FSDP2-sharded parameters.

    Every trainable parameter must be a ``DTensor`` sharded along dimension 0 over one 1-D device mesh
    (``fully_shard`` on the data-parallel mesh); anything else is refused with the reason. ``shapes``,
    ``numels`` and ``dim`` are those of the local shards; ``global_dim`` counts the whole model.

    Under FSDP2 (``fully_shard`` on a data-parallel mesh) ``from_module(model)`` gives the local view; any
    parameter left unsharded is refused with the reason:

    >>> ShardedParameterSpace.from_module(torch.nn.Linear(2, 1))
    Traceback (most recent call last):
    ...
    ValueError: parameter 'weight' is not sharded (not a DTensor): apply fully_shard to every module with parameters (or to the root module)
    """

    sharded = True

    def __init__(self, params: Sequence[torch.Tensor], names: Sequence[str] | None = None) -> None:
        super().__init__(params, names)
        meshes = set()
        for p, name in zip(self.params, self.names):
            if not is_sharded_tensor(p):
                raise ValueError(
                    f"parameter {name!r} is not sharded (not a DTensor): apply fully_shard to every module with "
                    "parameters (or to the root module)"
                )
            placements = tuple(p.placements)
            if p.device_mesh.ndim != 1 or any(type(pl).__name__ != "Shard" or pl.dim != 0 for pl in placements):
                raise ValueError(
                    f"parameter {name!r} has placements {placements} on a {p.device_mesh.ndim}-D mesh; only FSDP2 "
                    "sharding along dim 0 over one data-parallel mesh is supported (tensor_parallel_size=1, no HSDP)"
                )
            meshes.add(id(p.device_mesh))
        if len(meshes) != 1:
            raise ValueError("the parameters are sharded over different device meshes; one data-parallel mesh is supported")
        self.fsdp_modules: list[nn.Module] = []  # set by from_module: what reshard() acts on
        self.mesh = self.params[0].device_mesh
        self.group = self.mesh.get_group()
        self.rank = int(self.mesh.get_local_rank())
        self.num_shards = int(self.mesh.size())
        locals_ = [local_view(p) for p in self.params]
        self.global_shapes = [p.shape for p in self.params]
        self._global_dim = sum(p.numel() for p in self.params)
        self.shapes = [t.shape for t in locals_]
        self.numels = [t.numel() for t in locals_]
        self.dim = sum(self.numels)
        self.device = locals_[0].device

    @classmethod
    def from_module(cls, module: nn.Module, include: Any = None) -> "ShardedParameterSpace":
        try:
            from torch.distributed.fsdp import FSDPModule
        except ImportError:  # torch without FSDP2: nothing gathers parameters
            fsdp_modules: list[nn.Module] = []
        else:
            fsdp_modules = [m for m in module.modules() if isinstance(m, FSDPModule)]
        for m in fsdp_modules:  # a root left gathered (e.g. by a forward without backward) lists plain tensors
            m.reshard()
        space = super().from_module(module, include)
        space.fsdp_modules = fsdp_modules
        return space

    def reshard(self) -> None:
        """Free every gathered copy of the parameters (FSDP2 ``reshard``), so the next forward pass gathers
        the shards as they are now (see :func:`after_write`)."""
        for m in self.fsdp_modules:
            m.reshard()

    @property
    def global_dim(self) -> int:
        return self._global_dim

    def local_tensors(self) -> list[torch.Tensor]:
        return [local_view(p) for p in self.params]

    def flatten(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Concatenate per-parameter tensors (``DTensor`` → local shard, ``None`` → zeros) into one vector."""
        return super().flatten([None if t is None else local_view(t) for t in tensors])

    def all_reduce_sum(self, partial: torch.Tensor) -> torch.Tensor:
        """``partial`` summed over the shard group (a new tensor; every process gets the sum)."""
        import torch.distributed as dist

        out = partial.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out

    def gradient(self, loss: torch.Tensor) -> torch.Tensor:
        """The flat local shard of the gradient of ``loss``, averaged over the processes by FSDP2.

        Runs ``loss.backward()`` with every ``.grad`` set aside (FSDP2 would accumulate into it) and puts
        the user's gradients back afterwards, whatever happens.
        """
        saved = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        try:
            loss.backward()
            return self.flatten([None if p.grad is None else p.grad.detach() for p in self.params])
        finally:
            for p, g in zip(self.params, saved):
                p.grad = g

    def full_parameter(self, index: int) -> torch.Tensor:
        """Parameter ``index`` gathered whole on every process (a collective: call it on every rank)."""
        return self.params[index].detach().full_tensor()


def gathered(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached and, if it is a ``DTensor``, gathered whole (a collective: every process calls it).

    For the neuron probes, which read whole layers (rows of the input weights, columns of the output
    weights): one layer at a time, so a measurement holds one layer, never the model.
    """
    t = t.detach()
    return t.full_tensor() if is_sharded_tensor(t) else t
