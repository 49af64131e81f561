"""Alerts and the weight-decay controller end to end, with the real probes.

**1. L2 collapse under a weight-decay ramp.** A two-hidden-layer linear net (no biases) learns a linear
teacher on whitened inputs, so the collapse threshold is known in closed form (``docs/l2_theory.md``):
``β_c = (‖E[xy]‖/2)^{4/3}`` (torch SGD ``wd_c = 2β_c``), and an up-sweep collapses at the spinodal
``β_sp ≈ 1.19 β_c``. After ``RAMP_START`` steps at ``wd_c/10`` the weight decay is multiplied by
``RAMP_FACTOR`` before every optimizer step. ``LandscapeMonitor`` runs ``L2Transition`` and an
``AlertManager`` with ``L2Threshold``:

* without the controller, ``l2_threshold`` (key ``margin``) fires while the model still fits
  (collapse ratio ≈ 1) and the collapse follows tens of steps later (collapse ratio → 0; the rule's
  ``collapse`` signal fires then);
* with ``WeightDecayController`` the same ramp keeps pushing, but the controller lowers the weight decay
  whenever the margin falls below ``target_margin``: training ends with the model intact.

*Who wins when two things write weight_decay.* The ramp is multiplicative on the **current** value of
``param_group["weight_decay"]`` (like ``torch.optim.lr_scheduler.MultiplicativeLR`` for the learning
rate), so every value the controller writes becomes the ramp's new base: the controller's decision
persists, and the ramp only adds a factor ``RAMP_FACTOR ** every_n_steps`` (+6 %) between two
measurements. The weight decay then saw-tooths between ``wd_c / target_margin`` and 6 % above it (the
controller acts at each measurement, ``cooldown_steps <= every_n_steps``). A schedule that writes *absolute* values (``wd0 · g^t``) would
overwrite the controller at the next step and defeat it: ramp ``initial_weight_decay``-style schedules
only with a cap (e.g. ``min(schedule, controller's value)``).

**2. The channel toy (Martinelli et al. 2025, Fig. 6).** Two erf neurons, full-batch GD (lr 0.25),
seed 0 enters a channel to infinity: ``w₁ − w₂ → 0`` while ``a₁ → −∞``, ``a₂ → +∞``. The run starts
from the seed-0 trajectory after ``TOY_PRETRAIN`` plain GD steps (the channel is slow to build up) and
continues under the monitor with ``ChannelDetector`` (every 100 steps: its 8-measurement window must
see ε shrink by 2 %). The detector announces a channel once (again only after it was lost), so the
controller raises once per entry: from 0 to ``raise_from_zero`` (a non-zero weight decay is multiplied
by ``raise_factor``, capped by ``max_wd`` and, when an L2 margin is measured, by ``target_margin``).
With it the output weights shrink and ε grows back (the channel closes); without it ``max|a|`` keeps
growing.

    python examples/weight_decay_guard.py          # ~30 s on one CPU core; writes docs/*.png
    python examples/weight_decay_guard.py --no-plot
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_landscape._compat import FLAVOURS
from lightning_landscape.alerts import AlertManager, ChannelEntry, Event, L2Threshold
from lightning_landscape.callbacks import LandscapeMonitor
from lightning_landscape.control import WeightDecayController
from lightning_landscape.l2.closed_form import cross_moment_norm, deep_linear_spinodal, linear_critical_beta, whiten
from lightning_landscape.neurons.toy import channel_toy_data, channel_toy_model, train_toy_gd
from lightning_landscape.probes import L2Transition
from lightning_landscape.probes.neurons import ChannelDetector
from lightning_landscape.tasks import MLPTask, make_teacher_student

L = FLAVOURS[0]

# ----------------------------------------------------------------------------- part 1: the L2 ramp
RAMP_START = 100  # steps at wd_c / 10 before the ramp (the net learns the teacher)
RAMP_FACTOR = 1.006  # weight decay multiplier per optimizer step
RAMP_STEPS = 600  # total optimizer steps
RAMP_EVERY = 10  # L2Transition every this many steps
LR = 0.1

# ----------------------------------------------------------------------------- part 2: the channel toy
TOY_LR = 0.25
TOY_PRETRAIN = 5000  # plain GD steps on the seed-0 trajectory before the monitored run
TOY_STEPS = 2000  # monitored steps (the channel is announced at step 500)
TOY_EVERY = 100  # ChannelDetector every this many steps (its window, 8 measurements, must see ε shrink by 2 %)


class FullBatch(torch.utils.data.Dataset):
    """The same full batch at every step (full-batch GD in one Lightning epoch)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, length: int) -> None:
        self.x, self.y, self.length = x, y, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y


def full_batch_loader(x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(FullBatch(x, y, steps), batch_size=None)


class WeightDecayRamp(L.Callback):
    """From step ``start`` on, multiply every param group's *current* ``weight_decay`` by ``factor``
    before each optimizer step (the controller's edits become the new base)."""

    def __init__(self, factor: float, start: int = 0) -> None:
        self.factor, self.start = factor, start

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= self.start:
            for group in trainer.optimizers[0].param_groups:
                group["weight_decay"] *= self.factor


class Recorder(L.Callback):
    """One row of the monitor's values (plus the optimizer's weight decay) per measurement."""

    def __init__(self, monitor: LandscapeMonitor, extra: Any = None) -> None:
        self.monitor, self.extra, self.rows, self._seen = monitor, extra, [], 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.monitor.num_measurements > self._seen:
            self._seen = self.monitor.num_measurements
            row = {"step": int(trainer.global_step), **self.monitor.last_values,
                   "wd": float(trainer.optimizers[0].param_groups[0]["weight_decay"])}
            if self.extra is not None:
                row.update(self.extra(pl_module))
            self.rows.append(row)


@dataclass
class Run:
    """What a run produced: one row per measurement, the events (fired alerts and controller changes)."""

    rows: list[dict[str, float]]
    events: list[Event]
    info: dict[str, float] = field(default_factory=dict)

    def series(self, key: str) -> list[float]:
        return [r.get(key, math.nan) for r in self.rows]

    def steps(self) -> list[int]:
        return [int(r["step"]) for r in self.rows]

    def first(self, rule: str, key: str | None = None) -> int | None:
        steps = [e.step for e in self.events if e.rule == rule and (key is None or e.key == key)]
        return min(steps) if steps else None


def _trainer(max_steps: int, callbacks: list) -> Any:
    return L.Trainer(max_steps=max_steps, callbacks=callbacks, accelerator="cpu", devices=1, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)


def ramp_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Linear teacher, whitened inputs; returns ``(x, y, thresholds)`` in torch ``weight_decay`` units."""
    x, y = make_teacher_student(num_samples=256, input_dim=4, teacher_width=4, activation="linear", noise=0.1,
                                seed=seed)
    x = whiten(x)
    beta_c = linear_critical_beta(x, y, hidden_layers=2)
    beta_sp = deep_linear_spinodal(cross_moment_norm(x, y), hidden_layers=2)
    return x, y, {"wd_c": 2 * beta_c, "wd_sp": 2 * beta_sp}


def ramp_run(controller: bool, steps: int = RAMP_STEPS, seed: int = 0) -> Run:
    """Part 1: the weight-decay ramp, with or without :class:`WeightDecayController`."""
    x, y, info = ramp_data(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MLPTask(input_dim=4, hidden=(8, 8), activation="linear", bias=False, lr=LR, momentum=0.0,
                        weight_decay=info["wd_c"] / 10)
    # margin = critical β (ray estimate) / current β; fire at 1.5 (k=2), after the net has learnt something
    alerts = AlertManager(rules=[L2Threshold(margin_below=1.5, k=2, warmup_steps=RAMP_START)], sinks=[],
                          history_size=10_000)
    ctrl = WeightDecayController(target_margin=2.0, lower_factor=0.5, cooldown_steps=RAMP_EVERY,
                                 max_wd=10 * info["wd_c"]) if controller else None
    # measure_first_step=False: at initialisation the ray already prefers the collapse (margin < 1 on random
    # weights), and the controller has no warm-up of its own
    monitor = LandscapeMonitor(probes=[L2Transition(every_n_steps=RAMP_EVERY, per_layer=False)], alerts=alerts,
                               weight_decay=ctrl, measure_first_step=False)
    recorder = Recorder(monitor)
    _trainer(steps, [WeightDecayRamp(RAMP_FACTOR, start=RAMP_START), monitor, recorder]).fit(
        model, full_batch_loader(x, y, steps))
    return Run(recorder.rows, list(alerts.history), info)


def collapse_step(run: Run, fraction: float = 0.1) -> int | None:
    """First measured step whose collapse ratio is below ``fraction`` of the best one so far."""
    best = -math.inf
    for r in run.rows:
        c = r.get("landscape/l2/collapse_ratio", math.nan)
        if math.isfinite(c):
            best = max(best, c)
            if best > 0.5 and c < fraction * best:
                return int(r["step"])
    return None


# ----------------------------------------------------------------------------- part 2: the channel toy
class ToyTask(L.LightningModule):
    """The channel toy as a LightningModule: full-batch GD (plain SGD) on the mean squared error."""

    def __init__(self, net: torch.nn.Module, lr: float = TOY_LR) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return ((self.net(x) - y) ** 2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, weight_decay=0.0)


def _toy_state(module: ToyTask) -> dict[str, float]:
    a = module.net[2].weight.detach().flatten()
    w = module.net[0].weight.detach().flatten()
    return {"a1": float(a[0]), "a2": float(a[1]), "max_abs_a": float(a.abs().max()),
            "eps": float((w[0] - w[1]).abs() / 2)}


def toy_run(controller: bool, steps: int = TOY_STEPS, pretrain: int = TOY_PRETRAIN, num_samples: int = 1024) -> Run:
    """Part 2: the channel toy (seed 0) under the monitor, with or without the controller (float32)."""
    x, y = channel_toy_data(num_samples=num_samples, dtype=torch.float32)
    net = channel_toy_model(seed=0, dtype=torch.float32)
    train_toy_gd(net, x, y, TOY_LR, pretrain)  # closed-form GD, fast: walk into the channel's mouth
    module = ToyTask(net)
    start = _toy_state(module)
    alerts = AlertManager(rules=[ChannelEntry(cooldown_steps=10 * TOY_EVERY)], sinks=[], history_size=10_000)
    ctrl = WeightDecayController(raise_factor=2.0, raise_from_zero=1e-3, max_wd=1e-2,
                                 cooldown_steps=4 * TOY_EVERY) if controller else None
    detector = ChannelDetector(every_n_steps=TOY_EVERY)
    monitor = LandscapeMonitor(probes=[detector], alerts=alerts, weight_decay=ctrl)
    recorder = Recorder(monitor, extra=_toy_state)
    _trainer(steps, [monitor, recorder]).fit(module, full_batch_loader(x, y, steps))
    return Run(recorder.rows, list(alerts.history), {**{f"start_{k}": v for k, v in start.items()},
                                                     **{f"end_{k}": v for k, v in _toy_state(module).items()}})


# ----------------------------------------------------------------------------- reporting
def _fmt(v: float | None, spec: str = ".4g") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def ramp_table(plain: Run, guarded: Run) -> str:
    info = plain.info
    wd_c = info["wd_c"]
    lines = [f"closed form: wd_c = 2β_c = {wd_c:.4f}, up-sweep spinodal wd_sp = {info['wd_sp']:.4f} "
             f"({info['wd_sp'] / wd_c:.2f} wd_c); weight decay below in units of wd_c",
             f"{'run':<14}{'alert':>7}{'ratio':>7}{'wd':>6}{'collapse':>10}{'wd':>6}{'final ratio':>13}"
             f"{'final wd':>10}{'min margin':>12}{'wd changes':>12}"]
    for name, run in (("ramp only", plain), ("+ controller", guarded)):
        fire, col = run.first("l2_threshold", "margin"), collapse_step(run)
        at = lambda step: [r for r in run.rows if r["step"] <= step][-1]  # noqa: E731 - alerts fire between measurements
        ratio_fire = at(fire)["landscape/l2/collapse_ratio"] if fire else None
        wd_fire = at(fire)["wd"] / wd_c if fire else None
        wd_col = at(col)["wd"] / wd_c if col else None
        margins = [m for m in run.series("landscape/l2/margin") if math.isfinite(m)]
        changes = sum(e.rule == "weight_decay" for e in run.events)
        lines.append(f"{name:<14}{_fmt(fire):>7}{_fmt(ratio_fire, '.3f'):>7}{_fmt(wd_fire, '.2f'):>6}{_fmt(col):>10}"
                     f"{_fmt(wd_col, '.2f'):>6}{run.rows[-1]['landscape/l2/collapse_ratio']:>13.3f}"
                     f"{run.rows[-1]['wd'] / wd_c:>10.3f}{min(margins):>12.3f}{changes:>12}")
    return "\n".join(lines)


def toy_table(plain: Run, guarded: Run) -> str:
    lines = [f"{'run':<16}{'channel_entry':>14}{'max|a| start':>14}{'max|a| end':>12}{'ε start':>9}{'ε end':>9}"
             f"{'final wd':>10}{'wd raises':>11}"]
    for name, run in (("no controller", plain), ("+ controller", guarded)):
        i = run.info
        raises = sum(e.rule == "weight_decay" for e in run.events)
        lines.append(f"{name:<16}{_fmt(run.first('channel_entry')):>14}{i['start_max_abs_a']:>14.3f}"
                     f"{i['end_max_abs_a']:>12.3f}{i['start_eps']:>9.4f}{i['end_eps']:>9.4f}"
                     f"{run.rows[-1]['wd']:>10.2g}{raises:>11}")
    return "\n".join(lines)


def plot_ramp(plain: Run, guarded: Run, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wd_c = plain.info["wd_c"]
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    for run, label, color in ((plain, "ramp only", "tab:red"),
                              (guarded, "ramp + controller (values at each decision)", "tab:blue")):
        s = run.steps()
        ax[0].plot(s, run.series("landscape/l2/margin"), color=color, label=label)
        ax[1].plot(s, run.series("landscape/l2/collapse_ratio"), color=color, label=label)
        ax[2].plot(s, [r["wd"] / wd_c for r in run.rows], color=color, label=label)
        fire = run.first("l2_threshold", "margin")
        if fire is not None:
            for a in ax:
                a.axvline(fire, color=color, ls=":", lw=1.2)
    ax[0].axhline(1.5, color="grey", ls="--", lw=1, label="alert level 1.5")
    ax[0].axhline(2.0, color="grey", ls="-.", lw=1, label="controller target 2")
    ax[0].set_yscale("log")
    ax[2].axhline(plain.info["wd_sp"] / wd_c, color="grey", ls="--", lw=1, label="spinodal (up-sweep collapse)")
    ax[2].axhline(1.0, color="black", ls=":", lw=1, label="critical wd_c")
    ax[2].set_yscale("log")
    for a, t in zip(ax, ["L2 margin (critical β / β)", "collapse ratio (1 fit, 0 collapsed)",
                         "weight decay / wd_c (closed form)"]):
        a.set_title(t)
        a.set_xlabel("step")
        a.legend(fontsize=8, loc="lower right" if a is ax[2] else "best")
    fig.suptitle("Weight decay ramped ×%.3f per step: l2_threshold (dotted) fires before the collapse; "
                 "the controller prevents it" % RAMP_FACTOR)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_toy(plain: Run, guarded: Run, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    for run, label, color in ((plain, "no controller", "tab:red"), (guarded, "controller", "tab:blue")):
        s = [TOY_PRETRAIN + t for t in run.steps()]
        ax[0].plot(s, run.series("max_abs_a"), color=color, label=label)
        ax[1].plot(s, run.series("eps"), color=color, label=label)
        ax[2].plot(s, run.series("wd"), color=color, label=label, drawstyle="steps-post")
        entry = run.first("channel_entry")
        if entry is not None:
            for a in ax:
                a.axvline(TOY_PRETRAIN + entry, color=color, ls=":", lw=1.2)
    for a, t in zip(ax, ["max |a| (output weights)", "ε = |w₁ − w₂| / 2", "weight decay"]):
        a.set_title(t)
        a.set_xlabel(f"GD step (first {TOY_PRETRAIN} unmonitored)")
        a.legend(fontsize=8)
    fig.suptitle("Channel toy (Martinelli et al.): channel_entry (dotted) raises weight decay; "
                 "output weights stay bounded")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "..", "docs"))
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    plain, guarded = ramp_run(controller=False), ramp_run(controller=True)
    print("== 1. weight-decay ramp on a 2-hidden-layer linear net ==")
    print(ramp_table(plain, guarded))
    toy_plain, toy_guarded = toy_run(controller=False), toy_run(controller=True)
    print("\n== 2. channel toy (seed 0), %d monitored GD steps after %d plain ones ==" % (TOY_STEPS, TOY_PRETRAIN))
    print(toy_table(toy_plain, toy_guarded))
    if not args.no_plot:
        os.makedirs(args.out_dir, exist_ok=True)
        for fn, runs, name in ((plot_ramp, (plain, guarded), "weight_decay_guard.png"),
                               (plot_toy, (toy_plain, toy_guarded), "channel_guard.png")):
            path = os.path.normpath(os.path.join(args.out_dir, name))
            fn(*runs, path)
            print(f"plot written to {path}")


if __name__ == "__main__":
    main()
