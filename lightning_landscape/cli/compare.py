"""``lightning-landscape compare CKPT... --data DATA --out DIR``: compare trained solutions offline.

For each checkpoint: its loss and the permutation-interpolation barrier (with a randomly permuted copy of
itself). For each pair: parameter distance and straight-path loss barrier, before and after aligning the
hidden units of the second to the first. With two or more checkpoints: hierarchical clustering by
aligned distance and a dendrogram; with three or more, an ultrametricity check. Writes ``summary.json``, ``paths.png``,
``permutation_paths.png`` and ``dendrogram.png`` to ``--out`` and prints a table.

The LightningModule class comes from ``--module pkg.mod:Class`` (built with the checkpoint's init
arguments), else — when the init arguments are exactly those of :class:`lightning_landscape.tasks.MLPTask`
— that class; a class the checkpoint itself names (LightningCLI's ``_class_path`` or ``class_path`` /
``init_args``) is imported only with ``--trust-checkpoint``, which also unpickles the file. Hidden units
are aligned with a permutation spec derived from the first model (traced on the data for ResNets and
Transformers) or given with ``--permutation-spec pkg.mod:obj``. ``--data teacher-student`` rebuilds the
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
import re
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
                   help="LightningModule class, built with the checkpoint's init arguments; without it: MLPTask when "
                        "the arguments are MLPTask's, the class the checkpoint names only with --trust-checkpoint")
    p.add_argument("--permutation-spec", default=None, metavar="PKG.MOD:OBJ",
                   help="a PermutationSpec (or a callable model -> PermutationSpec) instead of the derived one")
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
                   help="trust the files: unpickle them (weights_only=False) and import the class they name "
                        "(LightningCLI's class_path/_class_path)")
    ts = p.add_argument_group("teacher-student data (--data teacher-student)")
    ts.add_argument("--data-seed", type=int, default=0)
    ts.add_argument("--num-samples", type=int, default=4096)
    ts.add_argument("--teacher-width", type=int, default=8)
    ts.add_argument("--teacher-activation", default="tanh")
    ts.add_argument("--noise", type=float, default=0.05)
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------- loading
def _import_class(path: str, setting: str = "--module") -> type:
    try:
        obj = import_object(path, setting)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    if not isinstance(obj, type) or not issubclass(obj, nn.Module):
        raise SystemExit(f"{setting} {path!r} is not an nn.Module class")
    return obj


def _mlp_task_params() -> set[str]:
    from lightning_landscape.tasks import MLPTask

    return set(inspect.signature(MLPTask.__init__).parameters) - {"self"}


def named_class(hparams: dict) -> tuple[str | None, str | None, dict]:
    """``(class path, field it came from, init arguments)`` as the checkpoint states them (nothing imported).

    LightningCLI writes ``_class_path`` next to the init arguments (subclass mode) or nests them as
    ``class_path`` / ``init_args``; ``save_hyperparameters()`` writes the init arguments only.
    """
    if isinstance(hparams.get("class_path"), str) and isinstance(hparams.get("init_args", {}), dict):
        return hparams["class_path"], "class_path", dict(hparams.get("init_args") or {})
    kwargs = {k: v for k, v in hparams.items() if not k.startswith("_")}
    if isinstance(hparams.get("_class_path"), str):
        return hparams["_class_path"], "_class_path", kwargs
    return None, None, kwargs


def resolve_class(hparams: dict, module: str | None, trust: bool = False) -> tuple[type, dict, str]:
    """The LightningModule class for a checkpoint, its init arguments and where the class came from.

    A class named by the checkpoint is imported only with ``trust``: a file the user did not write must
    not choose code to run. ``--module`` is the user's own word; MLPTask is recognised by its arguments.
    """
    name, field, kwargs = named_class(hparams)
    if module:
        return _import_class(module), kwargs, "--module"
    if name is not None:
        if not trust:
            plain = re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", name) is not None
            module_hint = f"--module {name.rpartition('.')[0]}:{name.rpartition('.')[2]}" if plain else "--module pkg.mod:Class"
            raise SystemExit(
                f"the checkpoint names its class {name!r} (hyper_parameters.{field}); an untrusted checkpoint does "
                f"not choose code to import. Pass {module_hint} if that is the class you mean, or "
                "--trust-checkpoint if you trust the file"
            )
        return _import_class(name, f"checkpoint {field}"), kwargs, f"checkpoint {field}, trusted"
    if kwargs and set(kwargs) == _mlp_task_params():
        from lightning_landscape.tasks import MLPTask

        return MLPTask, kwargs, "hyper-parameters match MLPTask"
    args = ", ".join(sorted(kwargs)) or "none"
    raise SystemExit(
        "the checkpoint does not name its LightningModule class (save_hyperparameters() stores only the init "
        f"arguments: {args}): pass --module pkg.mod:Class"
    )


def _construct(cls: type, kwargs: dict, state_dict: dict, path: Path) -> nn.Module:
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    try:
        model = cls(**kwargs)
    except Exception as err:  # noqa: BLE001 - user classes raise anything on bad arguments
        raise SystemExit(
            f"{path}: cannot build {cls.__qualname__} from the checkpoint's hyper-parameters "
            f"({type(err).__name__}: {err})"
        ) from err
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        raise SystemExit(f"{path}: the weights do not fit {cls.__qualname__}: {err}") from err
    return model


def load_checkpoint(path: Path, module: str | None, trust: bool) -> tuple[nn.Module, dict, str]:
    """Load one checkpoint into its LightningModule on the CPU, in eval mode.

    Untrusted (the default): ``torch.load(weights_only=True)``, no class named by the file is imported,
    and the model is built from ``--module`` (or MLPTask) with the stored init arguments. Trusted: the
    class may come from the checkpoint, and LightningCLI checkpoints load through Lightning's own
    ``load_from_checkpoint`` (which imports the instantiator the file names).
    """
    if not path.is_file():
        raise SystemExit(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as err:  # noqa: BLE001 - torch raises several types for unpicklable content
        lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")[:300]
        if trust:
            raise SystemExit(f"cannot read {path} ({type(err).__name__}: {detail})") from err
        raise SystemExit(
            f"cannot read {path} with weights_only=True: it holds objects that only unpickling can rebuild "
            f"({type(err).__name__}: {detail}); if you trust the file, add --trust-checkpoint"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise SystemExit(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    hparams = ckpt.get("hyper_parameters") or {}
    if not isinstance(hparams, dict):
        raise SystemExit(f"{path}: hyper_parameters is a {type(hparams).__name__}, expected a dict")
    try:
        cls, kwargs, origin = resolve_class(dict(hparams), module, trust)
    except SystemExit as err:
        raise SystemExit(f"{path}: {err}") from err
    if trust and "_instantiator" in hparams and hasattr(cls, "load_from_checkpoint"):
        model = cls.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    else:
        model = _construct(cls, kwargs, ckpt["state_dict"], path)
    model.eval()
    return model, {**hparams, **kwargs}, f"{cls.__module__}.{cls.__qualname__} ({origin})"


def checkpoint_labels(paths: list[Path]) -> list[str]:
    """Short distinct labels: the file name without ``.ckpt``, prefixed by the nearest parent folders in
    which the files differ (``checkpoints`` folders and folders they share skipped), else numbered.

    >>> checkpoint_labels([Path("a/lightning_logs/version_0/checkpoints/epoch=2.ckpt"),
    ...                    Path("b/lightning_logs/version_0/checkpoints/epoch=2.ckpt")])
    ['a/epoch=2', 'b/epoch=2']
    """
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    parents = [[q for q in p.resolve().parent.parts if q not in ("checkpoints", "/")] for p in paths]

    def varies(k: int) -> bool:  # folder k levels up differs between the files
        return len({q[-k] if len(q) >= k else None for q in parents}) > 1

    for depth in range(1, max(len(q) for q in parents) + 1):
        keep = [k for k in range(depth, 0, -1) if varies(k)]
        labels = ["/".join([q[-k] for k in keep if len(q) >= k] + [s]) for q, s in zip(parents, stems)]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{i}:{s}" for i, s in enumerate(stems)]


def load_permutation_spec(path: str, model: nn.Module) -> Any:
    """``--permutation-spec module:obj``: a PermutationSpec, or a callable ``model -> PermutationSpec``."""
    from lightning_landscape.compare import PermutationSpec

    try:
        obj = import_object(path, "--permutation-spec")
    except ValueError as err:
        raise SystemExit(str(err)) from err
    spec = obj
    if callable(obj) and not isinstance(obj, PermutationSpec):
        try:
            spec = obj(model)
        except Exception as err:  # noqa: BLE001 - a user callable
            raise SystemExit(f"--permutation-spec {path!r}: calling it on the model failed "
                             f"({type(err).__name__}: {err}); pass a PermutationSpec or a callable model -> spec") from err
    if not isinstance(spec, PermutationSpec):
        raise SystemExit(f"--permutation-spec {path!r} must be a PermutationSpec or a callable returning one, "
                         f"got {type(spec).__name__}")
    return spec


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
    labels = checkpoint_labels(paths)
    data, data_desc = load_data(args, loaded[0][1])
    try:
        if args.permutation_spec:
            spec = load_permutation_spec(args.permutation_spec, models[0])
            cmp.check_spec(models[0], spec, cmp.example_input(data))
        else:
            spec = cmp.permutation_spec(models[0], cmp.example_input(data))
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
    if spec.unpermuted:
        print(f"left unpermuted (units these operations touch): {'; '.join(spec.unpermuted)}")
        summary["unpermuted"] = list(spec.unpermuted)
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
