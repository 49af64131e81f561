"""Inner products of vectors that may be sharded across processes.

Every estimator in :mod:`lightning_landscape.linalg` (and every probe) takes its dot products and norms
from here. On one process (or under DDP, where every rank holds the whole vector) they are the plain
``torch`` reductions. Inside :func:`sharded_reduction` each process holds only its shard of every
parameter-sized vector (FSDP2: the local pieces of the DTensor parameters, concatenated), and the partial
sums are added over the shard group with the all-reduce given there: the result is the inner product of
the whole vectors, identical on every rank, while no rank ever holds more than its shard.

The setting is a :class:`contextvars.ContextVar`, so it is scoped to one measurement (and one thread).

>>> a, b = torch.tensor([3.0, 4.0]), torch.tensor([1.0, 1.0])
>>> float(dot(a, b)), float(norm(a))
(7.0, 5.0)
>>> with sharded_reduction(lambda t: 2 * t, local_dim=2, global_dim=4):  # two equal shards, for the example
...     float(dot(a, b)), round(float(norm(a)), 4), global_dim(2)
(14.0, 7.0711, 4)
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Callable, Iterator

import torch

AllReduceSum = Callable[[torch.Tensor], torch.Tensor]

_ALL_REDUCE: ContextVar[AllReduceSum | None] = ContextVar("lightning_landscape_all_reduce", default=None)
_DIMS: ContextVar[tuple[int, int] | None] = ContextVar("lightning_landscape_shard_dims", default=None)


@contextlib.contextmanager
def sharded_reduction(
    all_reduce_sum: AllReduceSum | None, local_dim: int | None = None, global_dim: int | None = None
) -> Iterator[None]:
    """Within the block, every reduction here sums its partial result over shards with ``all_reduce_sum``
    (``None``: unsharded, the plain reductions). A shard of ``local_dim`` entries stands for a whole
    vector of ``global_dim`` (see :func:`global_dim`)."""
    token = _ALL_REDUCE.set(all_reduce_sum)
    dims = _DIMS.set(None if all_reduce_sum is None or local_dim is None or global_dim is None
                     else (int(local_dim), int(global_dim)))
    try:
        yield
    finally:
        _DIMS.reset(dims)
        _ALL_REDUCE.reset(token)


def global_dim(local: int) -> int:
    """The length of the whole vector whose shard here has ``local`` entries (``local`` when unsharded).

    Counts that bound Krylov runs or scale traces (``dim`` steps at most, ``tr = dim·E[...]``) are of the
    whole vector: every rank must take the same number of steps, whatever the size of its shard.
    """
    dims = _DIMS.get()
    if dims is None or _ALL_REDUCE.get() is None:
        return local
    if local != dims[0]:
        raise ValueError(f"a shard of {local} entries is not a parameter-space shard ({dims[0]} entries here)")
    return dims[1]


def is_sharded() -> bool:
    """Whether vectors are shards of larger ones (inside :func:`sharded_reduction` with a reduction)."""
    return _ALL_REDUCE.get() is not None


def reduce_sum(partial: torch.Tensor) -> torch.Tensor:
    """``partial`` summed over the shards (itself when unsharded): for sums of per-entry terms."""
    fn = _ALL_REDUCE.get()
    return partial if fn is None else fn(partial)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``aᵀb`` of two flat vectors (a 0-d tensor on their device)."""
    return reduce_sum(torch.dot(a, b))


def sq_norm(v: torch.Tensor) -> torch.Tensor:
    """``|v|²`` of a flat vector."""
    return reduce_sum(torch.dot(v, v))


def norm(v: torch.Tensor) -> torch.Tensor:
    """``|v|`` of a flat vector (``torch.linalg.vector_norm`` when unsharded: it scales against overflow)."""
    if _ALL_REDUCE.get() is None:
        return torch.linalg.vector_norm(v)
    return sq_norm(v).sqrt()


def row_dots(rows: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``rows @ v`` for a ``(k, dim)`` block of flat vectors: ``k`` inner products, one reduction."""
    return reduce_sum(rows @ v)


def row_norms(rows: torch.Tensor) -> torch.Tensor:
    """The norm of every row of a ``(k, dim)`` block of flat vectors, shape ``(k, 1)``."""
    if _ALL_REDUCE.get() is None:
        return torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    return reduce_sum((rows * rows).sum(dim=1, keepdim=True)).sqrt()
