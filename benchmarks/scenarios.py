"""Scenario benchmark: does the default monitor warn before realistic training failures, and stay quiet
on healthy runs?

Runs many small, realistic Lightning trainings on CPU (MLP / ResNet-style CNN with BatchNorm / Transformer
encoder / deep linear net / the channel toy; SGD, momentum, Adam, AdamW; warm-up and cosine schedules):

* healthy runs, which must train well and raise no alert (every alert is a false alarm);
* failure runs (``lr_divergence``, ``adam_spike``, ``l2_collapse``, ``channel``, ``saddle_plateau``), each
  with its failure step taken from an identical *unmonitored* run;

and scores the monitor of ``_scenario_config.build_monitor`` (library defaults): recall and lead time
per rule and failure type, false alarms per 1,000 healthy steps, what the weight-decay controller
did, the monitor's overhead, and whether monitoring changed the loss curve at all. Definitions:
``_scenario_runs.py`` (criteria) and ``_scenario_report.py`` (scores).

    python benchmarks/scenarios.py                 # full: 53 jobs, ≈ 13 min on 2 cores (18 min on a busy machine)
    python benchmarks/scenarios.py --quick         # subset: 7 jobs, ≈ 80 s
    python benchmarks/scenarios.py --only lr_div_mlp,channel_toy --seeds 2 --json out.json
    python benchmarks/scenarios.py --list
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported, here and in spawned workers

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _scenario_report import render, summarise, summary_table  # noqa: E402
from _scenario_runs import SCENARIOS, job_list, run_job  # noqa: E402


def _job(args: tuple[str, int, bool, bool]) -> dict[str, Any]:
    name, seed, quick, curves = args
    try:
        return run_job(name, seed, quick, curves)
    except Exception as err:  # one broken scenario must not take the table down
        import traceback

        return {"scenario": name, "seed": seed, "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()}


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else (None if math.isnan(x) else ("inf" if x > 0 else "-inf"))
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _rules() -> list[str]:
    from _scenario_config import build_monitor

    return [r.name for r in build_monitor(controller=False).alerts.rules]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the quick subset (one seed, ~3 healthy + 4 failure runs)")
    p.add_argument("--only", default="", help="comma-separated scenario names (see --list)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per scenario (default: 2 healthy, 5 failure; quick 1)")
    p.add_argument("--workers", type=int, default=2, help="parallel worker processes (1: run in this process)")
    p.add_argument("--json", default="", help="write every result to this path")
    p.add_argument("--curves", action="store_true", help="also store per-step loss/signal curves in the JSON")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = p.parse_args(argv)

    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:<26} {s.kind:<15} {s.steps:>5} steps{' (quick)' if s.quick_steps else '':<9} {s.description}")
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; known: {sorted(SCENARIOS)}")
    jobs = job_list(names, args.quick, args.seeds)
    if not jobs:
        p.error("no job selected (with --quick only the quick scenarios run)")
    print(f"{len(jobs)} jobs ({'quick' if args.quick else 'full'}), {args.workers} worker(s)", flush=True)

    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    payload = [(n, s, args.quick, args.curves) for n, s in jobs]
    if args.workers <= 1:
        import torch

        torch.set_num_threads(1)
        stream = map(_job, payload)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(args.workers)
        stream = pool.imap_unordered(_job, payload)
    try:
        for r in stream:
            results.append(r)
            what = r.get("error") or (f"failure step {r['ground_truth']['failure_step']}, "
                                      f"{len(r['alerts'])} alert(s)")
            print(f"  [{time.perf_counter() - started:6.0f} s] {r['scenario']}/s{r['seed']}: "
                  f"{r.get('seconds', 0):.0f} s, {what}", flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    wall = time.perf_counter() - started

    errors = [r for r in results if "error" in r]
    ok = [r for r in results if "error" not in r]
    order = {n: i for i, n in enumerate(SCENARIOS)}
    ok.sort(key=lambda r: (order[r["scenario"]], r["seed"]))
    healthy = [r for r in ok if r["kind"] == "healthy"]
    failures = [r for r in ok if r["kind"] != "healthy"]
    for r in healthy:
        r.setdefault("controller_actions", 0)
    for r in failures:
        r["type"], r["failure_step"] = r["kind"], r["ground_truth"]["failure_step"]
    rules = _rules()
    summary = summarise(healthy, failures, rules)
    print()
    print(render(healthy, failures, summary, rules))
    per_scenario: dict[str, float] = {}
    for r in results:
        per_scenario[r["scenario"]] = per_scenario.get(r["scenario"], 0.0) + r.get("seconds", 0.0)
    print("\n## Time per scenario (CPU seconds, all seeds and variants)\n")
    print("  " + ", ".join(f"{n} {s:.0f}" for n, s in per_scenario.items()))
    print(f"\ntotal wall time {wall:.0f} s ({args.workers} worker(s))")
    print("\n## Summary (default monitor)\n")
    print(summary_table(summary))
    for r in errors:
        print(f"\nERROR in {r['scenario']}/s{r['seed']}: {r['error']}\n{r['traceback']}")
    if args.json:
        doc = {"mode": "quick" if args.quick else "full", "wall_seconds": wall, "workers": args.workers,
               "rules": rules, "scenario_seconds": per_scenario, "healthy": healthy, "failures": failures,
               "errors": errors, "summary": summary}
        with open(args.json, "w") as fh:
            json.dump(_json_safe(doc), fh, indent=1)
        print(f"\nresults written to {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
