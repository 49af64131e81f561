"""Hierarchical clustering of N solutions by aligned distance, and how ultrametric that distance is.

In the spin-glass picture (Liao et al., 2024) the solutions found by independent runs organise into a
hierarchy of basins: distances between them are close to an *ultrametric* (every triangle is isosceles
with the two longest sides equal, ``d(a,c) <= max(d(a,b), d(b,c))`` for all labellings). Two numbers say
how close: the fraction of triples whose longest side exceeds the second longest by more than a relative
tolerance, and the cophenetic correlation between the distances and the tree the clustering builds
(1 for an exact ultrametric with average/complete/single linkage).

Distances are measured after aligning hidden units (:mod:`.align`), so that relabelled copies of one
solution are at distance 0.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform
from torch import nn

from lightning_landscape.compare.align import Method, align, parameter_distance
from lightning_landscape.compare.barrier import loss_barrier
from lightning_landscape.compare.data import Data, example_input
from lightning_landscape.compare.spec import permutation_spec

LINKAGES: tuple[str, ...] = ("average", "complete", "single", "weighted")


@dataclass
class PairwiseResult:
    """Symmetric ``N × N`` matrices over the solutions (row ``i``, column ``j``: ``j`` aligned to ``i``).

    ``barrier_*`` are ``None`` when no data was given.
    """

    labels: list[str]
    distance_before: np.ndarray
    distance_after: np.ndarray
    barrier_before: np.ndarray | None = None
    barrier_after: np.ndarray | None = None

    def to_dict(self) -> dict:
        out = {"labels": list(self.labels)}
        for key in ("distance_before", "distance_after", "barrier_before", "barrier_after"):
            value = getattr(self, key)
            out[key] = None if value is None else value.tolist()
        return out


def pairwise_comparisons(
    models: Sequence[nn.Module],
    labels: Sequence[str] | None = None,
    data: Data | None = None,
    method: Method = "weight",
    relative: bool = False,
    barriers: bool = True,
    loss_fn=None,
    num_points: int = 11,
    reset_batchnorm: bool = True,
    batch_size: int | None = None,
) -> PairwiseResult:
    """Distances (and, with ``data`` and ``barriers``, loss barriers) between every pair, raw and aligned.

    ``relative`` divides distances by the mean parameter norm of the pair.

    >>> import torch
    >>> torch.manual_seed(0) is not None
    True
    >>> nets = [nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1)) for _ in range(3)]
    >>> result = pairwise_comparisons(nets)
    >>> bool((result.distance_after <= result.distance_before + 1e-9).all())
    True
    """
    n = len(models)
    if n < 2:
        raise ValueError(f"models: need at least 2 solutions to compare, got {n}")
    labels = list(labels) if labels is not None else [f"model{i}" for i in range(n)]
    if len(labels) != n:
        raise ValueError(f"labels: expected {n} labels, got {len(labels)}")
    spec = permutation_spec(models[0], None if data is None else example_input(data))
    with_barriers = barriers and data is not None
    mats = {k: np.zeros((n, n)) for k in ("db", "da", "bb", "ba")}
    for i, j in itertools.combinations(range(n), 2):
        aligned, _ = align(models[i], models[j], method, data=data, spec=spec)
        values = {
            "db": parameter_distance(models[i], models[j], relative),
            "da": parameter_distance(models[i], aligned, relative),
        }
        if with_barriers:
            common = dict(loss_fn=loss_fn, num_points=num_points, reset_batchnorm=reset_batchnorm, batch_size=batch_size)
            values["bb"] = loss_barrier(models[i], models[j], data, **common).barrier
            values["ba"] = loss_barrier(models[i], aligned, data, **common).barrier
        for key, value in values.items():
            mats[key][i, j] = mats[key][j, i] = value
    return PairwiseResult(
        labels,
        mats["db"],
        mats["da"],
        mats["bb"] if with_barriers else None,
        mats["ba"] if with_barriers else None,
    )


def _check_distances(dist: np.ndarray) -> np.ndarray:
    dist = np.asarray(dist, dtype=np.float64)
    if dist.ndim != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"dist must be a square matrix, got shape {dist.shape}")
    if not np.all(np.isfinite(dist)) or np.any(dist < 0):
        raise ValueError("dist must be finite and non-negative (clip barriers at 0 before clustering)")
    if not np.allclose(dist, dist.T) or np.any(np.diag(dist) != 0):
        raise ValueError("dist must be symmetric with a zero diagonal")
    return dist


@dataclass
class Ultrametricity:
    """``violation_fraction``: triples whose longest side exceeds the middle one by more than
    ``tol × longest``; ``mean_relative_gap``: mean of ``(d_max − d_mid) / d_max`` (0 for an ultrametric)."""

    num_triples: int
    violation_fraction: float
    mean_relative_gap: float
    tol: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def ultrametricity(dist: np.ndarray, tol: float = 0.05) -> Ultrametricity:
    """Check ``d(a,c) <= max(d(a,b), d(b,c))`` (up to ``tol``, relative) on every triple.

    >>> ultra = np.array([[0, 1, 3], [1, 0, 3], [3, 3, 0]])   # isosceles, two longest equal
    >>> ultrametricity(ultra).violation_fraction
    0.0
    >>> ultrametricity(np.array([[0, 1, 2], [1, 0, 1], [2, 1, 0]])).violation_fraction   # points on a line
    1.0
    """
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol >= 0):
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    dist = _check_distances(dist)
    n = dist.shape[0]
    if n < 3:
        return Ultrametricity(0, float("nan"), float("nan"), float(tol))
    idx = np.array(list(itertools.combinations(range(n), 3)))
    i, j, k = idx.T
    sides = np.sort(np.stack([dist[i, j], dist[j, k], dist[i, k]], axis=1), axis=1)
    d_mid, d_max = sides[:, 1], sides[:, 2]
    gap = np.where(d_max > 0, (d_max - d_mid) / np.where(d_max > 0, d_max, 1.0), 0.0)
    return Ultrametricity(len(idx), float(np.mean(gap > tol)), float(np.mean(gap)), float(tol))


@dataclass
class Clustering:
    """Linkage matrix (scipy format), leaf labels, cophenetic correlation and the ultrametricity check."""

    linkage: np.ndarray
    labels: list[str]
    method: str
    cophenetic_correlation: float
    ultrametricity: Ultrametricity

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "labels": list(self.labels),
            "linkage": self.linkage.tolist(),
            "cophenetic_correlation": self.cophenetic_correlation,
            "ultrametricity": self.ultrametricity.to_dict(),
        }


def cluster_solutions(
    dist: np.ndarray, labels: Sequence[str] | None = None, method: str = "average", tol: float = 0.05
) -> Clustering:
    """Agglomerative clustering of a distance matrix (``scipy.cluster.hierarchy.linkage``).

    >>> d = np.array([[0, 1, 4, 4], [1, 0, 4, 4], [4, 4, 0, 2], [4, 4, 2, 0]], dtype=float)
    >>> c = cluster_solutions(d, ["a", "b", "c", "d"])
    >>> round(c.cophenetic_correlation, 6), c.ultrametricity.violation_fraction
    (1.0, 0.0)
    """
    if method not in LINKAGES:
        raise ValueError(f"method must be one of {list(LINKAGES)}, got {method!r}")
    dist = _check_distances(dist)
    n = dist.shape[0]
    if n < 2:
        raise ValueError(f"dist: need at least 2 solutions, got {n}")
    labels = list(labels) if labels is not None else [str(i) for i in range(n)]
    if len(labels) != n:
        raise ValueError(f"labels: expected {n} labels, got {len(labels)}")
    condensed = squareform(dist, checks=False)
    linkage = hierarchy.linkage(condensed, method=method)
    if n >= 3 and np.ptp(condensed) > 0:
        coph = float(hierarchy.cophenet(linkage, condensed)[0])
    else:
        coph = float("nan")  # undefined for fewer than 3 pairs' worth of variation
    return Clustering(linkage, labels, method, coph, ultrametricity(dist, tol))


def plot_dendrogram(clustering: Clustering, path: str | Path, ylabel: str = "aligned distance") -> Path:
    """Save the dendrogram as a PNG (matplotlib Agg, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(clustering.labels)
    fig = Figure(figsize=(max(6.4, 0.45 * n + 2.5), 4.6), dpi=100, layout="constrained")  # labels stay inside
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    hierarchy.dendrogram(clustering.linkage, labels=clustering.labels, ax=ax, leaf_rotation=45)
    u = clustering.ultrametricity
    ax.set_title(
        f"{clustering.method} linkage, cophenetic correlation {clustering.cophenetic_correlation:.3f}\n"
        f"ultrametric violations: {u.violation_fraction:.0%} of {u.num_triples} triples "
        f"(tol {u.tol:g}), mean relative gap {u.mean_relative_gap:.3g}",
        fontsize=9,
    )
    ax.set_ylabel(ylabel)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
