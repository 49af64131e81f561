"""``lightning-landscape demo``: train a small teacher–student MLP with the monitor attached."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lightning_landscape._compat import primary


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train a small model with LandscapeMonitor and write TensorBoard logs",
        description="Train a tanh MLP on synthetic teacher-student data (no download) with the landscape "
        "monitor attached; write TensorBoard logs and print a summary.",
    )
    p.add_argument("--logdir", default="runs", help="TensorBoard log directory (default: ./runs)")
    p.add_argument("--epochs", type=int, default=25, help="training epochs (default: 25)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--every", type=int, default=20, help="λmax/λmin every N optimizer steps (default: 20)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    if args.epochs < 1 or args.every < 1:
        raise SystemExit("demo: --epochs and --every must be >= 1")
    L = primary()
    from lightning_landscape import HessianDensity, HessianSpectrum, HessianTrace, LandscapeMonitor
    from lightning_landscape.tasks import MLPTask, make_teacher_student

    L.seed_everything(args.seed, verbose=False)
    x, y = make_teacher_student(num_samples=4096 + 1024, input_dim=20, teacher_width=8, activation="tanh", seed=args.seed)
    train = torch.utils.data.TensorDataset(x[:4096], y[:4096])
    val = torch.utils.data.TensorDataset(x[4096:], y[4096:])
    train_loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True)
    val_loader = torch.utils.data.DataLoader(val, batch_size=512)
    model = MLPTask(input_dim=20, hidden=(64, 64), output_dim=1, activation="tanh", lr=0.05, momentum=0.9)

    monitor = LandscapeMonitor(
        probes=[
            HessianSpectrum(every_n_steps=args.every),
            HessianTrace(every_n_steps=5 * args.every, num_matvecs=24),
            HessianDensity(every_n_steps=20 * args.every, num_probes=2, num_steps=40),
        ]
    )
    logger = L.loggers.TensorBoardLogger(save_dir=args.logdir, name="demo")
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[monitor],
        log_every_n_steps=5,
        enable_progress_bar=not args.no_progress,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, train_loader, val_loader)

    s = monitor.summary()
    last = s["last_values"]

    def value(tag: str) -> str:
        v = last.get(f"landscape/hessian/{tag}")
        return "n/a" if v is None else f"{v:.4g}"

    print()
    print("lightning-landscape demo: tanh MLP 20-64-64-1 on teacher-student data, SGD(lr=0.05, momentum=0.9)")
    print(f"  final λmax      {value('lambda_max')}   (edge-of-stability ratio {value('eos_ratio')})")
    print(f"  final λmin      {value('lambda_min')}")
    print(f"  final trace     {value('trace')} ± {value('trace_stderr')}")
    print(f"  HVPs spent      {s['hvps']} in {s['measurements']} measurements")
    # The one overhead figure: time inside measurements ÷ the fit's time without them (summary()["overhead"]).
    print(f"  overhead        {100 * s['overhead']:.1f}% of training time "
          f"({s['probe_seconds']:.1f} s inside measurements ÷ {s['fit_seconds'] - s['probe_seconds']:.1f} s of "
          "fit without them)")
    print(f"  logs            {Path(logger.log_dir).resolve()}")
    print(f"  (the demo measures λmax/λmin every {args.every} steps on a tiny model to draw dense curves; the "
          "library's default intervals are 500/2000/10000 steps)")
    print(f"\nLook at them with:\n  tensorboard --logdir {args.logdir}")
    return 0
