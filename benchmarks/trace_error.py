"""Hessian trace: our Hutch++ vs PyHessian 0.1's Hutchinson ``trace()`` at an equal number of HVPs.

    OMP_NUM_THREADS=1 python benchmarks/trace_error.py --threads 1   # both models (1 CPU thread ≈ 15–25 min)
    python benchmarks/trace_error.py --quick                          # fewer seeds and budgets (≈ 1 min)

Two models, both trained for a few hundred SGD steps on 10-class teacher–student data first:

* ``small``: MLP 64-32-32-10 (3,466 parameters), batch 256 — the exact trace is the sum of the exact
  Hessian diagonal (all 3,466 unit-vector HVPs);
* ``benchmark``: MLP 784-256-256-10 (269,322 parameters), batch 512 — the reference is Hutch++ with
  ``--ref-matvecs`` HVPs (its standard error is printed; it is far below the errors compared).

For every budget of HVPs and seed, the same Hessian is estimated by our ``hutchpp_trace_bounded`` (the
``HessianTrace`` default: Krylov sketch held as scalars, adaptive split), ``hutchpp_trace`` (the same with
the sketch's basis kept, ``keep_basis=True``), the classic Hutch++ (``sketch="random"``), our
``hutchinson_trace``, and PyHessian's ``hessian(...).trace(maxIter=budget,
tol=-inf)`` (the tolerance disables its early stop, so it spends exactly ``budget`` HVPs). Reported per
row: the root-mean-square relative error over seeds with its bootstrap standard error (2,000 resamples
of the seeds); its ratio to PyHessian's and to our Hutchinson's, each with a 95 % bootstrap interval
(seeds resampled jointly, so the ratio to our Hutchinson — same seed, same Rademacher vectors — is
paired and tight); median and max error; the median reported standard error and how often the error
is within two of them; the HVPs the Hutch++ sketch took. The seeds (200 on the small model, 24 on the
benchmark MLP) are what makes differences of ~10 % in RMS error resolvable on the small model; on the
benchmark MLP the intervals stay wide (±30 %).
"""

from __future__ import annotations

import argparse
import math
from functools import partial

import torch

from _common import F, environment, import_pyhessian, make_mlp_bench, median, pyhessian_sandbox, set_threads, table, error_text
from lightning_landscape.guards import probe_guard
from lightning_landscape.hessian import HessianOperator
from lightning_landscape.linalg import hutchinson_trace, hutchpp_trace
from lightning_landscape.linalg.hutchpp_bounded import hutchpp_trace_bounded
from lightning_landscape.parameters import ParameterSpace


def exact_trace(op: HessianOperator, chunk: int = 256) -> float:
    """Σ H_ii from all unit vectors, ``chunk`` HVPs per batched backward call."""
    dim = op.dim
    total = 0.0
    params = [op.space.params[i] for i in op._live]
    offsets = op.space.slices()
    for start in range(0, dim, chunk):
        rows = torch.arange(start, min(start + chunk, dim))
        eye = torch.zeros(rows.numel(), dim, dtype=op.space.dtype, device=op.space.device)
        eye[torch.arange(rows.numel()), rows] = 1.0
        outs = [eye[:, sl].reshape(rows.numel(), *p.shape) for sl, p in zip(offsets.values(), op.space.params)]
        hv = torch.autograd.grad(op._grads, params, grad_outputs=[outs[i] for i in op._live], retain_graph=True,
                                 is_grads_batched=True, allow_unused=True)
        full = torch.zeros_like(eye)
        for i, h in zip(op._live, hv):
            if h is not None:
                full[:, list(offsets.values())[i]] = h.reshape(rows.numel(), -1)
        total += float(full[torch.arange(rows.numel()), rows].double().sum())
    return total


LABELS = {
    "hutchpp_bounded": "ours, Hutch++ Krylov sketch held as scalars (HessianTrace default)",
    "hutchpp": "ours, Hutch++ Krylov sketch with its basis (keep_basis=True)",
    "hutchpp_random": "ours, Hutch++ classic random sketch",
    "hutchinson": "ours, Hutchinson",
    "pyhessian": "PyHessian 0.1 trace() (Hutchinson)",
}


def bootstrap_rms(errs: dict[str, list[float]], resamples: int = 2000, seed: int = 0) -> dict[str, torch.Tensor]:
    """RMS error of every estimator on the same ``resamples`` bootstrap resamples of the seeds.

    Resampling the seeds jointly keeps the pairing (same seed, same Hessian), so ratios of two rows get
    a confidence interval that accounts for any correlation between them.
    """
    n = len(next(iter(errs.values())))
    idx = torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(seed))
    return {k: torch.tensor(v, dtype=torch.float64)[idx].pow(2).mean(1).sqrt() for k, v in errs.items() if len(v) == n}


def _ratio_text(boot: dict[str, torch.Tensor], key: str, other: str) -> str:
    """RMS ratio ``key / other`` on the full sample with its 95 % bootstrap percentile interval."""
    if key == other or key not in boot or other not in boot:
        return "—"
    r = boot[key] / boot[other]
    lo, hi = torch.quantile(r, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return f"[{lo:.2f}, {hi:.2f}]"


def budget_rows(m: int, errs: dict[str, list[float]], ses: dict[str, list[float]], sketch: dict[str, list[int]]) -> list[list]:
    """Table rows for one budget: RMS ± bootstrap s.e. and RMS ratios with 95 % intervals.

    The ratio to our Hutchinson is paired (same seed, same Rademacher vectors: the Krylov start is
    Hutchinson's first vector), so its interval is narrow; PyHessian draws independent vectors.
    """
    boot = bootstrap_rms(errs)
    rms = {k: math.sqrt(sum(x * x for x in v) / len(v)) for k, v in errs.items() if v}
    rows = []
    for key, label in LABELS.items():
        e = errs[key]
        if not e:
            continue
        ratios = []
        for other in ("pyhessian", "hutchinson"):
            ci = _ratio_text(boot, key, other)
            ratios.append("—" if ci == "—" else f"{rms[key] / rms[other]:.2f} {ci}")
        if key in ses:
            se = f"{median(ses[key]):.1e}"
            cover = f"{sum(abs(x) <= 2 * s for x, s in zip(e, ses[key])) / len(e):.0%}"
        else:
            se, cover = "— (none reported)", "—"
        k = f"{sum(sketch[key]) / len(sketch[key]):.1f}" if sketch.get(key) else "—"
        rows.append([m, label, f"{rms[key]:.2e} ± {float(boot[key].std()):.1e}" if key in boot else f"{rms[key]:.2e}", *ratios,
                     f"{median([abs(x) for x in e]):.2e}", f"{max(abs(x) for x in e):.2e}", se, cover, k])
    return rows


def study(name, bench, train_steps, budgets, seeds, hessian_cls, reference: str, ref_matvecs: int):
    for _ in range(train_steps):
        bench.train_step()
    model = bench.model
    space = ParameterSpace.from_module(model)
    with probe_guard(model):
        op = HessianOperator(bench.loss(), space)
        if reference == "exact":
            ref, ref_se, ref_label = exact_trace(op), 0.0, f"exact (Σ diag H, {space.dim} unit HVPs)"
        else:
            est = hutchpp_trace(op.matvec, space.dim, ref_matvecs, torch.Generator().manual_seed(10_000), space.dtype, space.device)
            ref, ref_se, ref_label = est.value, est.stderr, f"Hutch++ with {ref_matvecs} HVPs"
    print(f"\n## {name}: {bench.description}, after {train_steps} SGD steps")
    print(f"reference trace {ref:.6g} ± {ref_se:.2g} ({ref_label})\n")
    failure = ""
    rows = []
    for m in budgets:
        errs: dict[str, list[float]] = {"hutchpp_bounded": [], "hutchpp": [], "hutchpp_random": [], "hutchinson": [],
                                        "pyhessian": []}
        ses: dict[str, list[float]] = {"hutchpp_bounded": [], "hutchpp": [], "hutchpp_random": [], "hutchinson": []}
        sketch: dict[str, list[int]] = {"hutchpp_bounded": [], "hutchpp": [], "hutchpp_random": []}
        for seed in seeds:
            gen = lambda: torch.Generator(device=space.device).manual_seed(seed)  # noqa: E731
            for key, fn in (("hutchpp_bounded", hutchpp_trace_bounded), ("hutchpp", hutchpp_trace),
                            ("hutchpp_random", partial(hutchpp_trace, sketch="random")),
                            ("hutchinson", hutchinson_trace)):
                est = fn(op.matvec, space.dim, m, gen(), space.dtype, space.device)
                errs[key].append((est.value - ref) / abs(ref))
                ses[key].append(est.stderr / abs(ref))
                if key in sketch:
                    sketch[key].append(est.sketch_matvecs)
            if hessian_cls is not None and not failure:
                try:
                    with pyhessian_sandbox(model):
                        # PyHessian draws its probes from the global RNG (restored after). With the same seed its
                        # Rademacher vectors equal our hutchinson_trace's (identical errors): offset for independence.
                        torch.manual_seed(seed + 100_000)
                        h = hessian_cls(model, F.cross_entropy, data=(bench.probe_x, bench.probe_y), cuda=space.device.type == "cuda")
                        samples = h.trace(maxIter=m, tol=-math.inf)
                        del h
                    assert len(samples) == m, f"PyHessian spent {len(samples)} HVPs, not {m}"
                    errs["pyhessian"].append((float(sum(samples) / len(samples)) - ref) / abs(ref))
                except Exception as err:
                    failure = error_text(err)

        rows += budget_rows(m, errs, ses, sketch)
        print(f"  budget {m} done", flush=True)
    op.release()
    print(f"\n{len(seeds)} seeds per row; errors relative to |reference trace|\n")
    print(table(["HVPs", "estimator", "RMS error ± s.e.", "RMS ÷ PyHessian [95 % CI]", "RMS ÷ our Hutchinson, paired [95 % CI]",
                 "median |error|", "max |error|", "median reported stderr", "|error| ≤ 2 stderr", "sketch HVPs (mean)"], rows))
    if failure:
        print(f"\nPyHessian trace() failed: {failure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200, help="seeds per budget on the small (exact) model")
    parser.add_argument("--big-seeds", type=int, default=24, help="seeds per budget on the benchmark MLP")
    parser.add_argument("--budgets", type=int, nargs="+", default=[12, 24, 48, 96])
    parser.add_argument("--big-budgets", type=int, nargs="+", default=[12, 48])
    parser.add_argument("--ref-matvecs", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.budgets, args.skip_big = 8, [12, 48], True
    set_threads(args.threads)
    hessian_cls, version = import_pyhessian()
    print(f"{environment()}; PyHessian {version}")
    study("small MLP, exact trace", make_mlp_bench(64, (32, 32), batch=256, num_samples=4096, lr=0.05), 300,
          args.budgets, range(args.seeds), hessian_cls, "exact", 0)
    if not args.skip_big:
        study("benchmark MLP, Hutch++ reference", make_mlp_bench(), 300, args.big_budgets, range(args.big_seeds),
              hessian_cls, "hutchpp", args.ref_matvecs)


if __name__ == "__main__":
    main()
