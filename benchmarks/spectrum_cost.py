"""Cost of λmax + λmin per measurement (warm-started Lanczos) vs PyHessian 0.1's power iteration.

    python benchmarks/spectrum_cost.py                 # MLP 784-256-256-10, batch 512, 2000 SGD steps (CPU ≈ 4 min)
    python benchmarks/spectrum_cost.py --quick         # smoke run (MLP 64-64-64-10, 300 steps)
    python benchmarks/spectrum_cost.py --device cuda   # the same on a GPU
    python benchmarks/spectrum_cost.py --model resnet18 --batch 16   # CIFAR ResNet-18, 150 steps, every 50 (CPU ≈ 25 min)

One process, one model, one data stream, one seed. Every ``--every`` SGD steps the Hessian of the
cross-entropy on a fixed probe batch is measured by

* ``HessianSpectrum`` (ours): one Lanczos run for λmax and λmin, warm-started from the previous
  measurement's Ritz vectors (+1 % noise), stopped at a relative Ritz residual ``--tol`` (1e-2);
* the same Lanczos from a random start (cold), for what the warm start buys;
* PyHessian 0.1: ``hessian(model, criterion, data).eigenvalues(maxIter=20)`` (power iteration, top |λ|);
* a reference: Lanczos from a random start to a 1e-5 residual (up to ``--ref-iter`` steps).

PyHessian puts the model in eval mode, so on a model with BatchNorm (ResNet-18) it measures the
Hessian of another loss (running statistics) than ours (train mode, batch statistics, the loss that
training minimises). There a second reference, Lanczos on the eval-mode loss (``--eval-ref-iter``
steps), is computed, and each method's error is against the reference of the loss it measures.

Both sides are timed with the construction of their gradient graph (one forward + ``create_graph``
backward) included, in the order alternating between measurements; costs are in training-step
equivalents (median SGD step of the same process). Then one HVP is timed four ways, PyHessian's
``density()`` is tried (it fails on torch ≥ 1.9), and a two-parameter strict saddle shows what power
iteration reports where |λmin| > λmax.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import (
    Bench,
    F,
    device_of,
    environment,
    error_text,
    import_pyhessian,
    make_mlp_bench,
    make_resnet_bench,
    median,
    pyhessian_sandbox,
    pyhessian_top,
    set_threads,
    sync,
    table,
    timed,
)
from torch import nn

from lightning_landscape import HessianSpectrum, ProbeContext
from lightning_landscape.guards import preserved_buffers, probe_guard
from lightning_landscape.hessian import HessianOperator
from lightning_landscape.linalg import lanczos_extremes
from lightning_landscape.parameters import ParameterSpace


def hvp_costs(bench: Bench, repeats: int, hessian_cls) -> tuple[list[tuple[str, float]], dict[str, str]]:
    """Median seconds of one training step and of one HVP by each route (interleaved repeats).

    Returns the timings and, for each route that raised, why (the route is then dropped).
    """
    model, dev = bench.model, bench.device
    space = ParameterSpace.from_module(model)
    v = torch.randn(space.dim, generator=torch.Generator().manual_seed(0)).to(dev)
    parts = space.unflatten(v)
    names = [n for n, _ in model.named_parameters()]
    buffers = dict(model.named_buffers())
    from torch.func import functional_call, grad, jvp

    def loss_of(params):
        # Train-mode BatchNorm updates its running statistics in place, which torch.func refuses on a
        # captured tensor: give it fresh copies of the buffers (created inside the transform).
        state = {**{n: b.clone() for n, b in buffers.items()}, **dict(zip(names, params))}
        return F.cross_entropy(functional_call(model, state, (bench.probe_x,)), bench.probe_y)

    holder: dict[str, HessianOperator] = {}

    def build():
        holder["op"] = HessianOperator(bench.loss(), space)

    def reused():
        holder["op"].matvec(v)

    def fresh():
        g = torch.autograd.grad(bench.loss(), space.params, create_graph=True)
        torch.autograd.grad(g, space.params, grad_outputs=parts)

    def fwd_over_rev():
        p = tuple(q.detach() for q in space.params)
        jvp(grad(loss_of), (p,), (tuple(parts),))

    def batched8():  # 8 HVPs in one call (vmap over the grad_outputs), per vector
        op = holder["op"]
        vs = [p.unsqueeze(0).expand(8, *p.shape) for p in parts]
        torch.autograd.grad(op._grads, space.params, grad_outputs=vs, retain_graph=True, is_grads_batched=True)

    # The saved graph is used before any other train-mode forward: BatchNorm's in-place update of its running
    # statistics would invalidate it (they are saved for the backward pass).
    routes = {"train": None, "build": build, "reused": reused, "batched8": batched8, "fresh": fresh, "fwdrev": fwd_over_rev}
    times: dict[str, list[float]] = {k: [] for k in routes}
    if hessian_cls is not None:
        routes["pyhessian"] = None
        times["pyhessian"] = []
    failed: dict[str, str] = {}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for _ in range(repeats):
        times["train"].append(bench.train_step())
        model.load_state_dict(state)  # every route sees the same weights (and BatchNorm statistics)
        for key, fn in routes.items():
            if key == "train" or key in failed:
                continue
            try:
                if key == "pyhessian":
                    import pyhessian.utils as pu

                    with pyhessian_sandbox(model):  # its graph, rebuilt after the training step (not timed)
                        h = hessian_cls(model, F.cross_entropy, data=(bench.probe_x, bench.probe_y), cuda=dev.type == "cuda")
                        dt, _ = timed(lambda: pu.hessian_vector_product(h.gradsH, h.params, parts), dev)
                        del h
                else:
                    dt, _ = timed(fn, dev)
            except Exception as err:  # e.g. a route that does not support this model's layers
                failed[key] = error_text(err)
                times.pop(key)
                continue
            times[key].append(dt / 8 if key == "batched8" else dt)
    model.load_state_dict(state)
    step = median(times["train"])
    labels = {
        "build": "build the gradient graph (forward + create_graph backward), once per measurement",
        "reused": "one HVP, gradient graph reused (ours)",
        "fresh": "one HVP, fresh double backward",
        "fwdrev": "one HVP, torch.func forward-over-reverse (jvp of grad)",
        "batched8": "one HVP inside an 8-vector batched call (is_grads_batched), per vector",
        "pyhessian": "one HVP, PyHessian 0.1 hessian_vector_product (graph reused)",
    }
    costs = [("one training step (SGD, forward + backward + update)", step)] + [
        (labels[k], median(times[k])) for k in labels if k in times
    ]
    return costs, {labels[k]: why for k, why in failed.items()}


def saddle_demo(hessian_cls) -> list[list[str]]:
    """A two-parameter model at a strict saddle with |λmin| > λmax: ŷ = w²·x + c·z, y = 3x + z, at w=0, c=1."""

    class SquaredWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))
            self.c = nn.Parameter(torch.ones(()))

        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            return self.w**2 * inp[:, 0] + self.c * inp[:, 1]

    g = torch.Generator().manual_seed(0)
    inp = torch.randn(256, 2, generator=g)
    inp[:, 1] -= inp[:, 1] @ inp[:, 0] / (inp[:, 0] @ inp[:, 0]) * inp[:, 0]  # z ⟂ x: c = 1 is optimal
    target = 3 * inp[:, 0] + inp[:, 1]
    model = SquaredWeight()
    crit = nn.functional.mse_loss
    space = ParameterSpace.from_module(model)
    blocks = torch.autograd.functional.hessian(
        lambda w, c: crit(w**2 * inp[:, 0] + c * inp[:, 1], target), (model.w.detach(), model.c.detach())
    )
    exact = torch.linalg.eigvalsh(torch.stack([torch.stack([h.reshape(()) for h in row]) for row in blocks]))
    op = HessianOperator(crit(model(inp), target), space)
    ours = lanczos_extremes(op.matvec, torch.tensor([1.0, 1.0]), max_iter=2, tol=1e-8)
    rows = [["exact (eigvalsh of the 2×2 Hessian)", f"{exact[-1]:.4g}", f"{exact[0]:.4g}"],
            ["ours (HessianOperator + lanczos_extremes)", f"{ours.lambda_max:.4g}", f"{ours.lambda_min:.4g}"]]
    if hessian_cls is not None:
        try:
            with pyhessian_sandbox(model), torch.random.fork_rng():
                torch.manual_seed(0)
                h = hessian_cls(model, crit, data=(inp, target), cuda=False)
                top, _ = h.eigenvalues(maxIter=100)
            rows.append(["PyHessian 0.1 eigenvalues(maxIter=100) 'top eigenvalue'", f"{top[0]:.4g}", "—"])
        except Exception as err:
            rows.append(["PyHessian 0.1 eigenvalues()", error_text(err), "—"])
    return rows


def print_hvp_costs(bench: Bench, args: argparse.Namespace, hessian_cls, two_modes: bool) -> dict[str, float]:
    """The table of :func:`hvp_costs`, with the routes that failed and why; returns {label: training steps}."""
    print(f"{environment()}; {args.hvp_repeats} interleaved repeats\n")
    costs, failed = hvp_costs(bench, args.hvp_repeats, hessian_cls)
    base = costs[0][1]
    print(table(["operation", "median ms", "training steps"], [[k, f"{t * 1e3:.1f}", f"{t / base:.2f}"] for k, t in costs]))
    for label, why in failed.items():
        print(f"\n{label}: failed, `{why}`")
    if two_modes:
        print("\nPyHessian's HVP runs in eval mode (BatchNorm as a fixed affine map), ours in train mode (batch statistics).")
    return {k: t / base for k, t in costs}


def print_floor(units: dict[str, float], warm_rows: list[dict]) -> None:
    """What exact HVPs allow: a measurement with k products cannot cost less than graph + k × (graph-reused HVP)."""
    graph = next((v for k, v in units.items() if k.startswith("build the gradient graph")), None)
    hvp = next((v for k, v in units.items() if k.startswith("one HVP, gradient graph reused")), None)
    if graph is None or hvp is None or not warm_rows:
        return
    k = median([r["warm_hvps"] for r in warm_rows])
    cost = median([r["warm_s"] / r["unit"] for r in warm_rows])
    print(f"\nFloor of a warm measurement: graph {graph:.2f} + {k:.0f} HVPs × {hvp:.2f} = {graph + k * hvp:.2f} training "
          f"steps; measured median {cost:.2f} (the rest: Lanczos vector work, the warm start's noise, Python). Both "
          f"extremes need ≥ 2 products, so ≤ 5 steps needs an HVP ≤ {(5 - graph) / 2:.2f} steps at 2 products, "
          f"≤ {(5 - graph) / 3:.2f} at 3.")


def mode_sensitive(model: nn.Module) -> bool:
    """Whether train and eval mode give different losses (BatchNorm or dropout present)."""
    return any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)) for m in model.modules())


def reference(bench: Bench, space: ParameterSpace, step: int, max_iter: int, eval_mode: bool = False):
    """Lanczos from a random start to a 1e-5 residual, on the train-mode (or eval-mode) probe loss."""
    with probe_guard(bench.model):  # restores modes and BatchNorm buffers
        if eval_mode:
            bench.model.eval()
        op = HessianOperator(bench.loss(), space)
        v0 = torch.randn(space.dim, generator=torch.Generator().manual_seed(step)).to(bench.device)
        ref = lanczos_extremes(op.matvec, v0, max_iter=max_iter, tol=1e-5)
        op.release()
    return ref


def make_bench(args: argparse.Namespace, device: torch.device) -> Bench:
    """The benchmark of ``--model``; fills in the model's defaults for the run-length arguments."""
    quick = args.quick
    if args.model == "resnet18":
        defaults = {"steps": 150, "every": 50, "ref_iter": 60, "hvp_repeats": 3, "batch": 32}
        if quick:
            defaults.update({"steps": 30, "every": 10, "ref_iter": 30, "hvp_repeats": 2, "batch": 8})
    else:
        defaults = {"steps": 2000, "every": 200, "ref_iter": 120, "hvp_repeats": 9, "batch": 512}
        if quick:
            defaults.update({"steps": 300, "every": 50, "ref_iter": 80, "hvp_repeats": 5, "batch": 256})
    for key, value in defaults.items():
        if getattr(args, key) is None or (quick and key != "batch"):
            setattr(args, key, value)
    if args.eval_ref_iter is None:
        args.eval_ref_iter = max(args.ref_iter // 2, 20)
    if args.model == "resnet18":
        widths = (8, 16, 32, 64) if quick else (64, 128, 256, 512)
        return make_resnet_bench(batch=args.batch, num_samples=1024 if quick else 4096, widths=widths, device=device)
    if quick:
        return make_mlp_bench(64, (64, 64), batch=args.batch, num_samples=4096, device=device)
    return make_mlp_bench(batch=args.batch, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "resnet18"), default="mlp")
    parser.add_argument("--batch", type=int, default=None, help="training and probe batch (MLP 512, ResNet-18 32)")
    parser.add_argument("--steps", type=int, default=None, help="SGD steps of the training run (MLP 2000, ResNet-18 150)")
    parser.add_argument("--every", type=int, default=None, help="measure every this many steps (MLP 200, ResNet-18 50)")
    parser.add_argument("--tol", type=float, default=1e-2, help="relative Ritz residual to converge to")
    parser.add_argument("--max-iter", type=int, default=40, help="Lanczos step cap (ours)")
    parser.add_argument("--pyhessian-iter", type=int, default=20, help="PyHessian eigenvalues(maxIter=...)")
    parser.add_argument("--ref-iter", type=int, default=None, help="reference Lanczos step cap (MLP 120, ResNet-18 60)")
    parser.add_argument("--eval-ref-iter", type=int, default=None,
                        help="eval-mode reference Lanczos step cap, BatchNorm/dropout models only (default ref-iter / 2)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-start Lanczos row")
    parser.add_argument("--hvp-repeats", type=int, default=None, help="interleaved repeats of the HVP table (MLP 9, ResNet-18 3)")
    parser.add_argument("--hvp-only", action="store_true", help="train --steps steps unmeasured, then only the HVP table")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--quick", action="store_true", help="small model, short run (smoke test)")
    args = parser.parse_args()
    set_threads(args.threads)
    device = device_of(args.device)
    bench = make_bench(args, device)
    hessian_cls, ph_version = import_pyhessian()
    model = bench.model
    space = ParameterSpace.from_module(model)
    two_modes = mode_sensitive(model)  # PyHessian's eval-mode loss differs from the training loss
    warm = HessianSpectrum(max_iter=args.max_iter, tol=args.tol)
    cold = HessianSpectrum(max_iter=args.max_iter, tol=args.tol, warm_start=False)
    if args.hvp_only:
        for _ in range(args.steps):
            bench.train_step()
        print(f"## One Hessian-vector product — {bench.description}, after {args.steps} steps")
        print_hvp_costs(bench, args, hessian_cls, two_modes)
        return
    step_times: list[float] = []
    rows = []
    ph_failure = ""
    for step in range(1, args.steps + 1):
        step_times.append(bench.train_step())
        if step % args.every and step != 1:
            continue
        # Costs are relative to the median of the last 50 training steps: the local speed of a shared machine.
        rec: dict[str, float] = {"step": step, "unit": median(step_times[-50:])}

        def ours(probe: HessianSpectrum, tag: str) -> None:
            with probe_guard(model):
                ctx = ProbeContext(model, bench.loss, step=step)
                sync(device)
                t0 = time.perf_counter()
                out = probe.run(ctx).scalars  # builds the graph on first use: included in the time
                sync(device)
                rec[f"{tag}_s"] = time.perf_counter() - t0
                ctx.release()
            rec[f"{tag}_max"], rec[f"{tag}_min"] = out["lambda_max"], out["lambda_min"]
            rec[f"{tag}_hvps"], rec[f"{tag}_res"] = out["lanczos_hvps"], out["residual"]

        def peer() -> None:
            nonlocal ph_failure
            if hessian_cls is None or ph_failure:
                return
            try:
                t, (val, vec, hvps) = timed(
                    lambda: pyhessian_top(hessian_cls, model, (bench.probe_x, bench.probe_y), device, args.pyhessian_iter), device
                )
            except Exception as err:
                ph_failure = error_text(err)
                return
            rec["ph_s"], rec["ph_val"], rec["ph_hvps"] = t, val, hvps
            with probe_guard(model):  # its Ritz residual |Hv − λv| / |λ| on the loss it measures (not timed)
                model.eval()  # PyHessian's mode; the same loss as train mode for a model without BatchNorm/dropout
                op = HessianOperator(bench.loss(), space)
                rec["ph_res"] = float((op.matvec(vec.to(space.dtype)) - val * vec).norm()) / abs(val)
                op.release()

        sides = [lambda: ours(warm, "warm"), peer] + ([] if args.no_cold else [lambda: ours(cold, "cold")])
        if (step // args.every) % 2:
            sides.reverse()  # alternate the order between measurements
        for side in sides:
            side()
        ref = reference(bench, space, step, args.ref_iter)
        rec["ref_max"], rec["ref_min"], rec["ref_res"] = ref.lambda_max, ref.lambda_min, ref.relative_residual
        if two_modes and "ph_s" in rec:
            ref = reference(bench, space, step, args.eval_ref_iter, eval_mode=True)
            rec["eref_max"], rec["eref_min"], rec["eref_res"] = ref.lambda_max, ref.lambda_min, ref.relative_residual
        rows.append(rec)
        print(f"  step {step}: ref λmax {rec['ref_max']:.4g} λmin {rec['ref_min']:.4g}; warm {rec['warm_hvps']:.0f} HVPs"
              + (f"; PyHessian {rec.get('ph_hvps', 0):.0f} HVPs, {rec['ph_val']:.4g}" if "ph_hvps" in rec else "")
              + (f" (eval-mode ref λmax {rec['eref_max']:.4g})" if "eref_max" in rec else ""), flush=True)

    train = median(step_times)
    print(f"\n## λmax + λmin per measurement — {bench.description}")
    print(f"{environment()}; {args.steps} steps, measured every {args.every} (and at step 1); "
          f"training step {train * 1e3:.1f} ms (median); PyHessian {ph_version}\n")
    ph_ref = "eref" if two_modes else "ref"  # the reference of the loss PyHessian measures
    if two_modes:
        print("PyHessian switches the model to eval mode (BatchNorm running statistics): it measures the Hessian of "
              "another loss than the training loss (batch statistics) that our probes measure. Its errors and residuals "
              f"are against an eval-mode reference (Lanczos, ≤ {args.eval_ref_iter} steps); ours against the train-mode "
              f"reference (≤ {args.ref_iter} steps).\n")

    def err_max(r, key, ref="ref"):
        return abs(r[key] - r[f"{ref}_max"]) / abs(r[f"{ref}_max"])

    def err_min(r, key, ref="ref"):
        return abs(r[key] - r[f"{ref}_min"]) / max(abs(r[f"{ref}_max"]), abs(r[f"{ref}_min"]))

    detail = []
    for r in rows:
        line = [r["step"], f"{r['ref_max']:.4g}", f"{r['ref_min']:.3g}", f"{r['ref_res']:.0e}",
                f"{r['warm_hvps']:.0f}", f"{r['warm_s'] / r['unit']:.1f}", f"{err_max(r, 'warm_max'):.1e}", f"{err_min(r, 'warm_min'):.1e}"]
        if "cold_s" in r:
            line += [f"{r['cold_hvps']:.0f}", f"{r['cold_s'] / r['unit']:.1f}"]
        if "eref_max" in r:
            line += [f"{r['eref_max']:.4g}", f"{r['eref_res']:.0e}"]
        if "ph_s" in r:
            line += [f"{r['ph_val']:.4g}", f"{r['ph_hvps']}", f"{r['ph_s'] / r['unit']:.1f}", f"{err_max(r, 'ph_val', ph_ref):.1e}",
                     f"{r['ph_res']:.1e}"]
        detail.append(line)
    header = ["step", "ref λmax", "ref λmin", "ref residual", "warm HVPs", "warm cost", "warm err λmax", "warm err λmin"]
    if not args.no_cold:
        header += ["cold HVPs", "cold cost"]
    if any("eref_max" in r for r in rows):
        header += ["eval-mode ref λmax", "eval-mode ref residual"]
    if any("ph_s" in r for r in rows):
        header += ["PyHessian λ", "PyHessian HVPs", "PyHessian cost", "PyHessian err λmax", "PyHessian residual"]
    print(table(header, detail))
    print("\ncost: wall time / median of the 50 preceding training steps, graph construction included; err λmax = |Δλmax|/|λmax|, "
          "err λmin = |Δλmin|/max|λ| against the reference; residual = |Hv − λv|/|λ| of PyHessian's vector"
          + (" (eval-mode Hessian)" if two_modes else "") + ". The first warm measurement has nothing to start from (a cold start): "
          "the warm row below summarises the later ones.\n")

    summary = []

    def add(name, key, returns_min, res_key, ref="ref", sel=None):
        sel = [r for r in (rows if sel is None else sel) if f"{key}_s" in r]
        if not sel:
            return
        val_key = "ph_val" if key == "ph" else f"{key}_max"
        e_max = [err_max(r, val_key, ref) for r in sel]
        e_min = [err_min(r, f"{key}_min", ref) for r in sel] if returns_min else []
        summary.append([
            name, len(sel), f"{median([r[f'{key}_hvps'] for r in sel]):.0f}", f"{median([r[f'{key}_s'] / r['unit'] for r in sel]):.1f}",
            f"{median([r[res_key] for r in sel]):.1e}", f"{median(e_max):.1e} / {max(e_max):.1e}",
            f"{median(e_min):.1e} / {max(e_min):.1e}" if e_min else "not computed",
        ])

    later = rows[1:] or rows
    add(f"ours, warm-started Lanczos (tol {args.tol:g}), measurements after the first", "warm", True, "warm_res", sel=later)
    if not args.no_cold:
        add(f"ours, cold Lanczos (tol {args.tol:g})", "cold", True, "cold_res")
    else:
        add("ours, first measurement (a cold start: nothing to warm-start from)", "warm", True, "warm_res", sel=rows[:1])
    if two_modes:
        add(f"PyHessian 0.1 eigenvalues(maxIter={args.pyhessian_iter}), eval mode, vs the eval-mode reference", "ph", False, "ph_res", "eref")
        add(f"PyHessian 0.1 eigenvalues(maxIter={args.pyhessian_iter}), eval mode, vs the train-mode reference (the training loss)",
            "ph", False, "ph_res")
    else:
        add(f"PyHessian 0.1 eigenvalues(maxIter={args.pyhessian_iter})", "ph", False, "ph_res")
    print(table(["method", "measurements", "median HVPs", "median cost (training steps)", "median relative residual",
                 "error λmax median / max", "error λmin median / max"], summary))
    refs = [r["ref_res"] for r in rows]
    print(f"\nreference (train mode, ≤ {args.ref_iter} Lanczos steps) relative residual: median {median(refs):.1e}, max {max(refs):.1e}"
          + (f"; eval-mode reference (≤ {args.eval_ref_iter} steps): median {median([r['eref_res'] for r in rows if 'eref_res' in r]):.1e}"
             if any("eref_res" in r for r in rows) else ""))
    if ph_failure:
        print(f"\nPyHessian eigenvalues() failed: {ph_failure}")
    elif hessian_cls is None:
        print(f"\nPyHessian not available: {ph_version}")

    print("\n## One Hessian-vector product — same model after training")
    print_floor(print_hvp_costs(bench, args, hessian_cls, two_modes), later)

    print("\n## PyHessian 0.1 density() (stochastic Lanczos quadrature)\n")
    if hessian_cls is None:
        print(f"not available: {ph_version}")
    else:
        try:
            with pyhessian_sandbox(model), preserved_buffers(model):
                h = hessian_cls(model, F.cross_entropy, data=(bench.probe_x, bench.probe_y), cuda=device.type == "cuda")
                h.density(iter=5, n_v=1)
            print("density(iter=5) ran")
        except Exception as err:
            print(f"density(iter=5) fails: `{error_text(err)}` — ours: `HessianDensity` / `spectral_density`")

    print("\n## At a strict saddle with |λmin| > λmax (ŷ = w²x + cz, y = 3x + z, at w = 0, c = 1)\n")
    print(table(["method", "λmax", "λmin"], saddle_demo(hessian_cls)))
    print("\nPower iteration converges to the eigenvalue of largest magnitude: at this saddle PyHessian's "
          "'top eigenvalue' is λmin.")


if __name__ == "__main__":
    main()
