"""Warm vs cold Lanczos for λmax/λmin over a training run, against a long Lanczos reference.

    python benchmarks/warm_start.py            # MLP 784-256-256-10, batch 512, CPU (≈ 2–4 min on 2 cores)
    python benchmarks/warm_start.py --quick    # smaller model, for a smoke run

At every measurement step the same Hessian (fixed probe batch) is solved three ways in one process:
cold (random start), warm (previous Ritz vectors + 1 % noise, as ``HessianSpectrum`` does) and a
reference (Lanczos to a 1e-6 residual, up to 150 steps). Prints HVPs per measurement and the relative
error of each against the reference, and the cost of one HVP in training steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_landscape import HessianSpectrum, ProbeContext
from lightning_landscape.guards import probe_guard
from lightning_landscape.linalg import lanczos_extremes
from lightning_landscape.tasks import build_mlp, make_teacher_student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=15)
    parser.add_argument("--tol", type=float, default=1e-2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    d, hidden, batch = (784, (256, 256), 512) if not args.quick else (64, (64, 64), 256)
    x, y = make_teacher_student(num_samples=8192, input_dim=d, classes=10, teacher_width=32, seed=0)
    model = build_mlp(d, hidden, 10, "relu")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    probe_x, probe_y = x[:batch], y[:batch]

    def loss_on(xb, yb):
        return torch.nn.functional.cross_entropy(model(xb), yb)

    warm_probe = HessianSpectrum(max_iter=40, tol=args.tol)
    cold_probe = HessianSpectrum(max_iter=40, tol=args.tol, warm_start=False)
    rows = []
    step_seconds, hvp_seconds = [], []
    g = torch.Generator().manual_seed(1)
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        t0 = time.perf_counter()
        opt.zero_grad()
        loss_on(x[idx], y[idx]).backward()
        opt.step()
        step_seconds.append(time.perf_counter() - t0)
        if step % args.every and step != 1:
            continue
        with probe_guard(model):
            ctx = ProbeContext(model, lambda: loss_on(probe_x, probe_y), step=step)
            op = ctx.hessian()
            t0 = time.perf_counter()
            warm = warm_probe.run(ctx).scalars
            n_warm = op.num_matvecs
            hvp_seconds.append((time.perf_counter() - t0) / max(n_warm, 1))
            cold = cold_probe.run(ctx).scalars
            v0 = torch.randn(op.dim, generator=torch.Generator().manual_seed(step))
            ref = lanczos_extremes(op.matvec, v0, max_iter=150, tol=1e-6)
        rows.append((step, warm, cold, ref))

    def rel(a: float, b: float, scale: float) -> float:
        return abs(a - b) / scale

    print(f"model MLP {d}-{'-'.join(map(str, hidden))}-10, batch {batch}, {args.steps} SGD steps, "
          f"measured every {args.every} steps, tol {args.tol:g}")
    print(f"{'step':>5} {'λmax ref':>10} {'λmin ref':>10} {'cold HVPs':>9} {'warm HVPs':>9} {'cold err':>9} {'warm err':>9}")
    cold_hvps, warm_hvps, cold_err, warm_err = [], [], [], []
    for step, warm, cold, ref in rows:
        scale = max(abs(ref.lambda_max), abs(ref.lambda_min))
        ew = max(rel(warm["lambda_max"], ref.lambda_max, abs(ref.lambda_max)), rel(warm["lambda_min"], ref.lambda_min, scale))
        ec = max(rel(cold["lambda_max"], ref.lambda_max, abs(ref.lambda_max)), rel(cold["lambda_min"], ref.lambda_min, scale))
        cold_hvps.append(cold["lanczos_hvps"]); warm_hvps.append(warm["lanczos_hvps"])
        cold_err.append(ec); warm_err.append(ew)
        print(f"{step:>5} {ref.lambda_max:>10.4g} {ref.lambda_min:>10.4g} {cold['lanczos_hvps']:>9.0f} "
              f"{warm['lanczos_hvps']:>9.0f} {ec:>9.2e} {ew:>9.2e}")
    later = slice(1, None)  # the first measurement has nothing to warm-start from
    ratio = statistics.median(hvp_seconds) / statistics.median(step_seconds)
    print()
    print("| start | median HVPs / measurement | median error vs reference | max error | median training steps / measurement |")
    print("|---|---|---|---|---|")
    for name, hv, er in (("cold", cold_hvps[later], cold_err[later]), ("warm", warm_hvps[later], warm_err[later])):
        print(f"| {name} | {statistics.median(hv):.0f} | {statistics.median(er):.1e} | {max(er):.1e} | "
              f"{statistics.median(hv) * ratio:.1f} |")
    print(f"\none HVP (graph reused) = {ratio:.2f} training steps; errors: |Δλmax|/|λmax| and |Δλmin|/max|λ|, worst of the two")


if __name__ == "__main__":
    main()
