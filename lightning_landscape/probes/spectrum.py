"""Hessian spectrum probes: extreme eigenvalues (+ edge of stability), trace, spectral density."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from lightning_landscape.linalg import (
    dense_density,
    dense_extremes,
    dense_trace,
    hutchinson_trace,
    extreme_values,
    hutchpp_trace,
    SpectralDensity,
    lanczos_extremes,
    spectral_density,
)
from lightning_landscape.linalg.hutchpp_bounded import hutchpp_trace_bounded
from lightning_landscape.linalg.random import gaussian
from lightning_landscape.linalg.reduction import norm, reduce_sum, sq_norm
from lightning_landscape.optim_info import adam_preconditioner, adam_steps
from lightning_landscape.probes.base import (
    Histogram,
    Probe,
    ProbeResult,
    check_bool,
    check_choice,
    check_number,
    check_positive_float,
    check_positive_int,
)
from lightning_landscape.probes.context import ProbeContext


#: Default ``exact_max_dim``: up to this many parameters the probes build the dense Hessian (``dim`` products,
#: batched: on such a model about what a cold Lanczos run plus a trace estimate spend) and report exact values.
EXACT_MAX_DIM = 256


def _exact(ctx: ProbeContext, limit: int) -> bool:
    """Whether this measurement uses the dense Hessian (small model, operator able to build it)."""
    # Sharded parameters: never (no dense matrix of shards; and each process's ``dim`` is its own shard's).
    return not ctx.space.sharded and 0 < ctx.space.dim <= limit and hasattr(ctx.hessian(), "dense")


def _warm_start(previous: list[torch.Tensor], dim: int, noise: float, generator: torch.Generator,
                dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Previous Ritz vectors plus a little isotropic noise (keeps the Krylov space from collapsing
    onto the old invariant subspace, so a new extreme direction can still appear)."""
    fresh = gaussian(dim, generator, dtype, device)
    if not previous or any(v.numel() != dim for v in previous):
        return fresh
    # In place: two parameter-sized vectors at most (this runs while the gradient graph is alive).
    v0 = previous[0].to(device=device, dtype=dtype, copy=True)
    for v in previous[1:]:
        v0.add_(v.to(device=device, dtype=dtype))
    return v0.add_(fresh.mul_(noise * norm(v0) / norm(fresh)))


class HessianSpectrum(Probe):
    """λmax and λmin of the loss Hessian from one warm-started Lanczos run, plus the edge-of-stability ratio.

    Args:
        every_n_steps: measure after every this many optimizer steps.
        max_iter: most Lanczos steps (= Hessian-vector products) per measurement.
        tol: stop when both extreme Ritz residuals ``|Hu - θu|`` are below ``tol * max(|λmax|, |λmin|)``.
        cold_factor: a measurement with nothing to warm-start from (the first of a run) stops at
            ``cold_factor * tol``: from a random start the default ``tol`` costs 20–30 products on a network
            Hessian, ``5 * tol`` 11–14 (λ then within ≈ 3e-2 of the spectral scale); later measurements
            start from its Ritz vectors and reach ``tol``. ``1``: ``tol`` throughout.
        warm_start: start from the previous Ritz vectors (plus ``warm_noise`` relative noise).
        warm_noise: relative size of the random component added to the warm start.
        preconditioned_eos: for Adam/AdamW, also compute λmax(P⁻¹H) for the edge-of-stability ratio
            (one more short Lanczos run); if False the ratio is logged as ``eos_ratio_unpreconditioned``.
        max_basis: most Lanczos vectors kept (parameter-sized each); a longer run thick-restarts from the
            two extreme Ritz vectors, which on trained-network Hessians costs about the same number of
            products. ``None``: keep all ``max_iter + 1``.
        ritz_vectors: keep a Lanczos basis and the two extreme Ritz vectors (the warm start of the next
            measurement, the top eigenvector shared with ``loss_geometry``, Adam's preconditioner drift).
            ``False``: the plain three-term recurrence, three vectors whatever ``max_iter`` is (a peak of
            ≤ 8 parameter-sized vectors with the gradient graph, against ≤ 16), for models whose memory is
            tight; every measurement then starts cold and stops at ``tol`` (not ``cold_factor * tol``:
            there is no later warm start to finish the job), and nothing is shared or tracked for Adam.
        adam_warmup_steps: Adam/AdamW only: the preconditioned ratio is logged but not judged (state
            ``warming_up``: no rule or controller sees it) until Adam has taken this many steps. A
            second-moment estimate built from one gradient makes ``λmax(P⁻¹H)`` huge: on the scenario
            benchmark's Transformer the ratio reads 48 at step 1, 0.9 at step 10 and 1.5 at step 20 of a
            run that spikes at step ~100, and 0.02 throughout a healthy run.
        fast_every_n_steps: measure this often instead while the edge-of-stability ratio (tracked at every
            step from the last λmax and the current learning rate) is at or above ``fast_above`` and has
            risen by ``fast_rise`` since the previous measurement, and while Adam's preconditioner warms
            up: the ratio can go from 1 to 100 within ten steps, faster than the regular interval can see.
            A ratio that sits steadily at the edge of stability is measured at the regular interval.
        fast_above: the ratio at which the fast interval can start (``None`` or ``fast_every_n_steps=None``:
            never).
        fast_rise: the relative rise of the ratio since the previous measurement that counts as rising.
        exact_max_dim: up to this many parameters, λmax and λmin come from the dense Hessian (exact; shared
            with the trace and density probes at the same measurement); ``0``: always Lanczos.

    Between measurements the probe reports ``eos_ratio_tracked`` at every optimizer step: the last
    measured (preconditioned) sharpness over the stability threshold at the *current* learning rate and
    momentum — free (no forward pass) and exact for the threshold's part; a warm-up, ramp or schedule
    moves it at once. At a measurement it equals ``eos_ratio``. For Adam the preconditioner's drift along
    its top eigenvector (a lower bound on the new ratio for the same Hessian, refreshed every 5 steps from
    Adam's state) decides when to measure again: a rising drift brings the next measurement forward.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> x, y = torch.randn(32, 4), torch.randn(32, 1)
        >>> ctx = ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=1)
        >>> out = HessianSpectrum(max_iter=49, tol=1e-6).run(ctx).scalars
        >>> out["lambda_max"] >= out["lambda_min"]
        True
    """

    name = "hessian_spectrum"
    group = "hessian"
    needs_hessian = True
    provides = ("lambda_max", "lambda_min", "hessian_top_vector")
    default_every_n_steps = 500
    cost = "≤ max_iter HVPs (20); first (cold, to 5·tol) ~11–14; warm-started ~3–8; Adam: a second run for P⁻¹H; exact ≤ 256 params"
    scalar_tags = {
        "lambda_max": "largest Hessian eigenvalue (Ritz value)",
        "lambda_min": "smallest Hessian eigenvalue; < 0 means negative curvature (saddle direction)",
        "residual": "relative Ritz residual max(|Hu-θu|)/max(|λ|) of the two extremes",
        "lanczos_hvps": "Hessian-vector products the Lanczos run used (exact path: the dense Hessian's dim "
        "products, shared with the other Hessian probes)",
        "eos_ratio": "sharpness over the optimizer's stability threshold (SGD: λmax·lr/2; momentum μ, dampening τ: "
        "λmax·lr(1−τ)/(2+2μ); Adam: λmax(P⁻¹H)·lr(1-β1)/(2+2β1)); ~1 = edge of stability",
        "preconditioned_lambda_max": "Adam/AdamW only: λmax(P⁻¹H) with P the bias-corrected Adam preconditioner",
        "eos_ratio_unpreconditioned": "Adam/AdamW with preconditioned_eos=False, or another adaptive optimizer "
        "(NAdam, RAdam, RMSprop, ...): λmax·lr/2, the plain-GD ratio (not that optimizer's criterion)",
        "eos_ratio_tracked": "eos_ratio at every step: the last measured sharpness over the stability threshold at "
        "the current learning rate (free; equals eos_ratio at a measurement)",
        "eos_threshold": "the optimizer's stability threshold at every step (SGD 2/lr, momentum (2+2μ)/((1−τ)lr), "
        "Adam (2+2β1)/((1−β1)lr)); a steady fall is a learning-rate ramp",
        "ready/<key>": "1 once <key> can carry a verdict (Adam: second-moment estimate warmed up), 0 while warming up",
    }
    gated_keys = ("eos_ratio", "preconditioned_lambda_max", "eos_ratio_tracked")
    charts = {
        "extreme eigenvalues": ["lambda_max", "lambda_min"],
        "edge of stability": ["eos_ratio", "eos_ratio_tracked", "eos_ratio_unpreconditioned"],
        "Lanczos cost": ["lanczos_hvps", "residual"],
    }

    def __init__(
        self,
        every_n_steps: int | None = None,
        max_iter: int = 20,
        tol: float = 1e-2,
        cold_factor: float = 5.0,
        warm_start: bool = True,
        warm_noise: float = 0.01,
        preconditioned_eos: bool = True,
        max_basis: int | None = 8,
        ritz_vectors: bool = True,
        adam_warmup_steps: int = 20,
        fast_every_n_steps: int | None = 25,
        fast_above: float | None = 0.25,
        fast_rise: float = 0.1,
        exact_max_dim: int = EXACT_MAX_DIM,
    ) -> None:
        super().__init__(every_n_steps)
        self.exact_max_dim = check_positive_int("HessianSpectrum.exact_max_dim", exact_max_dim, 0)
        self.max_iter = check_positive_int("HessianSpectrum.max_iter", max_iter, 2)
        self.tol = check_positive_float("HessianSpectrum.tol", tol)
        self.cold_factor = check_positive_float("HessianSpectrum.cold_factor", cold_factor)
        if self.cold_factor < 1:
            raise ValueError(f"HessianSpectrum.cold_factor must be >= 1 (a cold start is not held to more than tol), "
                             f"got {cold_factor!r}")
        self.warm_start = check_bool("HessianSpectrum.warm_start", warm_start)
        self.warm_noise = check_positive_float("HessianSpectrum.warm_noise", warm_noise, allow_zero=True)
        self.preconditioned_eos = check_bool("HessianSpectrum.preconditioned_eos", preconditioned_eos)
        self.max_basis = None if max_basis is None else check_positive_int("HessianSpectrum.max_basis", max_basis, 3)
        self.ritz_vectors = check_bool("HessianSpectrum.ritz_vectors", ritz_vectors)
        self.adam_warmup_steps = check_positive_int("HessianSpectrum.adam_warmup_steps", adam_warmup_steps, 0)
        self.fast_every_n_steps = (None if fast_every_n_steps is None
                                   else check_positive_int("HessianSpectrum.fast_every_n_steps", fast_every_n_steps))
        self.fast_above = None if fast_above is None else check_positive_float("HessianSpectrum.fast_above", fast_above)
        self.fast_rise = check_positive_float("HessianSpectrum.fast_rise", fast_rise, allow_zero=True)
        self._vectors: list[torch.Tensor] = []
        self._precond_vectors: list[torch.Tensor] = []
        # Edge-of-stability tracking between measurements: the sharpness the ratio divides (λmax, or
        # λmax(P⁻¹H) for Adam), whether it may be judged, and the step of the last measurement.
        self._sharpness: float | None = None
        self._sharpness_kind = ""
        self._eos_warming: str | None = None
        self._last_measured = -1
        self._fast_left = 0
        self._measured_ratio: float | None = None
        # Adam: uᵢ²/Pᵢ at the last measurement (u: top eigenvector of P^{-1/2}HP^{-1/2}) and the drift factor.
        self._drift_weights: torch.Tensor | None = None
        self._drift_space: Any = None
        self._drift = 1.0

    def config(self) -> dict[str, Any]:
        return {**super().config(), "max_iter": self.max_iter, "tol": self.tol, "cold_factor": self.cold_factor,
                "warm_start": self.warm_start,
                "max_basis": self.max_basis, "ritz_vectors": self.ritz_vectors,
                "adam_warmup_steps": self.adam_warmup_steps,
                "fast_every_n_steps": self.fast_every_n_steps, "fast_above": self.fast_above,
                "fast_rise": self.fast_rise, "exact_max_dim": self.exact_max_dim}

    def state_dict(self) -> dict[str, Any]:
        return {"sharpness": self._sharpness, "sharpness_kind": self._sharpness_kind,
                "eos_warming": self._eos_warming, "last_measured": self._last_measured,
                "measured_ratio": self._measured_ratio, "fast_left": self._fast_left}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sharp = state.get("sharpness")
        self._sharpness = None if sharp is None else float(sharp)
        self._sharpness_kind = str(state.get("sharpness_kind", ""))
        warming = state.get("eos_warming")
        self._eos_warming = None if warming is None else str(warming)
        self._last_measured = int(state.get("last_measured", -1))
        measured = state.get("measured_ratio")
        self._measured_ratio = None if measured is None else float(measured)
        self._fast_left = int(state.get("fast_left", 0))

    # ------------------------------------------------------------------ scheduling and tracking
    @property
    def _hot(self) -> bool:
        """Measure at the fast interval: while Adam warms up, and while the budget of fast looks lasts."""
        return self.fast_above is not None and (self._eos_warming is not None or self._fast_left > 0)

    def is_due(self, step: int, previous: int | None = None) -> bool:
        if super().is_due(step, previous):
            return True
        fast = self.fast_every_n_steps
        return bool(self._hot and fast is not None and self._last_measured >= 0
                    and step - self._last_measured >= fast)

    def _ratio_now(self, info: Any) -> float | None:
        if self._sharpness is None or info is None or info.lr <= 0:
            return None
        kind = "preconditioned" if info.is_adaptive else ("plain" if info.kind == "sgd" else "")
        if kind != self._sharpness_kind:
            return None  # optimizer changed kind since the measurement
        return self._sharpness / info.eos_threshold()

    #: Fast measurements granted when the ratio is found rising near the threshold (then the regular
    #: interval again unless it keeps rising): a jumpy Adam ratio gets a few looks, a steady edge of
    #: stability does not pay the fast interval for ever.
    FAST_BUDGET = 8

    def _update_hot(self, ratio: float | None, reference: float | None, at_measurement: bool) -> None:
        """Fast while the ratio is near its threshold *and rising* (``ratio ≥ (1 + fast_rise)·reference``,
        the last judged measured ratio; no reference counts as rising) — a warm-up, a ramp, progressive
        sharpening, a jumpy Adam ratio — for up to ``FAST_BUDGET`` measurements after the last rise, and
        while Adam warms up (so the first ratio that may be judged comes soon after)."""
        if ratio is None or self.fast_above is None:
            self._fast_left = 0
            return
        if self._eos_warming is not None:
            return
        rising = reference is None or not reference > 0 or ratio >= (1.0 + self.fast_rise) * reference
        if rising and ratio >= self.fast_above:
            self._fast_left = self.FAST_BUDGET
        elif at_measurement:  # the budget runs down even if the ratio dropped: Adam's ratio jumps (1.3, 0.1, 6)
            self._fast_left = max(self._fast_left - 1, 0)

    def _preconditioner_drift(self, step: int, optimizer: Any) -> float:
        """Adam: how much the preconditioner moved since the measurement, along its top eigenvector.

        With ``u`` the unit top eigenvector of ``A = P^{-1/2} H P^{-1/2}`` and ``P' = P·D`` now, the
        Rayleigh quotient of ``A' = D^{-1/2} A D^{-1/2}`` at ``D^{1/2}u`` is ``λ / Σ uᵢ² dᵢ``: a lower bound
        on the new λmax(P'⁻¹H) for the same Hessian, free up to one pass over Adam's state. A second-moment
        estimate that decays (gradients shrinking faster than β2 forgets) raises it: the road to an Adam
        loss spike. Refreshed every ``ADAM_TRACK_EVERY`` steps."""
        weights, space = self._drift_weights, self._drift_space
        if weights is None or space is None or optimizer is None:
            return self._drift
        if (step - self._last_measured) % self.ADAM_TRACK_EVERY != 0:
            return self._drift
        p_now = adam_preconditioner(optimizer, space)
        if p_now is None or p_now.numel() != weights.numel():
            return self._drift
        # Sharded parameters: the monitor runs trackers inside the shard reduction, so every process adds
        # its shard's part and all take the same scheduling decision.
        mass = float(reduce_sum(torch.where(weights > 0, weights * p_now, torch.zeros((), dtype=p_now.dtype)).sum()))
        self._drift = 1.0 / mass if mass > 0 and math.isfinite(mass) else self._drift
        return self._drift

    #: Steps between two refreshes of Adam's preconditioner drift (one pass over Adam's state each).
    ADAM_TRACK_EVERY = 5

    def track(self, step: int, optimizer: Any, optimizer_info: Any) -> ProbeResult | None:
        ratio = self._ratio_now(optimizer_info)
        if ratio is None:
            return None
        if self._sharpness_kind == "preconditioned":
            # The drift schedules the next measurement; it is not reported as the ratio itself: a
            # second-moment estimate that decays late in training raises this lower bound steadily on
            # healthy runs too (a forecast on it was a false alarm on the benchmark's AdamW MLP).
            self._update_hot(ratio * self._preconditioner_drift(step, optimizer), self._measured_ratio,
                             at_measurement=False)
        else:
            self._update_hot(ratio, self._measured_ratio, at_measurement=False)
        out = ProbeResult(scalars={"eos_ratio_tracked": ratio, "eos_threshold": optimizer_info.eos_threshold()})
        if self._eos_warming is not None:
            out.warming_up["eos_ratio_tracked"] = self._eos_warming
        return out

    def run(self, ctx: ProbeContext) -> ProbeResult:
        op = ctx.hessian()
        space = ctx.space
        gen = ctx.generator(self.name)
        if _exact(ctx, self.exact_max_dim):
            # The dense Hessian's dim products, whichever probe built it (the measurement's order may differ
            # between runs; the cost the value rests on does not).
            res = dense_extremes(op.dense(), space.dim)
        else:
            res = self._lanczos(op.matvec, self._vectors, space, gen)
        if res.vector_max is not None and res.vector_min is not None:
            self._vectors = [res.vector_max.detach(), res.vector_min.detach()]
            ctx.shared.hessian_top_vector = res.vector_max
        ctx.shared.lambda_max, ctx.shared.lambda_min = res.lambda_max, res.lambda_min
        out = ProbeResult(
            scalars={
                "lambda_max": res.lambda_max,
                "lambda_min": res.lambda_min,
                "residual": res.relative_residual,
                "lanczos_hvps": float(res.num_matvecs),
            }
        )
        self._last_measured = ctx.step
        self._sharpness, self._sharpness_kind, self._eos_warming = None, "", None
        self._drift_weights, self._drift_space, self._drift = None, None, 1.0
        out.scalars.update(self._edge_of_stability(ctx, res.lambda_max, gen))
        if "eos_ratio" in out.scalars:
            out.scalars["eos_ratio_tracked"] = out.scalars["eos_ratio"]
            out.scalars["eos_threshold"] = ctx.optimizer_info.eos_threshold()
            if self._eos_warming is not None:
                out.warming_up.update({k: self._eos_warming for k in self.gated_keys if k in out.scalars})
        ratio = out.scalars.get("eos_ratio")
        self._update_hot(ratio, self._measured_ratio, at_measurement=True)
        self._measured_ratio = ratio if self._eos_warming is None else None  # the reference: judged values only
        return out

    def _lanczos(self, matvec: Any, previous: list[torch.Tensor], space: Any, gen: torch.Generator) -> Any:
        """One Lanczos run, warm-started from ``previous`` Ritz vectors when there are any (else cold, to
        ``cold_factor * tol`` when warm starts are on: the next measurement starts from its vectors)."""
        if not self.ritz_vectors:  # three vectors, no basis, no Ritz vectors (see ``ritz_vectors``)
            return extreme_values(matvec, gaussian(space.dim, gen, space.dtype, space.device),
                                  max_iter=self.max_iter, tol=self.tol, min_iter=2)
        prev = previous if self.warm_start else []
        cold = self.warm_start and not any(v.numel() == space.dim for v in prev)
        return lanczos_extremes(  # start vector passed straight in: the basis keeps the only copy
            matvec,
            _warm_start(prev, space.dim, self.warm_noise, gen, space.dtype, space.device),
            max_iter=self.max_iter, tol=self.tol * self.cold_factor if cold else self.tol, min_iter=2,
            max_basis=self.max_basis,
        )

    def _edge_of_stability(self, ctx: ProbeContext, lambda_max: float, gen: torch.Generator) -> dict[str, float]:
        info = ctx.optimizer_info
        if info is None or info.lr <= 0:
            return {}
        if info.kind == "other":
            return {}  # unknown update rule: no stability threshold to compare with
        if info.kind == "adaptive":
            return {"eos_ratio_unpreconditioned": lambda_max * info.lr / 2.0}
        if not info.is_adaptive:
            self._sharpness, self._sharpness_kind = lambda_max, "plain"
            return {"eos_ratio": lambda_max / info.eos_threshold()}
        if not self.preconditioned_eos or ctx.optimizer is None:
            return {"eos_ratio_unpreconditioned": lambda_max * info.lr / 2.0}
        p = adam_preconditioner(ctx.optimizer, ctx.space)
        if p is None:  # no Adam state before the first step
            return {}
        taken, needed = adam_steps(ctx.optimizer), self.adam_warmup_steps
        if taken < needed:
            self._eos_warming = (f"Adam's second-moment estimate is built from {taken} step(s); the preconditioned "
                                 f"sharpness is judged from Adam step {needed} (adam_warmup_steps)")
        inv_sqrt = p.rsqrt()
        op = ctx.hessian()

        def precond_matvec(v: torch.Tensor) -> torch.Tensor:  # P^{-1/2} H P^{-1/2}: symmetric, same spectrum as P⁻¹H
            return inv_sqrt * op.matvec(inv_sqrt * v)

        if _exact(ctx, self.exact_max_dim):
            res = dense_extremes(inv_sqrt[:, None] * op.dense() * inv_sqrt[None, :], 0)
        else:
            res = self._lanczos(precond_matvec, self._precond_vectors, ctx.space, gen)
        self._sharpness, self._sharpness_kind = res.lambda_max, "preconditioned"
        if res.vector_max is not None:  # ritz_vectors=False: no top vector, no drift tracking
            self._precond_vectors = [res.vector_max.detach().clone()]  # not the view that keeps vector_min alive
            u = self._precond_vectors[0]
            weights = (u * u) / sq_norm(u)
            self._drift_weights = torch.where(torch.isfinite(p), weights / p, torch.zeros((), dtype=p.dtype))
            self._drift_space, self._drift = ctx.space, 1.0
        return {
            "preconditioned_lambda_max": res.lambda_max,
            "eos_ratio": res.lambda_max / info.eos_threshold(),
        }


class HessianTrace(Probe):
    """Trace of the loss Hessian with its standard error (Hutch++ by default), exact on small models.

    Args:
        every_n_steps: measure after every this many optimizer steps.
        num_matvecs: most Hessian-vector products per measurement (Hutch++ needs at least 3).
        method: ``"hutchpp"`` or ``"hutchinson"``.
        rel_tol: spend only the products predicted to bring the standard error to ``rel_tol·|trace|``
            (Hutch++: planned from its sketch, so the estimate stays exactly unbiased; Hutchinson: stops on
            the samples' own spread), never more than ``num_matvecs``; ``None``: always ``num_matvecs``.
        exact_max_dim: up to this many parameters the trace of the dense Hessian (exact, standard error 0,
            shared with the spectrum and density probes); ``0``: always estimate.
        keep_basis: Hutch++ only. ``False`` (default): the sketch is held as scalars (the plain Lanczos
            recurrence, the Hutchinson vectors as packed sign bits: a fixed handful of parameter-sized vectors,
            :func:`~lightning_landscape.linalg.hutchpp_bounded.hutchpp_trace_bounded`); it stops before its
            vectors lose orthogonality, which in float32 can end it before a spiky spectrum's outliers have all
            converged (no loss at the default 12 products, less deflation at 24 or more). ``True``: keep and
            re-orthogonalise the sketch's basis (up to ``2·num_matvecs/3`` vectors).

    Example:
        >>> net = torch.nn.Linear(3, 1)
        >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
        >>> ctx = ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=1)
        >>> exact = float(2 * (1 + (x * x).sum(1).mean()))  # tr H for MSE of a linear model
        >>> r = HessianTrace().run(ctx).scalars  # 4 parameters: the dense Hessian, exact
        >>> abs(r["trace"] - exact) < 1e-4, r["trace_stderr"]
        (True, 0.0)
    """

    name = "hessian_trace"
    group = "hessian"
    needs_hessian = True
    default_every_n_steps = 2000
    cost = "≤ num_matvecs HVPs (12), fewer once the standard error is ≤ rel_tol (5 %) of the trace; exact ≤ 256 params"
    scalar_tags = {
        "trace": "Hessian trace (sum of eigenvalues)",
        "trace_stderr": "standard error of the trace estimate (0 when exact)",
    }

    def __init__(
        self, every_n_steps: int | None = None, num_matvecs: int = 12,
        method: Literal["hutchpp", "hutchinson"] = "hutchpp", rel_tol: float | None = 0.05,
        exact_max_dim: int = EXACT_MAX_DIM, keep_basis: bool = False,
    ) -> None:
        super().__init__(every_n_steps)
        self.keep_basis = check_bool("HessianTrace.keep_basis", keep_basis)
        self.method = check_choice("HessianTrace.method", method, ("hutchpp", "hutchinson"))
        minimum = 3 if method == "hutchpp" else 2
        self.num_matvecs = check_positive_int("HessianTrace.num_matvecs", num_matvecs, minimum)
        self.rel_tol = None if rel_tol is None else check_positive_float("HessianTrace.rel_tol", rel_tol)
        self.exact_max_dim = check_positive_int("HessianTrace.exact_max_dim", exact_max_dim, 0)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "num_matvecs": self.num_matvecs, "method": self.method, "rel_tol": self.rel_tol,
                "exact_max_dim": self.exact_max_dim, "keep_basis": self.keep_basis}

    def run(self, ctx: ProbeContext) -> ProbeResult:
        op = ctx.hessian()
        if _exact(ctx, self.exact_max_dim):
            est = dense_trace(op.dense())
        else:
            gen = ctx.generator(self.name)
            if self.method == "hutchinson":
                estimator = hutchinson_trace
            else:
                estimator = hutchpp_trace if self.keep_basis else hutchpp_trace_bounded
            est = estimator(op.matvec, ctx.space.dim, self.num_matvecs, gen, ctx.space.dtype, ctx.space.device,
                            rel_tol=self.rel_tol)
        out = ProbeResult(scalars={"trace": est.value})
        if math.isnan(est.stderr) and math.isfinite(est.value):
            # Too few products left after the sketch for a sample variance: absent, never a NaN that alerts.
            out.not_measured["trace_stderr"] = (f"num_matvecs={self.num_matvecs} leaves fewer than two samples "
                                                "after the sketch; raise num_matvecs for a standard error")
        else:
            out.scalars["trace_stderr"] = est.stderr
        return out


class HessianDensity(Probe):
    """Eigenvalue density of the loss Hessian by stochastic Lanczos quadrature, as a TensorBoard histogram.

    Args:
        every_n_steps: measure after every this many optimizer steps.
        num_probes: the most random start vectors (the budget: at most ``num_probes * num_steps`` HVPs).
        num_steps: Lanczos steps per vector.
        stderr_tol: stop adding start vectors once the standard error of ``negative_mass`` over them (their
            spread ÷ √count, from two vectors on) is at most this (a fraction of the spectrum; ``None``:
            always ``num_probes``). On large models two vectors already agree to ~√(2p(1−p)/n) and the
            measurement stops there; mid-sized ones, whose vectors disagree more, get more.
        bins: histogram bins.
        reorthogonalize: keep and fully re-orthogonalise the Lanczos basis (``num_steps`` parameter-sized
            vectors in memory). ``False`` (default): the plain three-term recurrence, 2–3 vectors whatever
            ``num_steps`` is; the quadrature stays as accurate (converged outliers get "ghost" copies that
            share their weight), with fewer distinct nodes left for the bulk.
        exact_max_dim: up to this many parameters the eigenvalues of the dense Hessian (the exact density,
            shared with the spectrum and trace probes); ``0``: always SLQ.

    Example:
        >>> net = torch.nn.Linear(3, 1)
        >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
        >>> ctx = ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=1)
        >>> r = HessianDensity(num_probes=1, num_steps=4, exact_max_dim=0).run(ctx)
        >>> round(float(r.histograms["density"].counts.sum()), 6)  # counts add up to the 4 eigenvalues
        4.0
    """

    name = "hessian_density"
    group = "hessian"
    needs_hessian = True
    default_every_n_steps = 10000
    measure_at_first_step = False  # ≈ 100 training steps: no step-1 baseline
    cost = "2–num_probes (4) × num_steps (40) HVPs, stops once negative_mass is within stderr_tol (0.02); exact ≤ 256 params"
    scalar_tags = {
        "negative_mass": "fraction of the spectral density below zero (SLQ); > 0 away from a minimum",
        "negative_mass_stderr": "standard error of negative_mass over the start vectors (0 when exact)",
    }
    other_tags = {"density": "histogram: SLQ eigenvalue density (counts add up to the number of parameters)"}

    def __init__(
        self,
        every_n_steps: int | None = None,
        num_probes: int = 4,
        num_steps: int = 40,
        bins: int = 60,
        reorthogonalize: bool = False,
        exact_max_dim: int = EXACT_MAX_DIM,
        stderr_tol: float | None = 0.02,
    ) -> None:
        super().__init__(every_n_steps)
        self.exact_max_dim = check_positive_int("HessianDensity.exact_max_dim", exact_max_dim, 0)
        self.num_probes = check_positive_int("HessianDensity.num_probes", num_probes)
        self.num_steps = check_positive_int("HessianDensity.num_steps", num_steps, 2)
        self.bins = check_positive_int("HessianDensity.bins", bins, 2)
        self.reorthogonalize = check_bool("HessianDensity.reorthogonalize", reorthogonalize)
        self.stderr_tol = (None if stderr_tol is None
                           else check_number("HessianDensity.stderr_tol", stderr_tol, 0.0, strict=True))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "num_probes": self.num_probes, "num_steps": self.num_steps,
                "reorthogonalize": self.reorthogonalize, "exact_max_dim": self.exact_max_dim,
                "stderr_tol": self.stderr_tol}

    def run(self, ctx: ProbeContext) -> ProbeResult:
        op = ctx.hessian()
        if _exact(ctx, self.exact_max_dim):
            return self._result(dense_density(op.dense()), exact=True)
        gen = ctx.generator(self.name)
        runs: list[SpectralDensity] = []
        while len(runs) < self.num_probes:
            # One start vector at a time from the same generator: the vectors of a k-vector run, in order.
            runs.append(spectral_density(op.matvec, ctx.space.dim, 1, self.num_steps, gen, ctx.space.dtype,
                                         ctx.space.device, reorthogonalize=self.reorthogonalize))
            dens = SpectralDensity(torch.cat([r.nodes for r in runs]), torch.cat([r.weights for r in runs]),
                                   ctx.space.global_dim, sum(r.num_matvecs for r in runs))
            stderr = _negative_masses(dens).std().item() / math.sqrt(len(runs)) if len(runs) > 1 else math.inf
            if self.stderr_tol is not None and stderr <= self.stderr_tol:
                break
        return self._result(dens, exact=False)

    def _result(self, dens: SpectralDensity, exact: bool) -> ProbeResult:
        edges, counts = dens.histogram(self.bins)
        masses = _negative_masses(dens)
        out = ProbeResult(scalars={"negative_mass": float(masses.mean())}, histograms={"density": Histogram(edges, counts)})
        rows = masses.numel()
        if exact:
            out.scalars["negative_mass_stderr"] = 0.0
        elif rows > 1:
            out.scalars["negative_mass_stderr"] = float(masses.std()) / math.sqrt(rows)
        else:
            out.not_measured["negative_mass_stderr"] = "one start vector (num_probes=1): no spread to measure"
        return out


def _negative_masses(dens: SpectralDensity) -> torch.Tensor:
    """Each start vector's weight on eigenvalues below −1e-3·max|node| (the threshold shared by all)."""
    scale = float(dens.nodes.abs().max())
    return (dens.weights * (dens.nodes < -1e-3 * scale)).sum(-1)
