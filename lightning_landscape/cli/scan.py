"""``lightning-landscape scan``: sweep weight decay up and back down, locate the L2 collapse, classify it.

Examples::

    lightning-landscape scan --task linear-2                  # closed-form thresholds shown alongside
    lightning-landscape scan --task tanh-2 --points 20 --out runs/tanh2
    lightning-landscape scan --module my_pkg.models:Net --module-args '{"hidden": 64}' \\
        --datamodule my_pkg.data:DM --beta-max auto --lr 0.01
    lightning-landscape scan --config fit.yaml --max-batches 4   # a LightningCLI config (model/data)

Interrupted scans continue where they stopped when rerun with the same arguments (``--fresh`` restarts).
The table says how many points converged and gives no verdict when none did; ``points.csv`` carries the
``collapsed`` flag every printed threshold is read from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from lightning_landscape.scan.problem import BUILTIN_TASKS

    p = subparsers.add_parser(
        "scan",
        help="sweep weight decay up and down: L2 collapse threshold, order (continuous/jump), hysteresis",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("what to scan (a built-in task by default)")
    src.add_argument("--task", default="linear-2", choices=sorted(BUILTIN_TASKS),
                     help="built-in teacher-student task: activation-hidden layers (default linear-2)")
    src.add_argument("--width", type=int, default=8, help="hidden width of the built-in task")
    src.add_argument("--input-dim", type=int, default=8)
    src.add_argument("--samples", type=int, default=256)
    src.add_argument("--noise", type=float, default=0.1, help="teacher label noise")
    src.add_argument("--bias", action="store_true", help="built-in nets with biases (no closed form then)")
    src.add_argument("--module", help="your LightningModule, 'package.module:Class'")
    src.add_argument("--module-args", help="JSON object of its init args")
    src.add_argument("--datamodule", help="your LightningDataModule, 'package.module:Class' (else the module's train_dataloader)")
    src.add_argument("--datamodule-args", help="JSON object of its init args")
    src.add_argument("--config", help="a LightningCLI YAML config with model:/data: class_path + init_args "
                     "(LightningModule/LightningDataModule classes; nested class_path: nn.Module, optimizer, "
                     "scheduler, dataset or sampler classes only)")
    src.add_argument("--max-batches", type=int, default=1, help="training batches cached (1 = full batch)")
    src.add_argument("--decay", choices=("all", "weights"), default="all",
                     help="user modules: penalise all trainable parameters or only tensors with >= 2 dims")
    grid = p.add_argument_group("grid (penalty beta*||theta||^2; SGD/Adam weight_decay = 2*beta)")
    grid.add_argument("--betas", help="explicit comma-separated increasing grid")
    grid.add_argument("--beta-min", type=float, default=0.0)
    grid.add_argument("--beta-max", default=None,
                      help="grid end, or 'auto' (pilot run); default: 1.5x the closed-form spinodal for linear tasks, else auto")
    grid.add_argument("--points", type=int, default=16, help="grid points (default 16)")
    grid.add_argument("--up-only", action="store_true", help="skip the down sweep (no hysteresis measurement)")
    train = p.add_argument_group("training at each point (heavy-ball gradient descent)")
    train.add_argument("--lr", type=float, default=0.05)
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--steps", type=int, default=2000, help="most steps per point")
    train.add_argument("--tol", type=float, default=1e-5,
                       help="a point has converged when |grad of the objective| < tol over all cached batches "
                            "(full batch: training stops there)")
    train.add_argument("--jitter", type=float, default=1e-3, help="relative noise added before each point")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-curvature", action="store_true", help="skip Hessian lambda_max/lambda_min")
    out = p.add_argument_group("output")
    out.add_argument("--out", default="landscape_scan", help="output directory (state, CSV, JSON, PNG)")
    out.add_argument("--fresh", action="store_true", help="discard a previous state in --out and start over")
    out.add_argument("--no-progress", action="store_true")
    out.add_argument("--no-plot", action="store_true")
    out.add_argument("--collapse-tol", type=float, default=0.02, help="collapsed when ||theta||^2 < tol * its max, or collapse_ratio < tol * its best")
    out.add_argument("--jump-tol", type=float, default=0.3, help="jump when one step drops ||theta||^2 by >= tol of its range")
    p.set_defaults(func=run)


def _problem(args: argparse.Namespace):  # -> ScanProblem
    from lightning_landscape.scan.problem import builtin_problem
    from lightning_landscape.scan.user import user_problem

    if args.module or args.config:
        return user_problem(args.module, args.module_args, args.datamodule, args.datamodule_args, args.config,
                            args.max_batches, args.decay)
    if args.datamodule:
        raise SystemExit("--datamodule needs --module (or --config)")
    return builtin_problem(args.task, width=args.width, input_dim=args.input_dim, num_samples=args.samples,
                           noise=args.noise, bias=args.bias, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    from lightning_landscape.scan.analysis import analyse, format_table
    from lightning_landscape.scan.engine import ScanConfig, run_scan, suggest_beta_max
    from lightning_landscape.scan.report import write_outputs
    from lightning_landscape.scan.state import STATE_JSON, STATE_WEIGHTS

    out = Path(args.out)
    if args.fresh:
        for name in (STATE_JSON, STATE_WEIGHTS, "beta_max.json"):
            (out / name).unlink(missing_ok=True)
    try:
        problem = _problem(args)
        train = dict(lr=args.lr, momentum=args.momentum, max_steps=args.steps, tol=args.tol, jitter=args.jitter,
                     seed=args.seed, curvature=not args.no_curvature, directions="up" if args.up_only else "up-down")
        if args.betas:
            config = ScanConfig(betas=[float(b) for b in args.betas.split(",")], **train)
        else:
            beta_max = _beta_max(args, problem, ScanConfig(**train), out, suggest_beta_max)
            config = ScanConfig(beta_min=args.beta_min, beta_max=beta_max, num_points=args.points, **train)
        points = run_scan(problem, config, state_dir=out, progress=not args.no_progress)
    except (ValueError, TypeError, RuntimeError, FloatingPointError) as err:
        print(f"lightning-landscape scan: error: {err}", file=sys.stderr)
        return 2
    analysis = analyse(points, collapse_tol=args.collapse_tol, jump_tol=args.jump_tol)
    paths = write_outputs(out, points, analysis, config, problem.name, problem.theory, plot=not args.no_plot)
    print(f"\n{problem.name}: {len(points)} points, β in [{config.grid()[0]:.4g}, {config.grid()[-1]:.4g}]")
    print(format_table(analysis, problem.theory))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _beta_max(args: argparse.Namespace, problem, base, out: Path, suggest) -> float:  # noqa: ANN001
    if args.beta_max not in (None, "auto"):
        try:
            return float(args.beta_max)
        except ValueError:
            raise ValueError(f"--beta-max must be a number or 'auto', got {args.beta_max!r}") from None
    if args.beta_max is None and "beta_spinodal" in problem.theory:
        return 1.5 * float(problem.theory["beta_spinodal"])
    cache = out / "beta_max.json"  # a resumed scan must see the same grid: the pilot's answer is kept
    if cache.exists():
        return float(json.loads(cache.read_text())["beta_max"])
    value = suggest(problem, base)
    out.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"beta_max": value}))
    print(f"pilot run: beta_max = {value:.4g}")
    return value


__all__ = ["register", "run"]
