"""Effective width of a neuron layer, and the saddle-branch / saddle indicators (Zhang, Zhang & Luo).

Neuron i contributes ``aᵢ hᵢ(x)`` to the next layer (``hᵢ`` its activation, ``aᵢ`` its output
weights); its size is ``cᵢ = ‖aᵢ‖ · rms(hᵢ)`` on the probe batch, compared with the size ``S`` of the
whole layer's contribution (rms of the next layer's output minus its bias). The effective width is
the number of neurons left after

1. removing units with ``cᵢ ≤ contribution_tol · S`` (dead ReLUs, zero output weights);
2. merging units whose input weights coincide modulo the activation's symmetry (sign for odd σ,
   positive scale for ReLU-like σ): i and j merge when the function error of the merge,
   ``≈ dᵢⱼ · max(cᵢ, cⱼ)`` with ``dᵢⱼ`` the relative input-weight distance, is ``≤ merge_tol · S``
   (so a pair deep in a channel to infinity — tiny ``dᵢⱼ`` but huge ``cᵢ`` — is *not* merged: it is a
   gated linear unit, not one neuron);
3. removing merged groups whose combined output ``‖Σ sₖ λₖ aₖ‖ rms(h)`` is negligible.

``effective width < width`` means the current function is that of a narrower network, so the critical
set through a nearby critical point contains saddle branches.

Example (neuron 2 duplicates neuron 0; neuron 3 has zero output weights):
    >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    >>> a = torch.tensor([[1.0], [2.0], [-3.0], [0.0]])
    >>> effective_width(w, a, torch.ones(4), out_scale=1.0, symmetry="none").effective_width
    2
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from lightning_landscape.neurons import _gram
from lightning_landscape.neurons._gram import (
    bound_factor,
    exact_distances,
    gram_dtype,
    row_norms64,
    strict_upper_mask,
    upper_blocks,
)
from lightning_landscape.neurons.hidden import capture_hidden
from lightning_landscape.neurons.layers import NeuronLayer


@dataclass
class WidthReport:
    """``width``, ``effective_width``, negligible units, and merged groups (each ``[(unit, factor)]``)."""

    width: int
    effective_width: int
    negligible: list[int] = field(default_factory=list)
    groups: list[list[tuple[int, float]]] = field(default_factory=list)  # only groups of 2+ units


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def merge_pairs(ref: torch.Tensor, c: torch.Tensor, wn: torch.Tensor, threshold: float, symmetry: str,
                exact: bool | None = None) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, whose merge error ``dᵢⱼ·max(cᵢ, cⱼ)`` is ``≤ threshold`` (float64 rows ``ref``).

    ``dᵢⱼ = ‖refᵢ − s·refⱼ‖`` (directions for ``"homogeneous"``), divided by ``max(‖wᵢ‖, ‖wⱼ‖)`` otherwise,
    for ``s = 1`` and, with ``"odd"``, ``s = −1``. One float32 Gram matrix per block of rows decides every
    pair its rounding bound (:mod:`~lightning_landscape.neurons._gram`) can decide; the rest are measured
    exactly, so the result is that of an all-pairs float64 loop. Wide layers (``exact=None``: exact Gram
    above :data:`~lightning_landscape.neurons._gram.EXACT_MAX_MACS` multiply-adds; ``exact=False`` forces it)
    select the pairs on a Gaussian sketch of the rows instead, with a margin that no pair within the
    threshold exceeds except with probability :data:`~lightning_landscape.neurons._gram.SKETCH_FAILURE`.

    >>> ref = torch.tensor([[1.0, 0.0], [1.0, 1e-6], [0.0, 1.0]], dtype=torch.float64)
    >>> merge_pairs(ref, torch.ones(3, dtype=torch.float64), ref.norm(dim=1), 1e-3, "none")
    [(0, 1)]
    """
    return _merge_pairs(ref, None, c, wn, threshold, symmetry, exact)


def _merge_pairs(x: torch.Tensor, divisors: torch.Tensor | None, c: torch.Tensor, wn: torch.Tensor, threshold: float,
                 symmetry: str, exact: bool | None) -> list[tuple[int, int]]:
    """:func:`merge_pairs` on the rows ``refᵢ = xᵢ/divisorsᵢ`` (float64 per row; ``None``: ``ref = x``)."""
    m = x.shape[0]
    if m < 2:
        return []
    homogeneous = symmetry == "homogeneous"
    scale = torch.ones(m, dtype=torch.float64, device=x.device) if homogeneous else wn.double().clamp_min(1e-300)
    c64 = c.double()
    signs = (1, -1) if symmetry == "odd" else (1,)
    if _gram.use_sketch(m, x[0].numel(), exact):
        sk = _gram.sketch_rows(x.reshape(m, -1), divisors, signs=len(signs))
        # A merge needs D ≤ (threshold·max(sᵢ, sⱼ)/max(cᵢ, cⱼ))² ≤ Rᵢ = (threshold·max s/cᵢ)², and the sketch shows
        # such a pair at D̂ ≤ upper(Rᵢ, ‖refᵢ‖ + max‖ref‖, n̂ᵢ + max n̂): beyond the row's or the column's reach
        # it cannot merge (but with probability SKETCH_FAILURE).
        big = (threshold * float(scale.max()) / c64).pow(2)
        reach = sk.upper(big, sk.ref_norms + float(sk.ref_norms.max()), sk.n.double() + float(sk.n.max()))
        # more than 8m candidates (a merge tolerance near the typical distance): the exact Gram is cheaper
        cand = _gram.sketch_within(sk, symmetry == "odd", (reach * (1 + 1e-6)).to(sk.y.dtype), max_pairs=8 * m)
        if cand is not None:
            i, j = cand.i, cand.j
            dist = exact_distances(x.reshape(m, -1), i, j, cand.s, divisors=divisors)  # the brute-force formula
            if not homogeneous:
                dist = dist / torch.maximum(scale[i], scale[j])
            ok = dist * torch.maximum(c64[i], c64[j]) <= threshold
            return sorted(set(zip(i[ok].tolist(), j[ok].tolist())))
    x64 = x.double() if divisors is None else x.double() / divisors.double()[:, None]
    norms = x64.pow(2).sum(1)
    dtype = gram_dtype(x64.device)
    kappa = bound_factor(x64.shape[1], dtype)
    # A merge needs D ≤ (threshold·max(‖wᵢ‖, ‖wⱼ‖)/max(cᵢ, cⱼ))² ≤ rᵢ = (threshold·max‖w‖/cᵢ)², and the Gram
    # value is within κ(nᵢ + nⱼ) of D: pairs above the row's and the column's bound cannot merge.
    reach = (threshold * float(scale.max()) / c64).pow(2) + kappa * (norms + float(norms.max()))
    reach = (reach * (1 + 1e-6)).to(dtype)  # rounding the bound itself to the Gram's precision
    n = norms.to(dtype)
    out: list[tuple[int, int]] = []
    for start, rows, gram in upper_blocks(x64, dtype):
        below = strict_upper_mask(gram.shape[0], gram.shape[1], gram.device)
        for sign in signs:
            approx = gram.mul(-2.0 * sign).add_(n[rows, None]).add_(n[None, start:])
            near = (approx <= reach[rows, None]) & (approx <= reach[None, start:]) & ~below
            if not bool(near.any()):
                continue
            pos = near.nonzero()
            i, j = pos[:, 0] + start, pos[:, 1] + start
            dist = exact_distances(x64, i, j, sign)  # the brute-force formula decides
            if not homogeneous:
                dist = dist / torch.maximum(scale[i], scale[j])
            ok = dist * torch.maximum(c64[i], c64[j]) <= threshold
            out.extend(zip(i[ok].tolist(), j[ok].tolist()))
    return sorted(set(out))


def effective_width(
    w: torch.Tensor,
    a: torch.Tensor,
    h_rms: torch.Tensor,
    out_scale: float,
    symmetry: str,
    contribution_tol: float = 1e-3,
    merge_tol: float = 1e-3,
    chunk: int = 1024,
    exact: bool | None = None,
) -> WidthReport:
    """Effective width from input weights ``w [m, d]``, output weights ``a [m, k]``, per-neuron activation
    rms ``h_rms [m]`` and the layer output size ``out_scale`` (see the module docstring). ``exact``: the
    pair search of :func:`merge_pairs` (default: the exact Gram for small layers, a sketch for wide ones)."""
    w, a, h = w.detach(), a.detach(), h_rms.detach().double().reshape(-1)
    w = w.reshape(w.shape[0], -1)
    m = w.shape[0]
    if out_scale <= 0 or not math.isfinite(out_scale):
        return WidthReport(m, 0, list(range(m)))
    # float64 norms from float64 row chunks (no float64 copy of a wide layer), bit-equal to the full copy's
    c = row_norms64(a) * h
    alive = (c > contribution_tol * out_scale).nonzero().flatten().tolist()
    negligible = sorted(set(range(m)) - set(alive))
    wn = row_norms64(w)
    parent = list(range(m))
    if len(alive) > 1:
        keep = torch.tensor(alive, dtype=torch.long, device=w.device)
        # directions for ReLU-like σ (merge modulo positive scale): rows divided by their norms in float64
        divisors = wn[keep].clamp_min(1e-300) if symmetry == "homogeneous" else None
        for bi, j in _merge_pairs(w[keep], divisors, c[keep], wn[keep], merge_tol * out_scale, symmetry, exact):
            ri, rj = _find(parent, alive[bi]), _find(parent, alive[j])
            if ri != rj:
                parent[ri] = rj
    members: dict[int, list[int]] = {}
    for i in alive:
        members.setdefault(_find(parent, i), []).append(i)
    groups, count = [], 0
    for units in members.values():
        if len(units) == 1:  # a unit of its own: alive, so its contribution is above the tolerance
            count += 1
            continue
        rep = max(units, key=lambda u: float(c[u]))
        factors = []
        for u in units:
            if symmetry == "homogeneous":
                f = float(wn[u] / wn[rep]) if wn[rep] > 0 else 1.0
            elif symmetry == "odd":
                wu, wr = w[u].double(), w[rep].double()
                f = 1.0 if float(torch.linalg.vector_norm(wu - wr)) <= float(torch.linalg.vector_norm(wu + wr)) else -1.0
            else:
                f = 1.0
            factors.append((u, f))
        merged = sum(f * a[u].double() for u, f in factors)
        if float(torch.linalg.vector_norm(merged)) * float(h[rep]) > contribution_tol * out_scale:
            count += 1
        else:
            negligible.extend(units)
        if len(units) > 1:
            groups.append(factors)
    return WidthReport(m, count, sorted(negligible), groups)


def hidden_statistics(
    layers: Sequence[NeuronLayer],
    forward: Callable[[], Any],
    reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, tuple[torch.Tensor, float]]:
    """Run ``forward`` once (no graph) and return, per layer, the per-neuron rms of the hidden values entering
    the output module and the rms of that module's output minus its bias. ``reduce_mean`` (DDP: an
    all-reduce mean) averages the mean squares over ranks, so every rank sees the global probe batch.

    >>> fc1, fc2 = torch.nn.Linear(2, 3), torch.nn.Linear(3, 1)
    >>> layer = NeuronLayer("fc1", "fc1", "fc2", fc1, fc2, "tanh", "odd")
    >>> x = torch.randn(8, 2)
    >>> h_rms, scale = hidden_statistics([layer], lambda: fc2(torch.tanh(fc1(x))))["fc1"]
    >>> tuple(h_rms.shape), scale > 0
    ((3,), True)
    """
    stats = capture_hidden(layers, forward)  # hooks; attention heads via their out_proj input
    result: dict[str, tuple[torch.Tensor, float]] = {}
    for layer in layers:  # fixed order: the same collectives on every rank
        if layer.name not in stats:
            continue
        h_ms, out_ms = stats[layer.name]
        if reduce_mean is not None:
            h_ms, out_ms = reduce_mean(h_ms), reduce_mean(out_ms)
        result[layer.name] = (h_ms.sqrt().cpu(), float(out_ms.sqrt()))
    return result


def layer_effective_width(layer: NeuronLayer, h_rms: torch.Tensor, out_scale: float, contribution_tol: float = 1e-3,
                          merge_tol: float = 1e-3) -> WidthReport:
    """:func:`effective_width` of a discovered layer."""
    return effective_width(layer.input_weights(), layer.output_weights(), h_rms, out_scale, layer.symmetry,
                           contribution_tol, merge_tol)


def saddle_branch_indicator(widths: Sequence[WidthReport], grad_norm: float, loss: float, grad_tol: float,
                            loss_tol: float) -> bool:
    """Effective width below width in some layer, a small gradient and a loss above tolerance.

    >>> saddle_branch_indicator([WidthReport(3, 2)], grad_norm=1e-6, loss=0.2, grad_tol=1e-4, loss_tol=1e-3)
    True
    """
    return any(r.effective_width < r.width for r in widths) and grad_norm <= grad_tol and loss > loss_tol


def saddle_indicator(lambda_min: float, lambda_max: float, grad_norm: float, grad_tol: float,
                     ratio_tol: float, curvature_floor: float = 0.0) -> bool:
    """A strict, escapable saddle: ``λmin < 0`` with ``|λmin|/λmax ≥ ratio_tol``, ``|λmin| >
    curvature_floor`` (below it the eigenvalue is rounding noise) and a small gradient.

    >>> saddle_indicator(-0.1, 5.0, 1e-7, grad_tol=1e-4, ratio_tol=1e-3), saddle_indicator(-1e-6, 5.0, 1e-7, 1e-4, 1e-3)
    (True, False)
    >>> saddle_indicator(-1e-13, 1e-13, 0.0, 1e-4, 1e-3, curvature_floor=1e-5)  # a vanished Hessian
    False
    """
    if not (math.isfinite(lambda_min) and math.isfinite(lambda_max)) or lambda_min >= 0:
        return False
    if abs(lambda_min) <= curvature_floor:
        return False
    return abs(lambda_min) >= ratio_tol * max(abs(lambda_max), 1e-300) and grad_norm <= grad_tol
