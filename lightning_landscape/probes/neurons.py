"""Neuron-level probes: weight dynamics, channels to infinity, effective width / saddle branches.

Hidden layers are discovered on the first run from one traced forward pass of the loss closure
(see :mod:`lightning_landscape.neurons.discovery`), or named with ``layers=[["fc1", "fc2", "tanh"]]``.
A BatchNorm between a layer and its activation is folded into the neurons' input weights (eval form), so
every per-neuron quantity below (ε, merging, width, input-weight norms) is about the folded weights.
The heads of each ``nn.MultiheadAttention`` are a layer too (key: the attention module's name):
``WeightDynamics`` and ``SaddleBranches`` report them (per-head norms, effective number of heads);
``ChannelDetector`` searches neuron layers only (channels to infinity are a neuron-pair notion).
Tags use the input module's qualified name as the layer key, e.g. ``landscape/neurons/net.0/effective_width``.

:class:`ChannelDetector` and :class:`SaddleBranches` reuse ``HessianSpectrum``'s ``lambda_max`` /
``lambda_min`` (``ctx.shared``) when it is in the probe list, instead of running their own Lanczos (they
declare ``needs``, so the monitor runs the spectrum first wherever it is listed).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import torch

from lightning_landscape.alerts.events import Event, check_severity
from lightning_landscape.linalg import extreme_eigenvalues
from lightning_landscape.linalg.random import gaussian
from lightning_landscape.linalg.reduction import norm
from lightning_landscape.sharded import is_sharded_tensor
from lightning_landscape.neurons.channels import ChannelTracker
from lightning_landscape.neurons.discovery import NeuronLayer, discover_layers
from lightning_landscape.neurons.dynamics import distances, layer_norms, neuron_norms, snapshot
from lightning_landscape.neurons.recovery import STATES, classify_state, convergence_rate
from lightning_landscape.neurons.width import (
    WidthReport,
    hidden_statistics,
    layer_effective_width,
    saddle_branch_indicator,
    saddle_indicator,
)
from lightning_landscape.probes.base import (
    Histogram,
    Probe,
    ProbeResult,
    check_positive_float,
    check_positive_int,
)
from lightning_landscape.probes.context import ProbeContext
from lightning_landscape.validation import check_bool


def _check_layers(owner: str, layers: Sequence[Sequence[str]] | None) -> list[list[str]] | None:
    if layers is None:
        return None
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"{owner}.layers must be a list of [input, output(, activation)] module names, got {layers!r}")
    out = []
    for spec in layers:
        if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence) or len(spec) not in (2, 3) or not all(
            isinstance(s, str) for s in spec
        ):
            raise ValueError(f"{owner}.layers entries must be [input, output] or [input, output, activation] "
                             f"module names, got {spec!r}")
        out.append([str(s) for s in spec])
    return out


class _NeuronLayers:
    """Discover once per module (a probe can be reused on another module: re-discovers)."""

    def __init__(self, layers: list[list[str]] | None) -> None:
        self.spec = layers
        self._module_id: int | None = None
        self.layers: list[NeuronLayer] = []
        self.why_none = ""

    def get(self, ctx: ProbeContext) -> list[NeuronLayer]:
        if self._module_id != id(ctx.module):
            found = discover_layers(ctx.module, forward=ctx.evaluate_loss, layers=self.spec)
            self.layers = found.layers
            skipped = "; ".join(f"{n}: {r}" for n, r in found.skipped)
            self.why_none = (f"no neuron layer (Linear/Conv → [BatchNorm] → activation → Linear/Conv) found in "
                             f"{type(ctx.module).__name__}" + (f" ({skipped})" if skipped else "")
                             + "; name them with layers=[[input, output, activation], ...]")
            self._module_id = id(ctx.module)
        return self.layers


def _histogram(values: torch.Tensor, bins: int) -> Histogram:
    v = values.detach().double().flatten()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        hi = lo + 1e-12
    counts = torch.histc(v, bins=bins, min=lo, max=hi)
    return Histogram(edges=torch.linspace(lo, hi, bins + 1, dtype=torch.float64), counts=counts)


class WeightDynamics(Probe):
    """Per-layer weight norms, distance from initialisation, update-to-weight ratio; per-neuron norms.

    The initial weights are copied at the first measurement (``init_step`` says when). They are kept in
    the checkpoint only with ``checkpoint_init=True`` (a full copy of the parameters); otherwise, after a
    resume the reference restarts at the first measurement of the resumed run.

    ``update_ratio`` is ``‖θ_t − θ_s‖ / (‖θ_t‖ (t − s))`` with ``s`` the previous measurement: the mean
    per-step relative update over the interval (the per-step ratio with ``every_n_steps=1``; smaller than
    it when updates oscillate).

    Args:
        every_n_steps: measure after every this many optimizer steps.
        histogram_every: per-neuron histograms every this many measurements (0: never).
        bins: histogram bins.
        checkpoint_init: store the initial weights in ``state_dict`` (large).
        layers: explicit ``[input, output(, activation)]`` module-name triples for the neuron layers.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
        >>> ctx = ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=1)
        >>> out = WeightDynamics().run(ctx).scalars
        >>> out["0/distance_from_init"], out["0/max_out_norm"] == float(net[2].weight.detach().abs().max())
        (0.0, True)
    """

    name = "weight_dynamics"
    group = "weights"
    default_every_n_steps = 50
    cost = "no forward pass; 2 parameter copies kept"
    scalar_tags: ClassVar[dict[str, str]] = {
        "<layer>/norm": "Frobenius norm of the layer's parameters (weight and bias)",
        "<layer>/distance_from_init": "‖θ_layer − θ_layer(init)‖",
        "<layer>/update_ratio": "mean per-step ‖Δθ_layer‖/‖θ_layer‖ since the previous measurement",
        "<neuron layer>/max_out_norm": "largest per-neuron output-weight norm max_i ‖a_i‖ (grows in a channel)",
        "<neuron layer>/max_in_norm": "largest per-neuron input-weight norm max_i ‖w_i‖ (bias included, a BatchNorm before σ folded in)",
        "total/norm": "‖θ‖ over all trainable parameters",
        "total/distance_from_init": "‖θ − θ(init)‖",
        "total/update_ratio": "mean per-step ‖Δθ‖/‖θ‖ since the previous measurement",
        "init_step": "step at which the initial-weight reference was taken",
    }
    other_tags: ClassVar[dict[str, str]] = {
        "<neuron layer>/neuron_out_norm": "histogram: per-neuron output-weight norms ‖a_i‖",
        "<neuron layer>/neuron_in_norm": "histogram: per-neuron input-weight norms ‖w_i‖ (bias included)",
    }
    charts: ClassVar[dict[str, list[str]]] = {
        "norms": [r"[^/]+/norm"],
        "distance from init": [r"[^/]+/distance_from_init"],
        "update ratio": [r"[^/]+/update_ratio"],
        "neuron norms": [r"[^/]+/max_out_norm", r"[^/]+/max_in_norm"],
    }

    def __init__(
        self,
        every_n_steps: int | None = None,
        histogram_every: int = 10,
        bins: int = 30,
        checkpoint_init: bool = False,
        layers: list[list[str]] | None = None,
    ) -> None:
        super().__init__(every_n_steps)
        self.histogram_every = check_positive_int("WeightDynamics.histogram_every", histogram_every, 0)
        self.bins = check_positive_int("WeightDynamics.bins", bins, 2)
        self.checkpoint_init = check_bool(f"{type(self).__name__}.checkpoint_init", checkpoint_init)
        self.layers = _check_layers("WeightDynamics", layers)
        self._neurons = _NeuronLayers(self.layers)
        self._init: dict[str, list[torch.Tensor]] | None = None
        self._init_step = -1
        self._prev: dict[str, list[torch.Tensor]] | None = None
        self._prev_step = -1
        self._runs = 0

    def config(self) -> dict[str, Any]:
        return {**super().config(), "histogram_every": self.histogram_every, "layers": self.layers}

    def run(self, ctx: ProbeContext) -> ProbeResult:
        module = ctx.module
        now = snapshot(module)
        if self._init is None:
            self._init, self._init_step = now, ctx.step
        out = ProbeResult()
        norms = layer_norms(module)
        dist = distances(module, self._init)
        step_gap = ctx.step - self._prev_step if self._prev is not None else 0
        upd = distances(module, self._prev) if self._prev is not None and step_gap > 0 else {}
        for k, n in norms.items():
            out.scalars[f"{k}/norm"] = n
            if k in dist:
                out.scalars[f"{k}/distance_from_init"] = dist[k]
            if k in upd and n > 0:
                out.scalars[f"{k}/update_ratio"] = upd[k] / (n * step_gap)
        total = math.sqrt(sum(v * v for v in norms.values()))
        out.scalars["total/norm"] = total
        out.scalars["total/distance_from_init"] = math.sqrt(sum(v * v for v in dist.values()))
        if upd and total > 0:
            out.scalars["total/update_ratio"] = math.sqrt(sum(v * v for v in upd.values())) / (total * step_gap)
        out.scalars["init_step"] = float(self._init_step)
        histograms = self.histogram_every > 0 and self._runs % self.histogram_every == 0
        for layer in self._neurons.get(ctx):
            w_norm, a_norm = neuron_norms(layer)
            out.scalars[f"{layer.name}/max_out_norm"] = float(a_norm.max())
            out.scalars[f"{layer.name}/max_in_norm"] = float(w_norm.max())
            if histograms:
                out.histograms[f"{layer.name}/neuron_out_norm"] = _histogram(a_norm, self.bins)
                out.histograms[f"{layer.name}/neuron_in_norm"] = _histogram(w_norm, self.bins)
        self._prev, self._prev_step = now, ctx.step
        self._runs += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"runs": self._runs, "init_step": self._init_step}
        # Sharded (FSDP2) weights are not stored: each process holds other shards, and the callback state
        # is saved from one process (the distance from init then restarts after a resume, as without it).
        if self.checkpoint_init and self._init is not None and not any(
                is_sharded_tensor(t) for v in self._init.values() for t in v):
            state["init"] = {k: [t.cpu() for t in v] for k, v in self._init.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._runs = int(state.get("runs", 0))
        if "init" in state:
            self._init = {k: [t.clone() for t in v] for k, v in state["init"].items()}
            self._init_step = int(state.get("init_step", -1))


class ChannelDetector(Probe):
    """Channels to infinity: per neuron layer, the sign-aware closest pairs tracked over a window.

    The closest pairs come from one Gram matrix per layer; a wide layer (exact Gram above
    :data:`~lightning_landscape.neurons._gram.EXACT_MAX_MACS` multiply-adds, e.g. width 2048 at fan-in 2048)
    takes them from a fixed Gaussian sketch of the input weights and measures them exactly: every pair
    markedly closer than the layer's typical pair is found (see
    :func:`~lightning_landscape.neurons.channels.search_closest`).

    Emits a ``channel_entry`` event (key ``"<layer>:<i>-<j>"``) when a pair meets all six criteria of
    :class:`~lightning_landscape.neurons.channels.ChannelTracker` (ε shrinking, ‖aᵢ‖+‖aⱼ‖ growing with
    opposite signs, log-log slope ≈ −1, stable GLU coefficient, slow loss decrease). If ``lambda_max``
    is in ``ctx.shared`` (``HessianSpectrum`` is in the probe list), the event is *confirmed* when λmax grew over the
    window or the edge-of-stability ratio is ≥ ``eos_confirm``.

    Args:
        every_n_steps: measure after every this many optimizer steps (a window spans
            ``window * every_n_steps`` steps: channels are slow, so sparse measurements are fine).
        window: measurements kept per pair.
        min_points: measurements needed before scoring.
        num_candidates: closest pairs per layer tracked at each measurement.
        min_shrink, min_opposition, slope_tol, glu_tol, max_loss_drop: criteria thresholds (see the tracker).
        eos_confirm: edge-of-stability ratio that confirms a channel on its own.
        severity: severity of the ``channel_entry`` event.
        layers: explicit ``[input, output(, activation)]`` module-name triples.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
        >>> ctx = ProbeContext(net, lambda: ((net(x) - y) ** 2).mean(), step=1)
        >>> out = ChannelDetector().run(ctx)
        >>> "channel_score" in out.scalars, out.not_measured["channel_score"], out.events  # one measurement: nothing to score yet
        (False, 'no layer has a full window yet', [])
    """

    name = "channels"
    group = "neurons"
    default_every_n_steps = 200
    cost = ("one float32 Gram matrix per layer (m²·d/2 multiply-adds for width m; above 1.4·10⁹ a 64-dim sketch, "
            "m·d·64 + m²·32), 1 forward (discovery)")
    scalar_tags: ClassVar[dict[str, str]] = {
        "<layer>/channel_score": "fraction of the six channel criteria met by the layer's best pair (1 = in a channel)",
        "<layer>/channel_eps": "smallest sign-aware ε = ‖wᵢ − s·wⱼ‖/2 among the layer's neuron pairs",
        "<layer>/channel_out_norm": "‖aᵢ‖ + ‖aⱼ‖ of the best-scoring pair",
        "<layer>/channel_slope": "fitted slope of log(‖aᵢ‖+‖aⱼ‖) against log ε for the best pair (≈ −1 in a channel)",
        "<layer>/channel_glu": "GLU coefficient ‖ε(aᵢ − s·aⱼ)‖ of the best pair (≈ constant in a channel)",
        "channel_score": "largest channel score over all layers",
    }
    charts: ClassVar[dict[str, list[str]]] = {
        "channel score": [r"[^/]+/channel_score", "channel_score"],
        "channel ε": [r"[^/]+/channel_eps"],
        "channel output norm": [r"[^/]+/channel_out_norm"],
    }

    def __init__(
        self,
        every_n_steps: int | None = None,
        window: int = 8,
        min_points: int = 4,
        num_candidates: int = 3,
        min_shrink: float = 0.02,
        min_opposition: float = 0.5,
        slope_tol: float = 0.5,
        glu_tol: float = 0.25,
        max_loss_drop: float = 0.1,
        eos_confirm: float = 0.9,
        severity: str = "warning",
        layers: list[list[str]] | None = None,
    ) -> None:
        super().__init__(every_n_steps)
        self.min_points = check_positive_int("ChannelDetector.min_points", min_points, 3)
        self.window = check_positive_int("ChannelDetector.window", window, self.min_points)
        self.num_candidates = check_positive_int("ChannelDetector.num_candidates", num_candidates)
        self.min_shrink = check_positive_float("ChannelDetector.min_shrink", min_shrink, allow_zero=True)
        if not -1.0 <= float(min_opposition) <= 1.0:
            raise ValueError(f"ChannelDetector.min_opposition must be in [-1, 1], got {min_opposition!r}")
        self.min_opposition = float(min_opposition)
        self.slope_tol = check_positive_float("ChannelDetector.slope_tol", slope_tol)
        self.glu_tol = check_positive_float("ChannelDetector.glu_tol", glu_tol)
        self.max_loss_drop = check_positive_float("ChannelDetector.max_loss_drop", max_loss_drop)
        self.eos_confirm = check_positive_float("ChannelDetector.eos_confirm", eos_confirm)
        self.severity = check_severity("ChannelDetector.severity", severity)
        self.layers = _check_layers("ChannelDetector", layers)
        self._neurons = _NeuronLayers(self.layers)
        self.tracker = ChannelTracker(self.window, self.min_points, self.num_candidates, self.min_shrink,
                                      self.min_opposition, self.slope_tol, self.glu_tol, self.max_loss_drop)
        self._announced: set[str] = set()

    def config(self) -> dict[str, Any]:
        return {**super().config(), "window": self.window, "min_points": self.min_points,
                "num_candidates": self.num_candidates, "layers": self.layers}

    def run(self, ctx: ProbeContext) -> ProbeResult:
        out = ProbeResult()
        loss = ctx.loss()
        lam = ctx.shared.lambda_max
        lam = float(lam) if lam is not None else None
        info = ctx.optimizer_info
        eos = lam / info.eos_threshold() if lam is not None and info is not None and info.kind == "sgd" and info.lr > 0 else None
        # channels to infinity are a neuron-pair notion: attention heads are not searched
        layers = [layer for layer in self._neurons.get(ctx) if layer.kind == "neurons"]
        if not layers:
            out.not_measured["channel_score"] = self._neurons.why_none
            return out
        best_score: float | None = None
        for layer in layers:
            report = self.tracker.update(layer.name, ctx.step, loss, layer.input_weights(), layer.output_weights(),
                                         layer.symmetry, lam)
            out.scalars[f"{layer.name}/channel_eps"] = report.min_eps
            best = report.best
            if best is None:  # a pair is scored only over a window: absent (not 0) until it has filled
                out.not_measured[f"{layer.name}/channel_score"] = (
                    f"the window is filling (a pair is scored after min_points={self.min_points} measurements)")
                continue
            best_score = max(best.score, -math.inf if best_score is None else best_score)
            out.scalars[f"{layer.name}/channel_score"] = best.score
            out.scalars[f"{layer.name}/channel_out_norm"] = best.out_norm
            out.scalars[f"{layer.name}/channel_slope"] = best.slope
            out.scalars[f"{layer.name}/channel_glu"] = best.glu
            live = {f"{layer.name}:{v.pair[0]}-{v.pair[1]}" for v in report.verdicts if v.score >= 1.0}
            prefix = f"{layer.name}:"
            self._announced = {k for k in self._announced if not k.startswith(prefix) or k in live}  # re-arm
            for v in report.verdicts:
                key = f"{layer.name}:{v.pair[0]}-{v.pair[1]}"
                if v.score < 1.0 or key in self._announced:
                    continue
                self._announced.add(key)
                out.events.append(self._event(ctx, layer, v, report, eos))
        if best_score is None:
            out.not_measured["channel_score"] = "no layer has a full window yet"
        else:
            out.scalars["channel_score"] = best_score
        return out

    def _event(self, ctx: ProbeContext, layer: NeuronLayer, v: Any, report: Any, eos: float | None) -> Event:
        growth = report.lambda_growth
        confirmed = (math.isfinite(growth) and growth > 1.05) or (eos is not None and eos >= self.eos_confirm)
        values = {"eps": v.eps, "slope": v.slope, "out_norm": v.out_norm, "glu": v.glu, "loss_drop": v.loss_drop,
                  "neuron_i": float(v.pair[0]), "neuron_j": float(v.pair[1]), "sign": float(v.pair[2]),
                  "confirmed": float(confirmed)}
        if math.isfinite(growth):
            values["lambda_max_growth"] = growth
        if math.isfinite(report.lambda_slope):
            values["lambda_eps_slope"] = report.lambda_slope
        if eos is not None:
            values["eos_ratio"] = eos
        sign = "" if v.pair[2] > 0 else " (mirrored: odd activation)"
        conf = " — confirmed by λmax growth / edge of stability" if confirmed else ""
        return Event(
            "channel_entry", step=ctx.step, epoch=ctx.epoch, values=values, severity=self.severity,
            message=(f"layer {layer.name}: neurons {v.pair[0]} and {v.pair[1]}{sign} are entering a channel to "
                     f"infinity: ε={v.eps:.3g} shrinking, ‖aᵢ‖+‖aⱼ‖={v.out_norm:.3g} growing with opposite signs, "
                     f"log-log slope {v.slope:.2f}, GLU coefficient {v.glu:.3g}{conf}"),
            key=f"{layer.name}:{v.pair[0]}-{v.pair[1]}",
        )

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict(), "announced": sorted(self._announced)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state.get("tracker", {}))
        self._announced = set(state.get("announced", []))


class SaddleBranches(Probe):
    """Effective width per layer, the ``saddle_branch`` and ``saddle`` indicators, and local recovery.

    * ``<layer>/effective_width``: neurons left after removing negligible units and merging duplicates
      modulo the activation's symmetry (:func:`~lightning_landscape.neurons.width.effective_width`).
    * ``saddle_branch`` = 1 when some layer's effective width is below its width, ``‖∇L‖ ≤ grad_tol`` and
      ``L − loss_floor > loss_tol``.
    * ``saddle`` = 1 when ``λmin < 0``, ``|λmin|/λmax ≥ ratio_tol``, ``|λmin|`` above the rounding floor, and
      either ``‖∇L‖ ≤ grad_tol`` or — scale-free — the loss has stalled (fell by less than ``stall_tol``
      since the previous measurement) with ``‖∇L‖² ≤ stall_grad_ratio · 2(L − loss_floor)|λmin|`` (the
      descent the gradient offers is negligible next to what the negative curvature offers: a plateau at
      a saddle, in whatever units the loss has); λmin/λmax come from ``ctx.shared`` (``HessianSpectrum``)
      or, with ``compute_spectrum=True``, from an own Lanczos run.
    * ``recovery_state``: 0 moving (gradient above ``grad_tol``), 1 global minimum (loss at its floor),
      2 saddle branch, 3 plateau; ``convergence_rate`` = ``−d log(L − loss_floor)/d step`` over the window.

    Events ``saddle_branch`` / ``saddle`` are emitted when the indicator switches on (not while it stays on).

    Args:
        every_n_steps: measure after every this many optimizer steps.
        grad_tol: gradient norm below which the state counts as critical (absolute, in loss units per
            parameter unit — scale it with your loss).
        loss_tol: loss above ``loss_floor + loss_tol`` is not a global minimum.
        loss_floor: the best achievable loss (0 for realisable targets; the noise level otherwise).
        ratio_tol: smallest ``|λmin|/λmax`` that counts as a strict saddle.
        contribution_tol: relative contribution below which a neuron is negligible.
        merge_tol: relative function error below which two neurons count as one.
        compute_spectrum: run Lanczos when ``ctx.shared`` has no ``lambda_min`` and the gradient is small
            (``‖∇L‖ ≤ grad_tol``: with a larger gradient no saddle is declared, so the products are saved).
        max_iter: Lanczos steps (Hessian-vector products) for the own spectrum run (the plain recurrence:
            three parameter-sized vectors whatever ``max_iter`` is; see :func:`extreme_eigenvalues`).
        tol: Lanczos stop when both extreme Ritz residuals are ``≤ tol · max|λ|`` (λmin is less accurate
            than this when ``|λmin| ≪ λmax``).
        window: measurements used for the convergence rate.
        severity: severity of the events.
        layers: explicit ``[input, output(, activation)]`` module-name triples.
        stall_tol: relative loss decrease between two measurements below which the loss has stalled.
        stall_grad_ratio: a stalled loss is a saddle when ``‖∇L‖² ≤ stall_grad_ratio · 2(L − loss_floor)|λmin|``.

    Example (neuron 1 duplicates neuron 0):
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.Tanh(), torch.nn.Linear(2, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, -1.0], [1.0, -1.0]]))
        >>> x = torch.randn(32, 2)
        >>> ctx = ProbeContext(net, lambda: (net(x) ** 2).mean(), step=1)
        >>> SaddleBranches(compute_spectrum=False).run(ctx).scalars["0/effective_width"]
        1.0
    """

    name = "saddle_branches"
    group = "neurons"
    needs_hessian = True
    needs = ("lambda_max", "lambda_min")
    provides = ("lambda_max", "lambda_min")  # its own Lanczos values, when no spectrum ran
    default_every_n_steps = 500
    cost = "1 forward + gradient; Lanczos ≤ max_iter HVPs only with a small gradient, unless the spectrum probe ran"
    scalar_tags: ClassVar[dict[str, str]] = {
        "<layer>/effective_width": "neurons (or attention heads) left after removing negligible units and merging duplicates modulo σ's symmetry",
        "<layer>/width": "number of neurons (or heads) of the layer",
        "saddle_branch": "1 if some layer's effective width < width with a small gradient and loss above its floor",
        "saddle": "1 if λmin < 0 with |λmin|/λmax ≥ ratio_tol and a small gradient, absolute or relative to the "
        "negative curvature on a stalled loss (strict saddle)",
        "grad_norm": "‖∇L‖ on the probe batch",
        "lambda_min_ratio": "λmin/λmax (negative: negative curvature)",
        "recovery_state": "0 moving, 1 global minimum (loss at floor), 2 saddle branch, 3 plateau",
        "convergence_rate": "−d log(L − loss_floor)/d step over the window (> 0: converging; per step)",
    }
    charts: ClassVar[dict[str, list[str]]] = {
        "effective width": [r"[^/]+/effective_width", r"[^/]+/width"],
        "saddles": ["saddle_branch", "saddle", "recovery_state"],
        "local convergence": ["grad_norm", "convergence_rate", "lambda_min_ratio"],
    }

    def __init__(
        self,
        every_n_steps: int | None = None,
        grad_tol: float = 1e-3,
        loss_tol: float = 1e-3,
        loss_floor: float = 0.0,
        ratio_tol: float = 1e-3,
        contribution_tol: float = 1e-3,
        merge_tol: float = 1e-3,
        compute_spectrum: bool = True,
        max_iter: int = 30,
        tol: float = 1e-3,
        window: int = 8,
        severity: str = "warning",
        layers: list[list[str]] | None = None,
        stall_tol: float = 0.01,
        stall_grad_ratio: float = 0.01,
    ) -> None:
        super().__init__(every_n_steps)
        self.grad_tol = check_positive_float("SaddleBranches.grad_tol", grad_tol)
        self.stall_tol = check_positive_float("SaddleBranches.stall_tol", stall_tol, allow_zero=True)
        self.stall_grad_ratio = check_positive_float("SaddleBranches.stall_grad_ratio", stall_grad_ratio, allow_zero=True)
        self.loss_tol = check_positive_float("SaddleBranches.loss_tol", loss_tol, allow_zero=True)
        if isinstance(loss_floor, bool) or not isinstance(loss_floor, (int, float)) or not math.isfinite(loss_floor):
            raise ValueError(f"SaddleBranches.loss_floor must be a finite number, got {loss_floor!r}")
        self.loss_floor = float(loss_floor)
        self.ratio_tol = check_positive_float("SaddleBranches.ratio_tol", ratio_tol, allow_zero=True)
        self.contribution_tol = check_positive_float("SaddleBranches.contribution_tol", contribution_tol)
        self.merge_tol = check_positive_float("SaddleBranches.merge_tol", merge_tol)
        self.compute_spectrum = check_bool(f"{type(self).__name__}.compute_spectrum", compute_spectrum)
        self.max_iter = check_positive_int("SaddleBranches.max_iter", max_iter, 2)
        self.tol = check_positive_float("SaddleBranches.tol", tol)
        self.window = check_positive_int("SaddleBranches.window", window, 2)
        self.severity = check_severity("SaddleBranches.severity", severity)
        self.layers = _check_layers("SaddleBranches", layers)
        self._neurons = _NeuronLayers(self.layers)
        self._steps: list[int] = []
        self._losses: list[float] = []
        self._on = {"saddle_branch": False, "saddle": False}
        self.last_widths: dict[str, WidthReport] = {}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "grad_tol": self.grad_tol, "loss_tol": self.loss_tol,
                "stall_tol": self.stall_tol, "stall_grad_ratio": self.stall_grad_ratio,
                "loss_floor": self.loss_floor, "layers": self.layers}

    def _spectrum(self, ctx: ProbeContext) -> tuple[float, float]:
        shared = ctx.shared
        if shared.lambda_min is not None and shared.lambda_max is not None:
            return float(shared.lambda_max), float(shared.lambda_min)
        if not self.compute_spectrum:
            return float("nan"), float("nan")
        op = ctx.hessian()
        lam_max, lam_min = extreme_eigenvalues(
            op.matvec, gaussian(ctx.space.dim, ctx.generator(self.name), ctx.space.dtype, ctx.space.device),
            max_iter=min(self.max_iter, ctx.space.global_dim), tol=self.tol, min_iter=min(2, ctx.space.global_dim))
        if shared.lambda_max is None:
            shared.lambda_max = lam_max
        if shared.lambda_min is None:
            shared.lambda_min = lam_min
        return lam_max, lam_min

    def _stalled(self, step: int, loss: float) -> bool:
        """The loss fell by less than ``stall_tol`` (relative) since the previous measurement, at least
        ``MIN_STALL_STEPS`` steps ago (measurements are hundreds of steps apart by default)."""
        if not self._losses or step - self._steps[-1] < self.MIN_STALL_STEPS:
            return False
        before = self._losses[-1] - self.loss_floor
        return before > 0 and (before - (loss - self.loss_floor)) <= self.stall_tol * before

    #: A stall is only judged over at least this many optimizer steps.
    MIN_STALL_STEPS = 100

    @staticmethod
    def _curvature_floor(ctx: ProbeContext, loss: float) -> float:
        """Eigenvalues below this are rounding noise (e.g. ~1e-13 at θ = 0 after a collapse, where the
        Hessian of a deep net vanishes): ``100 · eps(dtype) · max(|L|, 1)``."""
        return 100.0 * torch.finfo(ctx.space.dtype).eps * max(abs(loss), 1.0)

    def run(self, ctx: ProbeContext) -> ProbeResult:
        out = ProbeResult()
        layers = self._neurons.get(ctx)
        stats = hidden_statistics(layers, ctx.evaluate_loss, ctx.reduce_mean) if layers else {}
        widths: list[WidthReport] = []
        self.last_widths = {}
        for layer in layers:
            if layer.name not in stats:
                continue
            h_rms, scale = stats[layer.name]
            rep = layer_effective_width(layer, h_rms, scale, self.contribution_tol, self.merge_tol)
            widths.append(rep)
            self.last_widths[layer.name] = rep
            out.scalars[f"{layer.name}/effective_width"] = float(rep.effective_width)
            out.scalars[f"{layer.name}/width"] = float(rep.width)
        grad_norm = float(norm(ctx.gradient()))  # shared with the Hessian probes if they ran
        loss = ctx.loss()
        stalled = self._stalled(ctx.step, loss)
        # A saddle needs a small gradient or a stalled loss: only then is the spectrum worth its products
        # (unless another probe already measured it at this step).
        if grad_norm <= self.grad_tol or stalled or ctx.shared.lambda_min is not None:
            lam_max, lam_min = self._spectrum(ctx)
        else:
            lam_max = lam_min = float("nan")
        branch = saddle_branch_indicator(widths, grad_norm, loss - self.loss_floor, self.grad_tol, self.loss_tol)
        floor = self._curvature_floor(ctx, loss)
        saddle = saddle_indicator(lam_min, lam_max, grad_norm, self.grad_tol, self.ratio_tol, curvature_floor=floor)
        if not saddle and stalled and loss - self.loss_floor > self.loss_tol:
            # Scale-free: the descent the gradient offers (‖g‖²) is negligible next to what the negative
            # curvature offers (2(L − L*)|λmin|) — a plateau at a saddle, whatever the loss's units.
            budget = self.stall_grad_ratio * 2.0 * (loss - self.loss_floor) * abs(lam_min)
            saddle = saddle_indicator(lam_min, lam_max, grad_norm, math.sqrt(budget) if budget > 0 else 0.0,
                                      self.ratio_tol, curvature_floor=floor)
        self._steps = (self._steps + [ctx.step])[-self.window:]
        self._losses = (self._losses + [loss])[-self.window:]
        state = classify_state(grad_norm, loss, self.loss_floor, branch, self.grad_tol, self.loss_tol)
        out.scalars.update({"saddle": float(saddle), "grad_norm": grad_norm, "recovery_state": float(STATES[state])})
        if widths:
            out.scalars["saddle_branch"] = float(branch)
        else:  # no width measured: "not a saddle branch" would be a claim we cannot make
            out.not_measured["saddle_branch"] = self._neurons.why_none if not layers else "no layer's width measured"
        if math.isfinite(lam_min) and math.isfinite(lam_max) and lam_max != 0:
            out.scalars["lambda_min_ratio"] = lam_min / abs(lam_max)
        rate = convergence_rate(self._steps, self._losses, self.loss_floor)
        if math.isfinite(rate):
            out.scalars["convergence_rate"] = rate
        narrow = {r: w for r, w in self.last_widths.items() if w.effective_width < w.width}
        values = {"grad_norm": grad_norm, "loss": loss, "lambda_min": lam_min, "lambda_max": lam_max}
        for kind, on in (("saddle_branch", branch), ("saddle", saddle)):
            if on and not self._on[kind]:
                if kind == "saddle_branch":
                    detail = ", ".join(f"{n}: effective width {w.effective_width} of {w.width}" for n, w in narrow.items())
                    msg = f"training sits on a saddle branch ({detail}; ‖∇L‖={grad_norm:.2e}, loss={loss:.4g})"
                    vals = {**values, **{f"{n}/effective_width": float(w.effective_width) for n, w in narrow.items()}}
                else:
                    msg = f"strict saddle: λmin={lam_min:.3g} (λmax={lam_max:.3g}) with ‖∇L‖={grad_norm:.2e}"
                    vals = values
                out.events.append(Event(kind, step=ctx.step, epoch=ctx.epoch, values=vals, severity=self.severity,
                                        message=msg))
            self._on[kind] = on
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self._steps), "losses": list(self._losses), "on": dict(self._on)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._steps = [int(s) for s in state.get("steps", [])]
        self._losses = [float(v) for v in state.get("losses", [])]
        self._on.update({k: bool(v) for k, v in state.get("on", {}).items()})
