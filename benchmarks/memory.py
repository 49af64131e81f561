"""Peak memory of one measurement relative to one training step.

    python benchmarks/memory.py                  # MLP 784-256-256-10, batch 512 (CPU ≈ 1 min)
    python benchmarks/memory.py --device cuda    # torch.cuda.max_memory_allocated on a GPU

Every case runs in a fresh subprocess (a fresh heap), after the same set-up, a training step, one
unmeasured run of the case (first-call workspaces; the warm start of the spectrum) and another training
step (gradients and momentum buffers exist, as during training):

* CPU: the peak resident set size (``VmHWM``) is reset through ``/proc/self/clear_refs`` right before the
  case and read back after it; the number reported is ``VmHWM − VmRSS`` before the case. The child runs
  with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensor memory goes back to the OS instead of being
  reused silently, which would hide the peak. (``tracemalloc`` does not see torch's allocations.)
* CUDA: ``torch.cuda.reset_peak_memory_stats()``, then ``max_memory_allocated() − memory_allocated()``
  before the case — the tensors torch allocates, not the caching allocator's reserve.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CASES = {
    "train": "one training step (forward, backward, SGD update)",
    "spectrum_warm": "HessianSpectrum, warm-started (as at every measurement after the first)",
    "spectrum_cold": "HessianSpectrum, cold start, max_iter 20 (worst case of the default probe)",
    "trace": "HessianTrace (12 HVPs)",
    "density": "HessianDensity (2 × 40 Lanczos steps)",
    "default_suite": "all three default probes at one measurement (shared graph)",
}


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def child(case: str, device_name: str, threads: int, quick: bool) -> None:
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import make_mlp_bench, set_threads
    from lightning_landscape import HessianDensity, HessianSpectrum, HessianTrace, ProbeContext
    from lightning_landscape.guards import probe_guard

    set_threads(threads)
    device = torch.device(device_name)
    bench = make_mlp_bench(64, (64, 64), batch=128, device=device) if quick else make_mlp_bench(device=device)
    bench.train_step()
    spectrum = HessianSpectrum(max_iter=20)
    probes = {
        "spectrum_warm": [spectrum], "spectrum_cold": [HessianSpectrum(max_iter=20, warm_start=False)],
        "trace": [HessianTrace()], "density": [HessianDensity()],
        "default_suite": [spectrum, HessianTrace(), HessianDensity()],
    }

    def run() -> dict:
        if case == "train":
            bench.train_step()
            return {}
        with probe_guard(bench.model):
            ctx = ProbeContext(bench.model, bench.loss, step=2)
            out = {}
            for p in probes[case]:
                out.update(p.run(ctx).scalars)
            hvps = ctx.num_matvecs
            ctx.release()
        return {"hvps": hvps}

    import gc

    run()  # warm-up: first-call allocations (BLAS/LAPACK workspaces), and the warm start of the spectrum
    bench.train_step()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        extra = run()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        method = "torch.cuda.max_memory_allocated"
    else:
        before = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak RSS (VmHWM) of this process
        extra = run()
        peak = _status("VmHWM") - before
        method = "VmHWM after clear_refs"
    n = sum(p.numel() for p in bench.model.parameters())
    print(json.dumps({"case": case, "peak": peak, "method": method, "params": n, "description": bench.description, **extra}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--repeats", type=int, default=3, help="subprocesses per case (median reported)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        child(args.child, args.device, args.threads, args.quick)
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(max(args.threads, 1)))
    results: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for case in CASES:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", case, "--device", args.device,
                   "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"case {case} failed:\n{out.stderr[-2000:]}")
            results.setdefault(case, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    import statistics

    peak = {c: statistics.median(r["peak"] for r in rs) for c, rs in results.items()}
    first = results["train"][0]
    print(f"\n## Peak memory of a measurement — {first['description']}")
    print(f"{first['method']}; median of {args.repeats} fresh subprocesses per case; parameters: "
          f"{first['params']:,} ({first['params'] * 4 / 2**20:.1f} MiB in fp32)\n")
    rows = []
    for c, label in CASES.items():
        hv = results[c][0].get("hvps")
        rows.append(f"| {label} | {'' if hv is None else hv} | {peak[c] / 2**20:.1f} | {peak[c] / max(peak['train'], 1):.2f} |")
    print("| case | HVPs | peak above the state before it (MiB) | × training step |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
