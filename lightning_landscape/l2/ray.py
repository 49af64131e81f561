"""Critical weight decay along the current ray: ``β_ray = max_{0<s≤s_max} [L(0) − L(sθ)] / (s²‖θ‖²)``.

Why: with the penalty ``β‖θ‖²`` the collapsed model (decayed parameters at 0) beats the point ``sθ``
iff ``L(0) ≤ L(sθ) + β s²‖θ‖²``. So ``β_ray`` is the smallest β at which the collapsed model beats
*every* point of the ray through the current weights, and the true threshold
``β_c = sup_θ [L(0) − L(θ)]/‖θ‖²`` satisfies ``β_ray ≤ β_c`` always: the estimate errs on the side of
alarm. Equality holds when the ray contains the best direction for every norm:

* deep linear nets with whitened inputs (any depth), at any stationary point of ``L + β‖θ‖²``
  (balanced, rank one, aligned with ``E[xy]``) — scaling such a point keeps it balanced and aligned,
  so the ray passes through the optimum of every norm (tested to < 1 %);
* one hidden layer, any input covariance, only as ``β → β_c`` (the trained direction tends to
  ``E[xy]``); further from ``β_c`` it is a lower bound.

For one hidden layer the maximum sits at ``s → 0`` (the ratio is ``b − s²r/2`` along an aligned ray);
for two or more it is interior (``s* < 1`` near a trained minimum): that is the signature of the first
order transition — the collapsed state and the trained state are separated by a barrier.

The ray scales only the given ("decayed") parameters. It assumes the collapsed point is a stationary
point of the loss (homogeneous nets, or centred targets); a decayed output bias with non-centred
targets makes the ratio grow like ``1/s`` as ``s → 0`` (``argmax_scale`` then sits at the lower end).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from lightning_landscape.l2.order import LossFn, scaled_loss, squared_norm

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0
_BRACKET = math.log(1.3)  # half-width, in log s, of a warm-started bracket


def _bracketed_maximum(ratio, center: float, lowest: float) -> tuple[float, float] | None:
    """Warm start: ``(s, ratio)`` of the maximum if ``exp(center)`` still brackets an interior maximum
    (above the value at the grid's lower end ``lowest``), else None. Parabolic step in ``log s``."""
    xs = (center - _BRACKET, center, center + _BRACKET)
    fs = [ratio(math.exp(x)) for x in xs]
    if not all(math.isfinite(f) for f in fs) or not (fs[1] >= fs[0] and fs[1] >= fs[2]):
        return None
    if ratio(lowest) > fs[1]:  # the s -> 0 end is higher: a continuous-type maximum, search the grid
        return None
    curvature = fs[0] - 2 * fs[1] + fs[2]
    candidates = [(fs[1], math.exp(xs[1]))]
    if curvature < 0:
        x = xs[1] + 0.5 * _BRACKET * (fs[0] - fs[2]) / curvature
        f = ratio(math.exp(x))
        if math.isfinite(f):
            candidates.append((f, math.exp(x)))
    f, s = max(candidates)
    return s, f


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps


@dataclass
class RayEstimate:
    """Result of :func:`ray_critical_beta`.

    ``argmax_scale``: the ``s`` of the maximum (≈ the lower end for a continuous transition, interior
    for a jump); ``at_upper_end``: the maximum is at ``s_max`` (the true one may lie beyond: weights far
    from a trained minimum); ``num_evaluations``: forward passes used (without ``L(0)``).
    """

    critical_beta: float
    argmax_scale: float
    theta_sq: float
    loss_trivial: float
    num_evaluations: int
    at_upper_end: bool
    scales: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)


def ray_critical_beta(
    params: Sequence[torch.Tensor],
    loss_fn: LossFn,
    s_max: float = 2.0,
    num_scales: int = 12,
    min_scale: float = 1.0 / 64.0,
    refine_steps: int = 8,
    loss_trivial: float | None = None,
    guess: float | None = None,
    loss_dtype: torch.dtype | None = None,
) -> RayEstimate:
    """``max_s [L(0) − L(sθ)]/(s²‖θ‖²)`` on a log grid of ``s ∈ [min_scale·s_max, s_max]``, refined.

    An interior maximum is refined by golden-section search in ``log s`` (``refine_steps`` more
    passes); a maximum at the lower end by halving ``s`` three more times. Only forward passes, no
    gradients; ``params`` are swapped, never written (see :mod:`lightning_landscape.l2.order`).

    ``guess`` (the previous measurement's ``argmax_scale``) warm-starts the search: the ratio is taken at
    ``guess/1.3, guess, 1.3·guess`` and at the grid's lower end; if the middle one is the largest (the
    maximum is still interior and bracketed) a parabola in ``log s`` through the three gives one more
    point and the search ends after 5 passes instead of ``num_scales + refine_steps``. Otherwise it falls
    back to the full grid. Near a maximum the value is second-order in the argmax error, so the estimate
    is as good as the full search's.

    The noise floor (a loss difference below ~1e4 ulp of ``L(0)`` counts as no difference) uses the
    coarser of the parameters' precision, ``loss_dtype`` (that of a given ``loss_trivial``) and the
    dtype of the tensors ``loss_fn`` returns.

    Example (one hidden layer, whitened inputs: exact, ``β_c = ‖E[xy]‖``):
        >>> from lightning_landscape.l2.closed_form import whiten
        >>> g = torch.Generator().manual_seed(0)
        >>> x = whiten(torch.randn(256, 3, generator=g)); y = x @ torch.tensor([[1.0], [2.0], [2.0]])
        >>> b = (x.T @ y / 256).squeeze(1)                       # E[xy], norm 3
        >>> u = b / b.norm() * 0.8; w1 = torch.nn.Parameter(u[None]); w2 = torch.nn.Parameter(torch.tensor([[0.8]]))
        >>> est = ray_critical_beta([w1, w2], lambda: ((x @ w1.T @ w2.T - y) ** 2).mean())
        >>> abs(est.critical_beta - 3.0) < 1e-3
        True
    """
    if s_max <= 0 or not math.isfinite(s_max):
        raise ValueError(f"s_max must be a finite number > 0, got {s_max}")
    if num_scales < 2:
        raise ValueError(f"num_scales must be >= 2, got {num_scales}")
    if not 0 < min_scale < 1:
        raise ValueError(f"min_scale must be in (0, 1), got {min_scale}")
    if refine_steps < 0:
        raise ValueError(f"refine_steps must be >= 0, got {refine_steps}")
    params = list(params)
    theta_sq = squared_norm(params)
    l0 = scaled_loss(params, loss_fn, 0.0) if loss_trivial is None else float(loss_trivial)
    if theta_sq == 0.0:
        return RayEstimate(float("nan"), float("nan"), 0.0, l0, 0, False)
    evaluations = 0
    cache: dict[float, float] = {}
    # A loss difference below ~1e4 ulp of L(0) is rounding noise magnified by 1/s² (float32: 1e-3·L(0)).
    # The ulp is that of the coarser of the parameters' and the loss's precision (a float64 model whose
    # loss is rounded to float32 has float32 noise: a float64 floor would let it through).
    eps = [_eps(params[0].dtype)]
    if loss_dtype is not None:
        eps.append(_eps(loss_dtype))

    def traced_loss() -> "torch.Tensor | float":
        value = loss_fn()
        if isinstance(value, torch.Tensor):
            eps.append(_eps(value.dtype))
        return value

    def ratio(s: float) -> float:
        nonlocal evaluations
        if s not in cache:
            evaluations += 1
            diff = l0 - scaled_loss(params, traced_loss, s)
            floor = 1e4 * max(eps) * max(abs(l0), 1e-30)
            cache[s] = diff / (s * s * theta_sq) if abs(diff) >= floor else -math.inf
        return cache[s]

    lo = math.log(min_scale * s_max)
    hi = math.log(s_max)
    if guess is not None and math.isfinite(guess) and lo + _BRACKET < math.log(guess) < hi - _BRACKET:
        warm = _bracketed_maximum(ratio, math.log(guess), math.exp(lo))
        if warm is not None:
            best_s, best = warm
            scales = sorted(s for s in cache if math.isfinite(cache[s]))
            return RayEstimate(best, best_s, theta_sq, l0, evaluations, False, scales, [cache[s] for s in scales])
    grid = [math.exp(lo + (hi - lo) * k / (num_scales - 1)) for k in range(num_scales)]
    values = [ratio(s) for s in grid]
    finite = [v if math.isfinite(v) else -math.inf for v in values]
    k = max(range(num_scales), key=lambda i: finite[i])
    if finite[k] == -math.inf:  # the loss does not change along the ray (to working precision)
        return RayEstimate(0.0, float("nan"), theta_sq, l0, evaluations, False, grid, [0.0] * num_scales)
    if 0 < k < num_scales - 1 and refine_steps > 0:
        a, b = math.log(grid[k - 1]), math.log(grid[k + 1])
        c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
        fc, fd = ratio(math.exp(c)), ratio(math.exp(d))
        for _ in range(max(refine_steps - 2, 0)):
            if fc >= fd:
                b, d, fd = d, c, fc
                c = b - _INV_PHI * (b - a)
                fc = ratio(math.exp(c))
            else:
                a, c, fc = c, d, fd
                d = a + _INV_PHI * (b - a)
                fd = ratio(math.exp(d))
    elif k == 0 and refine_steps > 0:
        s = grid[0]
        for _ in range(min(3, refine_steps)):  # the maximum may be the s -> 0 limit (one hidden layer)
            s /= 2.0
            if ratio(s) == -math.inf:
                break
    best_s = max(cache, key=lambda s: cache[s] if math.isfinite(cache[s]) else -math.inf)
    scales = sorted(s for s in cache if math.isfinite(cache[s]))
    return RayEstimate(
        critical_beta=cache[best_s],
        argmax_scale=best_s,
        theta_sq=theta_sq,
        loss_trivial=l0,
        num_evaluations=evaluations,
        at_upper_end=best_s == grid[-1],
        scales=scales,
        ratios=[cache[s] for s in scales],
    )
