"""Channels to infinity (Martinelli et al., 2025): detect a neuron pair sliding into one.

Two neurons i, j of a layer are in a channel when their input weights merge,
``ε = ‖wᵢ − s·wⱼ‖/2 → 0`` (``s = −1`` allowed for odd σ, with ``aⱼ`` negated), while their output weights
diverge with opposite signs, ``‖aᵢ‖ + ‖aⱼ‖ ~ c/ε``, and the pair converges to a gated linear unit: the
*GLU coefficient* ``ε·(aᵢ − s·aⱼ)`` and ``aᵢ + s·aⱼ`` stay nearly constant, the loss decreases but very
slowly, and λmax grows like ``1/ε²`` until it meets the edge of stability.

A pair's *score* over a window of measurements is the fraction of six criteria that hold:

1. ε shrinks (by at least ``min_shrink`` relative, with a negative trend);
2. ``‖aᵢ‖ + ‖aⱼ‖`` grows;
3. the output weights are opposed (``−cos(aᵢ, s·aⱼ) ≥ min_opposition`` throughout);
4. the least-squares slope of ``log(‖aᵢ‖+‖aⱼ‖)`` against ``log ε`` is within ``slope_tol`` of −1;
5. the GLU coefficient ``‖ε(aᵢ − s·aⱼ)‖`` is stable (relative range ≤ ``glu_tol``);
6. the loss decreases, by at most ``max_loss_drop`` (relative) over the window.

Score 1 is a channel entry. Cosine similarity alone is not used: two aligned neurons whose ε grows,
or whose output weights agree in sign, are not in a channel.

Example (synthetic series of a pair entering a channel):
    >>> tracker = ChannelTracker(window=6, min_points=4)
    >>> for t in range(6):
    ...     eps = 0.3 * 0.9 ** t
    ...     w = torch.tensor([[1.0 + eps], [1.0 - eps], [-3.0]])  # neurons 0 and 1 merge
    ...     a = torch.tensor([[0.5 + 0.2 / eps], [0.5 - 0.2 / eps], [1.0]])
    ...     report = tracker.update("fc1", step=100 * t, loss=0.1 - 1e-4 * t, w=w, a=a, symmetry="odd")
    >>> report.best.score, report.best.pair, round(report.best.slope, 2)
    (1.0, (0, 1, 1), -1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lightning_landscape.neurons import _gram
from lightning_landscape.neurons._gram import bound_factor, exact_distances, gram_dtype, strict_upper_mask, upper_blocks

_SERIES = ("step", "eps", "out_norm", "opposition", "glu", "loss")


@dataclass
class PairMeasure:
    """One candidate pair at one measurement (``sign`` = s: +1, or −1 for an odd σ's mirrored pair)."""

    i: int
    j: int
    sign: int
    eps: float
    out_norm: float  # ‖aᵢ‖ + ‖aⱼ‖
    opposition: float  # −cos(aᵢ, s·aⱼ): 1 = exactly opposite
    glu: float  # ‖ε (aᵢ − s·aⱼ)‖
    merged_out: float  # ‖aᵢ + s·aⱼ‖

    @property
    def key(self) -> str:
        return _key(self.i, self.j, self.sign)


def _key(i: int, j: int, sign: int) -> str:
    return f"{i}:{j}:{'+' if sign > 0 else '-'}"


def _parse(key: str) -> tuple[int, int, int]:
    i, j, s = key.split(":")
    return int(i), int(j), 1 if s == "+" else -1


def pair_measure(w: torch.Tensor, a: torch.Tensor, i: int, j: int, sign: int) -> PairMeasure:
    """Measure pair (i, j, s) from input weights ``w [m, d]`` and output weights ``a [m, k]``."""
    wi, wj, ai, aj = w[i].double(), w[j].double(), a[i].double(), sign * a[j].double()  # rows only: no copy of w
    eps = float(torch.linalg.vector_norm(wi - sign * wj)) / 2.0
    ni, nj = float(torch.linalg.vector_norm(ai)), float(torch.linalg.vector_norm(aj))
    cos = float(ai @ aj) / (ni * nj) if ni > 0 and nj > 0 else 0.0
    return PairMeasure(i, j, sign, eps, ni + nj, -cos, eps * float(torch.linalg.vector_norm(ai - aj)),
                       float(torch.linalg.vector_norm(ai + aj)))


@dataclass
class ClosestPairs:
    """The ``k`` nearest pairs ``(ε, i, j, s)`` and ``exact_below``: every pair with ``ε ≤ exact_below`` is
    in the result or farther than its last entry, i.e. the result's prefix with ``ε ≤ exact_below`` is the
    exact all-pairs answer (``inf`` on the exact path; with probability ≥ 1 − SKETCH_FAILURE on the sketch)."""

    pairs: list[tuple[float, int, int, int]]
    exact_below: float


def search_closest(w: torch.Tensor, symmetry: str, k: int, exact: bool | None = None) -> ClosestPairs:
    """:func:`closest_pairs` with its certificate. ``exact``: force the exact Gram (True) or the sketch
    (False); by default the sketch serves layers whose exact Gram exceeds
    :data:`~lightning_landscape.neurons._gram.EXACT_MAX_MACS` multiply-adds.

    On the sketch path the :data:`~lightning_landscape.neurons._gram.SKETCH_CANDIDATES` pairs nearest in the
    sketch (at least ``8k``) are measured exactly and the ``k`` nearest of them returned; a pair whose ε is
    below ``exact_below`` cannot have been missed.

    >>> w = torch.randn(3000, 400, generator=torch.Generator().manual_seed(0))
    >>> w[7] = -w[2] + 1e-3
    >>> found = search_closest(w, "odd", 1, exact=False)
    >>> found.pairs[0][1:], found.pairs[0][0] <= found.exact_below
    ((2, 7, -1), True)
    """
    m = w.shape[0]
    d = w[0].numel() if m else 0
    if m < 2 or k < 1:
        return ClosestPairs([], math.inf)
    if not _gram.use_sketch(m, d, exact):
        return ClosestPairs(closest_pairs(w, symmetry, k, exact=True), math.inf)
    x = w.detach().reshape(m, -1)
    sk = _gram.sketch_rows(x, signs=2 if symmetry == "odd" else 1)
    cand = _gram.sketch_nearest(sk, symmetry, max(_gram.SKETCH_CANDIDATES, 8 * k))
    dist = exact_distances(x, cand.i, cand.j, cand.s)
    found = sorted(zip((dist / 2.0).tolist(), cand.i.tolist(), cand.j.tolist(), cand.s.tolist()))[:k]
    return ClosestPairs(found, math.sqrt(_gram.certified_distance(sk, cand.floor)) / 2.0)


def closest_pairs(w: torch.Tensor, symmetry: str, k: int, exact: bool | None = None
                  ) -> list[tuple[float, int, int, int]]:
    """The ``k`` smallest ``(ε, i, j, s)`` (``i < j``, ties by ``i, j, s``) with ``ε = ‖wᵢ − s·wⱼ‖/2`` in float64.

    Dense linear algebra: one Gram matrix ``W Wᵀ`` (float32, upper triangle, in row blocks) gives both
    signs' squared distances; the running ``k``-th smallest value plus twice the rounding bound of
    :mod:`~lightning_landscape.neurons._gram` selects every pair that can be among the ``k`` closest, and
    only those are measured exactly. The result equals an all-pairs float64 loop (same pairs, same ε).

    Wide layers (exact Gram above :data:`~lightning_landscape.neurons._gram.EXACT_MAX_MACS` multiply-adds,
    unless ``exact=True``) take the sketch path of :func:`search_closest`: exact ε for every pair returned,
    and the exact answer wherever one pair (or k) is markedly nearer than the rest.

    >>> closest_pairs(torch.tensor([[1.0, 0.0], [-1.01, 0.0], [0.0, 1.0]]), "odd", 1)
    [(0.004999995231628418, 0, 1, -1)]
    """
    m, d = w.shape[0], w[0].numel() if w.shape[0] else 1
    if m < 2 or k < 1:
        return []
    if _gram.use_sketch(m, d, exact):
        return search_closest(w, symmetry, k, exact=False).pairs
    x = w.detach().reshape(m, -1)
    norms = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).pow(2)  # no float64 copy of the layer
    dtype = gram_dtype(x.device)
    slack = 2.0 * bound_factor(d, dtype) * 2.0 * float(norms.max())  # 2·max|D̂ − D| over all pairs
    signs = (1, -1) if symmetry == "odd" else (1,)
    kept: list[torch.Tensor] = []  # per sign and block: rows (D̂, i, j, s) that may still be in the top k
    smallest = torch.empty(0, dtype=torch.float64, device=x.device)
    n = norms.to(dtype)
    for start, rows, gram in upper_blocks(x, dtype):
        below = strict_upper_mask(gram.shape[0], gram.shape[1], gram.device)
        for sign in signs:
            approx = gram.mul(-2.0 * sign).add_(n[rows, None]).add_(n[None, start:]).masked_fill_(below, torch.inf)
            flat = approx.reshape(-1)
            take = min(k, flat.numel())
            low = torch.topk(flat, take, largest=False).values.double()
            smallest = torch.cat([smallest, low[torch.isfinite(low)]])  # the masked diagonal is +inf
            smallest = torch.topk(smallest, min(k, smallest.numel()), largest=False).values
            limit = float(smallest.max()) + slack if smallest.numel() >= k else torch.inf
            hit = ((approx <= limit) & ~below).nonzero()
            if hit.numel():
                vals = approx[hit[:, 0], hit[:, 1]].double()
                kept.append(torch.stack([vals, (hit[:, 0] + start).double(), (hit[:, 1] + start).double(),
                                         torch.full_like(vals, float(sign))], 1))
        # drop what the tightened limit now excludes (keeps the list short on random weights)
        if kept and smallest.numel() >= k:
            rows_kept = torch.cat(kept)
            kept = [rows_kept[rows_kept[:, 0] <= float(smallest.max()) + slack]]
    if not kept:
        return []
    cand = torch.cat(kept)
    cand = cand[cand[:, 0] <= float(smallest.max()) + slack]
    i_idx, j_idx, sgn = cand[:, 1].long(), cand[:, 2].long(), cand[:, 3]
    exact = torch.empty(cand.shape[0], dtype=torch.float64, device=x.device)
    for sign in signs:
        sel = (sgn == sign).nonzero().flatten()
        if sel.numel():
            exact[sel] = exact_distances(x, i_idx[sel], j_idx[sel], sign)
    found = sorted(zip((exact / 2.0).tolist(), i_idx.tolist(), j_idx.tolist(), sgn.long().tolist()))
    return [(e, i, j, s) for e, i, j, s in found[:k]]


def candidate_pairs(w: torch.Tensor, a: torch.Tensor, symmetry: str, k: int = 3, chunk: int = 1024,
                    exact: bool | None = None) -> list[PairMeasure]:
    """The ``k`` pairs with the smallest sign-aware ``ε = ‖wᵢ − s·wⱼ‖/2`` (``s = ±1`` for ``"odd"``),
    measured (see :func:`closest_pairs`). ``chunk`` is accepted for compatibility and unused (the Gram
    blocks are sized by :data:`~lightning_landscape.neurons._gram.BLOCK_ENTRIES`).

    >>> w = torch.tensor([[1.0, 0.0], [-1.01, 0.0], [0.0, 1.0]])
    >>> p = candidate_pairs(w, torch.ones(3, 1), "odd", k=1)[0]
    >>> (p.i, p.j, p.sign), round(p.eps, 3)
    ((0, 1, -1), 0.005)
    """
    w, a = w.detach(), a.detach()
    return [pair_measure(w, a, i, j, s) for _, i, j, s in closest_pairs(w, symmetry, k, exact)]


def _slope(x: list[float], y: list[float]) -> float:
    x_arr, y_arr = np.asarray(x, float), np.asarray(y, float)
    if len(x_arr) < 2 or np.ptp(x_arr) == 0:
        return float("nan")
    return float(np.polyfit(x_arr, y_arr, 1)[0])


@dataclass
class PairVerdict:
    """A pair's window summary: ``score`` in [0, 1], the criteria, and the fitted numbers."""

    layer: str
    pair: tuple[int, int, int]
    score: float
    criteria: dict[str, bool]
    eps: float
    out_norm: float
    slope: float
    glu: float
    loss_drop: float
    points: int


@dataclass
class LayerReport:
    """The layer's best pair (highest score, then smallest ε) and the smallest current ε."""

    layer: str
    best: PairVerdict | None
    min_eps: float
    verdicts: list[PairVerdict] = field(default_factory=list)
    lambda_growth: float = float("nan")  # λmax(last)/λmax(first) over the window
    lambda_slope: float = float("nan")  # d log λmax / d log ε of the best pair (≈ −2 in a channel)


class ChannelTracker:
    """Windows of candidate-pair measurements per layer, scored for channel entry.

    State is plain Python (lists of floats) so it fits in a checkpoint: :meth:`state_dict` /
    :meth:`load_state_dict`.

    Args:
        window: measurements kept per pair.
        min_points: measurements needed before a pair can be scored.
        num_candidates: pairs with the smallest ε considered at each measurement.
        min_shrink: relative decrease of ε over the window required (criterion 1).
        min_opposition: required ``−cos(aᵢ, s·aⱼ)`` (criterion 3).
        slope_tol: allowed ``|slope + 1|`` of log‖a‖ against log ε (criterion 4).
        glu_tol: allowed relative range of the GLU coefficient (criterion 5).
        max_loss_drop: largest relative loss decrease over the window that still counts as "slow" (6).
    """

    def __init__(self, window: int = 8, min_points: int = 4, num_candidates: int = 3, min_shrink: float = 0.02,
                 min_opposition: float = 0.5, slope_tol: float = 0.5, glu_tol: float = 0.25,
                 max_loss_drop: float = 0.1) -> None:
        if min_points < 3 or window < min_points:
            raise ValueError(f"need window >= min_points >= 3, got window={window}, min_points={min_points}")
        self.window, self.min_points, self.num_candidates = window, min_points, num_candidates
        self.min_shrink, self.min_opposition, self.slope_tol = min_shrink, min_opposition, slope_tol
        self.glu_tol, self.max_loss_drop = glu_tol, max_loss_drop
        self.layers: dict[str, dict[str, Any]] = {}

    def update(self, layer: str, step: int, loss: float, w: torch.Tensor, a: torch.Tensor, symmetry: str,
               lambda_max: float | None = None) -> LayerReport:
        """Add one measurement of ``layer`` (input weights ``w [m, d]``, output weights ``a [m, k]``)."""
        st = self.layers.setdefault(layer, {"steps": [], "lambda_max": [], "pairs": {}, "missing": {}})
        st["steps"] = (st["steps"] + [int(step)])[-self.window:]
        st["lambda_max"] = (st["lambda_max"] + [float("nan") if lambda_max is None else float(lambda_max)])[-self.window:]
        current = {p.key: p for p in candidate_pairs(w, a, symmetry, self.num_candidates)}
        for key in list(st["pairs"]):
            if key not in current:  # still tracked: measure it even though it left the top-k
                current[key] = pair_measure(w, a, *_parse(key))
                st["missing"][key] = st["missing"].get(key, 0) + 1
                if st["missing"][key] >= self.window:
                    del st["pairs"][key], st["missing"][key]
                    current.pop(key)
            else:
                st["missing"][key] = 0
        for key, p in current.items():
            series = st["pairs"].setdefault(key, {name: [] for name in _SERIES})
            for name, value in zip(_SERIES, (step, p.eps, p.out_norm, p.opposition, p.glu, loss)):
                series[name] = (series[name] + [float(value)])[-self.window:]
        verdicts = [self._verdict(layer, key, s) for key, s in st["pairs"].items()]
        verdicts = [v for v in verdicts if v is not None]
        best = max(verdicts, key=lambda v: (v.score, -v.eps), default=None)
        report = LayerReport(layer, best, min((p.eps for p in current.values()), default=float("nan")), verdicts)
        lam = [x for x in st["lambda_max"] if math.isfinite(x)]
        if len(lam) >= 2 and lam[0] > 0:
            report.lambda_growth = lam[-1] / lam[0]
        if best is not None:
            series = st["pairs"][_key(*best.pair)]
            pts = [(e, l) for s, e in zip(series["step"], series["eps"]) for t, l in zip(st["steps"], st["lambda_max"])
                   if s == t and math.isfinite(l) and l > 0 and e > 0]
            if len(pts) >= 3:
                report.lambda_slope = _slope([math.log(e) for e, _ in pts], [math.log(l) for _, l in pts])
        return report

    def _verdict(self, layer: str, key: str, s: dict[str, list[float]]) -> PairVerdict | None:
        n = len(s["eps"])
        if n < self.min_points:
            return None
        eps, out, loss = s["eps"], s["out_norm"], s["loss"]
        ok_eps = all(e > 0 for e in eps)
        slope = _slope([math.log(e) for e in eps], [math.log(max(o, 1e-300)) for o in out]) if ok_eps else float("nan")
        trend = _slope(s["step"], [math.log(e) for e in eps]) if ok_eps else float("nan")
        glu = s["glu"]
        glu_mean = float(np.mean(np.abs(glu)))
        loss_drop = (loss[0] - loss[-1]) / abs(loss[0]) if loss[0] != 0 else 0.0
        criteria = {
            "eps_shrinking": ok_eps and eps[-1] <= eps[0] * (1 - self.min_shrink) and trend < 0,
            "out_norm_growing": out[-1] > out[0],
            "opposite_signs": min(s["opposition"]) >= self.min_opposition,
            "loglog_slope": math.isfinite(slope) and abs(slope + 1.0) <= self.slope_tol,
            "glu_stable": glu_mean > 0 and (max(glu) - min(glu)) / glu_mean <= self.glu_tol,
            "slow_loss_decrease": 0.0 < loss_drop <= self.max_loss_drop,  # still decreasing, slowly
        }
        return PairVerdict(layer, _parse(key), sum(criteria.values()) / len(criteria), criteria, eps[-1], out[-1], slope,
                           glu[-1], loss_drop, n)

    def state_dict(self) -> dict[str, Any]:
        return {"layers": {k: {"steps": list(v["steps"]), "lambda_max": list(v["lambda_max"]),
                               "pairs": {p: {n: list(x) for n, x in s.items()} for p, s in v["pairs"].items()},
                               "missing": dict(v["missing"])} for k, v in self.layers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.layers = {k: {"steps": list(v["steps"]), "lambda_max": list(v["lambda_max"]),
                           "pairs": {p: {n: list(x) for n, x in s.items()} for p, s in v["pairs"].items()},
                           "missing": dict(v["missing"])} for k, v in state.get("layers", {}).items()}
