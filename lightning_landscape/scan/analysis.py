"""Read a sweep: where the model collapses going up, where it recovers going down, where the trained
branch stops being the global minimum, and whether the transition is continuous or a jump — with the
numbers behind the verdict.

Order parameter: ``m = ‖θ_decayed‖²`` (scale-invariant groups left out, see
:mod:`lightning_landscape.scan.engine`) normalised by its largest value on the up sweep at β > 0 (at
β = 0 nothing removes what initialisation put in directions the data never sees). A point is
*collapsed* when ``m < collapse_tol`` **or** its fit is gone: ``collapse_ratio`` below ``collapse_tol``
times the best ``collapse_ratio`` of the up sweep. One rule, written to ``points.csv`` as the
``collapsed`` column, gives every threshold, the order and the hysteresis. Evidence for a jump (first order):

* the largest one-step drop of ``m`` on the up sweep, as a fraction of its range (``jump_tol``); a
  continuous transition loses ``m`` gradually (one hidden layer: ``m ∝ β_c − β``, so each step loses
  about one grid step over β_c);
* hysteresis: the up sweep collapses at ``β_up`` but the down sweep only recovers at ``β_down < β_up``
  (or never). The gap is given in grid steps; two or more count as hysteresis (one step can come
  from critical slowing down at a continuous transition).

No verdict (order ``undetermined``) when no point converged, or when the model never fitted; the verdict
carries warnings when some points did not converge, when the up sweep collapses and comes back, or when
the collapse falls between the first two grid points (refine the grid).

The global threshold (where the collapsed model starts to beat the trained branch,
``L + β‖θ‖² = L_trivial``) is interpolated between up-sweep points; in a first-order transition it lies
below ``β_up`` (the trained branch survives as a metastable minimum up to its spinodal).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from lightning_landscape.scan.engine import ScanPoint


@dataclass
class ScanAnalysis:
    """Detected thresholds and the order verdict (see the module docstring)."""

    grid_step: float
    collapse_up: float | None = None
    collapse_up_interval: tuple[float, float] | None = None
    recover_down: float | None = None
    recover_down_interval: tuple[float, float] | None = None
    global_beta: float | None = None
    ray_beta: float | None = None
    jump_fraction: float = 0.0
    jump_interval: tuple[float, float] | None = None
    hysteresis_gap: float | None = None
    hysteresis_gap_steps: float | None = None
    hysteresis_lower_bound: bool = False
    hysteresis_area: float | None = None
    order: str = "none"
    evidence: str = ""
    num_points: int = 0
    num_converged: int = 0
    collapsed: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    undetermined: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _normaliser(up: Sequence[ScanPoint]) -> float:
    positive = [p.theta_sq for p in up if p.beta > 0]
    scale = max(positive) if positive and max(positive) > 0 else max((p.theta_sq for p in up), default=0.0)
    return scale if scale > 0 else 1.0


def analyse(points: Sequence[ScanPoint], collapse_tol: float = 0.02, jump_tol: float = 0.3,
            hysteresis_steps: float = 2.0) -> ScanAnalysis:
    """Thresholds, order and evidence from the points of :func:`run_scan`.

    >>> from lightning_landscape.scan.engine import ScanPoint
    >>> mk = lambda i, d, b, t: ScanPoint(i, d, b, 0.0, 0.0, t, 1.0, 0.9 if t else 0.0, converged=True)
    >>> up = [mk(i, "up", b, t) for i, (b, t) in enumerate([(0.0, 3), (1.0, 2), (2.0, 1.8), (3.0, 0), (4.0, 0)])]
    >>> down = [mk(5 + i, "down", b, 0) for i, b in enumerate([3.0, 2.0, 1.0, 0.0])]
    >>> a = analyse(up + down)
    >>> a.order, a.collapse_up, a.hysteresis_lower_bound
    ('jump', 2.5, True)
    """
    up = sorted((p for p in points if p.direction == "up"), key=lambda p: p.beta)
    down = sorted((p for p in points if p.direction == "down"), key=lambda p: -p.beta)
    betas = [p.beta for p in up]
    steps = [b2 - b1 for b1, b2 in zip(betas, betas[1:])]
    out = ScanAnalysis(grid_step=statistics.median(steps) if steps else float("nan"))
    if len(up) < 2:
        out.evidence = "fewer than two up-sweep points"
        return out
    scale = _normaliser(up)
    m = [p.theta_sq / scale for p in up]
    best_fit = max((p.collapse_ratio for p in up if math.isfinite(p.collapse_ratio)), default=0.0)

    def is_collapsed(p: ScanPoint) -> bool:
        gone = best_fit > 0 and not p.collapse_ratio >= collapse_tol * best_fit  # NaN counts as gone
        return p.theta_sq / scale < collapse_tol or gone

    collapsed = [is_collapsed(p) for p in up]
    out.collapsed = sorted(p.index for p in points if is_collapsed(p))
    out.num_points = len(points)
    out.num_converged = sum(bool(p.converged) for p in points)
    bad = [p for p in points if not p.converged]
    if out.num_converged == 0:
        out.undetermined.append(f"0 of {len(points)} points converged (|∇ objective| ≥ tol at every point): "
                                "raise --steps or --lr, or loosen --tol")
    elif bad:
        out.warnings.append(f"{len(bad)} of {len(points)} points did not converge (β = "
                            + ", ".join(f"{p.beta:.4g}{'↑' if p.direction == 'up' else '↓'}" for p in bad[:8])
                            + (" …" if len(bad) > 8 else "") + "): their values may not be the minimum's")
    if best_fit <= 0 or collapsed[0] and up[0].beta == 0:
        out.undetermined.append("the model never fitted better than the collapsed one (collapse_ratio ≤ 0 at "
                                "β = 0): nothing to collapse — train longer (--steps, --lr)")

    # up sweep: first point from which every later point is collapsed
    first = next((k for k in range(len(up)) if all(collapsed[k:])), None)
    if first is not None and first > 0:
        out.collapse_up_interval = (betas[first - 1], betas[first])
        out.collapse_up = 0.5 * (betas[first - 1] + betas[first])
        if first == 1:
            out.warnings.append(f"the fit is already lost at the second grid point (β = {betas[1]:.4g}): the grid "
                                "is too coarse there — lower --beta-max")
    elif first == 0:
        out.collapse_up_interval = (betas[0], betas[0])
        out.collapse_up = betas[0]
        out.warnings.append(f"collapsed already at the lowest β = {betas[0]:.4g}: lower --beta-min")
    early = [betas[k] for k in range(first if first is not None else len(up)) if collapsed[k]]
    if early:
        out.warnings.append("the up sweep collapses and recovers again (collapsed at β = "
                            + ", ".join(f"{b:.4g}" for b in early) + ", fitted above): not a clean transition")

    # largest one-step drop on the up sweep (β > 0 pairs when there are enough of them)
    pairs = [(k, k + 1) for k in range(len(up) - 1) if up[k].beta > 0 or sum(b > 0 for b in betas) < 3]
    drops = [(m[a] - m[b], a, b) for a, b in pairs]
    if drops:
        size, a, b = max(drops)
        lo = min(m[k] for k in range(len(up)) if up[k].beta > 0 or len(pairs) == len(up) - 1)
        rng = max(m[k] for k in range(len(up)) if up[k].beta > 0 or len(pairs) == len(up) - 1) - lo
        out.jump_fraction = size / rng if rng > 0 else 0.0
        out.jump_interval = (betas[a], betas[b])

    # global threshold: objective of the trained branch crosses the collapsed model's loss
    deltas = [p.objective - p.loss_trivial for p in up]
    for k in range(1, len(up)):
        tol = 1e-6 * max(abs(up[k].loss_trivial), 1e-30)
        if deltas[k - 1] < -tol and deltas[k] >= -tol:
            frac = -deltas[k - 1] / (deltas[k] - deltas[k - 1])
            out.global_beta = betas[k - 1] + frac * (betas[k] - betas[k - 1])
            break

    # ray estimate on ordered up points at β > 0
    rays = [p.critical_beta for p, c in zip(up, collapsed) if not c and p.beta > 0 and math.isfinite(p.critical_beta)]
    if rays:
        out.ray_beta = statistics.median(rays)
    if out.ray_beta is not None and out.global_beta is not None and out.ray_beta > out.global_beta + out.grid_step:
        # critical_beta is a lower bound of the true global threshold: the branch the sweep trained is worse
        # than points on its own rays, so its thresholds are those of that branch, not of the model
        out.warnings.append(f"the ray estimate {out.ray_beta:.4g} exceeds the global threshold {out.global_beta:.4g}: "
                            "the trained branch is not the best this model reaches (not converged, or another "
                            "optimizer finds better) — its thresholds are low")

    # down sweep: first recovered point going down (the top point of the up sweep starts it)
    if down and out.collapse_up is not None:
        chain = [up[-1]] + down
        ck = [is_collapsed(p) for p in chain]
        rec = next((k for k in range(1, len(chain)) if not ck[k] and ck[k - 1]), None)
        top_collapsed = ck[0]
        if rec is not None and top_collapsed:
            out.recover_down_interval = (chain[rec].beta, chain[rec - 1].beta)
            out.recover_down = 0.5 * (chain[rec].beta + chain[rec - 1].beta)
            out.hysteresis_gap = max(out.collapse_up - out.recover_down, 0.0)
        elif top_collapsed:
            out.hysteresis_lower_bound = True
            out.hysteresis_gap = out.collapse_up - chain[-1].beta
        if out.hysteresis_gap is not None and out.grid_step > 0:
            out.hysteresis_gap_steps = out.hysteresis_gap / out.grid_step
        by_beta = {p.beta: p.theta_sq / scale for p in down}
        shared = [(v, by_beta[p.beta]) for p, v in zip(up, m) if p.beta in by_beta and p.beta > 0]
        if shared:
            out.hysteresis_area = sum(abs(a - b) for a, b in shared) / len(shared)

    _verdict(out, collapse_tol, jump_tol, hysteresis_steps)
    return out


def _verdict(out: ScanAnalysis, collapse_tol: float, jump_tol: float, hysteresis_steps: float) -> None:
    if out.undetermined:
        out.order = "undetermined"
        out.evidence = "no verdict: " + "; ".join(out.undetermined)
        return
    if out.collapse_up is None:
        out.order = "none"
        out.evidence = "no collapse on the up sweep: raise beta_max"
        return
    parts = [f"largest one-step drop of ‖θ‖² = {100 * out.jump_fraction:.0f}% of its range"
             + (f" (β {out.jump_interval[0]:.4g}→{out.jump_interval[1]:.4g})" if out.jump_interval else "")]
    hyst = out.hysteresis_gap_steps is not None and out.hysteresis_gap_steps >= hysteresis_steps
    if out.hysteresis_lower_bound:
        parts.append(f"down sweep never recovers (gap ≥ {out.hysteresis_gap:.4g} = "
                     f"{out.hysteresis_gap_steps:.1f} grid steps)")
    elif out.recover_down is not None:
        parts.append(f"down sweep recovers at {out.recover_down:.4g} (gap {out.hysteresis_gap:.4g} = "
                     f"{out.hysteresis_gap_steps:.1f} grid steps)")
    else:
        parts.append("no down sweep")
    jump = out.jump_fraction >= jump_tol
    if jump or hyst:
        out.order = "jump"
        why = []
        if jump:
            why.append(f"drop ≥ {100 * jump_tol:.0f}%")
        if hyst:
            why.append(f"hysteresis ≥ {hysteresis_steps:g} steps")
        parts.append("→ jump (first order): " + " and ".join(why))
    else:
        out.order = "continuous"
        parts.append(f"→ continuous (second order): drop < {100 * jump_tol:.0f}% and hysteresis < {hysteresis_steps:g} steps")
    out.evidence = "; ".join(parts)


def format_table(analysis: ScanAnalysis, theory: dict[str, Any] | None = None) -> str:
    """The printed summary: detected thresholds next to theory (when known), verdict and evidence."""
    theory = theory or {}

    def f(v: Any) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"

    def iv(t: tuple[float, float] | None) -> str:
        return "" if t is None else f" [{t[0]:.4g}, {t[1]:.4g}]"

    a = analysis
    rec = (f"none down to the grid minimum (gap ≥ {a.hysteresis_gap:.4g})" if a.hysteresis_lower_bound
           else f(a.recover_down) + iv(a.recover_down_interval))
    rows = [
        ("collapse, up sweep (β_up)", f(a.collapse_up) + iv(a.collapse_up_interval), f"spinodal {f(theory.get('beta_spinodal'))}"),
        ("recovery, down sweep (β_down)", rec, ""),
        ("global threshold (L+β‖θ‖² = L_trivial)", f(a.global_beta), f"β_c {f(theory.get('beta_c'))}"),
        ("ray estimate (median critical_beta)", f(a.ray_beta), f"β_c {f(theory.get('beta_c'))}"),
        ("largest one-step drop of ‖θ‖²", f"{100 * a.jump_fraction:.0f}% of range" + iv(a.jump_interval), ""),
        ("hysteresis gap", ("≥ " if a.hysteresis_lower_bound else "") + f(a.hysteresis_gap)
         + (f" ({a.hysteresis_gap_steps:.1f} grid steps)" if a.hysteresis_gap_steps is not None else ""), ""),
        ("grid step", f(a.grid_step), ""),
        ("order", a.order, f"theory: {theory['order']}" if "order" in theory else ""),
        ("points converged (|∇ objective| < tol)", f"{a.num_converged} of {a.num_points}", ""),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{'quantity':<{w0}}  {'detected':<{w1}}  theory", "-" * (w0 + w1 + 20)]
    lines += [f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}".rstrip() for r in rows]
    lines.append(f"evidence: {a.evidence}")
    lines += [f"warning: {w}" for w in a.warnings]
    return "\n".join(lines)
