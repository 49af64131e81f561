"""Cost and accuracy of the finite-difference Hessian-vector product (the FSDP2 path) against the exact one.

    python benchmarks/fd_hvp.py            # MLP 784-2048-2048-2048-10 (10 M parameters), batch 64, 1 thread
    python benchmarks/fd_hvp.py --quick    # MLP 784-256-256-256-10

Both operators run in one process on the same model and probe batch, side by side: the double-backward
``HessianOperator`` (what single-device and DDP runs use) and ``FiniteDifferenceHessianOperator`` (what
sharded FSDP2 parameters get: two gradients per product, central difference, step ``u^{1/3}·max(1, |θ|)``).
Reported: time per product (median of ``--products``) in training steps of the same process, the relative
error of the finite-difference product against the exact one on random and on top-eigenvector
directions, and the error estimate the operator reports (``hessian/hvp_error``). The model trains a few
steps first (``--warmup``) so the point is not the initialisation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _common import environment, make_mlp_bench, set_threads, table  # noqa: E402

from lightning_landscape.hessian import FiniteDifferenceHessianOperator, HessianOperator  # noqa: E402
from lightning_landscape.linalg import lanczos_extremes  # noqa: E402
from lightning_landscape.parameters import ParameterSpace  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--products", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    set_threads(1)
    hidden = (256, 256, 256) if args.quick else (2048, 2048, 2048)
    bench = make_mlp_bench(hidden=hidden, batch=64, activation="tanh", lr=0.05)
    steps = [bench.train_step() for _ in range(args.warmup)]
    step = statistics.median(steps[len(steps) // 2:])
    space = ParameterSpace.from_module(bench.model)
    gen = torch.Generator().manual_seed(0)
    directions = [torch.randn(space.dim, generator=gen) for _ in range(args.products)]

    exact = HessianOperator(bench.loss(), space)
    exact_times, exact_out = [], []
    for v in directions:
        t0 = time.perf_counter()
        exact_out.append(exact.matvec(v))
        exact_times.append(time.perf_counter() - t0)
    top = lanczos_extremes(exact, torch.randn(space.dim, generator=gen), max_iter=40, tol=1e-4).vector_max
    exact_top = exact.matvec(top)
    exact.release()
    del exact

    fd = FiniteDifferenceHessianOperator(bench.loss, space)
    fd.matvec(directions[0])  # the first product also takes the 2h error estimate: not timed
    fd_times, errors = [], []
    for v, want in zip(directions, exact_out):
        t0 = time.perf_counter()
        got = fd.matvec(v)
        fd_times.append(time.perf_counter() - t0)
        errors.append(float((got - want).norm() / want.norm()))
    top_error = float((fd.matvec(top) - exact_top).norm() / exact_top.norm())

    print(bench.description)
    print(environment())
    print(f"training step: {step * 1e3:.1f} ms (median)")
    rows = [
        ["exact (double backward, graph kept)", f"{statistics.median(exact_times) / step:.2f}", "—", "—"],
        ["central difference (two gradients)", f"{statistics.median(fd_times) / step:.2f}",
         f"{max(errors):.1e} random, {top_error:.1e} top eigenvector", f"{fd.error_estimate:.1e}"],
    ]
    print(table(["Hessian-vector product", "time (training steps)", "relative error vs exact", "reported estimate"], rows))


if __name__ == "__main__":
    main()
