"""Per-probe time (in training steps) and peak memory (in parameter-sized vectors) on the 10 M-parameter MLP.

    python benchmarks/probe_costs.py               # MLP 784-2048-2048-2048-10, batch 64 (CPU, 1 thread: ≈ 5 min)
    python benchmarks/probe_costs.py --quick       # MLP 784-256-256-256-10 (seconds)
    python benchmarks/probe_costs.py --probes channels saddle_branches

One process, one thread. The training step is the median of ``--steps`` SGD steps (momentum 0.9) of the
same process, and each probe's time is a ratio to the median of the five steps timed around it (three
before, two after: on a shared machine the load drifts during the run). Every registered probe then measures once, with its defaults, through ``ProbeContext`` under
``probe_guard`` as the monitor runs it (each builds its own gradient graph; in a suite they share one):
its wall time in training steps, and its peak resident set size above the RSS before it (``VmHWM`` after
``clear_refs``; the process runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed tensors leave the RSS at
once) in parameter-sized (float32) vectors. ``saddle_branches`` is measured in its worst case (a gradient
below ``grad_tol``: its own Lanczos run). Two extra rows time the channel-pair search and the
effective-width merge on one layer of width 4096 (fan-in 2048 + bias) in the same training steps, with the
exact Gram and with the default (a Gaussian sketch at this width; recall: ``benchmarks/pair_search.py``).
The default-suite overhead is Σ cost / default interval over the default probes.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

ENV = "MALLOC_MMAP_THRESHOLD_"

if os.environ.get(ENV) != "65536":  # glibc reads it at start-up: re-run this script with it set
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, ENV: "65536", "OMP_NUM_THREADS": "1"})

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _common import make_mlp_bench, proc_status, set_threads, table  # noqa: E402

import lightning_landscape.probes as P  # noqa: E402
from lightning_landscape import PROBES, ProbeContext  # noqa: E402
from lightning_landscape.guards import probe_guard  # noqa: E402
from lightning_landscape.neurons.channels import candidate_pairs  # noqa: E402
from lightning_landscape.neurons.width import effective_width  # noqa: E402

WORST_CASE = {"saddle_branches": lambda: P.SaddleBranches(grad_tol=1e9)}


def measure(fn) -> tuple[float, int]:
    """``(seconds, peak RSS above the RSS before)`` of ``fn()``."""
    gc.collect()
    before = proc_status("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0, proc_status("VmHWM") - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MLP 784-256-256-256-10 (smoke run)")
    parser.add_argument("--steps", type=int, default=9, help="training steps timed (median)")
    parser.add_argument("--probes", nargs="+", default=None, help="only these probes")
    parser.add_argument("--width", type=int, default=4096, help="layer width of the channel-search rows (0: skip)")
    args = parser.parse_args()
    set_threads(1)
    hidden = (256, 256, 256) if args.quick else (2048, 2048, 2048)
    bench = make_mlp_bench(784, hidden, batch=64, num_samples=2048)
    bench.train_step()
    step = statistics.median(bench.train_step() for _ in range(args.steps))
    n = sum(p.numel() for p in bench.model.parameters())
    vector = 4 * n
    names = [name for name in PROBES if not name.startswith("test_") and (not args.probes or name in args.probes)]
    print(f"{bench.description}; {n:,} parameters ({vector / 2**20:.1f} MiB per vector); training step "
          f"{step * 1e3:.0f} ms (median of {args.steps}); torch {torch.__version__}, 1 thread", flush=True)
    rows, cost = [], {}
    tick = [100]
    for name in names:
        probe = WORST_CASE.get(name, PROBES[name])()

        def run() -> None:
            tick[0] += 100
            with probe_guard(bench.model):
                ctx = ProbeContext(bench.model, bench.loss, step=tick[0], optimizer=bench.optimizer)
                probe.run(ctx)
                ctx.release()

        # The training step is timed again next to each probe (median of 3): on a shared machine the load
        # drifts over the run, and a ratio to a step timed minutes earlier would carry that drift.
        around = [bench.train_step() for _ in range(3)]
        seconds, peak = measure(run)
        around += [bench.train_step() for _ in range(2)]
        cost[name] = seconds / statistics.median(around)
        label = name + (" (worst case: own Lanczos)" if name in WORST_CASE else "")
        rows.append([label, probe.every_n_steps, f"{cost[name]:.1f}", f"{peak / vector:.1f}",
                     f"{100 * cost[name] / probe.every_n_steps:.2f} %"])
        print(f"  {label}: {cost[name]:.1f} steps, {peak / vector:.1f} vectors", flush=True)
    print()
    print(table(["probe", "default interval", "time (training steps)", "peak (parameter-sized vectors)",
                 "share at its interval"], rows))
    suite = [p.name for p in P.default_probes() if p.name in cost]
    if suite:
        share = sum(cost[p] / PROBES[p]().every_n_steps for p in suite)
        print(f"\nDefault suite ({', '.join(suite)}) at its default intervals: {100 * share:.2f} % of training time "
              "(each probe with its own gradient graph; in the suite they share one)")
    if args.width:
        g = torch.Generator().manual_seed(0)
        fan_in, fan_out = (256, 256) if args.quick else (2048, 2048)
        w = torch.randn(args.width, fan_in + 1, generator=g) / fan_in**0.5
        a = torch.randn(args.width, fan_out, generator=g) / args.width**0.5
        extra = []
        for sym in ("odd", "homogeneous"):
            row = [f"width {args.width}, fan-in {fan_in + 1}, {sym}"]
            for exact in (True, None):  # the exact Gram, then the default (a sketch above EXACT_MAX_MACS)
                t_pairs, _ = measure(lambda: candidate_pairs(w, a, sym, exact=exact))
                t_width, _ = measure(lambda: effective_width(w, a, torch.ones(args.width), 1.0, sym, exact=exact))
                row += [f"{t_pairs / step:.2f}", f"{t_width / step:.2f}"]
            extra.append(row)
        print()
        print(table(["one layer", "channel pair search, exact Gram (training steps)", "effective width, exact Gram",
                     "channel pair search, default", "effective width, default"], extra))


if __name__ == "__main__":
    main()
