"""Channels to infinity on the toy of Martinelli et al. (2025, Fig. 6), watched by the neuron probes.

Two erf neurons without bias learn ``erf((5x+2.5)/√2) + erf((5x−2.5)/√2)`` from 4096 samples by full-batch
gradient descent (lr 0.25 on the mean squared error; edge of stability at λmax = 2/lr = 8). Seed 0 enters a
channel: ε = |w₁ − w₂|/2 shrinks, a₁ → −∞ and a₂ → +∞, the loss creeps below the one-neuron plateau and
λmax grows until it meets the edge of stability. Seed 1 settles on the plateau where the neurons merge:
effective width 1, a saddle branch, no channel.

    python examples/channel_toy.py                # ~1 min on a laptop CPU; writes channel_toy.png
    python examples/channel_toy.py --steps 12000 --no-plot
"""

from __future__ import annotations

import argparse
import math

import torch

from lightning_landscape.neurons.toy import channel_toy_data, channel_toy_model, train_toy_gd
from lightning_landscape.optim_info import OptimizerInfo
from lightning_landscape.probes import HessianSpectrum, ProbeContext
from lightning_landscape.probes.neurons import ChannelDetector, SaddleBranches

LR = 0.25


def run(seed: int, steps: int, every: int) -> list[dict]:
    x, y = channel_toy_data()
    net = channel_toy_model(seed)
    probes = [HessianSpectrum(max_iter=4, tol=1e-8), ChannelDetector(), SaddleBranches(grad_tol=1e-6)]
    rows: list[dict] = []

    def measure(step: int) -> None:
        ctx = ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=step, optimizer_info=OptimizerInfo("sgd", LR))
        row: dict = {"step": step, "events": []}
        for probe in probes:
            result = probe.run(ctx)
            row.update(result.scalars)
            row["events"] += result.events
        w, a = net[0].weight.detach().flatten(), net[2].weight.detach().flatten()
        row.update(loss=ctx.loss(), w1=float(w[0]), w2=float(w[1]), a1=float(a[0]), a2=float(a[1]))
        rows.append(row)

    train_toy_gd(net, x, y, LR, steps, every, measure)
    return rows


def report(name: str, rows: list[dict]) -> None:
    print(f"\n== {name} ==")
    print(f"{'step':>6} {'loss':>10} {'eps':>8} {'a1':>8} {'a2':>8} {'score':>6} {'slope':>7} {'λmax':>7} "
          f"{'eos':>6} {'r_eff':>5} {'branch':>6}")
    for r in rows:
        print(f"{r['step']:>6} {r['loss']:>10.6f} {r['0/channel_eps']:>8.4f} {r['a1']:>8.3f} {r['a2']:>8.3f} "
              f"{r['0/channel_score']:>6.2f} {r.get('0/channel_slope', math.nan):>7.2f} {r['lambda_max']:>7.3f} "
              f"{r['eos_ratio']:>6.3f} {r['0/effective_width']:>5.0f} {r['saddle_branch']:>6.0f}")
        for e in r["events"]:
            print("   ", e.text())


def plot(channel: list[dict], plateau: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(13, 7))
    for rows, label in ((channel, "seed 0 (channel)"), (plateau, "seed 1 (plateau)")):
        s = [r["step"] for r in rows]
        ax[0, 0].plot(s, [r["loss"] for r in rows], label=label)
        ax[0, 1].plot(s, [r["0/channel_eps"] for r in rows], label=label)
        ax[0, 2].plot(s, [abs(r["a1"]) + abs(r["a2"]) for r in rows], label=label)
        ax[1, 0].plot(s, [r["0/channel_score"] for r in rows], label=label)
        ax[1, 1].plot(s, [r["eos_ratio"] for r in rows], label=label)
        ax[1, 2].plot(s, [r["0/effective_width"] for r in rows], label=label)
        for r in rows:
            for e in r["events"]:
                if e.rule == "channel_entry":
                    for a in ax.flat:
                        a.axvline(r["step"], color="red", ls=":", lw=1)
    ax[0, 0].axhline(0.0461, color="grey", ls="--", lw=1)
    titles = ["loss (MSE); dashed: one-neuron plateau", "min sign-aware ε", "|a₁| + |a₂|", "channel score",
              "edge-of-stability ratio λmax·lr/2", "effective width"]
    for a, t in zip(ax.flat, titles):
        a.set_title(t)
        a.set_xlabel("step")
    ax[0, 0].set_yscale("log")
    ax[0, 0].legend()
    fig.suptitle("Channel to infinity (red: channel_entry event)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"\nplot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24000, help="GD steps for the channel seed")
    parser.add_argument("--every", type=int, default=500, help="measure every this many steps")
    parser.add_argument("--out", default="channel_toy.png", help="plot path")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    channel = run(seed=0, steps=args.steps, every=args.every)
    plateau = run(seed=1, steps=min(args.steps, 4000), every=args.every)
    report("seed 0: enters a channel", channel)
    report("seed 1: one-neuron plateau (saddle branch)", plateau)
    if not args.no_plot:
        plot(channel, plateau, args.out)


if __name__ == "__main__":
    main()
