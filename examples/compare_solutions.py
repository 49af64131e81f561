"""Compare trained solutions offline: hidden-unit alignment, loss barriers, and their hierarchy.

Trains six wide MLPs (``MLPTask``, 2 × 256 ReLU units) with the Lightning Trainer — two random
initialisations × three mini-batch orders — and saves Lightning checkpoints. Then:

1. the permutation-interpolation barrier: the loss on the straight line between a solution and a copy of
   itself with shuffled hidden units (same function at both ends, a large barrier in between);
2. two independently initialised solutions: loss and test-error barriers before and after aligning
   their hidden units (weight matching and activation matching);
3. ``lightning-landscape compare`` on all six checkpoints: pairwise aligned distances and barriers,
   hierarchical clustering (dendrogram PNG) and the ultrametricity check.

Data: scikit-learn's digits when scikit-learn is installed (``pip install scikit-learn``), otherwise
teacher–student classification from ``lightning_landscape.tasks`` (``--data teacher-student`` forces it).

Run:  python examples/compare_solutions.py [--out DIR]   (about two minutes on one CPU core)
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape._compat import FLAVOURS
from lightning_landscape.cli.main import main as cli_main
from lightning_landscape.compare import classification_error, compare_pair, permutation_barrier
from lightning_landscape.tasks import MLPTask, make_teacher_student

L = FLAVOURS[0]


def load_data(kind: str) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], str]:
    if kind == "digits":
        from sklearn.datasets import load_digits  # optional dependency

        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32)
        x = (x - x.mean(0)) / (x.std(0) + 1e-3)
        y = torch.tensor(digits.target)
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        train, test = idx[:1300], idx[1300:]
        return (x[train], y[train]), (x[test], y[test]), "scikit-learn digits (1300 train / 497 test, 10 classes)"
    x, y = make_teacher_student(num_samples=2000, input_dim=16, classes=4, teacher_width=16, seed=0)
    return (x[:1500], y[:1500]), (x[1500:], y[1500:]), "teacher-student classification (1500 / 500, 4 classes)"


def train(init_seed: int, order_seed: int, data: tuple[torch.Tensor, torch.Tensor], epochs: int, out: Path) -> Path:
    """One run: ``init_seed`` fixes the initial weights, ``order_seed`` the mini-batch order."""
    x, y = data
    L.seed_everything(init_seed, verbose=False)
    task = MLPTask(input_dim=x.shape[1], hidden=(256, 256), output_dim=int(y.max()) + 1, activation="relu",
                   loss="cross_entropy", optimizer="sgd", lr=0.05, momentum=0.9)
    loader = DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True,
                        generator=torch.Generator().manual_seed(1000 + order_seed))
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(task, loader)
    path = out / f"init{init_seed}-order{order_seed}.ckpt"
    trainer.save_checkpoint(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("compare_solutions"), help="output directory")
    parser.add_argument("--data", choices=("auto", "digits", "teacher-student"), default="auto")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    kind = args.data if args.data != "auto" else ("digits" if importlib.util.find_spec("sklearn") else "teacher-student")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    (train_data, test_data, desc) = load_data(kind)
    print(f"data: {desc}")

    start = time.perf_counter()
    ckpts = [train(i, j, train_data, args.epochs, args.out) for i in (1, 2) for j in (1, 2, 3)]
    print(f"trained {len(ckpts)} MLPs {train_data[0].shape[1]}-256-256-{int(train_data[1].max()) + 1} "
          f"in {time.perf_counter() - start:.0f}s")
    models = [MLPTask.load_from_checkpoint(p, map_location="cpu", weights_only=True).eval() for p in ckpts]
    for p, m in zip(ckpts, models):
        err = float(classification_error(m, test_data))
        print(f"  {p.stem}: train loss {float(m.compute_loss(train_data)):.4f}, test error {err:.3f}")

    print("\n1. permutation-interpolation barrier (solution vs. a copy with shuffled hidden units)")
    for seed in range(3):
        res = permutation_barrier(models[0], train_data, seed=seed, num_points=21)
        print(f"  shuffle {seed}: end losses {res.loss_a:.4f} / {res.loss_b:.4f}, barrier {res.barrier:.4f} "
              f"at t = {res.t_max:.2f}")

    a, b = models[0], models[3]  # different initialisations
    print(f"\n2. independent solutions {ckpts[0].stem} vs {ckpts[3].stem}")
    print(f"  {'method':<11} {'loss barrier':>22} {'test-error barrier':>22} {'distance':>18}")
    for method in ("weight", "activation"):
        loss = compare_pair(a, b, train_data, method=method, num_points=21)
        err = compare_pair(a, b, test_data, method=method, num_points=21, loss_fn=classification_error)
        print(f"  {method:<11} {loss.before.barrier:>10.4f} -> {loss.after.barrier:<9.4f}"
              f" {err.before.barrier:>10.4f} -> {err.after.barrier:<9.4f}"
              f" {loss.distance_before:>7.2f} -> {loss.distance_after:.2f}")

    print("\n3. lightning-landscape compare on all checkpoints")
    np.savez(args.out / "train.npz", x=train_data[0].numpy(), y=train_data[1].numpy())
    cli_main(["compare", *map(str, ckpts), "--data", str(args.out / "train.npz"), "--out", str(args.out / "report"),
              "--num-points", "11"])
    print(f"\ntotal {time.perf_counter() - start:.0f}s; dendrogram: {args.out / 'report' / 'dendrogram.png'}")


if __name__ == "__main__":
    main()
