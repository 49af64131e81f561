"""Loss-landscape slices drawn as readable figures and returned as HWC uint8 images (for TensorBoard).

Rendering uses a private ``Figure`` on the Agg canvas — no ``pyplot`` state, no backend switch, safe in
a training process without a display.

>>> import numpy as np
>>> a = np.linspace(-1, 1, 11)
>>> img = plot_slice_1d(a, a ** 2, step=10)
>>> img.shape, img.dtype
((480, 640, 3), dtype('uint8'))
>>> plot_slice_2d(a, a, a[None, :] ** 2 + a[:, None] ** 2, step=10).shape
(480, 640, 3)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

#: Colour scale switches to logarithmic when max/min of a positive loss exceeds this.
LOG_SCALE_RATIO = 100.0


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render ``fig`` (on an Agg canvas) to an ``(H, W, 3)`` uint8 array."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def _new_figure(size: tuple[float, float], dpi: int) -> Figure:
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _title(title: str | None, step: int | None, default: str) -> str:
    text = title or default
    return f"{text} — step {step}" if step is not None else text


def plot_slice_1d(alphas: Sequence[float] | np.ndarray, losses: Sequence[float] | np.ndarray,
                  step: int | None = None, title: str | None = None,
                  xlabel: str = "α  (relative step along a filter-normalised random direction)",
                  ylabel: str = "probe-batch loss", size: tuple[float, float] = (6.4, 4.8), dpi: int = 100,
                  curves: dict[str, Sequence[float] | np.ndarray] | None = None, current: float | None = None,
                  label: str = "direction 1") -> np.ndarray:
    """Loss along one direction (or several: ``curves`` maps a legend label to extra loss values on the
    same ``alphas``), with the current point marked at ``α = 0`` (``current`` = its loss; default: the value
    at the grid point nearest 0). Non-finite values are left out of the line."""
    a = np.asarray(alphas, dtype=float)
    series = {label: np.asarray(losses, dtype=float), **{k: np.asarray(v, dtype=float) for k, v in (curves or {}).items()}}
    fig = _new_figure(size, dpi)
    ax = fig.add_subplot()
    finite_all = np.concatenate([v[np.isfinite(v)] for v in series.values()] or [np.zeros(0)])
    positive = finite_all.size > 0 and finite_all.min() > 0
    for name, values in series.items():
        if values.shape != a.shape:
            raise ValueError(f"losses for {name!r} have shape {values.shape}, alphas {a.shape}")
        ax.plot(np.where(np.isfinite(values), a, np.nan), np.where(np.isfinite(values), values, np.nan),
                marker=".", label=name)
    if positive and finite_all.max() / finite_all.min() > LOG_SCALE_RATIO:
        ax.set_yscale("log")
    base = series[label][int(np.argmin(np.abs(a)))] if current is None else float(current)
    ax.axvline(0.0, color="grey", linestyle=":", linewidth=1)
    if np.isfinite(base):
        ax.plot([0.0], [base], marker="o", markersize=9, color="red", linestyle="none",
                label=f"θ (current weights), loss {base:.4g}", zorder=5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_title(title, step, "1-D loss slice around θ"))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return figure_to_array(fig)


def plot_slice_2d(alphas: Sequence[float] | np.ndarray, betas: Sequence[float] | np.ndarray,
                  losses: np.ndarray, step: int | None = None, title: str | None = None,
                  xlabel: str = "α  (filter-normalised direction 1)", ylabel: str = "β  (filter-normalised direction 2)",
                  colorbar_label: str = "probe-batch loss", levels: int = 20, size: tuple[float, float] = (6.4, 4.8),
                  dpi: int = 100, subtitle: str | None = None) -> np.ndarray:
    """Filled contours of ``losses[i, j] = L(θ + alphas[j] d1 + betas[i] d2)`` with a colour bar and the
    current point (0, 0) marked. Logarithmic colours when the loss spans more than ``LOG_SCALE_RATIO``;
    non-finite cells are left blank."""
    a, b = np.asarray(alphas, dtype=float), np.asarray(betas, dtype=float)
    z = np.asarray(losses, dtype=float)
    if z.shape != (b.size, a.size):
        raise ValueError(f"losses must have shape (len(betas), len(alphas)) = {(b.size, a.size)}, got {z.shape}")
    fig = _new_figure(size, dpi)
    ax = fig.add_subplot()
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        ax.text(0.5, 0.5, "no finite loss values on this grid", ha="center", va="center", transform=ax.transAxes)
    else:
        lo, hi = float(finite.min()), float(finite.max())
        zm = np.ma.masked_invalid(z)
        if lo > 0 and hi / lo > LOG_SCALE_RATIO:
            bounds = np.geomspace(lo, hi, levels + 1)
            cs = ax.contourf(a, b, zm, levels=bounds, norm=LogNorm(lo, hi), cmap="viridis")
        else:
            if hi - lo <= 1e-12 * max(1.0, abs(hi)):  # flat grid: give contourf a non-empty range
                lo, hi = lo - 1e-12 * max(1.0, abs(lo)) - 1e-30, hi + 1e-12 * max(1.0, abs(hi)) + 1e-30
            bounds = np.linspace(lo, hi, levels + 1)
            cs = ax.contourf(a, b, zm, levels=bounds, cmap="viridis")
        ax.contour(a, b, zm, levels=bounds[:: max(1, levels // 8)], colors="white", linewidths=0.5, alpha=0.6)
        bar = fig.colorbar(cs, ax=ax)
        if isinstance(cs.norm, LogNorm):  # a few labelled ticks, evenly spaced on the log scale
            ticks = np.geomspace(bounds[0], bounds[-1], 6)
            bar.set_ticks(ticks, labels=[f"{t:.3g}" for t in ticks])
            bar.minorticks_off()
            colorbar_label += " (log scale)"
        else:  # a few round ticks instead of one per level
            ticks = MaxNLocator(7).tick_values(bounds[0], bounds[-1])
            bar.set_ticks(ticks[(ticks >= bounds[0]) & (ticks <= bounds[-1])])
        bar.set_label(colorbar_label)
    i, j = int(np.argmin(np.abs(b))), int(np.argmin(np.abs(a)))
    on_grid = b[i] == 0 and a[j] == 0 and np.isfinite(z[i, j])
    at_theta = f", loss {z[i, j]:.4g}" if on_grid else ""
    ax.plot([0.0], [0.0], marker="*", markersize=16, color="red", markeredgecolor="white", linestyle="none",
            label=f"θ (current weights){at_theta}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_title(title, step, "2-D loss slice around θ") + (f"\n{subtitle}" if subtitle else ""), fontsize="medium")
    ax.set_aspect("auto")
    ax.legend(loc="upper right", fontsize="small")
    return figure_to_array(fig)
