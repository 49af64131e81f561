"""Loss barriers on the straight path between two solutions (linear mode connectivity).

``B = max_t [L((1−t)θ_a + tθ_b) − ((1−t)L(θ_a) + tL(θ_b))]`` over a grid of ``t`` in ``[0, 1]`` that
includes both ends, so ``B >= 0``; ``B ≈ 0`` means the two solutions are linearly connected. Hidden-unit
symmetry makes two equivalent networks look far apart: the barrier between a solution and a permuted copy
of itself (the *permutation-interpolation barrier*, Liao et al. 2024) is typically large although both
ends compute the same function, and aligning the units first (:mod:`.align`) removes that part.

BatchNorm: interpolating running statistics linearly gives wrong statistics for the interpolated weights
(the interpolated network's activations shrink), which inflates barriers. With ``reset_batchnorm=True``
(default) the running statistics of every evaluated network, both ends included, are recomputed on the
data (see :func:`reset_batchnorm_stats`) before its loss is measured.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from lightning_landscape.compare.align import Alignment, Method, align, parameter_distance
from lightning_landscape.compare.data import (
    Data,
    InputFn,
    LossFn,
    default_inputs,
    example_input,
    iter_batches,
    mean_loss,
)
from lightning_landscape.compare.permute import Permutations, permute_model, random_permutations
from lightning_landscape.compare.spec import PermutationSpec, permutation_spec


@dataclass
class BarrierResult:
    """Loss along the path and the barrier (``t_max``: where the excess over the chord is largest)."""

    ts: list[float]
    losses: list[float]
    loss_a: float
    loss_b: float
    barrier: float
    t_max: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def interpolate_states(
    state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], t: float
) -> dict[str, torch.Tensor]:
    """``(1−t)·a + t·b`` for floating tensors (exactly ``a`` at ``t=0`` and ``b`` at ``t=1``); integer
    buffers such as ``num_batches_tracked`` are taken from ``a``.

    >>> a, b = {"w": torch.zeros(2), "n": torch.tensor(3)}, {"w": torch.ones(2), "n": torch.tensor(5)}
    >>> interpolate_states(a, b, 0.25)["w"].tolist(), int(interpolate_states(a, b, 0.25)["n"])
    ([0.25, 0.25], 3)
    """
    if state_a.keys() != state_b.keys():
        raise ValueError(f"state dicts differ in keys: {sorted(set(state_a) ^ set(state_b))}")
    out = {}
    for key, a in state_a.items():
        b = state_b[key]
        # lerp is exact at both ends and wherever a == b (so a model with itself has barrier 0 exactly)
        out[key] = torch.lerp(a, b.to(a.dtype), t) if torch.is_floating_point(a) else a.clone()
    return out


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reset_batchnorm_stats(
    model: nn.Module, data: Data, input_fn: InputFn | None = None, batch_size: int | None = None
) -> bool:
    """Recompute BatchNorm running statistics on ``data`` (in place).

    The statistics are the average of the per-batch statistics (PyTorch's ``momentum=None``), which is
    the exact population mean and (unbiased) variance when ``data`` is a single batch (``batch_size=None``
    with tensor data) and the exact mean for equal-sized batches.

    Only the BatchNorm layers run in train mode (dropout stays off); modes and momenta are restored.
    Returns whether the model had any BatchNorm to reset.
    """
    bns = _batchnorms(model)
    if not bns:
        return False
    input_fn = input_fn or default_inputs
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(bn, bn.momentum) for bn in bns]
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the batches
            bn.train()
        for batch in iter_batches(data, batch_size):
            model(input_fn(batch))
    finally:
        for bn, momentum in momenta:
            bn.momentum = momentum
        for m, mode in modes:
            m.training = mode
    return True


def _grid(num_points: int) -> np.ndarray:
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 2:
        raise ValueError(f"num_points must be an int >= 2, got {num_points!r}")
    return np.linspace(0.0, 1.0, num_points)


def loss_barrier(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Data,
    loss_fn: LossFn | None = None,
    num_points: int = 25,
    reset_batchnorm: bool = True,
    input_fn: InputFn | None = None,
    batch_size: int | None = None,
) -> BarrierResult:
    """Loss along ``(1−t)θ_a + tθ_b`` and its barrier. Neither model is modified.

    >>> torch.manual_seed(0) is not None
    True
    >>> net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    >>> data = (torch.randn(32, 3), torch.randn(32, 1))
    >>> loss_barrier(net, net, data, num_points=5).barrier
    0.0
    """
    ts = _grid(num_points)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    work = copy.deepcopy(model_a)
    losses = []
    for t in ts:
        work.load_state_dict(interpolate_states(state_a, state_b, float(t)))
        if reset_batchnorm:
            reset_batchnorm_stats(work, data, input_fn, batch_size)
        losses.append(mean_loss(work, data, loss_fn, batch_size))
    losses_np = np.asarray(losses)
    excess = losses_np - (losses_np[0] + ts * (losses_np[-1] - losses_np[0]))
    i = int(np.argmax(excess))
    return BarrierResult(
        ts=ts.tolist(),
        losses=losses,
        loss_a=losses[0],
        loss_b=losses[-1],
        barrier=float(excess[i]),
        t_max=float(ts[i]),
    )


def permutation_barrier(
    model: nn.Module,
    data: Data,
    perms: Permutations | None = None,
    seed: int = 0,
    spec: PermutationSpec | None = None,
    **kwargs,
) -> BarrierResult:
    """Barrier between ``model`` and a copy with permuted hidden units (random ones from ``seed`` unless
    ``perms`` is given). Both ends compute the same function, so any barrier is pure symmetry.
    ``kwargs`` go to :func:`loss_barrier`."""
    if spec is None:
        spec = permutation_spec(model, example_input(data, kwargs.get("input_fn")))
    if perms is None:
        perms = random_permutations(spec, torch.Generator().manual_seed(seed))
    return loss_barrier(model, permute_model(model, perms, spec), data, **kwargs)


@dataclass
class PairComparison:
    """Barrier and parameter distance between two solutions, before and after aligning ``b`` to ``a``."""

    before: BarrierResult
    after: BarrierResult
    distance_before: float
    distance_after: float
    alignment: Alignment

    def to_dict(self) -> dict:
        return {
            "barrier_before": self.before.barrier,
            "barrier_after": self.after.barrier,
            "distance_before": self.distance_before,
            "distance_after": self.distance_after,
            "path_before": self.before.to_dict(),
            "path_after": self.after.to_dict(),
            "alignment": self.alignment.to_dict(),
        }


def compare_pair(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Data,
    method: Method = "weight",
    loss_fn: LossFn | None = None,
    num_points: int = 25,
    reset_batchnorm: bool = True,
    input_fn: InputFn | None = None,
    batch_size: int | None = None,
    spec: PermutationSpec | None = None,
    align_kwargs: dict | None = None,
) -> PairComparison:
    """Align ``model_b`` to ``model_a`` and measure the straight-path barrier before and after.

    Without ``spec`` the permutation spec is derived from ``model_a`` (traced on the first inputs of ``data``
    when its layers do not live in one ``nn.Sequential``).
    """
    spec = spec if spec is not None else permutation_spec(model_a, example_input(data, input_fn))
    extra = dict(align_kwargs or {})
    if method == "activation":
        extra.setdefault("input_fn", input_fn)
        extra.setdefault("batch_size", batch_size)
    aligned, alignment = align(model_a, model_b, method, data=data, spec=spec, **extra)
    common = dict(loss_fn=loss_fn, num_points=num_points, reset_batchnorm=reset_batchnorm,
                  input_fn=input_fn, batch_size=batch_size)
    return PairComparison(
        before=loss_barrier(model_a, model_b, data, **common),
        after=loss_barrier(model_a, aligned, data, **common),
        distance_before=parameter_distance(model_a, model_b),
        distance_after=parameter_distance(model_a, aligned),
        alignment=alignment,
    )


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # constrained layout makes room for a legend placed "outside" the axes, inside the figure
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _layout(labels: list[str]) -> tuple[int, float]:
    """Legend columns and figure height: two columns only when the labels are short enough to fit."""
    ncol = 2 if len(labels) > 4 and max(map(len, labels)) <= 42 else 1
    rows = -(-len(labels) // ncol)
    return ncol, 4.4 + 0.16 * rows


def _decorate(fig, ax, title: str, ncol: int) -> None:
    ax.set_xlabel("t  (0: model a, 1: model b)")
    ax.set_ylabel("loss along (1−t)·θa + t·θb")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    # legend under the axes (never hides the curves), inside the figure
    fig.legend(fontsize=7, loc="outside lower center", ncol=ncol, frameon=False)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def paths_figure(paths: Mapping[str, BarrierResult], title: str = "Loss along the straight path"):
    """The figure :func:`plot_paths` saves (a matplotlib ``Figure``, no pyplot state)."""
    labels = [f"{label} (barrier {result.barrier:.3g})" for label, result in paths.items()]
    ncol, height = _layout(labels)
    fig = _figure(6.4, height)
    ax = fig.add_subplot()
    for text, result in zip(labels, paths.values()):
        ax.plot(result.ts, result.losses, marker=".", label=text)
    _decorate(fig, ax, title, ncol)
    return fig


def pair_paths_figure(pairs: Mapping[str, PairComparison], title: str = "Straight paths between solutions"):
    """The figure :func:`plot_pair_paths` saves: per pair the raw path (dashed) and the aligned one (solid)."""
    labels = [f"{label} {kind} (barrier {res.barrier:.3g})" for label, pair in pairs.items()
              for kind, res in (("raw", pair.before), ("aligned", pair.after))]
    ncol, height = _layout(labels)
    fig = _figure(6.4, height)
    ax = fig.add_subplot()
    for k, pair in enumerate(pairs.values()):
        colour = f"C{k % 10}"
        ax.plot(pair.before.ts, pair.before.losses, "--", color=colour, marker=".", label=labels[2 * k])
        ax.plot(pair.after.ts, pair.after.losses, "-", color=colour, marker=".", label=labels[2 * k + 1])
    _decorate(fig, ax, title, ncol)
    return fig


def plot_paths(paths: Mapping[str, BarrierResult], path: str | Path, title: str = "Loss along the straight path") -> Path:
    """Save a PNG of loss against ``t`` for each labelled path (matplotlib Agg, no pyplot state)."""
    return _save(paths_figure(paths, title), path)


def plot_pair_paths(pairs: Mapping[str, PairComparison], path: str | Path, title: str = "Straight paths between solutions") -> Path:
    """Save a PNG with, per pair, the raw path (dashed) and the aligned path (solid, same colour)."""
    return _save(pair_paths_figure(pairs, title), path)
