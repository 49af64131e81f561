"""The depth effect of the L2 phase transition (Ziyin & Ueda 2022), reproduced with `lightning_landscape.scan`.

Deep linear nets with one, two and three hidden layers on the same teacher–student data (whitened
inputs, so the closed forms apply), swept in weight decay up and back down; then a tanh net with two
hidden layers, whose threshold has no closed form and is detected. One hidden layer collapses
continuously and recovers on the way down; two and three jump, and never come back (hysteresis).

Writes ``docs/l2_depth.png`` and prints one summary row per net. About a minute on 2 CPU cores:

    python examples/l2_depth.py [--out docs/l2_depth.png]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from lightning_landscape.scan import ScanConfig, analyse, builtin_problem, run_scan
from lightning_landscape.scan.engine import suggest_beta_max


def scan(task: str, points: int = 16, steps: int = 1500):
    problem = builtin_problem(task)
    base = dict(max_steps=steps, curvature=False)
    if "beta_spinodal" in problem.theory:
        beta_max = 1.5 * problem.theory["beta_spinodal"]
    else:
        beta_max = suggest_beta_max(problem, ScanConfig(**base))
    config = ScanConfig(beta_max=beta_max, num_points=points, **base)
    pts = run_scan(problem, config)
    return problem, pts, analyse(pts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "l2_depth.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightning_landscape.l2 import deep_linear_radius

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), constrained_layout=True)
    rows = []
    for color, task in zip(("C0", "C1", "C2"), ("linear-1", "linear-2", "linear-3")):
        t0 = time.perf_counter()
        problem, pts, a = scan(task)
        th = problem.theory
        depth = int(task[-1])
        ref = max(p.theta_sq for p in pts if p.direction == "up" and p.beta > 0)
        for direction, style, marker in (("up", "-", "o"), ("down", "--", "x")):
            branch = sorted((p for p in pts if p.direction == direction), key=lambda p: p.beta)
            xs = [p.beta / th["beta_c"] for p in branch]
            axes[0].plot(xs, [p.theta_sq / ref for p in branch], style, marker=marker, ms=3.5, color=color,
                         label=f"{depth} hidden ({direction})")
            axes[1].plot(xs, [p.collapse_ratio for p in branch], style, marker=marker, ms=3.5, color=color,
                         label=f"{depth} hidden ({direction})")
        # theory: ‖θ‖² = D r^{2/D} along the branch an up sweep follows (normalised like the data)
        grid = [i / 400 * 1.5 * th["beta_spinodal"] for i in range(1, 401)]
        d = depth + 1
        curve = [d * deep_linear_radius(th["b_norm"], depth, b, "trained") ** (2 / d) for b in grid]
        first = min((p for p in pts if p.direction == "up" and p.beta > 0), key=lambda p: p.beta)
        scale = d * deep_linear_radius(th["b_norm"], depth, first.beta, "trained") ** (2 / d)
        axes[0].plot([b / th["beta_c"] for b in grid], [c / scale * first.theta_sq / ref for c in curve], "-",
                     color="black", lw=0.6, alpha=0.7)
        rows.append((f"linear, {depth} hidden", th["beta_c"], th["beta_spinodal"], a, time.perf_counter() - t0))

    t0 = time.perf_counter()
    problem, pts, a = scan("tanh-2")
    for direction, style, marker in (("up", "-", "o"), ("down", "--", "x")):
        branch = sorted((p for p in pts if p.direction == direction), key=lambda p: p.beta)
        axes[2].plot([p.beta for p in branch], [p.theta_sq for p in branch], style, marker=marker, ms=3.5,
                     color="C3", label=f"‖θ‖² ({direction})")
    ordered = [p for p in pts if p.direction == "up" and p.theta_sq > 1e-3 and p.beta > 0]
    ax2 = axes[2].twinx()
    ax2.plot([p.beta for p in ordered], [p.critical_beta for p in ordered], ":", marker=".", color="C5",
             label="critical_beta (ray)")
    ax2.set_ylabel("critical_beta along the ray", color="C5")
    for value, style, label in ((a.collapse_up, "-", "collapse (up)"), (a.global_beta, ":", "global threshold")):
        if value is not None:
            axes[2].axvline(value, color="grey", linestyle=style, lw=1, label=f"{label} {value:.3g}")
    rows.append(("tanh, 2 hidden", math.nan, math.nan, a, time.perf_counter() - t0))

    axes[0].set(xlabel="β / β_c (closed form)", ylabel="‖θ‖² / max", title="order parameter (thin: theory)")
    axes[1].set(xlabel="β / β_c (closed form)", ylabel="(L_trivial − L) / L_trivial", title="collapse ratio")
    axes[2].set(xlabel="β (penalty β‖θ‖², SGD weight_decay = 2β)", ylabel="‖θ‖²",
                title=f"tanh, 2 hidden layers: {a.order}")
    axes[0].set_ylim(-0.05, 1.3)  # β = 0 keeps what initialisation put where the data never looks (off scale)
    for ax in axes[:2]:
        ax.axvline(1.0, color="black", lw=0.8, linestyle=":")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    ax2.legend(fontsize=7, loc="center right")
    fig.suptitle("L2 phase transition vs depth: solid = β swept up, dashed = back down (warm-started)", fontsize=10)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)

    print(f"{'net':<18} {'β_c theory':>10} {'spinodal':>9} {'β_up':>8} {'β_down':>8} {'global':>8} {'ray':>8}  order        s")
    for name, bc, bs, a, secs in rows:
        down = "never" if a.hysteresis_lower_bound else f"{a.recover_down:.4g}" if a.recover_down is not None else "—"
        print(f"{name:<18} {bc:>10.4g} {bs:>9.4g} {a.collapse_up or math.nan:>8.4g} {down:>8} "
              f"{a.global_beta or math.nan:>8.4g} {a.ray_beta or math.nan:>8.4g}  {a.order:<10} {secs:5.1f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
