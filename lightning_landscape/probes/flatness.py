"""Flatness probes: SAM/ASAM sharpness, random-walk escape radius, 1-D/2-D landscape slices.

All three move the weights and put them back bit-exactly (:func:`~lightning_landscape.guards.preserved_parameters`;
the slice from its one saved copy of θ, :func:`~lightning_landscape.flatness.directions.restored`), evaluate the probe-batch loss under ``no_grad`` (only the sharpness gradient needs autograd, and uses
``torch.autograd.grad``), and draw random directions only from ``ctx.generator(...)``.

Common random numbers: every loss evaluation of one measurement re-seeds the global RNG to the same value
inside a forked RNG state (restored on exit), so a model with dropout in train mode sees the *same* dropout
masks at θ and at every perturbed point. Differences of losses then measure the landscape, not the dropout
noise. BatchNorm in train mode normalises with the probe batch's statistics at every point (the running
statistics it updates are restored by the monitor's ``probe_guard``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Literal

import torch

from lightning_landscape.flatness.directions import BIAS_MODES, filter_normalized_direction, restored
from lightning_landscape.flatness.escape import escape_radius
from lightning_landscape.flatness.sharpness import sharpness
from lightning_landscape.flatness.slices import cosine, slice_1d, slice_2d
from lightning_landscape.guards import preserved_parameters
from lightning_landscape.probes.base import Probe, ProbeResult, check_choice, check_positive_float, check_positive_int
from lightning_landscape.probes.context import NonFiniteLossError, ProbeContext


@contextlib.contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Fork the CPU (and the parameters' CUDA device) RNG, seed it, restore it on exit."""
    cuda = device.type == "cuda"
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.default_generators[devices[0]].manual_seed(seed)
        yield


def _forward_seed(ctx: ProbeContext, name: str) -> int:
    g = ctx.generator(f"{name}/forward")
    return int(torch.randint(0, 2**62, (1,), generator=g, device=g.device))


def probe_loss_fn(ctx: ProbeContext, name: str) -> Callable[[], float]:
    """The probe-batch loss at the current weights, as a float: ``no_grad``, reduced across ranks,
    with the same random numbers (dropout masks) at every call (see the module docstring)."""
    seed = _forward_seed(ctx, name)

    def loss_fn() -> float:
        with _seeded_rng(seed, ctx.space.device), torch.no_grad():
            loss = ctx.evaluate_loss()  # under no_grad: already averaged over DDP ranks
            # keep float64 losses in float64: sharpness is a difference of nearly equal losses
            return float(loss.to(torch.promote_types(loss.dtype, torch.float32)))

    return loss_fn


def _gradient(ctx: ProbeContext, name: str) -> torch.Tensor:
    """The flat probe-batch gradient (rank-averaged): one forward + ``torch.autograd.grad`` (no graph kept,
    ``.grad`` untouched) with the same random numbers as :func:`probe_loss_fn`."""
    with _seeded_rng(_forward_seed(ctx, name), ctx.space.device), torch.enable_grad():
        return ctx.gradient(fresh=True)  # not the shared operator's: its dropout mask differs from ours


def _finite_base(loss_fn: Callable[[], float]) -> float:
    base = loss_fn()
    if not math.isfinite(base):
        raise NonFiniteLossError(f"probe-batch loss is {base}")
    return base


class Sharpness(Probe):
    """SAM sharpness ``L(θ + ρ g/|g|) − L(θ)`` and ASAM adaptive sharpness on the probe batch.

    ASAM uses ``ε = ρ_a T²g/|Tg|`` with ``T = |θ| + η`` elementwise (Kwon et al., 2021): invariant to the
    weight rescalings that leave a ReLU network's function unchanged when ``η = 0``. Cost: 2–3 forward
    passes and one gradient (free when a Hessian probe ran before it at the same step).

    Args:
        every_n_steps: measure after every this many optimizer steps.
        rho: SAM radius ``ρ`` (absolute, in parameter units).
        adaptive: also compute the adaptive (ASAM) sharpness.
        adaptive_rho: ASAM radius (relative: ``|T⁻¹ε| = ρ_a``; Kwon et al. use ~10× the SAM ``ρ``).
        adaptive_eta: ``η`` in ``T = |θ| + η`` (keeps zero weights movable; 0 = exactly scale-invariant).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> x, y = torch.randn(32, 4), torch.randn(32, 1)
        >>> ctx = ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=1)
        >>> before = [p.detach().clone() for p in net.parameters()]
        >>> out = Sharpness(rho=0.05).run(ctx).scalars
        >>> sorted(out)
        ['adaptive_sharpness', 'gradient_norm', 'sharpness', 'sharpness_curvature']
        >>> all(torch.equal(p, q) for p, q in zip(net.parameters(), before))
        True
    """

    name = "sharpness"
    group = "flatness"
    default_every_n_steps = 500
    cost = "1 forward+backward (gradient) + 2–4 forward passes"
    scalar_tags = {
        "sharpness": "SAM sharpness L(θ+ρg/|g|) − L(θ) on the probe batch (ρ = rho); loss units",
        "sharpness_curvature": "curvature along the gradient 2(sharpness − ρ|g|)/ρ² (≈ uᵀHu, u = g/|g|)",
        "adaptive_sharpness": "ASAM sharpness L(θ+ε) − L(θ), ε = ρ_a T²g/|Tg|, T = |θ|+η (scale-invariant)",
        "gradient_norm": "|g| of the probe-batch loss (the SAM step direction's length before scaling)",
    }

    def __init__(
        self,
        every_n_steps: int | None = None,
        rho: float = 0.05,
        adaptive: bool = True,
        adaptive_rho: float = 0.5,
        adaptive_eta: float = 0.01,
    ) -> None:
        super().__init__(every_n_steps)
        self.rho = check_positive_float("Sharpness.rho", rho)
        if not isinstance(adaptive, bool):
            raise TypeError(f"Sharpness.adaptive must be a bool, got {type(adaptive).__name__} {adaptive!r}")
        self.adaptive = adaptive
        self.adaptive_rho = check_positive_float("Sharpness.adaptive_rho", adaptive_rho)
        self.adaptive_eta = check_positive_float("Sharpness.adaptive_eta", adaptive_eta, allow_zero=True)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "rho": self.rho, "adaptive": self.adaptive,
                "adaptive_rho": self.adaptive_rho, "adaptive_eta": self.adaptive_eta}

    def run(self, ctx: ProbeContext) -> ProbeResult:
        loss_fn = probe_loss_fn(ctx, self.name)
        with preserved_parameters(ctx.module):
            base = _finite_base(loss_fn)
            grad = _gradient(ctx, self.name)
            if not torch.isfinite(grad).all():
                raise NonFiniteLossError("probe-batch gradient has NaN/Inf entries")
            sam = sharpness(loss_fn, ctx.space, grad, self.rho, base_loss=base)
            scalars = {"sharpness": sam.sharpness, "sharpness_curvature": sam.curvature, "gradient_norm": sam.gradient_norm}
            if self.adaptive:
                asam = sharpness(loss_fn, ctx.space, grad, self.adaptive_rho, adaptive=True,
                                 eta=self.adaptive_eta, base_loss=base)
                scalars["adaptive_sharpness"] = asam.sharpness
        return ProbeResult(scalars=scalars)


class EscapeRadius(Probe):
    """Random-walk escape radius: the smallest relative step ``σ`` along a filter-normalised random direction
    at which the probe-batch loss rises by ``δ``; mean and spread over several walkers.

    Each walker scans ``σ = σ_min·growth^k`` until the loss rises by ``δ`` and bisects the last bracket to a
    relative width ``rel_tol`` (about 10–20 forward passes per walker with the defaults). Walkers that
    never escape by ``σ_max`` report ``σ_max`` (a lower bound) and are counted in ``escape_censored``.

    Args:
        every_n_steps: measure after every this many optimizer steps.
        walkers: number of random directions.
        delta: loss rise that counts as escaping (``delta_mode="absolute"``: in loss units;
            ``"relative"``: a fraction of ``L(θ)``).
        delta_mode: ``"absolute"`` or ``"relative"``.
        sigma_min: smallest relative step tried.
        sigma_max: largest relative step tried.
        growth: ratio between successive steps of the scan (> 1).
        rel_tol: bisection stops when the bracket's ratio is below ``1 + rel_tol``.
        bias_bn: 1-D parameters (biases, norm layers): ``"ignore"`` (not moved) or ``"filter"`` (moved as one
            filter, by ``σ|b|``).

    Example:
        >>> w = torch.nn.Parameter(torch.ones(1, 4))   # one filter of norm 2
        >>> net = torch.nn.Module(); net.w = w
        >>> ctx = ProbeContext(net, lambda: 0.5 * ((w - 1) ** 2).sum() * 8.0, step=1)   # H = 8 I
        >>> out = EscapeRadius(walkers=3, delta=1.0).run(ctx).scalars
        >>> round(out["escape_radius"], 2), out["escape_radius_std"] < 0.01  # sqrt(2δ/8)/|w| for every direction
        (0.25, True)
    """

    name = "escape_radius"
    group = "flatness"
    default_every_n_steps = 1000
    cost = "≈ 10–20 forward passes per walker (8 walkers)"
    scalar_tags = {
        "escape_radius": "mean over walkers of the smallest relative step σ (filter-normalised) raising the loss by δ",
        "escape_radius_std": "standard deviation of the escape radius over walkers",
        "escape_radius_min": "smallest walker escape radius (the sharpest random direction)",
        "escape_radius_max": "largest walker escape radius (the flattest random direction)",
        "escape_radius_median": "median walker escape radius",
        "escape_censored": "fraction of walkers that never escaped by sigma_max (their radius is a lower bound)",
        "escape_forward_passes": "forward passes the measurement used",
    }
    charts = {
        "escape radius (mean, min, max)": ["escape_radius", "escape_radius_min", "escape_radius_max"],
        "escape radius spread": ["escape_radius_std", "escape_censored"],
    }

    def __init__(
        self,
        every_n_steps: int | None = None,
        walkers: int = 8,
        delta: float = 0.1,
        delta_mode: Literal["absolute", "relative"] = "absolute",
        sigma_min: float = 1e-3,
        sigma_max: float = 10.0,
        growth: float = 2.0,
        rel_tol: float = 0.02,
        bias_bn: Literal["ignore", "filter"] = "ignore",
    ) -> None:
        super().__init__(every_n_steps)
        self.walkers = check_positive_int("EscapeRadius.walkers", walkers)
        self.delta = check_positive_float("EscapeRadius.delta", delta)
        self.delta_mode = check_choice("EscapeRadius.delta_mode", delta_mode, ("absolute", "relative"))
        self.sigma_min = check_positive_float("EscapeRadius.sigma_min", sigma_min)
        self.sigma_max = check_positive_float("EscapeRadius.sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"EscapeRadius.sigma_max must be > sigma_min={self.sigma_min}, got {self.sigma_max}")
        self.growth = check_positive_float("EscapeRadius.growth", growth)
        if self.growth <= 1:
            raise ValueError(f"EscapeRadius.growth must be > 1, got {self.growth}")
        self.rel_tol = check_positive_float("EscapeRadius.rel_tol", rel_tol)
        self.bias_bn = check_choice("EscapeRadius.bias_bn", bias_bn, BIAS_MODES)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "walkers": self.walkers, "delta": self.delta, "delta_mode": self.delta_mode,
                "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "growth": self.growth,
                "rel_tol": self.rel_tol, "bias_bn": self.bias_bn}

    def run(self, ctx: ProbeContext) -> ProbeResult:
        loss_fn = probe_loss_fn(ctx, self.name)
        gen = ctx.generator(self.name)
        with preserved_parameters(ctx.module):
            theta = ctx.space.flatten_params()
            base = _finite_base(loss_fn)
            delta = self.delta if self.delta_mode == "absolute" else self.delta * abs(base)
            if delta <= 0:  # relative δ at a zero loss: nothing can be measured
                return ProbeResult()
            directions = (filter_normalized_direction(ctx.space, gen, theta, self.bias_bn) for _ in range(self.walkers))
            res = escape_radius(loss_fn, ctx.space, directions, delta, self.sigma_min, self.sigma_max,
                                self.growth, self.rel_tol, base_loss=base)
        return ProbeResult(scalars={
            "escape_radius": res.mean,
            "escape_radius_std": res.std,
            "escape_radius_min": res.min,
            "escape_radius_max": res.max,
            "escape_radius_median": res.median,
            "escape_censored": res.censored_fraction,
            "escape_forward_passes": float(res.forward_passes + 1),
        })


class LandscapeSlice(Probe):
    """1-D and 2-D slices of the probe-batch loss around θ along filter-normalised random directions,
    logged as images (``slice_1d``: loss along ``d1`` and ``d2``; ``slice_2d``: filled contours over
    ``θ + α d1 + β d2`` with a colour bar and θ marked).

    Cost: ``2·points_1d`` forward passes for ``"1d"``, ``points_2d²`` for ``"2d"``, plus figure rendering
    (~0.2 s each); hence the low default rate.

    Args:
        every_n_steps: measure after every this many optimizer steps.
        mode: ``"1d"``, ``"2d"`` or ``"both"``.
        span: the slices cover ``α, β ∈ [-span, span]`` (relative step; 1 = every filter moved by its norm).
        points_1d: grid points of the 1-D slices (odd numbers put θ itself on the grid).
        points_2d: grid points per axis of the 2-D slice.
        bias_bn: 1-D parameters: ``"ignore"`` (not moved) or ``"filter"`` (moved as one filter).
        dpi: resolution of the figures (100 → 640×480 pixels).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> x, y = torch.randn(32, 4), torch.randn(32, 1)
        >>> ctx = ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=7)
        >>> r = LandscapeSlice(points_1d=5, points_2d=3).run(ctx)
        >>> {k: v.shape for k, v in r.images.items()}
        {'slice_1d': (480, 640, 3), 'slice_2d': (480, 640, 3)}
    """

    name = "landscape_slice"
    group = "flatness"
    default_every_n_steps = 5000
    measure_at_first_step = False  # hundreds of forward passes + rendering: no step-1 baseline
    cost = "31 + 15×15 forward passes + figure rendering"
    scalar_tags = {
        "slice_descent": "L(θ) minus the lowest loss seen on the slices (> 0: lower ground within the slice)",
    }
    other_tags = {
        "slice_1d": "image: loss along one filter-normalised direction (and the gradient's)",
        "slice_2d": "image: loss on a 2-D filter-normalised plane (contours)",
    }

    def __init__(
        self,
        every_n_steps: int | None = None,
        mode: Literal["1d", "2d", "both"] = "both",
        span: float = 1.0,
        points_1d: int = 31,
        points_2d: int = 15,
        bias_bn: Literal["ignore", "filter"] = "ignore",
        dpi: int = 100,
    ) -> None:
        super().__init__(every_n_steps)
        self.mode = check_choice("LandscapeSlice.mode", mode, ("1d", "2d", "both"))
        self.span = check_positive_float("LandscapeSlice.span", span)
        self.points_1d = check_positive_int("LandscapeSlice.points_1d", points_1d, 3)
        self.points_2d = check_positive_int("LandscapeSlice.points_2d", points_2d, 3)
        self.bias_bn = check_choice("LandscapeSlice.bias_bn", bias_bn, BIAS_MODES)
        self.dpi = check_positive_int("LandscapeSlice.dpi", dpi, 20)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "mode": self.mode, "span": self.span, "points_1d": self.points_1d,
                "points_2d": self.points_2d, "bias_bn": self.bias_bn}

    def _grid(self, n: int) -> torch.Tensor:
        grid = torch.linspace(-self.span, self.span, n, dtype=torch.float64)
        if n % 2 == 1:
            grid[n // 2] = 0.0  # θ exactly on the grid
        return grid

    def run(self, ctx: ProbeContext) -> ProbeResult:
        from lightning_landscape.slice_plots import plot_slice_1d, plot_slice_2d  # matplotlib only when used

        loss_fn = probe_loss_fn(ctx, self.name)
        gen = ctx.generator(self.name)
        out = ProbeResult()
        lowest = math.inf
        # One copy of θ (the restore point, also the filter-norm reference) and the two directions; the
        # slices form each point in the parameters themselves (peak ≈ 3 parameter-sized vectors + a forward).
        with restored(ctx.space) as theta:
            base = _finite_base(loss_fn)
            d1 = filter_normalized_direction(ctx.space, gen, theta, self.bias_bn)
            d2 = filter_normalized_direction(ctx.space, gen, theta, self.bias_bn)
            note = (f"cos(d1, d2) = {cosine(d1, d2):.3f}; biases & norm layers "
                    f"{'fixed' if self.bias_bn == 'ignore' else 'moved'}")
            if self.mode in ("1d", "both"):
                a = self._grid(self.points_1d)
                l1 = slice_1d(loss_fn, ctx.space, d1, a, theta=theta)
                l2 = slice_1d(loss_fn, ctx.space, d2, a, theta=theta)
                lowest = min(lowest, _finite_min(l1), _finite_min(l2))
                out.images["slice_1d"] = plot_slice_1d(
                    a.numpy(), l1.numpy(), step=ctx.step, curves={"direction 2": l2.numpy()}, current=base,
                    dpi=self.dpi, label="direction 1")
            if self.mode in ("2d", "both"):
                a = self._grid(self.points_2d)
                grid = slice_2d(loss_fn, ctx.space, d1, d2, a, a, theta=theta)
                lowest = min(lowest, _finite_min(grid))
                out.images["slice_2d"] = plot_slice_2d(a.numpy(), a.numpy(), grid.numpy(), step=ctx.step,
                                                       subtitle=note, dpi=self.dpi)
        out.scalars["slice_descent"] = max(0.0, base - lowest) if math.isfinite(lowest) else 0.0
        return out


def _finite_min(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.min()) if finite.numel() else math.inf
