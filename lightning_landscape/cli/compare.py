"""``lightning-landscape compare CKPT... --data DATA --out DIR``: compare trained solutions offline.

For each checkpoint: its loss and the permutation-interpolation barrier (with a randomly permuted copy of
itself). For each pair: parameter distance and straight-path loss barrier, before and after aligning the
hidden units of the second to the first. With two or more checkpoints: hierarchical clustering by
aligned distance and a dendrogram; with three or more, an ultrametricity check. Writes ``summary.json``, ``paths.png``,
``permutation_paths.png`` and ``dendrogram.png`` to ``--out`` and prints a table.

The LightningModule class comes from ``--module pkg.mod:Class``, else from the checkpoint's
hyper-parameters (``_class_path``, written by LightningCLI), else — when the hyper-parameters are exactly
those of :class:`lightning_landscape.tasks.MLPTask` — that class. ``--data teacher-student`` rebuilds the
built-in teacher–student data of an ``MLPTask`` (dimensions from its hyper-parameters; pass the
``--data-seed`` and teacher options used in training); ``--data FILE`` reads ``(x, y)`` from a
``torch.save``d tuple (``.pt``/``.pth``) or an ``.npz`` with arrays ``x`` and ``y``.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_landscape._imports import import_object

TEACHER_STUDENT = "teacher-student"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="align, interpolate and cluster trained checkpoints (loss barriers, dendrogram)",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="Lightning .ckpt files")
    p.add_argument("--data", required=True,
                   help=f"'{TEACHER_STUDENT}' (built-in MLPTask data) or a .pt/.pth/.npz file holding (x, y)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--module", default=None, metavar="PKG.MOD:CLASS",
                   help="LightningModule class (default: from the checkpoint's hyper-parameters)")
    p.add_argument("--method", choices=("weight", "activation"), default="weight", help="alignment method")
    p.add_argument("--loss", choices=("default", "error"), default="default",
                   help="path metric: the module's landscape_loss, else CE/MSE by target type; or classification error")
    p.add_argument("--num-points", type=int, default=25, help="points on each straight path (ends included)")
    p.add_argument("--linkage", choices=("average", "complete", "single", "weighted"), default="average")
    p.add_argument("--cluster-by", choices=("distance", "barrier"), default="distance",
                   help="matrix to cluster: aligned parameter distance or aligned loss barrier")
    p.add_argument("--tol", type=float, default=0.05, help="relative tolerance of the ultrametricity check")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size (default: all data at once)")
    p.add_argument("--max-samples", type=int, default=None, help="use only the first N samples")
    p.add_argument("--seed", type=int, default=0, help="seed of the random permutations and the matching order")
    p.add_argument("--no-reset-batchnorm", action="store_true",
                   help="interpolate BatchNorm running statistics instead of recomputing them on the data")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load checkpoints with weights_only=False (needed for non-primitive hyper-parameters)")
    ts = p.add_argument_group("teacher-student data (--data teacher-student)")
    ts.add_argument("--data-seed", type=int, default=0)
    ts.add_argument("--num-samples", type=int, default=4096)
    ts.add_argument("--teacher-width", type=int, default=8)
    ts.add_argument("--teacher-activation", default="tanh")
    ts.add_argument("--noise", type=float, default=0.05)
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------- loading
def _import_class(path: str) -> type:
    try:
        obj = import_object(path, "--module")
    except ValueError as err:
        raise SystemExit(str(err)) from err
    if not isinstance(obj, type) or not issubclass(obj, nn.Module):
        raise SystemExit(f"{path!r} is not an nn.Module class")
    return obj


def _mlp_task_params() -> set[str]:
    from lightning_landscape.tasks import MLPTask

    return set(inspect.signature(MLPTask.__init__).parameters) - {"self"}


def resolve_class(hparams: dict, module: str | None) -> tuple[type, str]:
    """The LightningModule class for a checkpoint and where it came from."""
    if module:
        return _import_class(module), "--module"
    class_path = hparams.get("_class_path")
    if isinstance(class_path, str):
        return _import_class(class_path), "checkpoint _class_path"
    if hparams and set(hparams) == _mlp_task_params():
        from lightning_landscape.tasks import MLPTask

        return MLPTask, "hyper-parameters match MLPTask"
    raise SystemExit(
        "cannot tell the LightningModule class of the checkpoint (no _class_path in its hyper-parameters): "
        "pass --module pkg.mod:Class"
    )


def load_checkpoint(path: Path, module: str | None, trust: bool) -> tuple[nn.Module, dict, str]:
    """Load one checkpoint into its LightningModule on the CPU, in eval mode."""
    if not path.is_file():
        raise SystemExit(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as err:  # noqa: BLE001 - torch raises several types for unpicklable content
        raise SystemExit(
            f"cannot read {path} with weights_only={not trust} ({type(err).__name__}: {err}); "
            "if you trust the file, add --trust-checkpoint"
        ) from err
    if "state_dict" not in ckpt:
        raise SystemExit(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    hparams = dict(ckpt.get("hyper_parameters") or {})
    cls, origin = resolve_class(hparams, module)
    if hasattr(cls, "load_from_checkpoint"):
        model = cls.load_from_checkpoint(path, map_location="cpu", weights_only=not trust)
    else:
        model = cls(**{k: v for k, v in hparams.items() if not k.startswith("_")})
        model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, hparams, f"{cls.__module__}.{cls.__qualname__} ({origin})"


def load_data(args: argparse.Namespace, hparams: dict) -> tuple[tuple[torch.Tensor, torch.Tensor], str]:
    if args.data == TEACHER_STUDENT:
        from lightning_landscape.tasks import make_teacher_student

        missing = [k for k in ("input_dim", "output_dim") if k not in hparams]
        if missing:
            raise SystemExit(f"--data {TEACHER_STUDENT} needs MLPTask checkpoints (hyper-parameters lack {missing})")
        classes = hparams["output_dim"] if hparams.get("loss") == "cross_entropy" else 0
        x, y = make_teacher_student(
            num_samples=args.num_samples, input_dim=hparams["input_dim"], output_dim=hparams["output_dim"],
            teacher_width=args.teacher_width, activation=args.teacher_activation, noise=args.noise,
            classes=classes, seed=args.data_seed,
        )
        desc = (f"teacher-student(num_samples={args.num_samples}, teacher_width={args.teacher_width}, "
                f"activation={args.teacher_activation}, classes={classes}, seed={args.data_seed})")
    else:
        path = Path(args.data)
        if not path.is_file():
            raise SystemExit(f"--data: no such file {path} (or use '{TEACHER_STUDENT}')")
        if path.suffix == ".npz":
            arrays = np.load(path)
            if "x" not in arrays or "y" not in arrays:
                raise SystemExit(f"--data {path}: the .npz must hold arrays named 'x' and 'y'")
            x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
                raise SystemExit(f"--data {path}: expected a saved (x, y) tuple")
            x, y = (torch.as_tensor(t) for t in loaded)
        if torch.is_floating_point(x):
            x = x.to(torch.float32)
        if torch.is_floating_point(y):
            y = y.to(torch.float32)
        desc = str(path)
    if args.max_samples is not None:
        x, y = x[: args.max_samples], y[: args.max_samples]
    return (x, y), f"{desc}, {x.shape[0]} samples"


# ---------------------------------------------------------------------------------------------- running
def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def run(args: argparse.Namespace) -> int:
    from lightning_landscape import compare as cmp

    for name in ("num_points", "batch_size", "max_samples"):
        value = getattr(args, name)
        if value is not None and value < (2 if name == "num_points" else 1):
            raise SystemExit(f"--{name.replace('_', '-')} must be >= {2 if name == 'num_points' else 1}, got {value}")
    paths = [Path(p) for p in args.checkpoints]
    loaded = [load_checkpoint(p, args.module, args.trust_checkpoint) for p in paths]
    models = [m for m, _, _ in loaded]
    labels = [p.stem for p in paths]
    if len(set(labels)) != len(labels):
        labels = [f"{i}:{p.stem}" for i, p in enumerate(paths)]
    data, data_desc = load_data(args, loaded[0][1])
    try:
        spec = cmp.permutation_spec(models[0])
    except (ValueError, NotImplementedError) as err:
        raise SystemExit(f"cannot align this architecture: {err}") from err
    loss_fn = cmp.classification_error if args.loss == "error" else None
    common = dict(loss_fn=loss_fn, num_points=args.num_points, reset_batchnorm=not args.no_reset_batchnorm,
                  batch_size=args.batch_size)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "checkpoints": [str(p) for p in paths],
        "labels": labels,
        "classes": [c for _, _, c in loaded],
        "data": data_desc,
        "method": args.method,
        "metric": "classification error" if args.loss == "error" else "loss",
        "hidden_layers": [{"name": h.name, "size": h.size} for h in spec.layers],
    }

    print(f"{len(models)} checkpoint(s), {summary['classes'][0]}; data: {data_desc}")
    print(f"hidden layers: {', '.join(f'{h.name}[{h.size}]' for h in spec.layers)}; method: {args.method}")
    per_model, perm_paths = [], {}
    metric = "error" if args.loss == "error" else "loss"
    print(f"\n{'model':<20} {metric:>10} {'perm. barrier':>14}")
    for i, (label, model) in enumerate(zip(labels, models)):
        res = cmp.permutation_barrier(model, data, seed=args.seed + i, spec=spec, **common)
        per_model.append({"label": label, "loss": res.loss_a, "permutation_barrier": res.barrier,
                          "permutation_path": res.to_dict()})
        perm_paths[label] = res
        print(f"{label:<20} {_fmt(res.loss_a):>10} {_fmt(res.barrier):>14}")
    summary["models"] = per_model
    cmp.plot_paths(perm_paths, out / "permutation_paths.png", "Solution vs. a permuted copy of itself")

    pairs, pair_paths = [], {}
    n = len(models)
    dist_before, dist_after = np.zeros((n, n)), np.zeros((n, n))
    bar_before, bar_after = np.zeros((n, n)), np.zeros((n, n))
    if n >= 2:
        print(f"\n{'pair':<30} {'dist raw':>10} {'dist aligned':>13} {'barrier raw':>12} {'barrier aligned':>16}")
    for i, j in itertools.combinations(range(n), 2):
        res = cmp.compare_pair(models[i], models[j], data, method=args.method, spec=spec,
                               align_kwargs={"seed": args.seed} if args.method == "weight" else None, **common)
        dist_before[i, j] = dist_before[j, i] = res.distance_before
        dist_after[i, j] = dist_after[j, i] = res.distance_after
        bar_before[i, j] = bar_before[j, i] = res.before.barrier
        bar_after[i, j] = bar_after[j, i] = res.after.barrier
        name = f"{labels[i]} ~ {labels[j]}"
        pairs.append({"a": labels[i], "b": labels[j], **res.to_dict()})
        if len(pair_paths) < 6:  # keep the figure readable
            pair_paths[name] = res
        print(f"{name:<30} {_fmt(res.distance_before):>10} {_fmt(res.distance_after):>13} "
              f"{_fmt(res.before.barrier):>12} {_fmt(res.after.barrier):>16}")
    summary["pairs"] = pairs
    if pair_paths:
        more = f" (first {len(pair_paths)} of {len(pairs)} pairs)" if len(pairs) > len(pair_paths) else ""
        cmp.plot_pair_paths(pair_paths, out / "paths.png", f"Straight paths before/after {args.method} matching{more}")
    if n >= 2:
        summary["matrices"] = {
            "distance_before": dist_before.tolist(), "distance_after": dist_after.tolist(),
            "barrier_before": bar_before.tolist(), "barrier_after": bar_after.tolist(),
        }
        matrix = dist_after if args.cluster_by == "distance" else np.clip(bar_after, 0, None)
        clustering = cmp.cluster_solutions(matrix, labels, method=args.linkage, tol=args.tol)
        summary["clustering"] = {"by": f"aligned {args.cluster_by}", **clustering.to_dict()}
        cmp.plot_dendrogram(clustering, out / "dendrogram.png", ylabel=f"aligned {args.cluster_by}")
        u = clustering.ultrametricity
        print(f"\nclustering ({args.linkage} linkage, by aligned {args.cluster_by}): cophenetic correlation "
              f"{_fmt(clustering.cophenetic_correlation)}; ultrametric violations {_fmt(u.violation_fraction)} "
              f"of {u.num_triples} triples (tol {u.tol:g}), mean relative gap {_fmt(u.mean_relative_gap)}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float, allow_nan=True))
    print(f"\nwrote {out / 'summary.json'} and figures to {out}")
    return 0
