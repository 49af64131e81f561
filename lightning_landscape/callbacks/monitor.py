"""``LandscapeMonitor``: the Lightning callback that schedules probes and logs what they measure.

The class derives from the ``Callback`` of every Lightning flavour in use (``lightning.pytorch``,
``pytorch_lightning``; see :mod:`lightning_landscape._compat`), so the same object is accepted by either
Trainer and either LightningCLI.
All hook logic is framework-free: it only touches duck-typed trainer attributes.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import logging
import time
import warnings
from collections import defaultdict
from typing import Any, Callable, Iterator, Literal, Optional, Union

import torch
from torch import nn

from lightning_landscape._compat import adopt_flavours, callback_bases, loaded_classes
from lightning_landscape.alerts import AlertManager, Event, as_event
from lightning_landscape.callbacks.loss_closure import batches_loss, resolve_loss
from lightning_landscape.callbacks.probe_batch import ProbeBatchCache, split_batch, why_not_splittable
from lightning_landscape.callbacks.writer import MetricWriter, prefixed, should_log, tags_by_group
from lightning_landscape.control import WeightDecayController
from lightning_landscape.guards import probe_guard
from lightning_landscape.linalg.reduction import sharded_reduction
from lightning_landscape.optim_info import describe_optimizer
from lightning_landscape.parameters import ParameterSpace
from lightning_landscape.probes import PROBES, NonFiniteLossError, Probe, ProbeContext, ProbeResult, default_probes
from lightning_landscape.probes.base import check_choice, check_positive_int, order_probes
from lightning_landscape.sharded import ShardedParameterSpace, after_write, has_sharded_parameters, writes_resync
from lightning_landscape.validation import check_bool, check_tag_prefix

#: Event names the probes and the monitor emit (``Event.rule``), which a controller may be triggered by.
PROBE_EVENTS = ("channel_entry", "saddle", "saddle_branch", "nonfinite")


_log = logging.getLogger("lightning_landscape")


class LandscapeMonitorWarning(UserWarning):
    """Something went wrong in monitoring; training continues."""


def _is_out_of_memory(err: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return True
    text = str(err).lower()
    return isinstance(err, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(err, MemoryError)
    )


@contextlib.contextmanager
def _resharded_after(space: ParameterSpace) -> Iterator[None]:
    """FSDP2: leave no gathered parameter copy behind (the probes' forward passes may leave the root's)."""
    try:
        yield
    finally:
        if space.sharded:
            space.reshard()


def _strategy_refusal(strategy: Any) -> str | None:
    """Why the monitor cannot measure under ``strategy`` (``None``: it can)."""
    fsdp1 = loaded_classes("strategies.FSDPStrategy")
    if fsdp1 and isinstance(strategy, fsdp1):
        return ("strategy FSDPStrategy (FSDP1) flattens parameters into FlatParameters, which the probes do not "
                "measure; use ModelParallelStrategy with fully_shard in configure_model (FSDP2), which they do, "
                "or a DDP strategy")
    model_parallel = loaded_classes("strategies.ModelParallelStrategy")
    if model_parallel and isinstance(strategy, model_parallel):
        try:
            tensor_parallel = int(strategy.device_mesh["tensor_parallel"].size())
        except Exception:  # noqa: BLE001 - no mesh yet (or another layout): the parameter space checks later
            tensor_parallel = 1
        if tensor_parallel > 1:
            return (f"ModelParallelStrategy with tensor_parallel_size={tensor_parallel}: tensor-parallel parameters "
                    "are not supported (only FSDP2 sharding over the data-parallel mesh); use "
                    "ModelParallelStrategy(data_parallel_size=<devices>, tensor_parallel_size=1)")
    deepspeed = loaded_classes("strategies.DeepSpeedStrategy")
    if deepspeed and isinstance(strategy, deepspeed):
        return ("strategy DeepSpeedStrategy partitions parameters and optimizer state in its own engine, which the "
                "probes do not support; use ModelParallelStrategy (FSDP2), a DDP strategy or single-device training")
    return None


def _build_probes(probes: Optional[list[Union[Probe, str]]]) -> list[Probe]:
    if probes is None:
        return default_probes()
    if not isinstance(probes, (list, tuple)):
        raise TypeError(f"probes must be a list of Probe objects or probe names, got {type(probes).__name__}")
    if not probes:
        raise ValueError("probes must name at least one probe (leave it out for the default probes)")
    built: list[Probe] = []
    for item in probes:
        if isinstance(item, str):
            if item not in PROBES:
                raise ValueError(f"probes: unknown probe name {item!r}; known probes are {sorted(PROBES)}")
            built.append(PROBES[item]())
        elif isinstance(item, Probe):
            built.append(item)
        else:
            raise TypeError(f"probes: each item must be a Probe or a probe name, got {type(item).__name__} {item!r}")
    names = [p.name for p in built]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"probes: {duplicates} appear more than once; their tags would collide "
            "(use a second LandscapeMonitor with another log_prefix to run two configurations)"
        )
    return built


@adopt_flavours
class LandscapeMonitor(*callback_bases()):  # type: ignore[misc]
    """Measure the loss landscape during training and log it to every attached logger.

    Args:
        probes: what to measure: ``Probe`` objects, or registry names with default settings
            (``"hessian_spectrum"``, ``"hessian_trace"``, ``"hessian_density"``, ...). Default: spectrum,
            trace and density at intervals that keep the overhead low.
        probe_batch: ``"fixed"`` — the first non-empty training batch, kept for the run (comparable measurements);
            ``"cached"`` — the first ``num_probe_batches`` batches, loss averaged; ``"current"`` — the batch of
            the measured step.
        num_probe_batches: batches kept with ``probe_batch="cached"``.
        max_probe_samples: truncate the probe batch to this many samples (bounds the measurement's memory).
        loss_fn: ``loss_fn(pl_module, batch) -> scalar tensor``; default: the module's ``landscape_loss(batch)``
            if defined, else its ``training_step`` (with its ``self.log`` calls and metric updates muted).
        precision: ``"fp32"`` — probes run outside autocast (default); ``"trainer"`` — inside the trainer's
            precision context (Hessian of the mixed-precision loss).
        on_error: ``"warn"`` — a failing probe warns and is disabled after ``max_failures`` failures;
            ``"raise"`` — exceptions propagate (debugging).
        max_failures: failures after which a probe is disabled.
        measure_first_step: also measure after the first optimizer step (a baseline; probes with
            ``measure_at_first_step = False``, the expensive density and slices, skip it).
        seed: seed of the probes' private random generators (the global RNG is never used).
        log_prefix: first part of every tag (``<log_prefix>/<group>/<name>``) and the key of the checkpoint
            state. Two monitors in one Trainer need different prefixes (the Trainer refuses two equal ones).
        alerts: an :class:`~lightning_landscape.alerts.AlertManager` (rules on the measured streams and
            probe events, sinks: logging, TensorBoard, callables, webhooks; optional stop-training).
        weight_decay: a :class:`~lightning_landscape.control.WeightDecayController` that edits the optimizer's
            weight decay on ``channel_entry`` events and when the L2 margin falls (each change is an event).
        hvp_chunks: memory-light Hessian products. ``1`` (default) builds the probe batch's gradient graph once
            and differentiates it again for every product (fastest). ``k > 1`` splits every probe batch into
            ``k`` row slices and keeps no graph: each product re-runs forward, backward and double backward
            one slice at a time, so activation memory falls ~k-fold for ≈ 1.7× the compute per product.
            Exact for a per-sample-mean loss; with BatchNorm the batch statistics become per-slice ones.

    Example:
        >>> import lightning.pytorch as L
        >>> from lightning_landscape import HessianSpectrum
        >>> from lightning_landscape.tasks import MLPTask, make_teacher_student
        >>> x, y = make_teacher_student(num_samples=64, input_dim=4)
        >>> loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
        >>> monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=2)])
        >>> trainer = L.Trainer(max_steps=4, callbacks=[monitor], logger=False, enable_progress_bar=False,
        ...                     enable_model_summary=False, enable_checkpointing=False)
        >>> trainer.fit(MLPTask(input_dim=4, hidden=(8,)), loader)
        >>> sorted(monitor.last_values)[:2]
        ['landscape/hessian/eos_ratio', 'landscape/hessian/eos_ratio_tracked']
    """

    def __init__(
        self,
        probes: Optional[list[Union[Probe, str]]] = None,
        probe_batch: Literal["fixed", "current", "cached"] = "fixed",
        num_probe_batches: int = 1,
        max_probe_samples: Optional[int] = None,
        loss_fn: Optional[Callable[[Any, Any], torch.Tensor]] = None,
        precision: Literal["fp32", "trainer"] = "fp32",
        on_error: Literal["warn", "raise"] = "warn",
        max_failures: int = 3,
        measure_first_step: bool = True,
        seed: int = 0,
        log_prefix: str = "landscape",
        alerts: Optional[AlertManager] = None,
        weight_decay: Optional[WeightDecayController] = None,
        hvp_chunks: int = 1,
    ) -> None:
        super().__init__()
        self.probes = _build_probes(probes)
        # Probes with free between-measurement estimates (called after every optimizer step).
        self._trackers = [p for p in self.probes if type(p).track is not Probe.track]
        self._last_tracked: dict[str, float] = {}
        self.probe_batch = check_choice("probe_batch", probe_batch, ("fixed", "current", "cached"))
        self.num_probe_batches = check_positive_int("num_probe_batches", num_probe_batches)
        if max_probe_samples is not None:
            check_positive_int("max_probe_samples", max_probe_samples)
        self.max_probe_samples = max_probe_samples
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(pl_module, batch), got {loss_fn!r}")
        self.loss_fn = loss_fn
        self.precision = check_choice("precision", precision, ("fp32", "trainer"))
        self.on_error = check_choice("on_error", on_error, ("warn", "raise"))
        self.max_failures = check_positive_int("max_failures", max_failures)
        self.measure_first_step = check_bool("measure_first_step", measure_first_step)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
        self.seed = seed
        self.log_prefix = check_tag_prefix("log_prefix", log_prefix)
        if alerts is not None and not isinstance(alerts, AlertManager):
            raise TypeError(f"alerts must be an AlertManager, got {type(alerts).__name__}")
        if weight_decay is not None and not isinstance(weight_decay, WeightDecayController):
            raise TypeError(f"weight_decay must be a WeightDecayController, got {type(weight_decay).__name__}")
        self.alerts = alerts
        self.weight_decay = weight_decay
        if weight_decay is not None:  # its triggers: events the probes emit or rules of `alerts` that fire
            emitted = [e for p in self.probes for e in getattr(type(p), "emits", ())]  # a custom probe's own events
            weight_decay.check_triggers([*PROBE_EVENTS, *emitted, *(alerts.rule_names if alerts is not None else ())])
        self.hvp_chunks = check_positive_int("hvp_chunks", hvp_chunks)
        # The prefix alone: the probe list may change between a save and a resume (the alert and controller
        # state must survive it), and two monitors in one Trainer need distinct prefixes anyway (their tags
        # would collide), which Lightning enforces through this key.
        self._state_key = self._generate_state_key(prefix=self.log_prefix)

        self._cache = ProbeBatchCache(self.probe_batch, self.num_probe_batches, self.max_probe_samples, warn=self._warn)
        self._enabled = True
        self._disabled_probes: set[str] = set()
        self._failures: dict[str, int] = defaultdict(int)
        self._last_step = -1
        self._space: ParameterSpace | None = None
        self._loss_of_batch: Callable[[Any], torch.Tensor] | None = None
        self.loss_source = ""
        self.last_values: dict[str, float] = {}
        #: tag -> why it is logged but not judged yet (see ``ProbeResult.warming_up``).
        self.warming_up: dict[str, str] = {}
        #: tag -> why it could not be measured (it is then absent from the logs, never 0).
        self.not_measured: dict[str, str] = {}
        self.total_hvps = 0
        self.num_measurements = 0
        self.probe_seconds = 0.0
        self.fit_seconds = 0.0
        self._fit_start: float | None = None
        self._warned_unsplittable = False

    # ------------------------------------------------------------------ identity / checkpoint state
    @property
    def state_key(self) -> str:
        # The log prefix, neither probe names nor settings: adding a probe or changing an interval before
        # resuming must not orphan the saved state. Built once in __init__: Lightning asks for it often.
        return self._state_key

    def state_dict(self) -> dict[str, Any]:
        return {
            # Per probe, by its registry name (unique within a monitor): restored probe by probe.
            "probes": {p.name: p.state_dict() for p in self.probes},
            "disabled_probes": sorted(self._disabled_probes),
            "failures": dict(self._failures),
            "total_hvps": self.total_hvps,
            "num_measurements": self.num_measurements,
            "probe_seconds": self.probe_seconds,
            "last_values": dict(self.last_values),
            "warming_up": dict(self.warming_up),
            "not_measured": dict(self.not_measured),
            **({"alerts": self.alerts.state_dict()} if self.alerts is not None else {}),
            **({"weight_decay": self.weight_decay.state_dict()} if self.weight_decay is not None else {}),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = dict(state_dict.get("probes", {}))
        configured = {p.name for p in self.probes}
        for probe in self.probes:
            if probe.name not in saved:
                continue
            fresh_state = copy.deepcopy(probe.__dict__)  # before its first measurement: small
            try:
                probe.load_state_dict(saved[probe.name])
            except Exception as err:  # noqa: BLE001 - a stale probe state must not stop the resume
                probe.__dict__.clear()
                probe.__dict__.update(fresh_state)
                self._warn(f"the saved state of probe {probe.name!r} could not be restored "
                           f"({type(err).__name__}: {err}); it starts afresh")
        fresh = sorted(configured - set(saved))
        if fresh and saved:
            _log.info("LandscapeMonitor(%s): probes new since the checkpoint start afresh: %s", self.log_prefix, fresh)
        dropped = sorted(set(saved) - configured)
        if dropped:
            self._warn(f"the checkpoint holds the state of probes no longer configured ({dropped}); it is ignored. "
                       "The alert and weight-decay controller state is restored.")
        self._disabled_probes = {n for n in state_dict.get("disabled_probes", []) if n in configured}
        self._failures = defaultdict(int, {n: c for n, c in state_dict.get("failures", {}).items() if n in configured})
        self.total_hvps = int(state_dict.get("total_hvps", 0))
        self.num_measurements = int(state_dict.get("num_measurements", 0))
        self.probe_seconds = float(state_dict.get("probe_seconds", 0.0))
        self.last_values = dict(state_dict.get("last_values", {}))
        self.warming_up = dict(state_dict.get("warming_up", {}))
        self.not_measured = dict(state_dict.get("not_measured", {}))
        if self.alerts is not None and "alerts" in state_dict:
            self.alerts.load_state_dict(state_dict["alerts"])
        if self.weight_decay is not None and "weight_decay" in state_dict:
            self.weight_decay.load_state_dict(state_dict["weight_decay"])

    def on_load_checkpoint(self, trainer: Any, pl_module: nn.Module, checkpoint: dict[str, Any]) -> None:
        """Checkpoints written before the state key was the prefix alone keyed it on the probe names too:
        Lightning restores only an exact key, so find such a state of ours by its prefix and load it."""
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return  # Lightning calls load_state_dict with it next
        head = f"{type(self).__qualname__}{{"
        found = []
        for key, state in states.items():
            if not (isinstance(key, str) and key.startswith(head)):
                continue
            try:
                fields = ast.literal_eval(key[len(type(self).__qualname__):])  # literals only: runs no code
            except (ValueError, SyntaxError):
                continue
            if isinstance(fields, dict) and fields.get("prefix") == self.log_prefix:
                found.append(state)
        if len(found) == 1 and found[0]:
            self.load_state_dict(copy.deepcopy(found[0]))
        elif len(found) > 1:
            self._warn(f"the checkpoint holds {len(found)} monitor states with log_prefix={self.log_prefix!r} "
                       "(saved by monitors that shared it); none is restored")

    # ------------------------------------------------------------------ setup
    def _warn(self, message: str) -> None:
        warnings.warn(f"LandscapeMonitor: {message}", LandscapeMonitorWarning, stacklevel=3)

    def _disable(self, message: str) -> None:
        if self.on_error == "raise":
            raise RuntimeError(f"LandscapeMonitor: {message}")
        self._warn(f"{message}. Monitoring is disabled for this run; training continues.")
        self._enabled = False

    def setup(self, trainer: Any, pl_module: nn.Module, stage: str) -> None:
        if stage != "fit":
            return
        self._enabled = True
        twins = [cb for cb in getattr(trainer, "callbacks", []) or []
                 if cb is not self and isinstance(cb, LandscapeMonitor) and cb.log_prefix == self.log_prefix]
        if twins:
            # Lightning refuses two equal state keys when the Trainer is built; this catches callbacks added
            # later (trainer.callbacks.append): their hessian/hvps, monitor/* and alerts/* tags would collide.
            raise ValueError(
                f"log_prefix={self.log_prefix!r} is used by {len(twins) + 1} LandscapeMonitors in this Trainer: their "
                "tags (hessian/hvps, monitor/*, alerts/*) and checkpoint state would collide; give each monitor "
                "its own log_prefix"
            )
        refusal = _strategy_refusal(getattr(trainer, "strategy", None))
        if refusal is not None:
            self._disable(refusal)
            return
        try:
            self._loss_of_batch, self.loss_source = resolve_loss(pl_module, self.loss_fn)
        except ValueError as err:
            self._disable(str(err))

    def on_fit_start(self, trainer: Any, pl_module: nn.Module) -> None:
        self._fit_start = time.perf_counter()

    def on_train_start(self, trainer: Any, pl_module: nn.Module) -> None:
        self._last_step = int(trainer.global_step)
        self._cache.reset()
        self._space = None
        if self._enabled:
            MetricWriter(trainer).write_layout(self._layout())
        if self.weight_decay is not None and getattr(trainer, "optimizers", None):
            # Optimizer state (param groups) is restored after on_fit_start on resume: re-apply our edits.
            self.weight_decay.check_optimizer(trainer.optimizers[0])  # param_groups in range, before any step
            self.weight_decay.reapply(trainer.optimizers[0])

    def teardown(self, trainer: Any, pl_module: nn.Module, stage: str) -> None:
        if self.alerts is not None and stage == "fit":
            self.alerts.close()  # webhooks: waits at most their timeout

    def on_fit_end(self, trainer: Any, pl_module: nn.Module) -> None:
        if self._fit_start is not None:
            self.fit_seconds = time.perf_counter() - self._fit_start
        MetricWriter(trainer).flush()

    def _layout(self) -> dict[str, list[str]]:
        charts = tags_by_group(self.log_prefix, self.probes)
        if any(p.needs_hessian for p in self.probes):
            charts["monitor: cost"] = [
                f"{self.log_prefix}/hessian/hvps",
                f"{self.log_prefix}/monitor/seconds",
                f"{self.log_prefix}/monitor/overhead",
            ]
        return charts

    # ------------------------------------------------------------------ training hooks
    def on_train_batch_start(self, trainer: Any, pl_module: nn.Module, batch: Any, batch_idx: int) -> None:
        if self._enabled:
            self._cache.observe(batch)

    def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if not self._enabled or step == self._last_step or step < 1:
            return  # no optimizer step since the last call (gradient accumulation), or nothing to do
        previous, self._last_step = self._last_step, step
        first = self.measure_first_step and previous < 1 <= step
        due = [
            p for p in self.probes
            if p.name not in self._disabled_probes
            and ((first and p.measure_at_first_step) or p.is_due(step, previous))
        ]
        if due:
            self.measure(trainer, pl_module, due, step, batch)
            if not self._enabled:
                return
        tracking = [p for p in self._trackers if p not in due and p.name not in self._disabled_probes]
        if tracking:
            self._track(trainer, tracking, step)

    # ------------------------------------------------------------------ measuring
    def _reduce_mean(self, trainer: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if int(getattr(trainer, "world_size", 1)) <= 1:
            return None
        strategy = trainer.strategy
        # Lightning's DDP reduce works in place: clone so no tensor of the autograd graph is overwritten.
        return lambda t: strategy.reduce(t.clone(), reduce_op="mean")

    def _in_precision(self, trainer: Any, closure: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        if self.precision == "fp32":
            return closure
        plugin = getattr(trainer.strategy, "precision_plugin", None)

        def in_trainer_precision() -> torch.Tensor:
            with plugin.forward_context():
                return closure()

        return in_trainer_precision if plugin is not None else closure

    def _closure(self, trainer: Any, batches: list[Any]) -> Callable[[], torch.Tensor]:
        assert self._loss_of_batch is not None
        return self._in_precision(trainer, batches_loss(self._loss_of_batch, batches))

    def _loss_chunks(self, trainer: Any, batches: list[Any]) -> list[tuple[float, Callable[[], torch.Tensor]]] | None:
        """With ``hvp_chunks > 1``: the probe loss as weighted row slices of every probe batch."""
        if self.hvp_chunks == 1:
            return None
        loss_of_batch = self._loss_of_batch
        assert loss_of_batch is not None
        chunks = []
        for batch in batches:
            pieces = split_batch(batch, self.hvp_chunks)
            why = why_not_splittable(batch) if len(pieces) == 1 else None
            if why is not None and not self._warned_unsplittable:
                self._warned_unsplittable = True
                self._warn(f"hvp_chunks={self.hvp_chunks} cannot split the probe batch: {why}; it is used whole")
            for fraction, piece in pieces:
                closure = self._in_precision(trainer, lambda piece=piece: loss_of_batch(piece))
                chunks.append((fraction / len(batches), closure))
        return chunks

    def measure(self, trainer: Any, pl_module: nn.Module, probes: list[Probe], step: int, batch: Any = None) -> ProbeResult:
        """Run ``probes`` now and log their values; returns what was logged (keys are full tags)."""
        started = time.perf_counter()
        batches = self._cache.batches(current=batch)
        logged = ProbeResult()
        if not batches or self._loss_of_batch is None:
            return logged
        optimizer = trainer.optimizers[0] if getattr(trainer, "optimizers", None) else None
        if self._space is None:
            # At the first measurement, not in setup: lazy modules have their parameters only after a forward.
            try:
                space_type = ShardedParameterSpace if has_sharded_parameters(pl_module) else ParameterSpace
                self._space = space_type.from_module(pl_module)
            except ValueError as err:  # no trainable or complex parameters: nothing meaningful to measure
                self._disable(str(err))
                return logged
        space = self._space
        shards = (space.all_reduce_sum, space.dim, space.global_dim) if space.sharded else (None,)
        with probe_guard(pl_module, autocast_off=self.precision == "fp32"), sharded_reduction(*shards), \
                writes_resync(space.reshard if space.sharded else None), _resharded_after(space):
            ctx = ProbeContext(
                pl_module,
                self._closure(trainer, batches),
                step,
                space=self._space,
                optimizer=optimizer,
                optimizer_info=describe_optimizer(optimizer),
                reduce_mean=self._reduce_mean(trainer),
                seed=self.seed,
                epoch=int(getattr(trainer, "current_epoch", 0)),
                batch=batches[0],
                loss_chunks=self._loss_chunks(trainer, batches),
            )
            nonfinite = False
            # Providers of shared values before the probes that need them; Hessian probes first (order_probes).
            for probe in order_probes(probes):
                if nonfinite and probe.needs_hessian:
                    continue
                try:
                    after_write()  # FSDP2: every probe starts from the sharded parameters
                    result = probe.run(ctx)
                except (NonFiniteLossError, FloatingPointError) as err:
                    nonfinite = True
                    self._warn(f"step {step}: non-finite values, {probe.name} skipped ({err})")
                    logged.events.append(
                        Event("nonfinite", step, ctx.epoch, {}, "critical", f"{probe.name}: {err}", key=probe.name)
                    )
                    continue
                except Exception as err:  # a probe must never take training down
                    if _is_out_of_memory(err):
                        err = MemoryError(
                            f"out of memory in probe {probe.name!r} ({err}); raise `hvp_chunks` (now "
                            f"{self.hvp_chunks}: no gradient graph kept) or lower `max_probe_samples` (now "
                            f"{self.max_probe_samples}) for activation memory, or the probe's Lanczos length "
                            "(`max_iter`, `num_steps`: one parameter-sized vector each) for basis memory"
                        )
                    self._probe_failed(probe, err, step)
                    continue
                self._merge(logged, probe.group, result, probe)
            hvps, hvp_error = ctx.num_matvecs, ctx.hvp_error
            ctx.release()
        # At every measurement, 0 included: the flag must come down once the probes recover (a flag left
        # at 1 keeps the nonfinite rule latched and hides the next episode).
        logged.scalars[f"{self.log_prefix}/monitor/nonfinite"] = float(nonfinite)
        if hvps:
            logged.scalars[f"{self.log_prefix}/hessian/hvps"] = float(hvps)
        if hvp_error is not None:  # sharded parameters: products by central differences of gradients
            logged.scalars[f"{self.log_prefix}/hessian/hvp_error"] = hvp_error
        elapsed = time.perf_counter() - started
        self.total_hvps += hvps
        self.num_measurements += 1
        self.probe_seconds += elapsed
        logged.scalars[f"{self.log_prefix}/monitor/seconds"] = elapsed
        if self._fit_start is not None:
            train_time = max(time.perf_counter() - self._fit_start - self.probe_seconds, 1e-9)
            logged.scalars[f"{self.log_prefix}/monitor/overhead"] = self.probe_seconds / train_time
        self._report_states(logged, step)
        self._act(trainer, logged, step)
        self._write(trainer, logged, step)
        return logged

    def _track(self, trainer: Any, probes: list[Probe], step: int) -> None:
        """Free estimates between measurements (e.g. the edge-of-stability ratio at the current learning
        rate): to the rules at every step, to the loggers at the trainer's logging cadence."""
        started = time.perf_counter()
        optimizer = trainer.optimizers[0] if getattr(trainer, "optimizers", None) else None
        info = describe_optimizer(optimizer)
        logged = ProbeResult()
        space = self._space
        # Sharded parameters: what a tracker sums over parameters (Adam's decoupled decay) is reduced too,
        # so every process takes the same decision.
        shards = (space.all_reduce_sum, space.dim, space.global_dim) if space is not None and space.sharded else (None,)
        with sharded_reduction(*shards):
            self._track_each(probes, step, optimizer, info, logged)
        if logged.scalars and logged.scalars != self._last_tracked:  # unchanged (e.g. constant lr): nothing new
            self._last_tracked = dict(logged.scalars)
            # Tracked values are functions of state every rank holds identically (sums over sharded
            # parameters reduced above): no broadcast needed.
            self._act(trainer, logged, step, broadcast=False)
            if should_log(trainer) or logged.texts:  # an alert or a controller change is written when it happens
                self._write(trainer, logged, step)
            else:
                self.last_values.update(logged.scalars)
        self.probe_seconds += time.perf_counter() - started  # the cost clock counts tracking too

    def _track_each(self, probes: list[Probe], step: int, optimizer: Any, info: Any, logged: ProbeResult) -> None:
        for probe in probes:
            try:
                result = probe.track(step, optimizer, info)
            except Exception as err:  # noqa: BLE001 - tracking must never take training down
                self._probe_failed(probe, err, step)
                continue
            if result is not None:
                self._merge(logged, probe.group, result, probe)

    def _judged(self, logged: ProbeResult) -> dict[str, float]:
        """The scalars a verdict may be drawn from: everything measured except what is warming up."""
        return {k: v for k, v in logged.scalars.items() if k not in logged.warming_up}

    def _act(self, trainer: Any, logged: ProbeResult, step: int, broadcast: bool = True) -> None:
        """Rules, sinks and the weight-decay controller: one decision, identical on every rank."""
        if self.alerts is None and self.weight_decay is None:
            return
        epoch = int(getattr(trainer, "current_epoch", 0))
        # Rules and the controller address tags as "landscape/<group>/<key>" whatever our log_prefix.
        head = f"{self.log_prefix}/"
        scalars = {(f"landscape/{k[len(head):]}" if k.startswith(head) else k): v
                   for k, v in self._judged(logged).items()}
        events = [as_event(e, step, epoch).to_dict() for e in logged.events]
        if broadcast and int(getattr(trainer, "world_size", 1)) > 1:  # every rank decides on rank 0's inputs
            scalars, events = trainer.strategy.broadcast((scalars, events), src=0)
        parsed = [Event.from_dict(e) for e in events]
        emit = bool(getattr(trainer, "is_global_zero", True))  # state on every rank, side effects on rank 0
        fired: list[Event] = []
        if self.alerts is not None:
            fired = list(self.alerts.observe(step, epoch, scalars, parsed, emit=emit))
        optimizer = trainer.optimizers[0] if getattr(trainer, "optimizers", None) else None
        if self.weight_decay is not None and optimizer is not None:
            # Probe events (e.g. channel_entry) and fired alerts (e.g. edge_of_stability) can both trigger it.
            changes = self.weight_decay.apply(optimizer, step, epoch, scalars, parsed + fired)
            if changes and self.alerts is not None:
                self.alerts.dispatch(changes, emit=emit)
            logged.scalars.update(self.weight_decay.scalars(self.log_prefix))
        if self.alerts is not None:
            # Drained after the controller: its changes are written at the step they were made, not one
            # measurement later.
            logged.scalars.update(self.alerts.status(f"{self.log_prefix}/alerts"))
            logged.texts.update(self.alerts.drain_tensorboard().texts)
            if self.alerts.should_stop:
                trainer.should_stop = True

    def _merge(self, logged: ProbeResult, group: str, result: ProbeResult, probe: Probe | None = None) -> None:
        logged.scalars.update(prefixed(self.log_prefix, group, result.scalars))
        logged.histograms.update(prefixed(self.log_prefix, group, result.histograms))
        logged.images.update(prefixed(self.log_prefix, group, result.images))
        logged.texts.update(prefixed(self.log_prefix, group, result.texts))
        logged.events.extend(result.events)
        logged.warming_up.update(prefixed(self.log_prefix, group, result.warming_up))
        logged.not_measured.update(prefixed(self.log_prefix, group, result.not_measured))
        if probe is not None:  # readiness of the keys this probe may hold back, logged next to them
            for key in probe.gated_keys:
                if key in result.scalars:
                    logged.scalars[f"{self.log_prefix}/{group}/ready/{key}"] = float(key not in result.warming_up)

    def _report_states(self, logged: ProbeResult, step: int) -> None:
        """Keep :attr:`warming_up` / :attr:`not_measured` current; say each new reason once (TensorBoard
        text and an INFO log line; a probe that finds nothing to measure at all warns by itself)."""
        lines = []
        measured = set(logged.scalars)
        for tag, why in logged.warming_up.items():
            if self.warming_up.get(tag) is None:
                lines.append(f"`{tag}`: warming up — logged, not judged yet ({why})")
            self.warming_up[tag] = why
        for tag in [t for t in self.warming_up if t in measured and t not in logged.warming_up]:
            lines.append(f"`{tag}`: ready from step {step} — rules and the controller now judge it")
            del self.warming_up[tag]
        for tag, why in logged.not_measured.items():
            if self.not_measured.get(tag) != why:
                lines.append(f"`{tag}`: not measured ({why})")
                _log.info("LandscapeMonitor: %s is not measured: %s", tag, why)
            self.not_measured[tag] = why
        for tag in [t for t in self.not_measured if t in measured]:
            del self.not_measured[tag]
        if lines:
            logged.texts[f"{self.log_prefix}/monitor/states"] = "\n\n".join(lines)

    def _probe_failed(self, probe: Probe, err: Exception, step: int) -> None:
        if self.on_error == "raise":
            raise err
        self._failures[probe.name] += 1
        count = self._failures[probe.name]
        message = f"probe {probe.name!r} failed at step {step} ({type(err).__name__}: {err})"
        if count >= self.max_failures:
            self._disabled_probes.add(probe.name)
            message += f"; disabled after {count} failures"
        self._warn(message)

    def _write(self, trainer: Any, logged: ProbeResult, step: int) -> None:
        """Everything at ``step``, the optimizer step whose weights were measured: the step an event's text
        names, and the step at which Lightning's own ``self.log`` records the loss of those weights."""
        writer = MetricWriter(trainer)
        writer.scalars(logged.scalars, step)
        writer.histograms(logged.histograms, step)
        writer.images(logged.images, step)
        writer.texts(logged.texts, step)
        self.last_values.update(logged.scalars)

    # ------------------------------------------------------------------ reporting
    def summary(self) -> dict[str, Any]:
        """Totals of this run: measurements, HVPs, seconds spent, the overhead fraction (time inside
        measurements ÷ the fit's time without them, i.e. ``probe_seconds / (fit_seconds − probe_seconds)``: the
        one overhead figure the demo, the ``monitor/overhead`` tag and the benchmarks report), the last values, and what is warming up or not measured (tag ->
        reason)."""
        train = max(self.fit_seconds - self.probe_seconds, 1e-9) if self.fit_seconds else float("nan")
        return {
            "measurements": self.num_measurements,
            "hvps": self.total_hvps,
            "probe_seconds": self.probe_seconds,
            "fit_seconds": self.fit_seconds,
            "overhead": self.probe_seconds / train if self.fit_seconds else float("nan"),
            "last_values": dict(self.last_values),
            "warming_up": dict(self.warming_up),
            "not_measured": dict(self.not_measured),
        }
