"""Scenario definitions, the runner and the failure criteria of the scenario benchmark.

A *scenario* is a recipe ``(seed, steps) -> Setup`` (model, data, optimizer and schedule, extra
callbacks, a per-step ground-truth signal) plus what kind of run it is: ``healthy`` (must train well and
raise no alert) or one of the failure types. A *job* runs one scenario at one seed in up to three
variants, each from the same seed so the runs are identical up to what the monitor does:

* ``reference`` — no monitor. The ground truth (failure step, plateau, ...) comes from this run only.
* ``monitored`` — :func:`_scenario_config.build_monitor` without controller: which alerts, when. Its loss
  curve must equal the reference's (monitoring is supposed to be side-effect free); any difference is
  reported.
* ``controlled`` — the same with the weight-decay controller (healthy runs, ``l2_collapse``, ``channel``):
  did the controller change a healthy run, did it prevent the failure (same criterion, same bound)?

Failure criteria (all computed from per-step values of one run, causally unless stated):

* ``lr_divergence``: first step whose loss is non-finite or whose EMA (α = 0.1) exceeds 5× the running
  minimum of the EMA.
* ``adam_spike``: first step after step 20 whose loss exceeds 3× the median of the previous 20 losses.
* ``l2_collapse``: first step whose collapse ratio ``(L_trivial − L)/L_trivial`` on the training set
  (= the full batch of the deep linear net; all decayed parameters, here all of them, zeroed for
  ``L_trivial``), computed after every step, falls below half of its best value so far (once the best
  is ≥ 0.5: the net had learnt something to lose).
* ``channel``: first step at which the output weights' ``max|a|`` exceeds a bound: the value the
  reference reaches 60 % into the run (per seed; not causal by construction, the step is ~0.6 × run).
* ``saddle_plateau``: from the reference loss curve (see :func:`plateau`): the plateau starts at the
  first step ``t`` whose loss changes by < 2 % over the next 100 steps, its level is the loss there, and
  the escape is the first later step with a loss below 90 % of that level. "Failure" = being stuck;
  an alert counts if it arrives in ``[start, escape)``.

Choices that make the scenarios fail (or not) as intended, checked on the unmonitored runs:

* Run lengths and ramps are set so that the *default* probe intervals (spectrum 500 steps, L2 50,
  channels 50, saddles 200) see several measurements before the failure: the learning rate grows only
  ×1.004 per step after a 1,000-step stable phase, the weight decay ×1.002 (deep linear) or ×1.0025 (MLP).
* ``lr_divergence`` on digits uses label smoothing 0.1 and weight decay 5e-4 (MLP), weight decay 5e-4
  (CNN): with plain cross-entropy on separable data the loss → 0 and the curvature with it, and an
  exponential learning-rate ramp up to lr > 1000 never diverges.
* ``adam_spike`` uses batch 128: at batch 32 the "3× the median" criterion fires on mini-batch noise
  alone once the loss is small; at 128 the spikes are real (loss back to ≈ chance). Most seeds spike
  (step ~70-250), some do not within 800 steps (left out of recall and listed).
* ``channel`` starts each run after 5,000 unmonitored closed-form GD steps (the channel builds up
  slowly); the output weights then grow by ~9 % over 3,000 steps. The bound is per seed (60 % point).
* Every monitored run uses the monitor's default probe batch (``probe_batch="fixed"``: the first training
  batch); no scenario needs another.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

import lightning.pytorch as L
from _scenario_config import CONTROLLER_RULE, build_monitor
from _scenario_models import (
    Batch,
    Optim,
    ResCNN,
    Task,
    TokenTransformer,
    digits,
    loader,
    majority_tokens,
    mlp,
    teacher_student,
)

FAILURE_TYPES = ("lr_divergence", "adam_spike", "l2_collapse", "channel", "saddle_plateau")
Signal = Callable[[nn.Module], float]


# ----------------------------------------------------------------------------- per-run plumbing
@dataclass
class Setup:
    """What one run needs; built fresh for every variant from the same seed."""

    module: Task
    train: torch.utils.data.DataLoader
    eval_xy: Batch
    callbacks: list[L.Callback] = field(default_factory=list)
    signal: Signal | None = None  # per-step ground-truth value beyond the loss
    info: dict[str, float] = field(default_factory=dict)


class WeightDecayRamp(L.Callback):
    """From step ``start`` on, multiply every param group's *current* weight decay by ``factor`` before
    each optimizer step (multiplicative like ``MultiplicativeLR``: a controller's edit becomes the new
    base, so the controller is not overwritten at the next step)."""

    def __init__(self, factor: float, start: int) -> None:
        self.factor, self.start = factor, start

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= self.start:
            for group in trainer.optimizers[0].param_groups:
                group["weight_decay"] *= self.factor


class Criterion:
    """A causal failure criterion fed one step at a time; ``update`` returns True at the failure step."""

    def update(self, loss: float, signal: float) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def first(self, losses: Sequence[float], signals: Sequence[float]) -> int | None:
        """The failure step (1-based, = optimizer steps taken) of a recorded run, or None."""
        sig = signals if signals else [math.nan] * len(losses)
        for i, (l, s) in enumerate(zip(losses, sig)):
            if self.update(l, s):
                return i + 1
        return None


class Divergence(Criterion):
    """Non-finite loss, or EMA(loss) > ``factor`` × its running minimum."""

    def __init__(self, alpha: float = 0.1, factor: float = 5.0) -> None:
        self.alpha, self.factor = alpha, factor
        self.ema: float | None = None
        self.best = math.inf

    def update(self, loss: float, signal: float) -> bool:
        if not math.isfinite(loss):
            return True
        self.ema = loss if self.ema is None else (1 - self.alpha) * self.ema + self.alpha * loss
        self.best = min(self.best, self.ema)
        return self.ema > self.factor * self.best


class Spike(Criterion):
    """Loss > ``factor`` × the median of the previous ``window`` losses, after the first ``window``."""

    def __init__(self, window: int = 20, factor: float = 3.0) -> None:
        self.factor = factor
        self.recent: deque[float] = deque(maxlen=window)

    def update(self, loss: float, signal: float) -> bool:
        full = len(self.recent) == self.recent.maxlen
        fired = not math.isfinite(loss) or (full and loss > self.factor * statistics.median(self.recent))
        self.recent.append(loss)
        return fired


class Collapse(Criterion):
    """Collapse ratio (the signal) < ``fraction`` × its best so far, once the best is ≥ ``min_best``."""

    def __init__(self, fraction: float = 0.5, min_best: float = 0.5) -> None:
        self.fraction, self.min_best, self.best = fraction, min_best, -math.inf

    def update(self, loss: float, signal: float) -> bool:
        if not math.isfinite(signal):
            return self.best >= self.min_best
        self.best = max(self.best, signal)
        return self.best >= self.min_best and signal < self.fraction * self.best


class Above(Criterion):
    """The signal exceeds a fixed bound."""

    def __init__(self, bound: float) -> None:
        self.bound = bound

    def update(self, loss: float, signal: float) -> bool:
        return not math.isfinite(signal) or signal > self.bound


def plateau(losses: Sequence[float], horizon: int = 100, flat: float = 0.02,
            escape_fraction: float = 0.9) -> tuple[int | None, int | None, float]:
    """``(start, escape, level)`` of the first loss plateau (steps 1-based; None when absent)."""
    n = len(losses)
    for t in range(n - horizon):
        if abs(losses[t + horizon] - losses[t]) < flat * abs(losses[t]):
            level = losses[t]
            for u in range(t + 1, n):
                if losses[u] < escape_fraction * level:
                    return t + 1, u + 1, level
            return t + 1, None, level
    return None, None, math.nan


class Trace(L.Callback):
    """Records, after every optimizer step, the training loss, the ground-truth signal, the weight decay
    and the learning rate; optionally stops ``stop_margin`` steps after a causal criterion fired (a run
    that has diverged teaches nothing more). The signal is computed under ``no_grad`` with the RNG
    forked, so recording never changes training."""

    def __init__(self, signal: Signal | None = None, stop: Criterion | None = None, stop_margin: int = 0) -> None:
        self.signal_fn, self.stop, self.stop_margin = signal, stop, stop_margin
        self.loss: list[float] = []
        self.signal: list[float] = []
        self.wd: list[float] = []
        self.lr: list[float] = []
        self.failed_at: int | None = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.loss.append(float(loss))
        if self.signal_fn is not None:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                self.signal.append(float(self.signal_fn(pl_module)))
        group = trainer.optimizers[0].param_groups[0]
        self.wd.append(float(group.get("weight_decay", 0.0)))
        self.lr.append(float(group["lr"]))
        step = int(trainer.global_step)
        if self.stop is not None and self.failed_at is None:
            if self.stop.update(self.loss[-1], self.signal[-1] if self.signal else math.nan):
                self.failed_at = step
        if self.failed_at is not None and step >= self.failed_at + self.stop_margin:
            trainer.should_stop = True


#: Monitor values summarised per run (min / max / last over the measurements), for context in the report.
WATCHED_TAGS = ("landscape/hessian/eos_ratio", "landscape/hessian/lambda_max", "landscape/hessian/lambda_min",
                "landscape/l2/margin", "landscape/l2/collapse_ratio", "landscape/neurons/channel_score",
                "landscape/neurons/grad_norm")


class Measurements(L.Callback):
    """Keeps ``monitor.last_values`` after every measurement (read-only; placed after the monitor)."""

    def __init__(self, monitor: Any) -> None:
        self.monitor, self.seen = monitor, 0
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.monitor.num_measurements > self.seen:
            self.seen = self.monitor.num_measurements
            self.rows.append({"step": float(trainer.global_step),
                              **{k: float(v) for k, v in self.monitor.last_values.items() if k in WATCHED_TAGS}})

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for tag in WATCHED_TAGS:
            xs = [r[tag] for r in self.rows if tag in r and math.isfinite(r[tag])]
            if xs:
                out[tag.removeprefix("landscape/")] = {"min": min(xs), "max": max(xs), "last": xs[-1]}
        return out


def _trainer(max_steps: int, callbacks: list[L.Callback]) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, max_steps=max_steps,
                     callbacks=callbacks, num_sanity_val_steps=0)


# ----------------------------------------------------------------------------- scenarios
@dataclass(frozen=True)
class Scenario:
    """One scenario. ``make(seed, steps)`` builds the run; ``kind`` is ``"healthy"`` or a failure type.

    ``target``: what a healthy run must reach on its training set (``("acc", 0.95)``: accuracy ≥ 0.95;
    ``("loss_ratio", 0.2)``: final loss ≤ 0.2 × the first step's). ``cost_ms``: rough ms per step (job
    ordering only). ``stop_margin``: the reference stops this many steps after a causal failure.
    """

    name: str
    kind: str
    description: str
    make: Callable[[int, int], Setup]
    steps: int
    quick_steps: int = 0  # 0: not in the quick subset
    controller: bool = False
    target: tuple[str, float] | None = None
    seeds: tuple[int, ...] = ()  # explicit seed list (default: 0..n-1)
    quick_seed: int = 0  # the one seed of --quick (a seed whose reference fails, for failure scenarios)
    n_seeds: int = 0  # seeds of the full run (0: 2 healthy, 5 failure)
    cost_ms: float = 5.0
    stop_margin: int | None = None

    def criterion(self) -> Criterion | None:
        """A fresh causal criterion for the reference run (None: offline ground truth only)."""
        return {"lr_divergence": Divergence, "adam_spike": Spike, "l2_collapse": Collapse}.get(self.kind, lambda: None)()


def _with_total(optim: Optim, steps: int) -> Optim:
    return dataclasses.replace(optim, total=steps)


def _onset(optim: Optim) -> dict[str, float]:
    """``onset_step``: where the failure mechanism (the learning-rate ramp) starts, for the report's
    pre-onset alerts (an alert before it cannot be about the ramp)."""
    return {"onset_step": float(optim.growth_start)} if optim.lr_growth != 1.0 else {}


def digits_mlp(optim: Optim, hidden: tuple[int, ...] = (64,), dropout: float = 0.0, batch: int | None = 64,
               activation: str = "relu", label_smoothing: float = 0.0, loss: str = "ce") -> Callable[[int, int], Setup]:
    """MLP on standardised digits (cross-entropy, or ``"mse_onehot"``: square loss on one-hot targets)."""

    def make(seed: int, steps: int) -> Setup:
        x, y = digits()
        net = mlp(64, hidden, 10, activation, dropout)
        task = Task(net, loss, _with_total(optim, steps), label_smoothing)
        return Setup(task, loader(x, y, batch, steps), (x, y), info=_onset(optim))

    return make


def digits_cnn(optim: Optim, channels: int = 8, blocks: int = 2, batch: int = 32) -> Callable[[int, int], Setup]:
    """Small ResNet (Conv→BN→ReLU blocks, residual additions) on 1×8×8 digits."""

    def make(seed: int, steps: int) -> Setup:
        x, y = digits(images=True)
        net = ResCNN(channels, blocks)
        return Setup(Task(net, "ce", _with_total(optim, steps)), loader(x, y, batch, steps), (x, y), info=_onset(optim))

    return make


def tokens_transformer(optim: Optim, layers: int = 2, batch: int = 32) -> Callable[[int, int], Setup]:
    """Post-LN Transformer encoder classifying the majority token of synthetic sequences (length 16)."""

    def make(seed: int, steps: int) -> Setup:
        x, y = majority_tokens(seed=seed)
        net = TokenTransformer(layers=layers)
        return Setup(Task(net, "ce", _with_total(optim, steps)), loader(x, y, batch, steps), (x, y))

    return make


def teacher_student_mlp(optim: Optim, hidden: tuple[int, ...], activation: str = "tanh", batch: int | None = None,
                        init_scale: float = 1.0, teacher_depth: int = 1, input_dim: int = 10,
                        num_samples: int = 512) -> Callable[[int, int], Setup]:
    """MLP regression on a random tanh teacher (MSE)."""

    def make(seed: int, steps: int) -> Setup:
        x, y = teacher_student(num_samples=num_samples, input_dim=input_dim, depth=teacher_depth, seed=seed)
        net = mlp(input_dim, hidden, 1, activation, init_scale=init_scale)
        return Setup(Task(net, "mse", _with_total(optim, steps)), loader(x, y, batch, steps), (x, y))

    return make


def _collapse_ratio(x: torch.Tensor, y: torch.Tensor) -> Signal:
    """``(L_trivial − L)/L_trivial`` on the full training set; every parameter is decayed (one param group,
    SGD), and with all of them zeroed the output is 0, so ``L_trivial = mean(y²)``."""
    l_triv = float((y ** 2).mean())

    def signal(module: nn.Module) -> float:
        loss = float(nn.functional.mse_loss(module(x), y))
        return (l_triv - loss) / l_triv

    return signal


def deep_linear(ramp: float | None, ramp_start: int = 300, lr: float = 0.1) -> Callable[[int, int], Setup]:
    """Two-hidden-layer linear net (4-8-8-1, no biases) on a whitened linear teacher (as in
    ``examples/weight_decay_guard.py``): the collapse threshold is known in closed form,
    ``wd_c = 2 β_c`` with ``β_c = (‖E[xy]‖/2)^{4/3}``; an up-sweep collapses near the spinodal
    ``≈ 1.19 wd_c``. Weight decay starts at ``wd_c / 10``; with ``ramp`` it is multiplied by ``ramp``
    per step from ``ramp_start`` on."""

    def make(seed: int, steps: int) -> Setup:
        from lightning_landscape.l2.closed_form import deep_linear_spinodal, cross_moment_norm, linear_critical_beta, whiten
        from lightning_landscape.tasks import make_teacher_student

        x, y = make_teacher_student(num_samples=256, input_dim=4, teacher_width=4, activation="linear", noise=0.1,
                                    seed=seed)
        x = whiten(x)
        wd_c = 2 * linear_critical_beta(x, y, hidden_layers=2)
        wd_sp = 2 * deep_linear_spinodal(cross_moment_norm(x, y), hidden_layers=2)
        net = mlp(4, (8, 8), 1, "linear", bias=False)
        callbacks: list[L.Callback] = [WeightDecayRamp(ramp, ramp_start)] if ramp else []
        info = {"wd_c": wd_c, "wd_sp": wd_sp}
        if ramp:
            info["predicted_collapse_step"] = ramp_start + math.log(wd_sp / (wd_c / 10)) / math.log(ramp)
            info["onset_step"] = float(ramp_start)
        return Setup(Task(net, "mse", Optim("sgd", lr=lr, weight_decay=wd_c / 10)), loader(x, y, None, steps),
                     (x, y), callbacks, _collapse_ratio(x, y), info)

    return make


def tanh_mlp_ramp(wd: float, ramp: float, ramp_start: int, batch: int = 64) -> Callable[[int, int], Setup]:
    """Teacher-student tanh MLP 10-32-1, SGD lr 0.05 (weight decay on every parameter, biases included),
    weight decay multiplied by ``ramp`` per step from ``ramp_start``: one hidden layer, so the collapse is
    continuous (the fit degrades smoothly) rather than the deep linear net's jump."""

    def make(seed: int, steps: int) -> Setup:
        x, y = teacher_student(num_samples=512, input_dim=10, seed=seed)
        net = mlp(10, (32,), 1, "tanh")
        return Setup(Task(net, "mse", Optim("sgd", lr=0.05, weight_decay=wd)), loader(x, y, batch, steps), (x, y),
                     [WeightDecayRamp(ramp, ramp_start)], _collapse_ratio(x, y), {"onset_step": float(ramp_start)})

    return make


#: (model seed, data seed) of the channel-toy runs: model seeds that enter a channel with lr 0.25
#: (``lightning_landscape.neurons.toy.CHANNEL_SEEDS``), and seed 0 again on a second data draw.
CHANNEL_RUNS = {0: (0, 0), 1: (2, 0), 2: (4, 0), 3: (5, 0), 4: (0, 1)}
TOY_LR = 0.25
TOY_PRETRAIN = 5000


def channel_toy() -> Callable[[int, int], Setup]:
    """Martinelli et al.'s two-erf-neuron toy, full-batch GD lr 0.25: ``TOY_PRETRAIN`` closed-form GD
    steps walk into the channel's mouth (unmonitored, identical in every variant), then Lightning
    continues with plain SGD; the ground-truth signal is the output weights' ``max|a|``."""

    def make(seed: int, steps: int) -> Setup:
        from lightning_landscape.neurons.toy import channel_toy_data, channel_toy_model, train_toy_gd

        model_seed, data_seed = CHANNEL_RUNS[seed]
        x, y = channel_toy_data(num_samples=1024, seed=data_seed, dtype=torch.float32)
        net = channel_toy_model(seed=model_seed, dtype=torch.float32)
        train_toy_gd(net, x, y, TOY_LR, TOY_PRETRAIN)

        def max_abs_a(module: nn.Module) -> float:
            return float(module.net[2].weight.abs().max())

        return Setup(Task(net, "mse", Optim("sgd", lr=TOY_LR)), loader(x, y, None, steps), (x, y), signal=max_abs_a,
                     info={"model_seed": model_seed, "data_seed": data_seed})

    return make


def _scenarios() -> dict[str, Scenario]:
    S = Scenario
    acc = ("acc", 0.95)
    items = [
        # ---------------------------------------------------------------- healthy
        S("mlp_sgd", "healthy", "digits MLP 64-64-10 relu, SGD lr 0.1, batch 64",
          digits_mlp(Optim("sgd", lr=0.1)), 2000, 1000, True, acc, cost_ms=4),
        S("mlp_sgd_mom_cos", "healthy", "digits MLP 64-64-10, SGD lr 0.05 momentum 0.9 + cosine, batch 64",
          digits_mlp(Optim("sgd", lr=0.05, momentum=0.9, cosine=True)), 2000, 0, True, acc, cost_ms=4),
        S("mlp_adam", "healthy", "digits MLP 64-128-64-10 relu, Adam lr 1e-3, batch 64",
          digits_mlp(Optim("adam", lr=1e-3), hidden=(128, 64)), 2000, 0, True, acc, cost_ms=5),
        S("mlp_adamw_dropout", "healthy", "digits MLP 64-128-10, dropout 0.2, AdamW lr 2e-3 wd 0.01, batch 64",
          digits_mlp(Optim("adamw", lr=2e-3, weight_decay=0.01), hidden=(128,), dropout=0.2), 2000, 0, True, acc,
          cost_ms=5),
        S("mlp_gd_eos", "healthy", "digits MLP 64-64-10 tanh, square loss on one-hot targets, full-batch GD lr 2.0: "
          "at the edge of stability (λmax·lr/2 ≈ 1) from step ~250 on, loss still falling (normal)",
          digits_mlp(Optim("sgd", lr=2.0), batch=None, activation="tanh", loss="mse_onehot"), 2000, 0, True, acc,
          cost_ms=5),
        S("cnn_bn_sgd_mom", "healthy", "digits ResNet (8 ch, 2 blocks, BN), SGD lr 0.05 momentum 0.9 wd 5e-4, batch 32",
          digits_cnn(Optim("sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)), 1500, 600, True, acc, cost_ms=10),
        S("cnn_bn_adamw_cos", "healthy", "digits ResNet (BN), AdamW lr 3e-3 wd 0.05, warm-up 100 + cosine, batch 32",
          digits_cnn(Optim("adamw", lr=3e-3, weight_decay=0.05, warmup=100, cosine=True)), 1500, 0, True, acc,
          cost_ms=10),
        S("tf_adam_warmup", "healthy", "Transformer (2 layers, d 32, GELU, dropout 0.1) majority token, Adam lr 1e-3 "
          "wd 0.01 + warm-up 100, batch 32", tokens_transformer(Optim("adam", lr=1e-3, weight_decay=0.01, warmup=100)),
          1500, 600, True, ("acc", 0.9), cost_ms=20),
        S("tf_adamw_cos", "healthy", "Transformer (1 layer) majority token, AdamW lr 2e-3 wd 0.01 + cosine, batch 32",
          tokens_transformer(Optim("adamw", lr=2e-3, weight_decay=0.01, cosine=True), layers=1), 1500, 0, True,
          ("acc", 0.9), cost_ms=12),
        S("deep_linear_low_wd", "healthy", "2-hidden-layer linear net, whitened linear teacher, SGD lr 0.1, "
          "wd = wd_c / 10 (well below the collapse threshold)", deep_linear(None), 2000, 0, True, ("loss_ratio", 0.3),
          cost_ms=3),
        S("ts_tanh_sgd", "healthy", "teacher-student tanh MLP 10-32-1, plain SGD lr 0.05, batch 64",
          teacher_student_mlp(Optim("sgd", lr=0.05), (32,), batch=64), 2000, 0, True, ("loss_ratio", 0.2), cost_ms=4),
        # ---------------------------------------------------------------- failures
        S("lr_div_mlp", "lr_divergence", "digits MLP 64-64-10, label smoothing 0.1, SGD lr 0.01 momentum 0.9 wd 5e-4, "
          "lr x1.004/step from step 1000, batch 64",
          digits_mlp(Optim("sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, lr_growth=1.004, growth_start=1000),
                     label_smoothing=0.1), 3000, 3000, cost_ms=4, stop_margin=20),
        S("lr_div_cnn", "lr_divergence", "digits ResNet (BN), plain SGD lr 0.02 wd 5e-4, lr x1.004/step from step 1000, "
          "batch 32", digits_cnn(Optim("sgd", lr=0.02, weight_decay=5e-4, lr_growth=1.004, growth_start=1000)), 3000, 0,
          cost_ms=10, stop_margin=20, n_seeds=3),
        S("adam_spike_tf", "adam_spike", "Transformer (2 layers, post-LN) majority token, Adam lr 3e-2, no warm-up, batch 128",
          tokens_transformer(Optim("adam", lr=3e-2), batch=128), 800, 800, cost_ms=45, stop_margin=20, quick_seed=1),
        S("l2_collapse_deep_linear", "l2_collapse", "2-hidden-layer linear net, wd from wd_c/10 x1.002/step from step 300",
          deep_linear(1.002), 2000, 2000, controller=True, cost_ms=3),
        S("l2_collapse_mlp", "l2_collapse", "teacher-student tanh MLP 10-32-1, SGD lr 0.05, batch 64, wd from 0.01 "
          "x1.0025/step from step 300 (continuous collapse)", tanh_mlp_ramp(0.01, 1.0025, 300), 3000, 0,
          controller=True, cost_ms=5, n_seeds=3),
        S("channel_toy", "channel", "channel toy (2 erf neurons), full-batch GD lr 0.25 after 5000 plain GD steps",
          channel_toy(), 3000, 3000, controller=True, seeds=tuple(CHANNEL_RUNS), cost_ms=3),
        S("saddle_deep_tanh", "saddle_plateau", "teacher-student, 3-hidden-layer tanh net 10-16-16-16-1 from a small "
          "initialisation (x0.1), full-batch GD lr 0.05",
          teacher_student_mlp(Optim("sgd", lr=0.05), (16, 16, 16), init_scale=0.1), 3000, 0, cost_ms=5),
    ]
    return {s.name: s for s in items}


SCENARIOS: dict[str, Scenario] = _scenarios()


# ----------------------------------------------------------------------------- one run
@dataclass
class RunResult:
    """What one variant produced (JSON-friendly via :meth:`to_dict`)."""

    variant: str
    loss: list[float]
    signal: list[float]
    wd: list[float]
    lr: list[float]
    events: list[dict[str, Any]]
    final_loss: float
    final_acc: float | None
    fit_seconds: float
    probe_seconds: float
    overhead: float
    warnings: list[str]
    failed_at: int | None
    info: dict[str, float]
    measured: dict[str, dict[str, float]] = field(default_factory=dict)
    measurement_rows: list[dict[str, float]] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.loss)


def _quiet_lightning() -> None:
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_variant(scn: Scenario, seed: int, steps: int, variant: str, stop: Criterion | None = None,
                stop_margin: int = 0) -> RunResult:
    """Build the scenario from ``seed`` and train ``steps`` steps; ``variant`` in reference / monitored /
    controlled. The global RNG is re-seeded right before ``fit`` so the three variants start training from
    the same state whatever building the monitor did."""
    torch.manual_seed(seed)
    setup = scn.make(seed, steps)
    monitor = None if variant == "reference" else build_monitor(controller=variant == "controlled")
    trace = Trace(setup.signal, stop, stop_margin)
    measured = Measurements(monitor) if monitor is not None else None
    callbacks = [*setup.callbacks, trace] + ([monitor, measured] if monitor is not None else [])
    torch.manual_seed(10_000 + seed)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(steps, callbacks).fit(setup.module, setup.train)
    fit_seconds = time.perf_counter() - started
    final_loss, final_acc = setup.module.evaluate(*setup.eval_xy)
    notes = sorted({f"{w.category.__name__}: {str(w.message)[:300]}" for w in caught
                    if "lightning_landscape" in (w.filename or "") or "Landscape" in w.category.__name__})
    events: list[dict[str, Any]] = []
    probe_seconds, overhead = 0.0, math.nan
    if monitor is not None:
        events = [{"rule": e.rule, "step": int(e.step), "key": e.key, "severity": e.severity, "message": e.message}
                  for e in monitor.alerts.history]
        probe_seconds = float(monitor.probe_seconds)
        train = fit_seconds - probe_seconds
        overhead = probe_seconds / train if train > 0 else math.nan
    return RunResult(variant, trace.loss, trace.signal, trace.wd, trace.lr, events, final_loss, final_acc,
                     fit_seconds, probe_seconds, overhead, notes, trace.failed_at, dict(setup.info),
                     measured.summary() if measured else {}, measured.rows if measured else [])


# ----------------------------------------------------------------------------- ground truth
def ground_truth(scn: Scenario, ref: RunResult) -> dict[str, Any]:
    """The failure (or plateau) of the reference run; ``failure_step`` None when it did not fail."""
    gt: dict[str, Any] = {"failure_step": None}
    if scn.kind == "healthy":
        return gt
    if scn.kind in ("lr_divergence", "adam_spike", "l2_collapse"):
        gt["failure_step"] = scn.criterion().first(ref.loss, ref.signal)
    elif scn.kind == "channel":
        at = max(int(0.6 * ref.steps) - 1, 0)
        gt["bound"] = ref.signal[at]
        gt["failure_step"] = Above(gt["bound"]).first(ref.loss, ref.signal)
        gt["max_abs_a_start"], gt["max_abs_a_end"] = ref.signal[0], ref.signal[-1]
    elif scn.kind == "saddle_plateau":
        start, escape, level = plateau(ref.loss)
        gt.update(plateau_start=start, escape_step=escape, plateau_level=level, failure_step=escape)
    if scn.kind == "l2_collapse" and gt["failure_step"]:
        gt["wd_at_failure"] = ref.wd[gt["failure_step"] - 1]
        if "wd_c" in ref.info:
            gt["wd_at_failure_over_wd_c"] = gt["wd_at_failure"] / ref.info["wd_c"]
    return gt


def failure_in(scn: Scenario, run: RunResult, gt: dict[str, Any]) -> int | None:
    """The same criterion as the ground truth, on another run (the controlled one)."""
    if scn.kind == "channel":
        return Above(gt["bound"]).first(run.loss, run.signal)
    if scn.kind == "saddle_plateau":
        return plateau(run.loss)[1]
    crit = scn.criterion()
    return crit.first(run.loss, run.signal) if crit is not None else None


def compare(a: Sequence[float], b: Sequence[float], upto: int | None = None) -> dict[str, Any]:
    """Are two loss curves identical (bit for bit) over their common steps (or the first ``upto``)?"""
    n = min(len(a), len(b)) if upto is None else min(len(a), len(b), upto)
    first, worst = None, 0.0
    for i in range(n):
        x, y = a[i], b[i]
        same = x == y or (math.isnan(x) and math.isnan(y))
        if not same:
            first = i + 1 if first is None else first
            d = abs(x - y) / max(abs(x), 1e-12) if math.isfinite(x) and math.isfinite(y) else math.inf
            worst = max(worst, d)
    return {"compared_steps": n, "identical": first is None, "first_difference_step": first,
            "max_relative_difference": worst}


def _summary(run: RunResult, keep_curves: bool) -> dict[str, Any]:
    d = {"steps": run.steps, "final_loss": run.final_loss, "final_acc": run.final_acc,
         "final_train_loss_last50": statistics.fmean(x for x in run.loss[-50:] if math.isfinite(x))
         if any(math.isfinite(x) for x in run.loss[-50:]) else math.nan,
         "first_loss": run.loss[0] if run.loss else math.nan,
         "fit_seconds": run.fit_seconds, "probe_seconds": run.probe_seconds, "overhead": run.overhead,
         "warnings": run.warnings, "final_wd": run.wd[-1] if run.wd else None}
    if run.measured:
        d["measured"] = run.measured
    if keep_curves:
        d["measurements"] = run.measurement_rows
        d["loss"] = run.loss
        if run.signal:
            d["signal"] = run.signal
    return d


def _trained(scn: Scenario, ref: RunResult) -> bool | None:
    if scn.target is None:
        return None
    what, value = scn.target
    if what == "acc":
        return ref.final_acc is not None and ref.final_acc >= value
    return math.isfinite(ref.final_loss) and ref.final_loss <= value * ref.loss[0]


def run_job(name: str, seed: int, quick: bool = False, keep_curves: bool = False) -> dict[str, Any]:
    """All variants of one scenario at one seed, with ground truth and comparisons (JSON-friendly)."""
    torch.set_num_threads(1)
    _quiet_lightning()
    scn = SCENARIOS[name]
    steps = scn.quick_steps if quick and scn.quick_steps else scn.steps
    started = time.perf_counter()
    stop = scn.criterion() if scn.stop_margin is not None else None
    ref = run_variant(scn, seed, steps, "reference", stop, scn.stop_margin or 0)
    gt = ground_truth(scn, ref)
    mon = run_variant(scn, seed, ref.steps, "monitored")
    out: dict[str, Any] = {
        "scenario": name, "kind": scn.kind, "seed": seed, "description": scn.description, "steps": steps,
        "info": ref.info, "ground_truth": gt, "trained_ok": _trained(scn, ref),
        "alerts": [e for e in mon.events if e["rule"] != CONTROLLER_RULE],
        "monitored_vs_reference": compare(ref.loss, mon.loss),
        "reference": _summary(ref, keep_curves), "monitored": _summary(mon, keep_curves),
        "overhead": mon.overhead,
    }
    if scn.controller:
        ctl = run_variant(scn, seed, steps, "controlled")
        actions = [e for e in ctl.events if e["rule"] == CONTROLLER_RULE]
        first_action = min((e["step"] for e in actions), default=None)
        out["controlled"] = {
            **_summary(ctl, keep_curves),
            "controller_actions": len(actions),
            "actions": actions[:20],
            "alerts": [e for e in ctl.events if e["rule"] != CONTROLLER_RULE],
            "failure_step": failure_in(scn, ctl, gt),
            "vs_reference_before_first_action": compare(ref.loss, ctl.loss,
                                                        None if first_action is None else first_action + 1),
        }
        out["controller_actions"] = len(actions)
    out["seconds"] = time.perf_counter() - started
    return out


def job_list(names: Sequence[str], quick: bool, seeds: int | None) -> list[tuple[str, int]]:
    """(scenario, seed) pairs, longest first (for load balancing in the pool)."""
    jobs = []
    for name in names:
        scn = SCENARIOS[name]
        if quick and not scn.quick_steps:
            continue
        if quick and seeds is None:
            jobs.append((name, scn.quick_seed))
            continue
        n = seeds if seeds is not None else (scn.n_seeds or (5 if scn.kind != "healthy" else 2))
        pool = scn.seeds or tuple(range(max(n, 1)))
        jobs += [(name, s) for s in pool[:n]]
    cost = {n: SCENARIOS[n].cost_ms * (SCENARIOS[n].quick_steps if quick else SCENARIOS[n].steps)
            * (3 if SCENARIOS[n].controller else 2) for n in names}
    return sorted(jobs, key=lambda j: -cost[j[0]])
