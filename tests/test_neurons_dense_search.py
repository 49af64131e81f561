"""The dense (Gram-matrix) neuron-pair searches against brute-force all-pairs float64 loops.

``closest_pairs`` / ``candidate_pairs`` (channels) and ``merge_pairs`` (effective width) select pairs from a
float32 Gram matrix and measure the undecided ones exactly; they must return exactly what a loop over every
pair with ``‖wᵢ − s·wⱼ‖`` in float64 returns — including planted pairs closer than float32 can resolve from
``nᵢ + nⱼ − 2Gᵢⱼ`` and pairs within a hair of the merge threshold. Small blocks force many Gram blocks.
"""

from __future__ import annotations

import pytest
import torch

from lightning_landscape.neurons import _gram
from lightning_landscape.neurons.channels import candidate_pairs, closest_pairs, pair_measure
from lightning_landscape.neurons.width import effective_width, merge_pairs

SYMMETRIES = ("odd", "homogeneous", "none")


@pytest.fixture(params=["one block", "many blocks"])
def blocks(request, monkeypatch):
    if request.param == "many blocks":
        monkeypatch.setattr(_gram, "BLOCK_ENTRIES", 64)
        monkeypatch.setattr(_gram, "MIN_BLOCK_ROWS", 3)
    return request.param


def brute_closest(w: torch.Tensor, symmetry: str, k: int) -> list[tuple[float, int, int, int]]:
    w = w.double()
    found = []
    for s in ((1, -1) if symmetry == "odd" else (1,)):
        for i in range(w.shape[0]):
            for j in range(i + 1, w.shape[0]):
                found.append((float(torch.linalg.vector_norm(w[i] - s * w[j])) / 2.0, i, j, s))
    return sorted(found)[:k]


def brute_merges(ref: torch.Tensor, c: torch.Tensor, wn: torch.Tensor, threshold: float, symmetry: str
                 ) -> list[tuple[int, int]]:
    ref, c, wn = ref.double(), c.double(), wn.double()
    out = []
    for s in ((1, -1) if symmetry == "odd" else (1,)):
        for i in range(ref.shape[0]):
            for j in range(i + 1, ref.shape[0]):
                d = torch.linalg.vector_norm(ref[i] - s * ref[j])
                if symmetry != "homogeneous":
                    d = d / torch.maximum(wn[i], wn[j]).clamp_min(1e-300)
                if float(d * torch.maximum(c[i], c[j])) <= threshold:
                    out.append((i, j))
    return sorted(set(out))


def _planted(seed: int, m: int = 40, d: int = 12) -> torch.Tensor:
    """Random rows with exact, mirrored and sub-float32-resolution near duplicates, and mixed norms."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, d, generator=g)
    w[:5] *= 30.0  # large norms: a loose bound for everyone else
    w[7] = w[3]  # exact duplicate (ε = 0) of a large row
    w[11] = -w[9]  # mirrored duplicate
    tiny = torch.zeros(d)
    tiny[0] = 1.0
    w[13] = w[12] + 2e-6 * tiny  # ε far below what nᵢ + nⱼ − 2Gᵢⱼ resolves in float32
    w[15] = w[14] + 1e-6 * tiny
    w[20] = -w[19] + 3e-6 * tiny
    w[22] = w[21]
    return w


@pytest.mark.parametrize("symmetry", SYMMETRIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closest_pairs_equal_brute_force_on_random_rows(blocks, symmetry: str, seed: int) -> None:
    w = torch.randn(45, 9, generator=torch.Generator().manual_seed(seed))
    k = 6
    assert closest_pairs(w, symmetry, k) == brute_closest(w, symmetry, k)


@pytest.mark.parametrize("symmetry", SYMMETRIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_closest_pairs_equal_brute_force_on_planted_pairs(blocks, symmetry: str, seed: int) -> None:
    w = _planted(seed)
    for k in (1, 4, 9):
        got, want = closest_pairs(w, symmetry, k), brute_closest(w, symmetry, k)
        assert got == want, (k, got, want)
    best = [(i, j, s) for _, i, j, s in closest_pairs(w, symmetry, 9)]
    assert (3, 7, 1) in best and (21, 22, 1) in best and (12, 13, 1) in best
    assert ((9, 11, -1) in best) == (symmetry == "odd")


def test_candidate_pairs_measure_the_brute_force_pairs(blocks) -> None:
    w, a = _planted(3), torch.randn(40, 5, generator=torch.Generator().manual_seed(9))
    got = candidate_pairs(w, a, "odd", k=7)
    want = [pair_measure(w, a, i, j, s) for _, i, j, s in brute_closest(w, "odd", 7)]
    assert got == want


def test_fewer_pairs_than_asked() -> None:
    w = torch.tensor([[1.0, 2.0], [1.0, 2.5]])
    assert closest_pairs(w, "none", 3) == brute_closest(w, "none", 3)
    assert len(closest_pairs(w, "odd", 5)) == 2
    assert closest_pairs(w[:1], "odd", 3) == []


def _merge_case(symmetry: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    g = torch.Generator().manual_seed(seed)
    m, d = 36, 10
    w = torch.randn(m, d, dtype=torch.float64, generator=g)
    c = torch.rand(m, dtype=torch.float64, generator=g) + 0.5
    threshold = 1e-3
    direction = torch.randn(d, dtype=torch.float64, generator=g)
    direction /= direction.norm()
    # pairs planted at 0.5×, 1 − 1e-7, 1 + 1e-7 and 2× the merge threshold
    for (i, j), factor in zip(((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)), (0.5, 1 - 1e-7, 1 + 1e-7, 2.0, 0.0)):
        c[j] = c[i]
        if symmetry == "homogeneous":
            w[j] = 2.5 * w[i]
            u = w[i] / w[i].norm()
            step = direction - (direction @ u) * u
            w[j] = 2.5 * w[i] + 2.5 * w[i].norm() * factor * threshold / float(c[i]) * step / step.norm()
        else:
            sign = -1.0 if symmetry == "odd" and i % 4 == 0 else 1.0
            w[j] = sign * w[i] + factor * threshold / float(c[i]) * float(w[i].norm()) * direction
    wn = torch.linalg.vector_norm(w, dim=1)
    ref = w / wn[:, None] if symmetry == "homogeneous" else w
    return ref, c, wn, threshold


@pytest.mark.parametrize("symmetry", SYMMETRIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_pairs_equal_brute_force(blocks, symmetry: str, seed: int) -> None:
    ref, c, wn, threshold = _merge_case(symmetry, seed)
    got, want = merge_pairs(ref, c, wn, threshold, symmetry), brute_merges(ref, c, wn, threshold, symmetry)
    assert got == want
    assert (0, 1) in got and (8, 9) in got and (6, 7) not in got  # the planted pairs far from the threshold
    # random rows far apart: nothing merges at a tight threshold, everything at a loose one
    assert merge_pairs(ref[10:], c[10:], wn[10:], 1e-6, symmetry) == brute_merges(ref[10:], c[10:], wn[10:], 1e-6, symmetry) == []
    everything = merge_pairs(ref, c, wn, 1e6, symmetry)
    assert everything == brute_merges(ref, c, wn, 1e6, symmetry) and len(everything) == 36 * 35 // 2


def test_effective_width_counts_planted_duplicates(blocks) -> None:
    g = torch.Generator().manual_seed(4)
    w = torch.randn(30, 6, generator=g, dtype=torch.float64)
    w[1], w[2], w[5] = w[0], -w[0], 3.0 * w[4]  # odd: 0, 1, 2 merge; 5 = 3·w₄ only merges for ReLU
    a = torch.randn(30, 4, generator=g, dtype=torch.float64)
    h = torch.ones(30, dtype=torch.float64)
    assert effective_width(w, a, h, out_scale=10.0, symmetry="odd").effective_width == 28
    assert effective_width(w, a, h, out_scale=10.0, symmetry="none").effective_width == 29
    assert effective_width(w, a, h, out_scale=10.0, symmetry="homogeneous").effective_width == 28
