"""``trainer.fit`` wall time with vs without ``LandscapeMonitor()`` (default suite, default intervals).

    python benchmarks/overhead.py                    # MLP 784-256-256-10, batch 512, 2000 steps (CPU ≈ 3–4 min)
    python benchmarks/overhead.py --steps 1000 --scale 0.5   # half the steps, every interval halved
    python benchmarks/overhead.py --quick            # smoke run

Both fits run in one process from the same seed (``seed_everything(0)``), without a logger, progress bar
or checkpointing, in alternating order when ``--repeats`` > 1. Besides the wall-time ratio, the monitor's
own clock (``summary()["probe_seconds"]``) is reported — on a machine shared with other jobs it is the
steadier number. Each probe's ``run`` and the construction of the shared gradient graph are timed, which
gives each probe's cost per measurement in training-step equivalents (fit time without the monitor /
steps) and its share of training at its interval; from those the script predicts the overhead of other
interval choices.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import defaultdict

import torch

from _common import environment, median, set_threads, table
from lightning_landscape import LandscapeMonitor
from lightning_landscape._compat import FLAVOURS
from lightning_landscape.probes import default_probes
from lightning_landscape.probes.context import ProbeContext
from lightning_landscape.tasks import MLPTask, make_teacher_student

L = FLAVOURS[0]


def loader(batch: int, num_samples: int, input_dim: int) -> torch.utils.data.DataLoader:
    x, y = make_teacher_student(num_samples=num_samples, input_dim=input_dim, classes=10, teacher_width=32, seed=0)
    data = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True,
                                       generator=torch.Generator().manual_seed(0))


def fit(args, monitor: LandscapeMonitor | None) -> float:
    L.seed_everything(0, verbose=False)
    model = MLPTask(input_dim=args.input_dim, hidden=tuple(args.hidden), output_dim=10, activation="relu",
                    loss="cross_entropy", optimizer="sgd", lr=0.1, momentum=0.9)
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        callbacks=[monitor] if monitor is not None else [])
    data = loader(args.batch, args.num_samples, args.input_dim)
    t0 = time.perf_counter()
    trainer.fit(model, data)
    return time.perf_counter() - t0


class Timings:
    """Wraps each probe's ``run`` and the operator construction to time them."""

    def __init__(self) -> None:
        self.runs: dict[str, list[float]] = defaultdict(list)
        self.hvps: dict[str, list[int]] = defaultdict(list)
        self.builds: list[float] = []

    def wrap_probe(self, probe) -> None:
        run = probe.run

        def timed_run(ctx, _run=run, _name=probe.name):
            before = ctx.num_matvecs
            t0 = time.perf_counter()
            out = _run(ctx)
            self.runs[_name].append(time.perf_counter() - t0)
            self.hvps[_name].append(ctx.num_matvecs - before)
            return out

        probe.run = timed_run

    def patch_build(self):
        original = ProbeContext.hessian
        timings = self

        def hessian(ctx):
            if ctx._operator is not None:
                return original(ctx)
            t0 = time.perf_counter()
            op = original(ctx)
            timings.builds.append(time.perf_counter() - t0)
            return op

        ProbeContext.hessian = hessian
        return original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every default interval by this")
    parser.add_argument("--repeats", type=int, default=1, help="fits per side (alternating order)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--input-dim", type=int, default=784)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--num-samples", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.scale, args.input_dim, args.hidden, args.batch = 200, 0.1, 64, [64, 64], 128
    set_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)

    without, with_, own = [], [], []
    timings = Timings()
    original_hessian = timings.patch_build()
    monitor = None
    probes = default_probes()
    try:
        for r in range(args.repeats):
            order = ("without", "with") if r % 2 == 0 else ("with", "without")
            for side in order:
                if side == "without":
                    without.append(fit(args, None))
                    continue
                probes = default_probes()
                for p in probes:
                    p.every_n_steps = max(1, round(p.every_n_steps * args.scale))
                    timings.wrap_probe(p)
                monitor = LandscapeMonitor(probes=probes)
                with_.append(fit(args, monitor))
                own.append(monitor.summary()["probe_seconds"])
            print(f"  repeat {r + 1}: without {without[-1]:.1f} s, with {with_[-1]:.1f} s", flush=True)
    finally:
        ProbeContext.hessian = original_hessian

    base, mon = median(without), median(with_)
    step = base / args.steps
    summary = monitor.summary()
    dims = "-".join(str(d) for d in (args.input_dim, *args.hidden, 10))
    print(f"\n## Monitoring overhead — MLP {dims}, batch {args.batch}, {args.steps} steps, Lightning {L.__version__}")
    print(f"{environment()}; intervals × {args.scale:g}; {args.repeats} fit(s) per side\n")
    print(table(["", "value"], [
        ["fit without monitor (s)", f"{base:.1f}"],
        ["fit with LandscapeMonitor() (s)", f"{mon:.1f}"],
        ["overhead, wall-time difference", f"{(mon - base) / base * 100:.1f} %"],
        ["overhead, monitor's own clock (probe seconds / fit without)", f"{median(own) / base * 100:.1f} %"],
        ["measurements / HVPs", f"{summary['measurements']} / {summary['hvps']}"],
        ["training step (fit without monitor / steps)", f"{step * 1e3:.1f} ms"],
    ]))

    rows, shares = [], {}
    build_cost = median(timings.builds) / step if timings.builds else 0.0
    for p in probes:
        runs = timings.runs.get(p.name, [])
        if not runs:
            continue
        cost = median(runs) / step
        # The first Hessian probe of a measurement also builds the gradient graph: count it separately.
        first = p is next(q for q in probes if q.needs_hessian)
        own_cost = max(cost - build_cost, 0.0) if first and p.needs_hessian else cost
        shares[p.name] = (own_cost, p.every_n_steps)
        rows.append([p.name, p.every_n_steps, len(runs), f"{median(timings.hvps[p.name]):.0f}", f"{own_cost:.1f}",
                     f"{own_cost / p.every_n_steps * 100:.2f} %"])
    hess_interval = min(p.every_n_steps for p in probes if p.needs_hessian)
    rows.append(["gradient graph (once per measurement)", hess_interval, len(timings.builds), "—", f"{build_cost:.1f}",
                 f"{build_cost / hess_interval * 100:.2f} %"])
    print("\nPer probe (median over its measurements; the first measurement after step 1 runs every probe):\n")
    print(table(["probe", "interval (steps)", "measurements", "median HVPs", "cost (training steps)", "share at interval"], rows))

    def predict(intervals: dict[str, int], steps: int | None) -> float:
        share = sum(shares[n][0] / intervals[n] for n in shares) + build_cost / min(intervals.values())
        if steps is None:
            return share * 100
        first = sum(shares[n][0] for n in shares) + build_cost  # measure_first_step runs everything at step 1
        return (share + first / steps) * 100

    candidates = [
        {n: iv for n, (_, iv) in shares.items()},
        {"hessian_spectrum": 500, "hessian_trace": 1000, "hessian_density": 5000},
        {"hessian_spectrum": 1000, "hessian_trace": 2000, "hessian_density": 10000},
        {"hessian_spectrum": 500, "hessian_trace": 2000, "hessian_density": 10000},
    ]
    pred = []
    for i, c in enumerate(candidates):
        c = {n: (c[n] if i == 0 else max(1, round(c[n] * args.scale))) for n in shares if n in c}
        if len(c) != len(shares):
            continue
        pred.append([", ".join(f"{n.removeprefix('hessian_')} {v}" for n, v in c.items()),
                     f"{predict(c, None):.1f} %", f"{predict(c, args.steps):.1f} %", f"{predict(c, 10 * args.steps):.1f} %"])
    print("\nPredicted overhead from the per-measurement costs above (the graph is counted at the most frequent "
          "interval; step-1 measurement of every probe included in the finite-run columns):\n")
    print(table(["intervals (steps)", "long run", f"{args.steps}-step run", f"{10 * args.steps}-step run"], pred))


if __name__ == "__main__":
    main()
