"""The sweep: train at each weight decay of a grid, up and then back down, warm-starting every point
from the previous solution (a tiny seeded jitter lets a saddle be told from a local minimum), and
measure the order parameters, the ray estimate and the curvature. Plain full-batch torch (no Trainer per
point): a few milliseconds per step on the built-in problems.

The penalty is added to the loss explicitly: the objective is ``L(θ) + β‖θ_decayed‖²`` (SGD/Adam
``weight_decay = 2β``), so the thresholds are in the package's β convention.

Normalised nets: decayed weights whose output goes straight into a BatchNorm/LayerNorm/GroupNorm are
scale-invariant (:mod:`lightning_landscape.l2.invariance`, detected once before the sweep). They are
trained with the penalty like everything else, but measured apart: ``theta_sq`` (the order parameter),
``objective``, the trivial loss and the ray use the other decayed parameters, and ``theta_sq_invariant``
holds theirs — their penalty can be made as small as one likes without changing the function, so it
says nothing about which function wins.

Convergence: a point has converged when the gradient norm of the full objective (averaged over every
cached batch) is below ``tol``; it is measured after the last step, so mini-batch sweeps report it too.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import torch

from lightning_landscape.guards import isolated_rng
from lightning_landscape.hessian import HessianOperator
from lightning_landscape.l2.invariance import scale_invariant_groups
from lightning_landscape.l2.order import collapse_ratio, squared_norm, trivial_loss
from lightning_landscape.l2.ray import ray_critical_beta
from lightning_landscape.linalg import lanczos_extremes
from lightning_landscape.linalg.random import gaussian
from lightning_landscape.parameters import ParameterSpace
from lightning_landscape.scan.point import ScanPoint
from lightning_landscape.scan.problem import ScanProblem
from lightning_landscape.validation import check_bool


@dataclass
class ScanConfig:
    """Grid and training settings of a scan (everything that identifies it for resuming).

    ``betas`` (explicit grid) wins over ``beta_min``/``beta_max``/``num_points`` (uniform grid).
    Each point trains at most ``max_steps`` steps of heavy-ball gradient descent (``lr``, ``momentum``)
    and stops early once the objective's gradient norm is below ``tol`` (full batch only). ``jitter``:
    relative size (to each tensor's initial RMS) of the seeded noise added before every point.
    """

    betas: list[float] | None = None
    beta_min: float = 0.0
    beta_max: float = 1.0
    num_points: int = 16
    directions: Literal["up-down", "up"] = "up-down"
    lr: float = 0.05
    momentum: float = 0.9
    max_steps: int = 3000
    tol: float = 1e-5
    jitter: float = 1e-3
    seed: int = 0
    curvature: bool = True
    lanczos_iter: int = 20
    ray: bool = True
    scale_invariant: Literal["exclude", "include"] = "exclude"

    def __post_init__(self) -> None:
        for name in ("curvature", "ray"):
            check_bool(name, getattr(self, name))
        if self.betas is not None:
            betas = [float(b) for b in self.betas]
            if len(betas) < 2 or any(b < 0 or not math.isfinite(b) for b in betas):
                raise ValueError(f"betas must hold >= 2 finite values >= 0, got {self.betas}")
            if any(b2 <= b1 for b1, b2 in zip(betas, betas[1:])):
                raise ValueError("betas must be strictly increasing")
            self.betas = betas
        else:
            if not (0 <= self.beta_min < self.beta_max) or not math.isfinite(self.beta_max):
                raise ValueError(f"need 0 <= beta_min < beta_max, got beta_min={self.beta_min}, beta_max={self.beta_max}")
            if self.num_points < 2:
                raise ValueError(f"num_points must be >= 2, got {self.num_points}")
        if self.directions not in ("up-down", "up"):
            raise ValueError(f"directions must be 'up-down' or 'up', got {self.directions!r}")
        for name in ("lr", "tol"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.scale_invariant not in ("exclude", "include"):
            raise ValueError(f"scale_invariant must be 'exclude' or 'include', got {self.scale_invariant!r}")
        if self.jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {self.jitter}")

    def grid(self) -> list[float]:
        if self.betas is not None:
            return list(self.betas)
        n = self.num_points
        return [self.beta_min + (self.beta_max - self.beta_min) * k / (n - 1) for k in range(n)]

    def schedule(self) -> list[tuple[float, str]]:
        """``(β, direction)`` of every point, in sweep order: up the grid, then back down."""
        grid = self.grid()
        up = [(b, "up") for b in grid]
        down = [(b, "down") for b in reversed(grid[:-1])] if self.directions == "up-down" else []
        return up + down

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean_loss(problem: ScanProblem) -> torch.Tensor:
    losses = [problem.loss_fn(problem.module, batch) for batch in problem.batches]
    return torch.stack(losses).mean() if len(losses) > 1 else losses[0]


def _objective_gradient(problem: ScanProblem, params: list[torch.Tensor], decayed_ids: set[int], beta: float,
                        batches: Sequence[Any]) -> float:
    """‖∇(mean over ``batches`` of L + β‖θ_decayed‖²)‖ (float64 accumulation)."""
    loss = torch.stack([problem.loss_fn(problem.module, b) for b in batches]).mean()
    penalty = sum((p * p).sum() for p in params if id(p) in decayed_ids)
    grads = torch.autograd.grad(loss + beta * penalty, params, allow_unused=True)
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads if g is not None))


def train_point(
    problem: ScanProblem, beta: float, config: ScanConfig, generator: torch.Generator, init_rms: Sequence[float]
) -> tuple[int, float, bool]:
    """Jitter, then train ``L + β‖θ_decayed‖²`` to convergence; returns (steps, final grad norm, converged).

    The final gradient norm is that of the full objective (every cached batch): with one batch it is the
    stopping test itself, with several it is measured once after the last step.
    """
    module = problem.module
    params = [p for p in module.parameters() if p.requires_grad]
    decayed_ids = {id(p) for _, p in problem.named_decayed()}
    with torch.no_grad():
        for p, rms in zip(params, init_rms):
            if config.jitter > 0:
                p.add_(config.jitter * rms * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    velocity = [torch.zeros_like(p) for p in params]
    full_batch = len(problem.batches) == 1
    module.train()
    gnorm, steps = float("inf"), 0
    for steps in range(config.max_steps + 1):
        batch = problem.batches[steps % len(problem.batches)]
        loss = problem.loss_fn(module, batch)
        penalty = sum((p * p).sum() for p in params if id(p) in decayed_ids)
        grads = torch.autograd.grad(loss + beta * penalty, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        gnorm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
        if not math.isfinite(gnorm):
            raise FloatingPointError(f"training diverged at beta={beta} (step {steps}); lower --lr")
        if (full_batch and gnorm < config.tol) or steps == config.max_steps:
            break
        with torch.no_grad():  # heavy-ball gradient descent
            for p, g, v in zip(params, grads, velocity):
                v.mul_(config.momentum).add_(g)
                p.sub_(config.lr * v)
    if not full_batch:
        gnorm = _objective_gradient(problem, params, decayed_ids, beta, problem.batches)
    return steps, gnorm, gnorm < config.tol


def invariant_names(problem: ScanProblem, config: ScanConfig) -> set[str]:
    """Decayed parameters in scale-invariant groups (training mode, first batch), unless the config says
    ``scale_invariant="include"``; empty when nothing else would be left to collapse."""
    if config.scale_invariant == "include":
        return set()
    module = problem.module
    was_training = module.training
    module.train()
    try:
        groups = scale_invariant_groups(module, lambda: problem.loss_fn(module, problem.batches[0]))
    finally:
        module.train(was_training)
    decayed = set(problem.decayed or [])
    names = {n for g in groups for n in g.names if n in decayed}
    return names if names != decayed else set()


def measure_point(problem: ScanProblem, beta: float, config: ScanConfig, generator: torch.Generator,
                  invariant: set[str] | None = None) -> dict[str, Any]:
    """Order parameters, ray estimate and curvature of the current weights (no grads kept).

    Evaluation mode, except normalisation layers that use batch statistics in training (BatchNorm): they
    measure with batch statistics — the loss that was trained, not running averages that lag behind the
    weights during a sweep — and their running statistics are put back afterwards.

    ``invariant``: decayed parameter names left out of ``theta_sq``/``objective``/the ray (see the module
    docstring); their ‖θ‖² is ``theta_sq_invariant``.
    """
    with measuring(problem.module):
        return _measure(problem, beta, config, generator, invariant)


@contextlib.contextmanager
def measuring(module: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode with BatchNorm on batch statistics; BatchNorm running statistics restored after."""
    module.eval()
    batch_norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in batch_norms:
        m.train()
    buffers = [b for m in batch_norms for b in m.buffers()]
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in zip(buffers, saved):
                b.copy_(v)


def _measure(problem: ScanProblem, beta: float, config: ScanConfig, generator: torch.Generator,
             invariant: set[str] | None) -> dict[str, Any]:
    module = problem.module
    invariant = invariant or set()
    named = [(n, p) for n, p in problem.named_decayed() if n not in invariant]
    params = [p for _, p in named]

    def loss_fn() -> torch.Tensor:
        return _mean_loss(problem)

    with torch.no_grad():
        loss = float(loss_fn())
    l_triv = trivial_loss(params, loss_fn)
    theta_sq = squared_norm(params)
    out: dict[str, Any] = {
        "loss": loss,
        "objective": loss + beta * theta_sq,
        "theta_sq": theta_sq,
        "theta_sq_invariant": squared_norm([p for n, p in problem.named_decayed() if n in invariant]),
        "loss_trivial": l_triv,
        "collapse_ratio": collapse_ratio(loss, l_triv),
        "layer_norms": {n: float(p.detach().double().norm()) for n, p in problem.named_decayed()},
    }
    if config.ray and theta_sq > 0:
        est = ray_critical_beta(params, loss_fn, loss_trivial=l_triv)
        out["critical_beta"] = est.critical_beta
        out["ray_argmax_scale"] = est.argmax_scale
    if config.curvature:
        space = ParameterSpace.from_module(module)
        with torch.enable_grad():
            op = HessianOperator(loss_fn(), space)
            res = lanczos_extremes(op.matvec, gaussian(space.dim, generator, space.dtype, space.device),
                                   max_iter=config.lanczos_iter, tol=1e-3)
            op.release()
        out["lambda_max"], out["lambda_min"] = res.lambda_max, res.lambda_min
    return out


ProgressFn = Callable[[ScanPoint, int, int], None]


def run_scan(
    problem: ScanProblem,
    config: ScanConfig,
    state_dir: str | Path | None = None,
    progress: bool = False,
    on_point: ProgressFn | None = None,
) -> list[ScanPoint]:
    """Sweep ``config.schedule()``; resumable through ``state_dir`` (state written after every point).

    Runs under :func:`isolated_rng` (the caller's global RNG streams are left as they were). Returns
    every point, including those loaded from a previous interrupted run of the same scan.

    Example (a tiny one-hidden-layer linear scan):
        >>> from lightning_landscape.scan.problem import builtin_problem
        >>> p = builtin_problem("linear-1", width=4, input_dim=4, num_samples=64)
        >>> cfg = ScanConfig(beta_max=2 * p.theory["beta_c"], num_points=3, max_steps=300, curvature=False)
        >>> pts = run_scan(p, cfg)
        >>> [pt.direction for pt in pts], pts[-1].theta_sq > pts[2].theta_sq
        (['up', 'up', 'up', 'down', 'down'], True)
    """
    from lightning_landscape.scan.state import ScanState  # local: keeps the engine importable alone

    schedule = config.schedule()
    state = ScanState.open(state_dir, problem, config) if state_dir is not None else None
    points: list[ScanPoint] = list(state.points) if state is not None else []
    init_rms = [float(p.detach().double().pow(2).mean().sqrt()) or 1.0 for p in problem.module.parameters() if p.requires_grad]
    if state is not None:
        init_rms = state.init_rms(init_rms)
        state.restore_weights(problem.module)
    bar = _progress_bar(len(schedule), len(points), progress)
    with isolated_rng():
        invariant = invariant_names(problem, config)
        for index in range(len(points), len(schedule)):
            beta, direction = schedule[index]
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + index)
            start = time.perf_counter()
            steps, gnorm, converged = train_point(problem, beta, config, gen, init_rms)
            measured = measure_point(problem, beta, config, gen, invariant)
            point = ScanPoint(index=index, direction=direction, beta=beta, grad_norm=gnorm, steps=steps,
                              converged=converged, seconds=time.perf_counter() - start, **measured)
            points.append(point)
            if state is not None:
                state.save(points, problem.module)
            if bar is not None:
                bar.set_postfix_str(f"{direction} β={beta:.4g} ‖θ‖²={point.theta_sq:.3g} loss={point.loss:.3g}")
                bar.update(1)
            if on_point is not None:
                on_point(point, index, len(schedule))
    if bar is not None:
        bar.close()
    if state is not None:
        state.save(points, problem.module, finished=True)
    return points


def _progress_bar(total: int, done: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with Lightning
        return None
    return tqdm(total=total, initial=done, desc="scan", unit="point", dynamic_ncols=True)


def suggest_beta_max(problem: ScanProblem, config: ScanConfig, factor: float = 1.6) -> float:
    """A grid end for an unknown problem: ``factor ×`` the ray estimate after a two-stage pilot.

    Trains a copy at β = 0 and reads ``β_ray``; that underestimates (what initialisation put in
    directions the data never sees inflates ‖θ‖²), so it trains again at that β — weight decay clears
    those directions — and reads ``β_ray`` once more. ``β_ray`` is a lower bound on the threshold and
    the up sweep collapses at the spinodal, above it: hence the margin ``factor``. The scan reports
    "no collapse" if it was not enough.

    The pilot trains the problem's own module and puts its state back afterwards: a user problem's loss
    is a closure bound to that module, so a trained deep copy would never be seen by it.
    """
    import copy

    module = problem.module
    saved = copy.deepcopy(module.state_dict())
    was_training = module.training
    names = set(problem.decayed or []) - invariant_names(problem, config)  # the ray the scan measures
    params = [p for n, p in module.named_parameters() if n in names]
    rms = [float(p.detach().double().pow(2).mean().sqrt()) or 1.0 for p in module.parameters() if p.requires_grad]
    best, seen = 0.0, []
    try:
        with isolated_rng():
            gen = torch.Generator().manual_seed(config.seed)
            beta = 0.0
            for _ in range(2):
                train_point(problem, beta, config, gen, rms)
                with measuring(module), torch.no_grad():
                    loss = float(_mean_loss(problem).detach())
                    est = ray_critical_beta(params, lambda: _mean_loss(problem))
                seen.append(f"β={beta:.4g}: loss {loss:.4g}, trivial loss {est.loss_trivial:.4g}, "
                            f"critical_beta {est.critical_beta:.4g}")
                if not math.isfinite(est.critical_beta) or est.critical_beta <= 0:
                    break
                best = max(best, est.critical_beta)
                beta = est.critical_beta
    finally:  # the sweep starts from the weights the pilot found them in
        module.load_state_dict(saved)
        module.train(was_training)
    if best <= 0:
        raise RuntimeError("the pilot run found no threshold estimate (" + "; ".join(seen) + "): the model did not "
                           "fit better than the collapsed one at β = 0 — raise --steps or --lr so that it learns, "
                           "or give --beta-max explicitly (a few times the weight decay/2 you train with)")
    return factor * best
