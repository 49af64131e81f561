"""What a probe-batch cap does to the curves: λmax, λmin and the trace on disjoint subsets of ``m`` samples.

    OMP_NUM_THREADS=1 python benchmarks/probe_cap.py               # steps 1, 500, 1000; m = 64…512 (CPU ≈ 15 min)
    OMP_NUM_THREADS=1 python benchmarks/probe_cap.py --quick       # smoke run

The benchmark MLP (784-256-256-10, SGD lr 0.1 momentum 0.9) is trained at batch ``max(sizes) · subsets`` (2,048); at each listed step the
weights are frozen and, for every size ``m``, ``--subsets`` disjoint subsets of ``m`` training samples each
get λmax/λmin from a long Lanczos run (residual 1e-5) and the trace from a 48-product Hutch++. The spread
across subsets is the noise a cap of ``m`` adds to a curve; the change of the mean with ``m`` is its bias.
"""

from __future__ import annotations

import argparse

import torch
from _common import make_mlp_bench, set_threads

from lightning_landscape.hessian import HessianOperator
from lightning_landscape.linalg import hutchpp_trace, lanczos_extremes
from lightning_landscape.linalg.random import gaussian
from lightning_landscape.parameters import ParameterSpace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 500, 1000])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--subsets", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    set_threads(args.threads)
    hidden = (256, 256)
    if args.quick:
        args.steps, args.sizes, args.subsets, hidden = [1, 20], [32, 64], 2, (32, 32)
    bench = make_mlp_bench(hidden=hidden, batch=max(args.sizes) * args.subsets)
    space = ParameterSpace.from_module(bench.model)
    done = 0
    print("| step | m | λmax (mean ± sd) | λmin (mean ± sd) | trace (mean ± sd) |\n|---|---|---|---|---|")
    for target in args.steps:
        while done < target:
            bench.train_step()
            done += 1
        for m in args.sizes:
            values = []
            for k in range(args.subsets):
                xb, yb = bench.x[k * m:(k + 1) * m], bench.y[k * m:(k + 1) * m]
                op = HessianOperator(bench.loss(xb, yb), space)
                start = gaussian(space.dim, torch.Generator().manual_seed(5), space.dtype, space.device)
                ext = lanczos_extremes(op.matvec, start, max_iter=120, tol=1e-5)
                tr = hutchpp_trace(op.matvec, space.dim, 48, torch.Generator().manual_seed(k), space.dtype, space.device)
                values.append((ext.lambda_max, ext.lambda_min, tr.value))
            v = torch.tensor(values, dtype=torch.float64)
            mean, sd = v.mean(0), v.std(0)
            print(f"| {target} | {m} | {mean[0]:.4g} ± {sd[0]:.2g} | {mean[1]:.3g} ± {sd[1]:.2g} | "
                  f"{mean[2]:.4g} ± {sd[2]:.2g} |", flush=True)


if __name__ == "__main__":
    main()
