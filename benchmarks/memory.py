"""Peak memory of one measurement relative to one training step.

    python benchmarks/memory.py                  # MLP 784-256-256-10, batch 512 (CPU ≈ 1 min)
    python benchmarks/memory.py --model resnet18 --batch 16 --repeats 1   # CIFAR ResNet-18 (CPU ≈ 15 min)
    python benchmarks/memory.py --device cuda    # torch.cuda.max_memory_allocated on a GPU

Every case runs in a fresh subprocess (a fresh heap), after the same set-up, a training step, one
unmeasured run of the case (first-call workspaces; the warm start of the spectrum) and another training
step (gradients and momentum buffers exist, as during training). On ResNet-18 the unmeasured run is a
light one (density 1 × 4 Lanczos steps instead of 2 × 40) to save time; the spectrum's warm start comes
from a full run as on the MLP.

* CPU: the peak resident set size (``VmHWM``) is reset through ``/proc/self/clear_refs`` right before the
  case and read back after it; the number reported is ``VmHWM − VmRSS`` before the case. The child runs
  with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensor memory goes back to the OS instead of being
  reused silently, which would hide the peak. (``tracemalloc`` does not see torch's allocations.)
* CUDA: ``torch.cuda.reset_peak_memory_stats()``, then ``max_memory_allocated() − memory_allocated()``
  before the case — the tensors torch allocates, not the caching allocator's reserve.

Two figures per case: the extra peak above the state before it, and the total peak = resident tensors
(parameters and buffers, gradients, optimizer state, the batch the case uses; counted exactly in bytes)
+ that extra, which is the issue's metric (peak of a measurement ≤ 2× that of a training step). The
PyHessian case is ``hessian(model, cross_entropy, probe batch).eigenvalues(maxIter=20)``, which runs in
eval mode (BatchNorm with running statistics: it stores less for the backward pass than train mode).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterable

CASES = {
    "train": "one training step (forward, backward, SGD update)",
    "spectrum_warm": "HessianSpectrum, warm-started (as at every measurement after the first)",
    "spectrum_cold": "HessianSpectrum, cold start, max_iter 20 (worst case of the default probe)",
    "trace": "HessianTrace (12 HVPs)",
    "density": "HessianDensity (2 × 40 Lanczos steps)",
    "default_suite": "all three default probes at one measurement (shared graph)",
    "pyhessian": "PyHessian 0.1 eigenvalues(maxIter=20) (eval mode)",
    "spectrum_light": "HessianSpectrum, warm, memory-light: hvp_chunks=4 (no graph kept), max_basis=4",
}


def _bytes(tensors: Iterable) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def resident(bench, batch) -> dict[str, int]:
    """Bytes of the tensors that live through the case: model state, gradients, optimizer state, its batch."""
    import torch

    opt_state = [v for state in bench.optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return {
        "parameters": _bytes(bench.model.parameters()) + _bytes(bench.model.buffers()),
        "gradients": _bytes(p.grad for p in bench.model.parameters()),
        "optimizer": _bytes(opt_state),
        "batch": _bytes(batch),
    }


def make_bench(model: str, batch: int | None, device, quick: bool):
    from _common import make_mlp_bench, make_resnet_bench

    if model == "resnet18":
        widths = (8, 16, 32, 64) if quick else (64, 128, 256, 512)
        return make_resnet_bench(batch=batch or (8 if quick else 32), num_samples=1024 if quick else 4096, widths=widths,
                                 device=device)
    if quick:
        return make_mlp_bench(64, (64, 64), batch=batch or 128, device=device)
    return make_mlp_bench(batch=batch or 512, device=device)


def child(case: str, model: str, batch: int | None, device_name: str, threads: int, quick: bool) -> None:
    import gc

    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import import_pyhessian, proc_status, pyhessian_top, set_threads

    from lightning_landscape import (
        HessianDensity,
        HessianSpectrum,
        HessianTrace,
        ProbeContext,
    )
    from lightning_landscape.callbacks.probe_batch import split_batch
    from lightning_landscape.guards import probe_guard

    set_threads(threads)
    device = torch.device(device_name)
    bench = make_bench(model, batch, device, quick)
    bench.train_step()
    spectrum = HessianSpectrum(max_iter=20)
    probes = {
        "spectrum_warm": [spectrum], "spectrum_cold": [HessianSpectrum(max_iter=20, warm_start=False)],
        "trace": [HessianTrace()], "density": [HessianDensity()],
        "default_suite": [spectrum, HessianTrace(), HessianDensity()],
        "spectrum_light": [HessianSpectrum(max_iter=20, max_basis=4)],
    }
    # hvp_chunks=4 as LandscapeMonitor builds it: the probe batch as four row slices, no graph kept.
    chunks = [(w, lambda b=b: bench.loss(*b)) for w, b in split_batch((bench.probe_x, bench.probe_y), 4)]
    # The unmeasured run only has to touch the same code paths (and give the spectrum its warm start).
    light = {**probes, "density": [HessianDensity(num_probes=1, num_steps=4)],
             "default_suite": [spectrum, HessianTrace(), HessianDensity(num_probes=1, num_steps=4)]}
    hessian_cls, _ = import_pyhessian()
    if case == "pyhessian" and hessian_cls is None:
        raise RuntimeError("PyHessian is not installed")

    def run(train_batch, suite) -> dict:
        if case == "train":
            bench.train_step(train_batch)
            return {}
        if case == "pyhessian":
            _, _, hvps = pyhessian_top(hessian_cls, bench.model, (bench.probe_x, bench.probe_y), device, 20)
            return {"hvps": hvps}
        with probe_guard(bench.model):
            ctx = ProbeContext(bench.model, bench.loss, step=2, loss_chunks=chunks if case == "spectrum_light" else None)
            for p in suite[case]:
                p.run(ctx)
            hvps = ctx.num_matvecs
            ctx.release()
        return {"hvps": hvps}

    run(bench.next_batch(), light if model == "resnet18" else probes)  # warm-up: first-call allocations, warm start
    bench.train_step()
    batch_used = bench.next_batch() if case == "train" else (bench.probe_x, bench.probe_y)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        extra = run(batch_used, probes)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        method = "torch.cuda.max_memory_allocated"
    else:
        before = proc_status("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak RSS (VmHWM) of this process
        extra = run(batch_used, probes)
        peak = proc_status("VmHWM") - before
        method = "VmHWM after clear_refs"
    n = sum(p.numel() for p in bench.model.parameters())
    print(json.dumps({"case": case, "peak": peak, "method": method, "params": n, "description": bench.description,
                      "resident": resident(bench, batch_used), **extra}))


def run_cases(args: argparse.Namespace, cases: list[str]) -> dict[str, list[dict]]:
    """Every case in ``args.repeats`` fresh subprocesses; a case that fails is reported, not fatal."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(max(args.threads, 1)))
    results: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for case in cases:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", case, "--device", args.device, "--model", args.model,
                   "--threads", str(args.threads)] + (["--quick"] if args.quick else []) + (
                   ["--batch", str(args.batch)] if args.batch else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                if case == "train":
                    raise RuntimeError(f"case {case} failed:\n{out.stderr[-2000:]}")
                print(f"case {case} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
                continue
            results.setdefault(case, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {case}: {results[case][-1]['peak'] / 2**20:.1f} MiB above the state before it", flush=True)
    return results


def report(results: dict[str, list[dict]], repeats: int) -> None:
    mib = 2**20
    peak = {c: statistics.median(r["peak"] for r in rs) for c, rs in results.items()}
    total = {c: sum(rs[0]["resident"].values()) + peak[c] for c, rs in results.items()}
    first = results["train"][0]
    print(f"\n## Peak memory of a measurement — {first['description']}")
    print(f"{first['method']}; median of {repeats} fresh subprocess(es) per case; parameters: "
          f"{first['params']:,} ({first['params'] * 4 / mib:.1f} MiB in fp32)\n")
    rows = []
    for c, label in CASES.items():
        if c not in results:
            continue
        hv = results[c][0].get("hvps")
        ratio = f"{peak[c] / peak['train']:.2f}" if peak["train"] > 0 else "—"  # a tiny model's step may not move VmHWM
        rows.append(f"| {label} | {'' if hv is None else hv} | {peak[c] / mib:.1f} | {ratio} | "
                    f"{total[c] / mib:.1f} | {total[c] / total['train']:.2f} |")
    print("| case | HVPs | peak above the state before it (MiB) | × training step | total peak (MiB) | total × training step |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    parts = ", ".join(f"{k} {v / mib:.1f}" for k, v in first["resident"].items())
    probe = results.get("spectrum_warm", [first])[0]["resident"]["batch"]
    print(f"\ntotal peak = resident tensors + the peak above them; resident (MiB, exact bytes): {parts} "
          f"(training batch; the probe batch of a measurement: {probe / mib:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "resnet18"), default="mlp")
    parser.add_argument("--batch", type=int, default=None, help="training and probe batch (MLP 512, ResNet-18 32)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--repeats", type=int, default=3, help="subprocesses per case (median reported)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-pyhessian", action="store_true", help="skip the PyHessian case")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=None,
                        help="run only these cases (the training step always runs: it is the unit)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        child(args.child, args.model, args.batch, args.device, args.threads, args.quick)
        return
    wanted = set(args.cases or CASES) | {"train"}
    cases = [c for c in CASES if c in wanted and not (c == "pyhessian" and args.no_pyhessian)]
    report(run_cases(args, cases), args.repeats)


if __name__ == "__main__":
    main()
