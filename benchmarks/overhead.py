"""``trainer.fit`` wall time with vs without ``LandscapeMonitor()`` (default suite, default intervals).

    python benchmarks/overhead.py                    # MLP 784-256-256-10, batch 512, 2000 steps (CPU ≈ 3–4 min)
    python benchmarks/overhead.py --steps 1000 --scale 0.5   # half the steps, every interval halved
    python benchmarks/overhead.py --quick            # smoke run
    python benchmarks/overhead.py --suite guard      # the alerting configuration of benchmarks/scenarios.py
    python benchmarks/overhead.py --suite spectrum100   # HessianSpectrum(every_n_steps=100) alone
    python benchmarks/overhead.py --model resnet18 --batch 16   # per-probe costs on ResNet-18, no fit (CPU ≈ 15 min)

Both fits run in one process from the same seed (``seed_everything(0)``), without a logger, progress bar
or checkpointing, in alternating order when ``--repeats`` > 1. The overhead figure is the in-process cost
clock, ``summary()["overhead"]`` = time inside measurements ÷ the fit's time without them (the definition the
demo, ``summary()`` and the ``monitor/overhead`` tag use) — on a machine shared with other jobs it is the
steadier number; the wall-time difference of the two fits is printed beside it. Each probe's ``run`` and the construction of the shared gradient graph are timed, which
gives each probe's cost per measurement in training-step equivalents (fit time without the monitor /
steps) and its share of training at its interval; from those the script predicts the overhead of other
interval choices.

``--model resnet18`` does not fit (a 10,000-step CPU fit of ResNet-18 is out of reach): after
``--warmup-steps`` SGD steps it takes ``--measurements`` measurements, ``--gap`` SGD steps apart, each
timing the gradient graph build and each default probe (warm-started spectrum from the second
measurement on) through ``ProbeContext`` under ``probe_guard``, as the monitor does. Costs are in
training-step equivalents (median SGD step of the same process) and the overhead at the default
intervals is predicted as Σ cost / interval (+ graph build / the most frequent interval). The warm start
bridges ``--gap`` steps here, not 500: the cold first measurement is reported beside it.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import defaultdict

import torch
from _common import (
    Bench,
    device_of,
    environment,
    make_resnet_bench,
    median,
    set_threads,
    sync,
    table,
)

from _scenario_config import build_monitor as guard_monitor

from lightning_landscape import HessianSpectrum, LandscapeMonitor
from lightning_landscape._compat import FLAVOURS
from lightning_landscape.guards import probe_guard
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


def measure_probes(bench: Bench, args: argparse.Namespace) -> tuple[list[float], list[float], dict[str, list[float]], dict[str, list[int]]]:
    """Training-step times, graph-build times, and each default probe's time and HVPs per measurement.

    Every measurement runs the whole default suite on one shared graph (as the monitor does when all
    three are due), in a ``ProbeContext`` under ``probe_guard``; the build is timed on its own.
    """
    probes = default_probes()
    steps, builds = [], []
    runs: dict[str, list[float]] = defaultdict(list)
    hvps: dict[str, list[int]] = defaultdict(list)
    for m in range(args.measurements):
        steps += [bench.train_step() for _ in range(args.warmup_steps if m == 0 else args.gap)]
        with probe_guard(bench.model):
            ctx = ProbeContext(bench.model, bench.loss, step=len(steps))
            t0 = time.perf_counter()
            ctx.hessian()
            sync(bench.device)
            builds.append(time.perf_counter() - t0)
            for p in probes:
                before = ctx.num_matvecs
                t0 = time.perf_counter()
                p.run(ctx)
                sync(bench.device)
                runs[p.name].append(time.perf_counter() - t0)
                hvps[p.name].append(ctx.num_matvecs - before)
            ctx.release()
        print(f"  measurement {m + 1} after step {len(steps)}: build {builds[-1]:.1f} s, "
              + ", ".join(f"{n} {runs[n][-1]:.1f} s ({hvps[n][-1]} HVPs)" for n in runs), flush=True)
    return steps, builds, runs, hvps


def bench_main(args: argparse.Namespace) -> None:
    """Per-probe costs on a ``Bench`` model (no fit) and the overhead they predict at the default intervals."""
    device = device_of(args.device)
    widths = (8, 16, 32, 64) if args.quick else (64, 128, 256, 512)
    bench = make_resnet_bench(batch=args.batch or 32, num_samples=1024 if args.quick else 4096, widths=widths, device=device)
    if args.quick:
        args.measurements, args.gap, args.warmup_steps = 2, 5, 5
    steps, builds, runs, hvps = measure_probes(bench, args)
    unit = median(steps)
    build_cost = median(builds) / unit
    print(f"\n## Cost of the default probes — {bench.description}")
    print(f"{environment()}; no fit: {args.measurements} measurements of the whole default suite, after "
          f"{args.warmup_steps} SGD steps and then every {args.gap}; training step {unit * 1e3:.0f} ms (median of "
          f"{len(steps)})\n")
    rows, shares = [], {}
    for p in default_probes():
        times = runs[p.name]
        later = times[1:] or times  # the spectrum is warm-started from the second measurement on
        cost = median(later) / unit
        shares[p.name] = (cost, p.every_n_steps)
        rows.append([p.name, p.every_n_steps, len(later), f"{median(hvps[p.name][1:] or hvps[p.name]):.0f}", f"{cost:.1f}",
                     f"{times[0] / unit:.1f} ({hvps[p.name][0]} HVPs)", f"{cost / p.every_n_steps * 100:.3f} %"])
    interval = min(iv for _, iv in shares.values())
    rows.append(["gradient graph (once per measurement)", interval, len(builds), "—", f"{build_cost:.1f}", "",
                 f"{build_cost / interval * 100:.3f} %"])
    print(table(["probe", "default interval (steps)", "measurements", "median HVPs", "cost (training steps)",
                 "first measurement (cold)", "share at interval"], rows))
    print("\ncost: median over the measurements after the first, in training steps (probe seconds / median SGD step); "
          "the graph build is counted apart from the probes.")
    intervals = {n: iv for n, (_, iv) in shares.items()}
    total = predict(shares, build_cost, intervals, None)
    cold = dict(shares, hessian_spectrum=(runs["hessian_spectrum"][0] / unit, intervals["hessian_spectrum"]))
    print(f"\npredicted overhead at the default intervals (Σ cost / interval, graph at every {interval} steps): {total:.2f} %; "
          f"with the spectrum at its cold first-measurement cost: {predict(cold, build_cost, intervals, None):.2f} %")
    print_predictions(shares, build_cost, 10000, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "resnet18"), default="mlp",
                        help="mlp: two trainer.fit runs; resnet18: per-probe costs on the model, no fit")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every default interval by this")
    parser.add_argument("--repeats", type=int, default=1, help="fits per side (alternating order)")
    parser.add_argument("--batch", type=int, default=None, help="batch (MLP 512, ResNet-18 32)")
    parser.add_argument("--measurements", type=int, default=3, help="resnet18: measurements of the default suite")
    parser.add_argument("--gap", type=int, default=20, help="resnet18: SGD steps between measurements")
    parser.add_argument("--warmup-steps", type=int, default=30, help="resnet18: SGD steps before the first measurement")
    parser.add_argument("--device", default="cpu", help="resnet18 only: cpu | cuda | auto")
    parser.add_argument("--input-dim", type=int, default=784)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--num-samples", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--suite", choices=("default", "guard", "spectrum100"), default="default",
                        help="default: LandscapeMonitor() (spectrum, trace, density); guard: the scenario benchmark's "
                        "alerting configuration (spectrum, L2, channels, saddle branches + every rule + the controller); "
                        "spectrum100: HessianSpectrum(every_n_steps=100) alone")
    args = parser.parse_args()
    set_threads(args.threads)
    if args.model == "resnet18":
        bench_main(args)
        return
    args.batch = args.batch or 512
    if args.quick:
        args.steps, args.scale, args.input_dim, args.hidden, args.batch = 200, 0.1, 64, [64, 64], 128
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)

    without, with_, own, clock = [], [], [], []
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
                if args.suite == "guard":
                    monitor = guard_monitor(controller=True)
                elif args.suite == "spectrum100":
                    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=100)])
                else:
                    monitor = LandscapeMonitor()
                probes = monitor.probes
                for p in probes:
                    p.every_n_steps = max(1, round(p.every_n_steps * args.scale))
                    timings.wrap_probe(p)
                with_.append(fit(args, monitor))
                own.append(monitor.summary()["probe_seconds"])
                clock.append(monitor.summary()["overhead"])
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
        [f"fit with the monitor ({args.suite} suite) (s)", f"{mon:.1f}"],
        ["overhead, wall-time difference", f"{(mon - base) / base * 100:.1f} %"],
        ["**overhead, in-process clock** (time inside measurements ÷ the fit's time without them)",
         f"**{median(clock) * 100:.1f} %**"],
        ["time inside measurements ÷ the separate fit without the monitor", f"{median(own) / base * 100:.1f} %"],
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

    print("\nEach measurement, per probe (HVPs: cost in training steps, graph build excluded):")
    for p in probes:
        runs = timings.runs.get(p.name, [])
        if runs:
            print(f"  {p.name}: " + ", ".join(f"{h}: {r / step:.1f}" for h, r in zip(timings.hvps[p.name], runs)))

    print_predictions(shares, build_cost, args.steps, args.scale)


def predict(shares: dict[str, tuple[float, int]], build_cost: float, intervals: dict[str, int], steps: int | None) -> float:
    """Overhead in % of training: Σ cost / interval, the graph build at the most frequent interval.

    With ``steps``, a finite run that also measures every probe at step 1 (``measure_first_step``).
    """
    share = sum(shares[n][0] / intervals[n] for n in shares) + build_cost / min(intervals.values())
    if steps is None:
        return share * 100
    first = sum(shares[n][0] for n in shares) + build_cost
    return (share + first / steps) * 100


def print_predictions(shares: dict[str, tuple[float, int]], build_cost: float, steps: int, scale: float) -> None:
    """The predicted-overhead table for the measured intervals and three other choices."""
    candidates = [
        {n: iv for n, (_, iv) in shares.items()},
        {"hessian_spectrum": 500, "hessian_trace": 1000, "hessian_density": 5000},
        {"hessian_spectrum": 1000, "hessian_trace": 2000, "hessian_density": 10000},
        {"hessian_spectrum": 500, "hessian_trace": 2000, "hessian_density": 10000},
    ]
    pred, seen = [], []
    for i, c in enumerate(candidates):
        c = {n: (c[n] if i == 0 else max(1, round(c[n] * scale))) for n in shares if n in c}
        if len(c) != len(shares) or c in seen:
            continue
        seen.append(c)
        pred.append([", ".join(f"{n.removeprefix('hessian_')} {v}" for n, v in c.items()),
                     f"{predict(shares, build_cost, c, None):.1f} %", f"{predict(shares, build_cost, c, steps):.1f} %",
                     f"{predict(shares, build_cost, c, 10 * steps):.1f} %"])
    print("\nPredicted overhead from the per-measurement costs above (the graph is counted at the most frequent "
          "interval; step-1 measurement of every probe included in the finite-run columns):\n")
    print(table(["intervals (steps)", "long run", f"{steps}-step run", f"{10 * steps}-step run"], pred))


if __name__ == "__main__":
    main()
