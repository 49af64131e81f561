"""Float64 inner products of parameter-sized vectors without float64 copies of them."""

from __future__ import annotations

import torch

from lightning_landscape.linalg.reduction import reduce_sum

#: Entries converted to float64 at a time (2 × 512 KiB of temporaries, whatever the vectors' size).
CHUNK = 1 << 16


def dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    """``aᵀb`` with float64 products and sums, converting ``CHUNK`` entries at a time.

    ``torch.dot(a.double(), b.double())`` would hold two float64 copies: four float32 parameter-sized
    vectors, more than a whole Krylov basis row.

    >>> dot64(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0]))
    32.0
    """
    a, b = a.reshape(-1), b.reshape(-1)
    if a.numel() != b.numel():
        raise ValueError(f"vectors of {a.numel()} and {b.numel()} entries")
    if a.numel() <= CHUNK or (a.dtype == torch.float64 and b.dtype == torch.float64):
        return float(reduce_sum(torch.dot(a.double(), b.double())))
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for start in range(0, a.numel(), CHUNK):  # one host sync at the end, not one per chunk
        total += torch.dot(a[start:start + CHUNK].double(), b[start:start + CHUNK].double())
    return float(reduce_sum(total))  # sharded vectors: the shards' partial sums added
