"""Small-batch SGD vs full-batch gradient descent: which finds the flatter minimum?

Trains the same student MLP on teacher–student classification data (``lightning_landscape.tasks``;
scikit-learn's digits are used instead when scikit-learn is installed and ``--data digits`` is given)
twice — with mini-batches of 16 and with the full training set per step, same learning rate, each until
the training loss falls below ``--target-loss`` — then measures both solutions with the flatness probes
on the whole training set: SAM/ASAM sharpness, the random-walk escape radius, and λmax for context.
Keskar et al. (2017) report that small batches end in flatter minima (lower sharpness, larger escape
radius) that generalise better.

Run:  python examples/flatness_batch_size.py [--out DIR]   (about a minute on one CPU core)

The same probes run during training with the Lightning callback::

    LandscapeMonitor(probes=[Sharpness(every_n_steps=500), EscapeRadius(every_n_steps=1000),
                             LandscapeSlice(every_n_steps=5000)])
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from lightning_landscape.probes import HessianSpectrum, ProbeContext
from lightning_landscape.probes.flatness import EscapeRadius, LandscapeSlice, Sharpness
from lightning_landscape.tasks import build_mlp, make_teacher_student


def load_data(kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    if kind == "digits":
        from sklearn.datasets import load_digits  # optional dependency

        data = load_digits()
        x = torch.tensor(data.data, dtype=torch.float32) / 16.0
        y = torch.tensor(data.target)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        x, y = x[perm], y[perm]
        return x[:1200], y[:1200], x[1200:], y[1200:], 10
    x, y = make_teacher_student(num_samples=3000, input_dim=20, classes=4, teacher_width=16,
                                activation="tanh", seed=seed)
    return x[:2000], y[:2000], x[2000:], y[2000:], 4


def train(x: torch.Tensor, y: torch.Tensor, classes: int, batch_size: int, lr: float, target_loss: float,
          max_epochs: int, seed: int) -> tuple[nn.Module, int, int]:
    torch.manual_seed(seed)  # same initial weights for both runs
    net = build_mlp(x.shape[1], (128,), classes, activation="tanh")
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    steps = 0
    for epoch in range(1, max_epochs + 1):
        order = torch.randperm(len(y), generator=g)
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if steps % 10 == 0 or batch_size >= len(y):  # stop both runs at (nearly) the same training loss
                with torch.no_grad():
                    if nn.functional.cross_entropy(net(x), y).item() < target_loss:
                        return net, epoch, steps
    return net, max_epochs, steps


def measure(net: nn.Module, x: torch.Tensor, y: torch.Tensor, out_dir: Path | None, label: str, delta: float) -> dict[str, float]:
    closure = lambda: nn.functional.cross_entropy(net(x), y)
    ctx = ProbeContext(net, closure, step=0, seed=0)
    values: dict[str, float] = {"loss": ctx.loss(), "weight_norm": float(ctx.space.flatten_params().norm())}
    values.update(HessianSpectrum(max_iter=30, tol=1e-3).run(ctx).scalars)
    values.update(Sharpness(rho=0.05, adaptive_rho=0.5).run(ctx).scalars)
    values.update(EscapeRadius(walkers=8, delta=delta).run(ctx).scalars)
    if out_dir is not None:
        import matplotlib.image

        result = LandscapeSlice(points_1d=31, points_2d=15).run(ctx)
        for key, image in result.images.items():
            matplotlib.image.imsave(out_dir / f"{label}_{key}.png", image)
    ctx.release()
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["teacher", "digits"], default="teacher")
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--small-batch", type=int, default=16)
    parser.add_argument("--target-loss", type=float, default=0.01)
    parser.add_argument("--max-epochs", type=int, default=3000)
    parser.add_argument("--delta", type=float, default=0.02, help="loss rise that defines the escape radius")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also save 1-D/2-D slice figures (PNG) here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)

    x, y, x_test, y_test, classes = load_data(args.data, args.seed)
    rows = []
    for label, batch in (("small-batch", args.small_batch), ("full-batch", len(y))):
        started = time.perf_counter()
        net, epochs, steps = train(x, y, classes, batch, args.lr, args.target_loss, args.max_epochs, args.seed)
        seconds = time.perf_counter() - started
        with torch.no_grad():
            test_acc = (net(x_test).argmax(1) == y_test).float().mean().item()
            test_loss = nn.functional.cross_entropy(net(x_test), y_test).item()
        values = measure(net, x, y, args.out, label, args.delta)
        rows.append((label, batch, epochs, steps, seconds, test_acc, test_loss, values))

    print(f"data: {args.data}, {len(y)} train / {len(y_test)} test, SGD lr={args.lr}, "
          f"each run until train loss < {args.target_loss}; probes on the full training set\n")
    header = (f"{'run':<12}{'batch':>6}{'steps':>7}{'train':>8}{'test':>8}{'test':>7}{'|θ|':>7}{'λmax':>8}{'|g|':>8}"
              f"{'SAM':>10}{'uᵀHu':>8}{'ASAM':>9}{'escape σ (mean ± std, min–max)':>34}")
    print(header)
    print(f"{'':<12}{'':>6}{'':>7}{'loss':>8}{'loss':>8}{'acc':>7}{'':>7}{'':>8}{'':>8}{'ρ=0.05':>10}{'':>8}{'ρ=0.5':>9}"
          f"{f'δ={args.delta}, 8 walkers':>34}")
    for label, batch, epochs, steps, seconds, acc, tl, v in rows:
        esc = (f"{v['escape_radius']:.3f} ± {v['escape_radius_std']:.3f} "
               f"({v['escape_radius_min']:.3f}–{v['escape_radius_max']:.3f})")
        print(f"{label:<12}{batch:>6}{steps:>7}{v['loss']:>8.4f}{tl:>8.4f}{acc:>7.3f}{v['weight_norm']:>7.1f}{v['lambda_max']:>8.3f}"
              f"{v['gradient_norm']:>8.4f}{v['sharpness']:>10.5f}{v['sharpness_curvature']:>8.3f}"
              f"{v['adaptive_sharpness']:>9.4f}{esc:>34}")
    small, full = rows[0][-1], rows[1][-1]
    print(f"\nfull/small ratios: λmax {full['lambda_max'] / small['lambda_max']:.2f}, "
          f"SAM sharpness {full['sharpness'] / small['sharpness']:.2f}, "
          f"ASAM {full['adaptive_sharpness'] / small['adaptive_sharpness']:.2f}, "
          f"escape radius {full['escape_radius'] / small['escape_radius']:.2f}")
    if args.out is not None:
        print(f"slice figures written to {args.out}")


if __name__ == "__main__":
    main()
