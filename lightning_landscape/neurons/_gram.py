"""Sign-aware squared distances between the rows of a matrix from one Gram matrix, with a rigorous
rounding bound, for exact nearest-pair and threshold searches.

``‖xᵢ − s·xⱼ‖² = nᵢ + nⱼ − 2s·Gᵢⱼ`` with ``G = X Xᵀ`` and ``nᵢ = ‖xᵢ‖²``: one matrix product gives the
distances of every pair for both signs (``s = ±1``), at the speed of a float32 GEMM over the upper
triangle — instead of a float64 ``cdist`` per sign. The formula cancels when two rows nearly coincide
(the pairs that matter most), so its values only *select*: for any summation order a float32 dot product
of length d is within ``γ_d·‖xᵢ‖‖xⱼ‖`` of the exact one (``γ_d = d·u/(1 − d·u)``, Higham, *Accuracy and
Stability of Numerical Algorithms*, §3.1), hence ``|D̂ᵢⱼ − Dᵢⱼ| ≤ κ·(nᵢ + nⱼ)`` with :func:`bound_factor`'s
``κ`` (which also covers rounding ``X`` to float32 and the two additions). Every pair the bound cannot
decide is recomputed directly in float64 as ``‖xᵢ − s·xⱼ‖`` — the brute-force formula — so the searches
built on this return exactly what an all-pairs float64 loop would.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

# entries of one block of the Gram matrix (rows × columns): bounds the temporaries to a few MiB
BLOCK_ENTRIES = 1 << 18
MIN_BLOCK_ROWS = 256  # thinner blocks make the products markedly slower


def _reduced_float32_matmul(device: torch.device) -> bool:
    """Whether float32 matrix products may run in TF32/bfloat16 on ``device`` (user settings)."""
    if torch.get_float32_matmul_precision() != "highest":
        return True
    if device.type == "cuda":
        matmul = torch.backends.cuda.matmul
        if getattr(matmul, "allow_tf32", False) or getattr(matmul, "fp32_precision", "ieee") not in ("ieee", "none"):
            return True
    else:
        mkldnn = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
        if getattr(mkldnn, "fp32_precision", "ieee") not in ("ieee", "none"):
            return True
    return False


def gram_dtype(device: torch.device) -> torch.dtype:
    """float32 (the bound covers rounding float64 rows to it), or float64 where the user let float32
    products run in TF32/bfloat16 (their rounding would make the bound useless)."""
    return torch.float64 if _reduced_float32_matmul(device) else torch.float32


def bound_factor(dim: int, dtype: torch.dtype) -> float:
    """``κ`` with ``|D̂ᵢⱼ − Dᵢⱼ| ≤ κ·(nᵢ + nⱼ)`` for the Gram route in ``dtype`` (twice the analysis, for margin).

    ``γ_d`` for the dot product (``2γ_d‖xᵢ‖‖xⱼ‖ ≤ γ_d(nᵢ + nⱼ)``), ``4u`` for rounding X to ``dtype``, ``8u``
    for rounding nᵢ, nⱼ and the two additions, and a float64 floor for the exact recomputation it is
    compared with.

    >>> bound_factor(100, torch.float32) > 100 * 2.0 ** -24
    True
    """
    u = 2.0**-24 if dtype == torch.float32 else 2.0**-53
    if dim * u >= 0.5:
        raise ValueError(f"rows of length {dim} are too long for a {dtype} Gram bound")
    gamma = dim * u / (1.0 - dim * u)
    return 2.0 * (gamma + 12.0 * u) + 1e-12


def upper_blocks(x: torch.Tensor, dtype: torch.dtype) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(start, rows, G)`` over the upper triangle: ``G = X[start:stop] X[start:]ᵀ`` in ``dtype``.

    Column ``c`` of a block is row ``start + c`` of X; entries at or below the diagonal are set to ``inf``
    by the caller's mask (:func:`strict_upper_mask`).
    """
    m = x.shape[0]
    xs = x.to(dtype)
    rows = max(1, min(m, max(MIN_BLOCK_ROWS, BLOCK_ENTRIES // max(m, 1))))
    for start in range(0, m, rows):
        stop = min(m, start + rows)
        yield start, torch.arange(start, stop, device=x.device), xs[start:stop] @ xs[start:].T


def strict_upper_mask(block_rows: int, block_cols: int, device: torch.device) -> torch.Tensor:
    """``[rows, cols]`` bool: True where column ``c`` (row ``start + c`` of X) is at or left of row ``r``'s diagonal."""
    r = torch.arange(block_rows, device=device)[:, None]
    c = torch.arange(block_cols, device=device)[None, :]
    return c <= r


def exact_distances(x64: torch.Tensor, i: torch.Tensor, j: torch.Tensor, sign: int, chunk_entries: int = 1 << 22
                    ) -> torch.Tensor:
    """``‖xᵢ − s·xⱼ‖`` in float64 for index vectors ``i, j`` (the brute-force formula on float64 copies of
    the rows, in chunks)."""
    out = torch.empty(i.numel(), dtype=torch.float64, device=x64.device)
    step = max(1, chunk_entries // max(x64.shape[1], 1))
    for a in range(0, i.numel(), step):
        ii, jj = i[a:a + step], j[a:a + step]
        out[a:a + step] = torch.linalg.vector_norm(x64[ii].double() - sign * x64[jj].double(), dim=1)
    return out
