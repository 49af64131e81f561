"""Scan outputs: the phase-diagram PNG, CSV and JSON of every point, and the printed summary."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

from lightning_landscape.scan.analysis import ScanAnalysis, format_table
from lightning_landscape.scan.engine import ScanConfig, ScanPoint


def _branches(points: Sequence[ScanPoint]) -> tuple[list[ScanPoint], list[ScanPoint]]:
    up = sorted((p for p in points if p.direction == "up"), key=lambda p: p.beta)
    down = sorted((p for p in points if p.direction == "down"), key=lambda p: p.beta)
    if down and up:
        down = down + [up[-1]]  # the down sweep starts from the top of the up sweep
    return up, down


def plot_phase_diagram(ax_or_path: Any, points: Sequence[ScanPoint], analysis: ScanAnalysis | None = None,
                       theory: dict[str, Any] | None = None, title: str = "") -> None:
    """Four panels against β: ‖θ‖² (order parameter), loss / objective, Hessian λmax/λmin, ray estimate.

    Up sweep: solid with dots; down sweep: dashed with crosses. Vertical lines: detected thresholds
    (grey) and the closed form (black dotted) when known. ``ax_or_path``: a PNG path, or a list of four
    matplotlib axes to draw into.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    theory = theory or {}
    own = not isinstance(ax_or_path, (list, tuple))
    if own:
        fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
        axes = list(axes.ravel())
    else:
        axes = list(ax_or_path)
    up, down = _branches(points)

    def series(ax: Any, key: str, label: str, color: str) -> None:
        for branch, style, marker, tag in ((up, "-", "o", "up"), (down, "--", "x", "down")):
            xs = [p.beta for p in branch if math.isfinite(getattr(p, key))]
            ys = [getattr(p, key) for p in branch if math.isfinite(getattr(p, key))]
            if xs:
                ax.plot(xs, ys, style, marker=marker, ms=4, color=color, label=f"{label} ({tag})")

    series(axes[0], "theta_sq", "‖θ‖²", "C0")
    axes[0].set_ylabel("order parameter ‖θ‖²")
    series(axes[1], "loss", "loss L", "C1")
    series(axes[1], "objective", "L + β‖θ‖²", "C2")
    if up:
        axes[1].plot([p.beta for p in up], [p.loss_trivial for p in up], ":", color="grey", label="L_trivial")
    axes[1].set_ylabel("loss")
    series(axes[2], "lambda_max", "λmax", "C3")
    series(axes[2], "lambda_min", "λmin", "C4")
    axes[2].set_ylabel("Hessian of L (penalty adds 2β)")
    ordered = [p for p in up if p.theta_sq > 0 and p.critical_beta > 0 and math.isfinite(p.critical_beta)]
    if ordered:
        axes[3].plot([p.beta for p in ordered], [p.critical_beta for p in ordered], "-o", ms=4, color="C5",
                     label="critical_beta along the ray (up)")
    axes[3].set_ylabel("β_ray")
    lines = []
    if analysis is not None:
        lines += [(analysis.collapse_up, "grey", "-", "collapse (up)"),
                  (analysis.recover_down, "grey", "--", "recovery (down)"),
                  (analysis.global_beta, "grey", ":", "global threshold")]
    lines += [(theory.get("beta_c"), "black", (0, (1, 1)), "β_c theory")]
    if theory.get("beta_spinodal") not in (None, theory.get("beta_c")):
        lines.append((theory.get("beta_spinodal"), "black", (0, (4, 2)), "spinodal theory"))
    for ax in axes:
        for value, color, style, label in lines:
            if value is not None and math.isfinite(value):
                ax.axvline(value, color=color, linestyle=style, linewidth=1, label=label if ax is axes[0] else None)
        ax.set_xlabel("β (penalty β‖θ‖², SGD weight_decay = 2β)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if analysis is not None:
        axes[0].set_title(f"{title}  order: {analysis.order}" if title else f"order: {analysis.order}", fontsize=9)
    if own:
        fig.savefig(ax_or_path, dpi=110)
        plt.close(fig)


def write_outputs(out_dir: str | Path, points: Sequence[ScanPoint], analysis: ScanAnalysis, config: ScanConfig,
                  problem_name: str, theory: dict[str, Any] | None = None, plot: bool = True) -> dict[str, Path]:
    """``points.csv``, ``scan.json`` (config, theory, analysis, points) and ``phase_diagram.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    collapsed = set(analysis.collapsed)
    rows = [{**p.row(), "collapsed": p.index in collapsed} for p in points]  # the rule the verdict used
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    paths = {"csv": out / "points.csv", "json": out / "scan.json"}
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    payload = {
        "problem": problem_name,
        "convention": "objective = L + beta * ||theta_decayed||^2 (SGD/Adam weight_decay = 2 beta); L = training loss",
        "config": config.to_dict(),
        "theory": theory or {},
        "analysis": analysis.to_dict(),
        "table": format_table(analysis, theory),
        "points": rows,
    }
    paths["json"].write_text(json.dumps(payload, indent=1, default=str))
    if plot:
        paths["png"] = out / "phase_diagram.png"
        plot_phase_diagram(paths["png"], points, analysis, theory, problem_name)
    return paths
