"""Faults, precision, compiled and odd modules, other trainer entry points, unsupported strategies."""

from __future__ import annotations

import math

import lightning.pytorch as L
import pytest
import torch
from torch import nn

from exact import exact_hessian
from lightning_helpers import loaders, small_task, trainer
from lightning_landscape import HessianSpectrum, HessianTrace, LandscapeMonitor, LandscapeMonitorWarning, Probe
from lightning_landscape._compat import FSDP_STRATEGIES


class _Exploding(Probe):
    name = "test_exploding"
    group = "test"

    def __init__(self, every_n_steps: int | None = 1) -> None:
        super().__init__(every_n_steps)
        self.calls = 0

    def run(self, ctx):
        self.calls += 1
        raise RuntimeError("boom")


def test_failing_probe_warns_then_is_disabled_and_training_continues() -> None:
    bad = _Exploding()
    monitor = LandscapeMonitor(probes=[bad, HessianSpectrum(every_n_steps=1)], max_failures=2)
    t = trainer(max_steps=5, callbacks=[monitor])
    with pytest.warns(LandscapeMonitorWarning, match="boom") as record:
        t.fit(small_task(), loaders())
    assert t.global_step == 5 and bad.calls == 2
    assert any("disabled after 2 failures" in str(w.message) for w in record)
    assert monitor.num_measurements == 5  # the healthy probe kept running


def test_on_error_raise_propagates() -> None:
    monitor = LandscapeMonitor(probes=[_Exploding()], on_error="raise")
    with pytest.raises(RuntimeError, match="boom"):
        trainer(max_steps=2, callbacks=[monitor]).fit(small_task(), loaders())


def test_nan_in_probe_batch_is_reported_not_raised() -> None:
    x, y = torch.randn(64, 6), torch.randn(64, 1)
    x[0, 0] = float("nan")  # only the first batch (the fixed probe batch) carries it
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)

    def loss_fn(module, batch):  # the probe loss sees the NaN; training uses a cleaned batch below
        return nn.functional.mse_loss(module(batch[0]), batch[1])

    class Clean(type(small_task())):
        def training_step(self, batch, batch_idx):
            xb, yb = batch
            return nn.functional.mse_loss(self(torch.nan_to_num(xb)), yb)

    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)], loss_fn=loss_fn)
    t = trainer(max_steps=3, callbacks=[monitor])
    with pytest.warns(LandscapeMonitorWarning, match="non-finite"):
        t.fit(Clean(input_dim=6, hidden=(12,)), data)
    assert t.global_step == 3
    assert monitor.last_values["landscape/monitor/nonfinite"] == 1.0
    assert "landscape/hessian/lambda_max" not in monitor.last_values


def test_out_of_memory_names_the_setting() -> None:
    def loss_fn(module, batch):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99999999999 bytes")

    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)], loss_fn=loss_fn, max_failures=1)
    with pytest.warns(LandscapeMonitorWarning, match="max_probe_samples"):
        trainer(max_steps=2, callbacks=[monitor]).fit(small_task(), loaders())


def test_validation_validate_and_test_around_fit() -> None:
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)])
    model = small_task()
    t = trainer(max_steps=6, callbacks=[monitor], val_check_interval=2, limit_val_batches=2)
    t.validate(model, loaders())  # before fit: nothing measured, nothing breaks
    t.fit(model, loaders(), loaders())
    assert monitor.num_measurements == 6  # measurements continue across the validation runs
    t.validate(model, loaders())
    model.test_step = model.validation_step
    t.test(model, loaders())
    assert monitor.num_measurements == 6


def test_unsupported_strategy_is_refused_with_a_warning() -> None:
    if not FSDP_STRATEGIES:
        pytest.skip("no FSDP strategy class")

    class FakeTrainer:
        strategy = FSDP_STRATEGIES[0].__new__(FSDP_STRATEGIES[0])

    monitor = LandscapeMonitor(probes=["hessian_spectrum"])
    with pytest.warns(LandscapeMonitorWarning, match="FSDPStrategy"):
        monitor.setup(FakeTrainer(), small_task(), "fit")
    assert not monitor._enabled
    with pytest.raises(RuntimeError, match="FSDPStrategy"):
        LandscapeMonitor(probes=["hessian_spectrum"], on_error="raise").setup(FakeTrainer(), small_task(), "fit")


class _Capture(L.Callback):
    """Keeps the weights right after step 1 and the first batch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0 and trainer.global_step == 0:
            self.batch = [b.clone() for b in batch]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 1 and not hasattr(self, "weights"):
            self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}


def test_bf16_mixed_training_measures_in_fp32() -> None:
    capture = _Capture()
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=10, max_iter=60, tol=1e-6)])
    t = trainer(max_steps=1, callbacks=[monitor, capture], precision="bf16-mixed")
    t.fit(small_task(), loaders())
    reference = small_task().double()
    reference.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in capture.weights.items()})
    xb, yb = (b.double() for b in capture.batch)
    H, _ = exact_hessian(reference.net, lambda f: nn.functional.mse_loss(f(xb), yb))
    evals = torch.linalg.eigvalsh(H)
    # fp32 maths: ~1e-5 relative agreement with the float64 exact Hessian (bf16 would be ~1e-2 off).
    assert monitor.last_values["landscape/hessian/lambda_max"] == pytest.approx(float(evals[-1]), rel=1e-4)
    assert monitor.last_values["landscape/hessian/lambda_min"] == pytest.approx(float(evals[0]), rel=1e-3, abs=1e-4 * float(evals[-1]))


def test_trainer_precision_mode_runs_in_autocast_and_stays_finite() -> None:
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)], precision="trainer")
    trainer(max_steps=2, callbacks=[monitor], precision="bf16-mixed").fit(small_task(), loaders())
    assert math.isfinite(monitor.last_values["landscape/hessian/lambda_max"])


def test_unused_parameters_have_zero_curvature() -> None:
    class WithUnused(type(small_task())):
        def __init__(self):
            super().__init__(input_dim=6, hidden=(12,))
            self.unused = nn.Linear(3, 3)

    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1), HessianTrace(every_n_steps=1)])
    trainer(max_steps=2, callbacks=[monitor]).fit(WithUnused(), loaders())
    assert math.isfinite(monitor.last_values["landscape/hessian/trace"])
    assert monitor.last_values["landscape/hessian/lambda_min"] <= 1e-6  # the unused directions have eigenvalue 0


def test_compiled_module_runs_probes_eagerly_and_stays_pure() -> None:
    def run(with_monitor: bool):
        L.seed_everything(3, verbose=False)
        model = small_task()
        model.net = torch.compile(model.net, backend="aot_eager")
        callbacks = [LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=2)])] if with_monitor else []
        trainer(max_steps=4, callbacks=callbacks).fit(model, loaders())
        return model, callbacks

    base, _ = run(False)
    monitored, callbacks = run(True)
    assert math.isfinite(callbacks[0].last_values["landscape/hessian/lambda_max"])
    for (k, a), (_, b) in zip(base.state_dict().items(), monitored.state_dict().items()):
        assert torch.equal(a, b), k


def test_alerts_and_controller_work_with_any_log_prefix() -> None:
    from lightning_landscape.alerts import AlertManager, EdgeOfStability

    alerts = AlertManager(rules=[EdgeOfStability(level=1e-9, k=1)], sinks=[])
    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)], log_prefix="custom", alerts=alerts)
    trainer(max_steps=2, callbacks=[monitor]).fit(small_task(), loaders())
    assert monitor.last_values["custom/alerts/edge_of_stability"] == 1.0


def test_adam_with_an_unused_parameter_still_reports_the_preconditioned_ratio() -> None:
    class WithUnused(type(small_task())):
        def __init__(self):
            super().__init__(input_dim=6, hidden=(12,), optimizer="adam", lr=1e-3)
            self.unused = nn.Linear(3, 3)

    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)])
    trainer(max_steps=2, callbacks=[monitor]).fit(WithUnused(), loaders())
    assert math.isfinite(monitor.last_values["landscape/hessian/eos_ratio"])
    assert monitor.last_values["landscape/hessian/preconditioned_lambda_max"] > 0


def test_other_adaptive_optimizers_get_only_the_labelled_unpreconditioned_ratio() -> None:
    from lightning_landscape.optim_info import describe_optimizer

    p = nn.Parameter(torch.zeros(2))
    for cls in (torch.optim.NAdam, torch.optim.RAdam, torch.optim.RMSprop, torch.optim.Adagrad):
        assert describe_optimizer(cls([p], lr=1e-3)).kind == "adaptive"

    class NAdamTask(type(small_task())):
        def configure_optimizers(self):
            return torch.optim.NAdam(self.parameters(), lr=1e-3)

    monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1)])
    trainer(max_steps=1, callbacks=[monitor]).fit(NAdamTask(input_dim=6, hidden=(12,)), loaders())
    assert "landscape/hessian/eos_ratio" not in monitor.last_values
    assert "landscape/hessian/eos_ratio_unpreconditioned" in monitor.last_values


def test_schedule_catches_intervals_when_global_step_jumps() -> None:
    probe = HessianSpectrum(every_n_steps=3)
    steps = [2, 4, 6, 8, 10, 12]  # two optimizers: global_step advances by 2 per batch
    due = [s for prev, s in zip([0] + steps, steps) if probe.is_due(s, prev)]
    assert due == [4, 6, 10, 12]  # 3, 6, 9, 12 crossed
