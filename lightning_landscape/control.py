"""Adjust the optimizer's weight decay from what the probes and rules see.

Two opposite pressures, with collapse avoidance winning:

* **raise** on a ``channel_entry`` event (neuron pairs diverging to infinity): multiply the weight
  decay by ``raise_factor`` (L2 bounds the output weights and closes the channel), but never so far
  that the predicted L2 margin drops below ``target_margin``;
* **lower** when ``landscape/l2/margin`` (critical β / current β, ``docs/l2_theory.md``) is below
  ``target_margin``: the margin scales like 1/β, so ``wd_new = wd · margin / target`` restores it,
  bounded per change by ``lower_factor``.

Every change respects ``cooldown_steps`` (per param group) and the absolute limits
``[min_wd, max_wd]``, is written to ``optimizer.param_groups[i]["weight_decay"]`` (the original value
kept once in ``"initial_weight_decay"``), and is returned as an :class:`~lightning_landscape.alerts.Event`
(rule ``"weight_decay"``). The applied value is reported as ``landscape/l2/weight_decay``.

Convention: the controller edits the optimizer's ``weight_decay`` as the optimizer defines it (SGD/Adam:
gradient term ``wd·θ``, i.e. penalty β‖θ‖² with ``wd = 2β``; AdamW: decoupled decay ``lr·wd·θ``). The
margin is a ratio, so the relative update ``wd · margin/target`` is the same in either convention.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from lightning_landscape.alerts.events import Event, as_event
from lightning_landscape.alerts.runbook import runbook_action


def _num(name: str, value: Any, low: float, strict: bool, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"WeightDecayController.{name} must be a finite number, got {value!r}")
    value = float(value)
    if (value <= low) if strict else (value < low):
        raise ValueError(f"WeightDecayController.{name} must be {'>' if strict else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"WeightDecayController.{name} must be <= {high}, got {value}")
    return value


class WeightDecayController:
    """Raise weight decay on channel entry, lower it when the L2 margin gets thin.

    Args:
        raise_factor: multiply weight decay by this (> 1) on a trigger event.
        lower_factor: the most one lowering may divide by, as a factor in (0, 1] (0.5: at most halve).
        target_margin: L2 margin (critical β over current β, > 1) to keep; below it weight decay is
            lowered to ``wd · margin / target_margin``; raises are capped so the margin stays above it.
        min_wd: absolute lower limit of the weight decay the controller writes.
        max_wd: absolute upper limit.
        cooldown_steps: steps between two changes of the same param group.
        param_groups: indices of the param groups to control; ``None``: the groups whose weight decay
            is > 0 at the first call (all groups if none is).
        raise_from_zero: the value a raise starts from when a group's weight decay is 0.
        trigger_rules: event rules that trigger a raise.
        margin_tag: the tag of the L2 margin.
        warmup_steps: make no change before this optimizer step (the margin of a barely trained net, e.g.
            at initialisation, says nothing about the collapse threshold).

    Call :meth:`apply` on every rank with identical inputs (DDP) so the param groups stay identical.

    >>> net = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-3)
    >>> c = WeightDecayController(raise_factor=2.0, target_margin=2.0, max_wd=1e-2, cooldown_steps=10)
    >>> [e.values["new"] for e in c.apply(opt, 5, 0, {}, [Event("channel_entry", 5)])]
    [0.002]
    >>> c.apply(opt, 8, 0, {"landscape/l2/margin_tracked": 1.5}, [])  # cooling down
    []
    >>> [round(e.values["new"], 6) for e in c.apply(opt, 15, 0, {"landscape/l2/margin_tracked": 1.5}, [])]
    [0.0015]
    >>> opt.param_groups[0]["initial_weight_decay"], c.scalars()
    (0.001, {'landscape/l2/weight_decay': 0.0015})
    """

    def __init__(
        self,
        raise_factor: float = 2.0,
        lower_factor: float = 0.5,
        target_margin: float = 2.0,
        min_wd: float = 0.0,
        max_wd: float = 0.1,
        cooldown_steps: int = 100,
        param_groups: list[int] | None = None,
        raise_from_zero: float = 1e-4,
        trigger_rules: list[str] | None = None,
        margin_tag: str = "landscape/l2/margin_tracked",
        warmup_steps: int = 0,
    ) -> None:
        self.raise_factor = _num("raise_factor", raise_factor, 1.0, strict=True)
        self.lower_factor = _num("lower_factor", lower_factor, 0.0, strict=True, high=1.0)
        self.target_margin = _num("target_margin", target_margin, 1.0, strict=True)
        self.min_wd = _num("min_wd", min_wd, 0.0, strict=False)
        self.max_wd = _num("max_wd", max_wd, 0.0, strict=True)
        if self.max_wd < self.min_wd:
            raise ValueError(f"WeightDecayController.max_wd must be >= min_wd ({self.min_wd}), got {self.max_wd}")
        self.raise_from_zero = _num("raise_from_zero", raise_from_zero, 0.0, strict=True)
        if isinstance(cooldown_steps, bool) or not isinstance(cooldown_steps, int) or cooldown_steps < 0:
            raise ValueError(f"WeightDecayController.cooldown_steps must be an int >= 0, got {cooldown_steps!r}")
        self.cooldown_steps = cooldown_steps
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"WeightDecayController.warmup_steps must be an int >= 0, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps
        if param_groups is not None:
            if not isinstance(param_groups, (list, tuple)) or not param_groups or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in param_groups
            ):
                raise ValueError(
                    f"WeightDecayController.param_groups must be None or a non-empty list of group indices >= 0, "
                    f"got {param_groups!r}")
            param_groups = sorted(set(param_groups))
        self.param_groups = param_groups
        if trigger_rules is not None and (not isinstance(trigger_rules, (list, tuple)) or not all(
                isinstance(r, str) and r for r in trigger_rules)):
            raise ValueError(f"WeightDecayController.trigger_rules must be a list of rule or event names, "
                             f"got {trigger_rules!r}")
        self.trigger_rules = ["channel_entry"] if trigger_rules is None else list(trigger_rules)
        if not isinstance(margin_tag, str) or not margin_tag:
            raise ValueError(f"WeightDecayController.margin_tag must be a non-empty tag, got {margin_tag!r}")
        self.margin_tag = margin_tag
        # state
        self.groups: list[int] | None = None  # resolved indices
        self.current: dict[int, float] = {}  # group -> weight decay last written (or read)
        self.last_change: dict[int, int] = {}  # group -> step of the last change
        self.last_margin = math.nan
        self.num_raises = self.num_lowers = 0

    # ------------------------------------------------------------------ helpers
    def _resolve(self, optimizer: torch.optim.Optimizer, refresh: bool = True) -> list[int]:
        n = len(optimizer.param_groups)
        if self.groups is None:
            if self.param_groups is None:
                positive = [i for i, g in enumerate(optimizer.param_groups) if float(g.get("weight_decay", 0.0)) > 0]
                self.groups = positive or list(range(n))
            else:
                self.groups = list(self.param_groups)
        bad = [i for i in self.groups if i >= n]
        if bad:
            raise ValueError(
                f"WeightDecayController.param_groups: indices {bad} out of range, the optimizer has {n} param group(s)")
        for i in self.groups:
            g = optimizer.param_groups[i]
            g.setdefault("initial_weight_decay", float(g.get("weight_decay", 0.0)))
            if refresh or i not in self.current:  # the optimizer is the source of truth (schedules, resume)
                self.current[i] = float(g.get("weight_decay", 0.0))
        return self.groups

    def _cooling(self, group: int, step: int) -> bool:
        last = self.last_change.get(group)
        return last is not None and step - last < self.cooldown_steps

    # ------------------------------------------------------------------ the interface
    def apply(
        self,
        optimizer: torch.optim.Optimizer,
        step: int,
        epoch: int,
        scalars: Mapping[str, float],
        events: Sequence[Any] = (),
    ) -> list[Event]:
        """Decide and write; returns one ``weight_decay`` event per param group changed.

        Args:
            optimizer: the optimizer whose ``param_groups`` to edit.
            step: optimizer steps taken; epoch: current epoch.
            scalars: full tag -> value measured now (only ``margin_tag`` is read).
            events: events seen now (probe events or fired alerts); rules in ``trigger_rules`` raise.
        """
        groups = self._resolve(optimizer)
        if step < self.warmup_steps:
            return []
        margin = float(scalars.get(self.margin_tag, math.nan))
        if not (margin > 0 and math.isfinite(margin)):
            margin = math.nan  # no fresh finite margin (e.g. +inf without weight decay)
        else:
            self.last_margin = margin
        trigger = [e for e in (as_event(x, step, epoch) for x in events) if e.rule in self.trigger_rules]

        if not math.isnan(margin) and margin < self.target_margin:
            # collapse avoidance wins over a channel: margin ∝ 1/wd, so wd·margin/target restores it
            factor = max(margin / self.target_margin, self.lower_factor)
        elif trigger:
            factor = self.raise_factor
            if math.isfinite(self.last_margin):  # do not raise into the collapse zone
                factor = min(factor, self.last_margin / self.target_margin)
            if factor <= 1.0:
                return []
        else:
            return []

        out = []
        for i in groups:
            if self._cooling(i, step):
                continue
            g = optimizer.param_groups[i]
            old = float(g.get("weight_decay", 0.0))
            new = old * factor if old > 0 else (self.raise_from_zero if factor > 1 else 0.0)
            new = min(max(new, self.min_wd), self.max_wd)
            if new == old:
                continue  # at a limit
            g["weight_decay"] = new
            self.current[i], self.last_change[i] = new, step
            if new > old:
                self.num_raises += 1
                why = f"{trigger[0].rule}" + (f" [{trigger[0].key}]" if trigger[0].key else "")
                msg = f"raised weight decay of param group {i} from {old:.4g} to {new:.4g} on {why}"
            else:
                self.num_lowers += 1
                msg = (f"lowered weight decay of param group {i} from {old:.4g} to {new:.4g}: L2 margin "
                       f"{margin:.3g} < target {self.target_margin:.3g}")
            out.append(Event("weight_decay", step, epoch,
                             {"group": float(i), "old": old, "new": new, "margin": self.last_margin,
                              "initial": float(g["initial_weight_decay"])},
                             "warning", msg, key=f"group_{i}", runbook=runbook_action("weight_decay")))
        return out

    def check_triggers(self, known: Sequence[str]) -> None:
        """Refuse trigger names that no probe event and no configured alert rule carries (they would
        never fire). The monitor calls this when it is built, with both lists."""
        unknown = [r for r in self.trigger_rules if r not in known]
        if unknown:
            raise ValueError(f"WeightDecayController.trigger_rules: {unknown} is neither a probe event nor a rule "
                             f"of the AlertManager; allowed: {sorted(set(known))} (a custom probe lists the events it emits "
                             "in its `emits` class attribute)")

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Refuse ``param_groups`` indices the optimizer does not have (before the first step)."""
        n = len(optimizer.param_groups)
        bad = [i for i in (self.param_groups or []) if i >= n]
        if bad:
            raise ValueError(
                f"WeightDecayController.param_groups: indices {bad} out of range, the optimizer has {n} param group(s)")

    def reapply(self, optimizer: torch.optim.Optimizer) -> None:
        """Write the controller's current values into ``optimizer`` (call in ``on_train_start`` after a
        resume: the optimizer state is restored after ``on_fit_start``)."""
        if self.groups is None:
            return
        self._resolve(optimizer, refresh=False)
        for i, wd in self.current.items():
            optimizer.param_groups[i]["weight_decay"] = wd

    def scalars(self, prefix: str = "landscape") -> dict[str, float]:
        """The applied weight decay: ``<prefix>/l2/weight_decay`` (first controlled group) and, with
        several groups, ``<prefix>/l2/weight_decay/group_<i>`` for each."""
        if not self.groups:
            return {}
        p = prefix.strip("/")
        out = {f"{p}/l2/weight_decay": self.current[self.groups[0]]}
        if len(self.groups) > 1:
            out.update({f"{p}/l2/weight_decay/group_{i}": self.current[i] for i in self.groups})
        return out

    def config(self) -> dict[str, Any]:
        keys = ("raise_factor", "lower_factor", "target_margin", "min_wd", "max_wd", "cooldown_steps",
                "warmup_steps", "param_groups", "raise_from_zero", "trigger_rules", "margin_tag")
        return {k: getattr(self, k) for k in keys}

    def state_dict(self) -> dict[str, Any]:
        return {"groups": self.groups, "current": dict(self.current), "last_change": dict(self.last_change),
                "last_margin": self.last_margin, "num_raises": self.num_raises, "num_lowers": self.num_lowers}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.groups = None if state.get("groups") is None else [int(i) for i in state["groups"]]
        self.current = {int(k): float(v) for k, v in dict(state.get("current", {})).items()}
        self.last_change = {int(k): int(v) for k, v in dict(state.get("last_change", {})).items()}
        self.last_margin = float(state.get("last_margin", math.nan))
        self.num_raises, self.num_lowers = int(state.get("num_raises", 0)), int(state.get("num_lowers", 0))

    def __repr__(self) -> str:
        return f"WeightDecayController({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"
