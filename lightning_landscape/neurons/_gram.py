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

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

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


def row_norms64(x: torch.Tensor, chunk_entries: int = 1 << 17) -> torch.Tensor:
    """``‖xᵢ‖`` in float64 (float64 copies of row chunks: as ``vector_norm(x.double(), dim=1)``, bit for bit,
    several times faster on a wide layer than one float64 copy or an upcasting norm).

    >>> row_norms64(torch.tensor([[3.0, 4.0]])).tolist()
    [5.0]
    """
    step = max(1, chunk_entries // max(x[0].numel() if x.shape[0] else 1, 1))
    rows = x.reshape(x.shape[0], -1)
    if x.shape[0] == 0:
        return torch.empty(0, dtype=torch.float64, device=x.device)
    return torch.cat([torch.linalg.vector_norm(rows[a:a + step].double(), dim=1) for a in range(0, x.shape[0], step)])


def exact_distances(x64: torch.Tensor, i: torch.Tensor, j: torch.Tensor, sign: int | torch.Tensor,
                    chunk_entries: int = 1 << 17, divisors: torch.Tensor | None = None) -> torch.Tensor:
    """``‖xᵢ − s·xⱼ‖`` in float64 for index vectors ``i, j`` (the brute-force formula on float64 copies of
    the rows, in chunks small enough to stay in cache). ``sign``: ±1 or a tensor of signs per pair;
    ``divisors``: float64 per-row divisors (rows ``xᵢ/divᵢ``, computed in float64 as a caller would)."""
    out = torch.empty(i.numel(), dtype=torch.float64, device=x64.device)
    step = max(1, chunk_entries // max(x64.shape[1], 1))
    for a in range(0, i.numel(), step):
        ii, jj = i[a:a + step], j[a:a + step]
        xi, xj = x64[ii].double(), x64[jj].double()
        if divisors is not None:
            xi, xj = xi / divisors[ii, None], xj / divisors[jj, None]
        s = sign if isinstance(sign, int) else sign[a:a + step, None].to(torch.float64)
        out[a:a + step] = torch.linalg.vector_norm(xi - s * xj, dim=1)
    return out


# ---------------------------------------------------------------------------------------------------------
# Wide layers: a Gaussian sketch of the rows finds the candidates, the float64 formula verifies them.
#
# The exact Gram costs m²·d/2 multiply-adds (width 4096, fan-in 2049: ≈ 17·10⁹, several training steps of
# a 10 M-parameter MLP). Above EXACT_MAX_MACS the searches project the rows to SKETCH_DIM dimensions with a
# fixed Gaussian matrix S (entries N(0, 1/k), from a private generator: the same on every rank and every
# measurement) and search the sketched rows yᵢ = S·xᵢ, at m·d·k + m²·k/2 multiply-adds. For a fixed vector
# v, k·‖Sv‖²/‖v‖² is χ² with k degrees of freedom, so distances are preserved in ratio (not in absolute
# terms): near pairs stay near. The upper tail is what the searches need — a pair that must be found must
# not look far — and Chernoff's bound P(χ²_k ≥ z·k) ≤ (z·e^{1−z})^{k/2} gives the factor z that no pair
# exceeds except with probability SKETCH_FAILURE (union bound over every pair and sign). Every candidate
# is then measured with the brute-force float64 formula, so the values returned are exact; what the sketch
# can miss is a pair that is not markedly closer than the others (see ``certified_distance``).
# ---------------------------------------------------------------------------------------------------------

SKETCH_DIM = 64  # k: the sketched Gram costs m²·k/2, and k·‖Sv‖²/‖v‖² ~ χ²_k (relative spread √(2/k))
SKETCH_SEED = 0x5EED
SKETCH_FAILURE = 1e-12  # probability that any pair's sketched distance exceeds z times its own (union bound)
SKETCH_CANDIDATES = 256  # sketched-nearest pairs verified exactly (gathering their rows is the cost)
# Exact Gram up to this many multiply-adds: width 1024 up to fan-in 2670 (≈ 0.35 of the 3.9·10⁹ of a training
# step of a 10 M-parameter MLP at batch 64; thin Gram blocks and the selection run at about half the
# speed of training's products, so ≈ 0.7 step), width 2048 only up to fan-in 667.
EXACT_MAX_MACS = 1_400_000_000
SKETCH_BLOCK_ENTRIES = 1 << 17  # sketched-Gram block: rows × width entries (512 KiB of float32: in L2)


def use_sketch(m: int, d: int, exact: bool | None = None) -> bool:
    """Whether the pair searches sketch ``m`` rows of length ``d`` (``exact`` forces either way).

    Sketch when the exact Gram exceeds :data:`EXACT_MAX_MACS` multiply-adds and the sketch is at least
    4× shorter than the rows (otherwise it saves little and only loses certainty).

    >>> use_sketch(4096, 2049), use_sketch(1024, 2049), use_sketch(4096, 2049, exact=True)
    (True, False, False)
    """
    if exact is not None:
        return not exact
    return m * m * d / 2 > EXACT_MAX_MACS and d >= 4 * SKETCH_DIM


def chi2_growth(k: int, failure: float, pairs: float) -> float:
    """Smallest ``z ≥ 1`` with ``pairs · (z·e^{1−z})^{k/2} ≤ failure``: ``‖Sv‖² ≤ z·‖v‖²`` for every one of
    ``pairs`` fixed vectors except with probability ``failure`` (Chernoff bound on the χ²_k upper tail).

    >>> 2.0 < chi2_growth(64, 1e-12, 1e7) < 4.0
    True
    """
    target = math.log(failure / max(pairs, 1.0)) * 2.0 / k  # need log(z) + 1 − z ≤ target (< 0)
    lo, hi = 1.0, 2.0
    while math.log(hi) + 1.0 - hi > target:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if math.log(mid) + 1.0 - mid > target:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass
class Sketch:
    """Sketched rows ``y`` (``[m, k]`` in ``dtype``) of the reference rows ``xᵢ/divᵢ``, with their squared
    norms ``n`` (in ``dtype``), the reference rows' norms ``ref_norms`` (float64), and the bounds:
    ``‖yᵢ − S·refᵢ‖ ≤ eta·‖refᵢ‖`` (rounding of the projection), ``‖S·v‖² ≤ growth·‖v‖²`` for every pair
    difference ``v`` (with probability ≥ 1 − SKETCH_FAILURE), and ``kappa`` the Gram bound in ``k`` dims."""

    y: torch.Tensor
    n: torch.Tensor
    ref_norms: torch.Tensor
    eta: float
    growth: float
    kappa: float

    def upper(self, dist2: torch.Tensor | float, norm_sum: torch.Tensor | float, n_sum: torch.Tensor | float
              ) -> torch.Tensor | float:
        """Largest sketched squared distance ``D̂`` a pair with exact ``D = dist2`` can show, given
        ``‖refᵢ‖ + ‖refⱼ‖ ≤ norm_sum`` and ``n̂ᵢ + n̂ⱼ ≤ n_sum``."""
        if isinstance(dist2, torch.Tensor):
            root = (self.growth * dist2).sqrt()
        else:
            root = math.sqrt(self.growth * dist2)
        return (root + self.eta * norm_sum) ** 2 + self.kappa * n_sum


def sketch_rows(x: torch.Tensor, divisors: torch.Tensor | None = None, signs: int = 1, dim: int | None = None
                ) -> Sketch:
    """Sketch the rows ``x[i] / divisors[i]`` (``divisors`` default 1) with the fixed Gaussian matrix.

    ``signs`` (1 or 2) only enters the union bound: the number of pair differences that must obey it.

    >>> s = sketch_rows(torch.randn(10, 300))
    >>> tuple(s.y.shape), s.growth > 1
    ((10, 64), True)
    """
    k = SKETCH_DIM if dim is None else dim
    m, d = x.shape
    dtype = gram_dtype(x.device)
    gen = torch.Generator().manual_seed(SKETCH_SEED)  # private: never the global RNG; CPU: same on every device
    s = (torch.randn(d, k, generator=gen, dtype=torch.float64) / math.sqrt(k)).to(dtype)
    s_dev = s.to(x.device)
    y = torch.cat([x[a:a + 256].to(dtype) @ s_dev for a in range(0, m, 256)])  # row chunks: cache-friendly
    # only the bounds use these: the working precision (within γ_d, relative) rounded up by 1e-3 is enough
    # (an upcast float64 norm of a wide layer costs as much as the whole sketch)
    wide = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32  # half precision: accumulate wider
    ref_norms = (torch.linalg.vector_norm(x, dim=1) if wide == x.dtype else
                 torch.linalg.vector_norm(x, dim=1, dtype=wide)).double() * (1.0 + 1e-3)
    u = 2.0**-24 if dtype == torch.float32 else 2.0**-53
    if divisors is not None:
        div = divisors.to(device=x.device, dtype=torch.float64).clamp_min(1e-300)
        y = y / div.to(dtype)[:, None]
        ref_norms = ref_norms / div
    if d * u >= 0.5:
        raise ValueError(f"rows of length {d} are too long for a {dtype} sketch")
    gamma = d * u / (1.0 - d * u)
    # |fl(S·x) − S·x|ₗ ≤ γ_d·Σ|Sₗₘ||xₘ| ≤ γ_d‖Sₗ‖‖x‖ → ‖error‖ ≤ γ_d‖S‖_F‖x‖; + rounding x and the division;
    # twice the analysis for margin
    eta = 2.0 * (gamma + 4.0 * u) * float(torch.linalg.vector_norm(s.double()))
    growth = chi2_growth(k, SKETCH_FAILURE, signs * m * (m - 1) / 2)
    n = y.pow(2).sum(1)
    return Sketch(y, n, ref_norms, eta, growth, bound_factor(k + 1, dtype))  # k + 1: the folded norm column


def sketch_blocks(sk: Sketch, fold_norms: bool = False) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(start, G, below)`` over the upper triangle of the sketched Gram: ``G = Y[start:stop] Y[start:]ᵀ`` and
    ``below`` the mask of ``G[:, :rows]`` at or below the diagonal (the caller fills it). ``fold_norms``:
    ``G − n̂ⱼ/2`` straight from the product, with a column of ones against a column of ``−n̂ⱼ/2`` (one pass
    fewer; the rounding of one more term is in ``kappa``, computed for k + 1 terms)."""
    m = sk.y.shape[0]
    rows = max(1, min(m, max(16, SKETCH_BLOCK_ENTRIES // max(m, 1))))
    masks: dict[int, torch.Tensor] = {}
    if fold_norms:
        left = torch.cat([sk.y, torch.ones_like(sk.n)[:, None]], 1)
        right = torch.cat([sk.y, -sk.n[:, None] / 2.0], 1)
    else:
        left = right = sk.y
    for start in range(0, m, rows):
        stop = min(m, start + rows)
        r = stop - start
        if r not in masks:
            masks[r] = strict_upper_mask(r, r, sk.y.device)
        yield start, left[start:stop] @ right[start:].T, masks[r]


def sketch_hits(sk: Sketch, odd: bool, limit: Callable[[int, int], torch.Tensor | float | None]
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per Gram block, ``(pairs [h, 2], D̂ [h])`` of the pairs ``i < j`` with sketched ``D̂ ≤ limit(start, stop)``
    (per row of the block, or one number; ``None``: every pair). ``odd``: ``D̂ = min_s`` over both signs.

    The fewest passes over each block: abs (odd), subtract, a row maximum, then compare and nonzero on the
    rows that have a hit, with ``D̂ ≤ r`` written as ``s·Ĝᵢⱼ − n̂ⱼ/2 ≥ (n̂ᵢ − r)/2`` (the halving is exact).
    """
    half = sk.n / 2.0
    for start, g, below in sketch_blocks(sk, fold_norms=not odd):
        rows = g.shape[0]
        if odd:
            g.abs_()
            g.sub_(half[None, start:])
        g[:, :rows].masked_fill_(below, -math.inf)  # never selected (and ignored by amax)
        h = g
        n_rows = sk.n[start:start + rows]
        r = limit(start, start + rows)
        if r is None:
            hit = (h > -math.inf).nonzero()
        else:
            t = (n_rows - r) / 2.0 if isinstance(r, torch.Tensor) else (n_rows - float(r)) / 2.0
            live = (h.amax(1) >= t).nonzero().flatten()  # rows with a hit: few once the limit is tight
            if live.numel() == 0:
                continue
            hit = (h[live] >= t[live, None]).nonzero()
            hit[:, 0] = live[hit[:, 0]]
        if hit.numel():
            approx = n_rows[hit[:, 0]] - 2.0 * h[hit[:, 0], hit[:, 1]]
            hit[:, 0] += start
            hit[:, 1] += start
            yield hit, approx


@dataclass
class SketchCandidates:
    """Pairs ``(i, j, s)`` (index tensors) selected on the sketch, and ``floor``: every pair *not* selected
    has a sketched squared distance ``≥ floor`` (``inf`` when every pair was selected)."""

    i: torch.Tensor
    j: torch.Tensor
    s: torch.Tensor
    floor: float


def sketch_nearest(sk: Sketch, symmetry: str, count: int) -> SketchCandidates:
    """The ``count`` pairs (with their sign) of smallest sketched ``D̂ = n̂ᵢ + n̂ⱼ − 2s·Ĝᵢⱼ``, by a running
    threshold over the Gram blocks and partial sorts (``topk``) of the short list it keeps.

    For ``"odd"`` one pass serves both signs: ``min_s D̂ = n̂ᵢ + n̂ⱼ − 2|Ĝᵢⱼ|`` with ``s = sign Ĝᵢⱼ``; the
    other sign (``D̂ + 4|Ĝᵢⱼ|``) is added where it is below the final threshold too.
    """
    odd = symmetry == "odd"
    dev = sk.y.device
    tau = math.inf
    vals: list[torch.Tensor] = []
    idx: list[torch.Tensor] = []
    kept = 0

    def prune() -> None:
        nonlocal tau, kept, vals, idx
        v, ij = torch.cat(vals), torch.cat(idx)
        if v.numel() >= count:
            top = torch.topk(v, count, largest=False)
            v, ij = top.values, ij[top.indices]
            tau = float(v.max())
        vals, idx, kept = [v], [ij], v.numel()

    for hit, approx in sketch_hits(sk, odd, lambda start, stop: tau if math.isfinite(tau) else None):
        vals.append(approx)
        idx.append(hit)
        kept += hit.shape[0]
        if kept >= 4 * count or (not math.isfinite(tau) and kept >= count):
            prune()
    if not vals:
        empty = torch.empty(0, dtype=torch.long, device=dev)
        return SketchCandidates(empty, empty, empty, math.inf)
    prune()
    ij = idx[0]
    i, j = ij[:, 0], ij[:, 1]
    floor = tau  # every pair dropped on the way had D̂ above the threshold of its time, hence ≥ tau
    if not odd:
        return SketchCandidates(i, j, torch.ones_like(i), floor)
    g = (sk.y[i] * sk.y[j]).sum(1)  # the Gram entries of the selected pairs (same rounding class)
    s = torch.where(g >= 0, 1, -1).to(torch.long)
    other = sk.n[i] + sk.n[j] + 2.0 * g.abs() <= tau  # the other sign as near as the threshold: rare
    i = torch.cat([i, i[other]])
    j = torch.cat([j, j[other]])
    s = torch.cat([s, -s[other]])
    return SketchCandidates(i, j, s, floor)


def sketch_within(sk: Sketch, odd: bool, reach: torch.Tensor, max_pairs: int | None = None
                  ) -> SketchCandidates | None:
    """Pairs ``(i, j, s)`` with sketched ``D̂ ≤ min(reachᵢ, reachⱼ)`` (``reach`` per row, in the Gram's dtype);
    for ``odd``, each sign whose ``D̂`` is within reach. ``None`` once more than ``max_pairs`` are found (a
    reach near the typical distance: measuring them all would cost more than the exact Gram)."""
    found_i, found_j, found_v = [], [], []
    total = 0
    for hit, approx in sketch_hits(sk, odd, lambda start, stop: reach[start:stop]):
        ok = approx <= reach[hit[:, 1]]
        found_i.append(hit[ok, 0])
        found_j.append(hit[ok, 1])
        found_v.append(approx[ok])
        total += int(ok.sum())
        if max_pairs is not None and total > max_pairs:
            return None
    dev = sk.y.device
    if not found_i:
        empty = torch.empty(0, dtype=torch.long, device=dev)
        return SketchCandidates(empty, empty, empty, math.inf)
    i, j = torch.cat(found_i), torch.cat(found_j)
    if not odd:
        return SketchCandidates(i, j, torch.ones_like(i), math.inf)
    g = (sk.y[i] * sk.y[j]).sum(1)
    s = torch.where(g >= 0, 1, -1).to(torch.long)
    other = sk.n[i] + sk.n[j] + 2.0 * g.abs() <= torch.minimum(reach[i], reach[j])
    return SketchCandidates(torch.cat([i, i[other]]), torch.cat([j, j[other]]), torch.cat([s, -s[other]]), math.inf)


def certified_distance(sk: Sketch, floor: float) -> float:
    """Squared distance ``D*`` such that every pair with exact ``D ≤ D*`` is among candidates whose
    non-selected pairs all have sketched distance ``≥ floor`` (with probability ≥ 1 − SKETCH_FAILURE).

    Solves ``upper(D*, 2·max‖ref‖, 2·max n̂) = floor`` (0 when nothing is certain; inf for floor = inf).
    """
    if not math.isfinite(floor):
        return math.inf
    if sk.n.numel() == 0:
        return math.inf
    n_max = float(sk.n.max())
    r_max = float(sk.ref_norms.max())
    room = floor * (1.0 - 1e-6) - sk.kappa * 2.0 * n_max  # the floor itself is a rounded value
    if room <= 0:
        return 0.0
    root = math.sqrt(room) - sk.eta * 2.0 * r_max
    return root * root / sk.growth if root > 0 else 0.0
