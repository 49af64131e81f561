"""Random probe vectors drawn from a private generator (never the global RNG stream)."""

from __future__ import annotations

import torch


def rademacher(
    shape: int | tuple[int, ...],
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Entries +1/-1 with equal probability, from ``generator`` (on the generator's device).

    >>> g = torch.Generator().manual_seed(0)
    >>> v = rademacher(5, g)
    >>> sorted(set(v.tolist())) <= [-1.0, 1.0]
    True
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device)
    out = bits.to(dtype).mul_(2).sub_(1)
    return out if device is None else out.to(device)


def gaussian(
    shape: int | tuple[int, ...],
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard normal entries from ``generator``."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    out = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
    return out if device is None else out.to(device)
