"""Wide-layer pair searches: the sketch against the exact Gram — time (in training steps) and recall.

    python benchmarks/pair_search.py               # width 4096, fan-in 2049 (≈ 3 min on one CPU thread)
    python benchmarks/pair_search.py --train-steps 0 --reps 1   # without the trained case (≈ 1 min)

The unit is the median training step of the 10 M-parameter MLP 784-2048-2048-2048-10 (batch 64, SGD with
momentum) in the same process. The layer is the 4096-unit hidden layer (fan-in 2048 + bias) of an MLP
784-2048-4096-10 on the same teacher–student data: at initialisation ("random"), after ``--train-steps`` SGD
steps ("trained"), and at initialisation with 8 planted pairs at ε from 0 to 0.15 of the typical ε
("planted"). For each, both symmetries of the pair search (odd σ: both signs; ReLU-like) report

* the exact search's and the sketch's time (interleaved, median of ``--reps``), in training steps;
* recall@k: the share of the exact search's k nearest pairs (``closest_pairs(..., exact=True)``, itself
  checked against brute-force loops in the tests) that the sketch returns, for k = 3 (the detector's default)
  and 10; and ``exact_below``, the ε up to which the sketch's answer is certified complete;

and the effective-width merge (hidden statistics of the trained net on the probe batch) whether the sketch's
merged clusters equal the exact ones, at the default ``merge_tol`` and at looser ones.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _common import make_mlp_bench, set_threads, table  # noqa: E402

from lightning_landscape.neurons import discover_layers, hidden_statistics  # noqa: E402
from lightning_landscape.neurons.channels import closest_pairs, search_closest  # noqa: E402
from lightning_landscape.neurons.width import effective_width  # noqa: E402


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _plant(w: torch.Tensor) -> torch.Tensor:
    w = w.clone()
    g = torch.Generator().manual_seed(11)
    typical = float(torch.linalg.vector_norm(w[0] - w[1])) / 2.0
    for n, frac in enumerate((0.0, 1e-6, 1e-3, 0.02, 0.05, 0.08, 0.12, 0.15)):
        i, j = 37 * n + 5, 4000 - 211 * n
        u = torch.randn(w.shape[1], generator=g)
        s = -1.0 if n % 2 else 1.0
        w[j] = s * (w[i] + 2.0 * frac * typical * u / u.norm())
    return w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=300, help="SGD steps for the trained case (0: skip)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions of each search (median)")
    args = parser.parse_args()
    set_threads(1)
    unit = make_mlp_bench(784, (2048, 2048, 2048), batch=64, num_samples=2048)
    unit.train_step()
    step = statistics.median(unit.train_step() for _ in range(7))
    wide = make_mlp_bench(784, (2048, 4096), batch=64, num_samples=4096)
    print(f"unit: {unit.description}; training step {step * 1e3:.0f} ms (median of 7); torch {torch.__version__}, "
          "1 thread (machine shared with other jobs: ratios, not absolute times)", flush=True)

    def layer():
        found = discover_layers(wide.model, forward=lambda: wide.loss()).layers
        return next(lay for lay in found if lay.input_weights().shape[0] == 4096)

    cases = [("random (init)", layer().input_weights().clone(), None)]
    cases.append(("planted (8 pairs)", _plant(cases[0][1]), None))
    if args.train_steps:
        for _ in range(args.train_steps):
            wide.train_step()
        lay = layer()
        stats = hidden_statistics([lay], lambda: wide.loss())[lay.name]
        cases.append((f"trained ({args.train_steps} steps)", lay.input_weights().clone(), (lay, stats)))
        print(f"trained: probe loss {float(wide.loss().detach()):.3f} after {args.train_steps} steps", flush=True)
    rows = []
    for name, w, _ in cases:
        for sym in ("odd", "homogeneous"):
            t_exact, t_sketch = [], []
            for _ in range(args.reps):
                te, exact = _timed(lambda: closest_pairs(w, sym, 10, exact=True))
                ts, sketch = _timed(lambda: search_closest(w, sym, 10))
                t_exact.append(te)
                t_sketch.append(ts)
            got = {p[1:] for p in sketch.pairs}
            rec3 = sum(p[1:] in {q[1:] for q in sketch.pairs[:3]} for p in exact[:3]) / 3
            rec10 = sum(p[1:] in got for p in exact) / 10
            typical = float(torch.linalg.vector_norm(w[0] - w[1])) / 2.0
            rows.append([name, sym, f"{statistics.median(t_exact) / step:.2f}", f"{statistics.median(t_sketch) / step:.2f}",
                         f"{rec3:.2f}", f"{rec10:.2f}", f"{exact[0][0] / typical:.3f}",
                         f"{min(sketch.exact_below, 1e9) / typical:.3f}"])
            print("  " + " | ".join(rows[-1]), flush=True)
    print()
    print(table(["layer 4096 × 2049", "symmetry", "exact (steps)", "sketch (steps)", "recall@3", "recall@10",
                 "nearest ε / typical ε", "certified ε / typical ε"], rows))

    merge_rows = []
    for name, w, extra in cases:
        if extra is None:
            a = torch.randn(w.shape[0], 10, generator=torch.Generator().manual_seed(1)) / math.sqrt(w.shape[0])
            h, scale = torch.ones(w.shape[0]), 1.0
        else:
            lay, (h, scale) = extra
            a = lay.output_weights()
        for sym in ("odd", "homogeneous"):
            for tol in (1e-3, 1e-2):
                te, exact = _timed(lambda: effective_width(w, a, h, scale, sym, merge_tol=tol, exact=True))
                ts, sketch = _timed(lambda: effective_width(w, a, h, scale, sym, merge_tol=tol))
                merge_rows.append([name, sym, f"{tol:g}", f"{te / step:.2f}", f"{ts / step:.2f}",
                                   str(exact.effective_width), str(sketch.effective_width),
                                   "yes" if sketch == exact else "NO"])
                print("  " + " | ".join(merge_rows[-1]), flush=True)
    print()
    print(table(["layer 4096 × 2049", "symmetry", "merge_tol", "exact (steps)", "sketch (steps)",
                 "effective width (exact)", "(sketch)", "same clusters"], merge_rows))


if __name__ == "__main__":
    main()
