"""DDP (ddp_spawn, 2 CPU processes, gloo): values equal the single-process values on the global probe batch."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from ddp_helpers import Recorder
from lightning_landscape.alerts import AlertManager, EdgeOfStability, L2Threshold
from lightning_landscape.control import WeightDecayController
from lightning_helpers import loaders, small_task
from lightning_landscape import HessianDensity, HessianSpectrum, HessianTrace, L2Transition, LandscapeMonitor, ProbeContext
from lightning_landscape.guards import probe_guard
from lightning_landscape.probes import PROBES
from lightning_landscape.tags import load_all_probes

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def rmse(module, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(module(x), y).sqrt()


def _probes():
    """Every registered probe (new probes are covered automatically), at every step."""
    load_all_probes()
    tuned = {
        "hessian_spectrum": HessianSpectrum(every_n_steps=1, max_iter=30, tol=1e-4),
        "hessian_trace": HessianTrace(every_n_steps=1, num_matvecs=12),
        "hessian_density": HessianDensity(every_n_steps=1, num_probes=1, num_steps=10),
        # Judge the margin from step 1 (no readiness gate): the test needs an L2 decision on both ranks.
        "l2_transition": L2Transition(every_n_steps=1, ready_collapse_ratio=-1e9, ready_balance=-1e9),
    }
    return [tuned.get(name) or PROBES[name](every_n_steps=1) for name in sorted(PROBES) if not name.startswith("test_")]


def test_ddp_spawn_matches_single_process_on_global_batch(tmp_path: Path) -> None:
    alerts = AlertManager(rules=[L2Threshold(margin_below=1e6, k=1), EdgeOfStability(level=1e-9, k=1)], sinks=[])
    # The controller acts on the alert alone (no margin tag: a raise is otherwise capped by the L2 margin, whose
    # value at step 1 of this barely trained model sits near the target), so the test's decision is certain.
    controller = WeightDecayController(trigger_rules=["edge_of_stability"], cooldown_steps=1, max_wd=1.0,
                                       margin_tag="landscape/l2/no_such_tag")
    # An RMSE loss: its sqrt saves its output for backward, so an in-place all-reduce of the loss would break it.
    monitor = LandscapeMonitor(probes=_probes(), alerts=alerts, weight_decay=controller, loss_fn=rmse)
    tb = L.loggers.TensorBoardLogger(tmp_path, name="tb")
    trainer = L.Trainer(
        strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=2, logger=tb,
        callbacks=[monitor, Recorder(str(tmp_path))], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, log_every_n_steps=1,
    )
    model = small_task(lr=0.05, momentum=0.0, weight_decay=1e-2)
    trainer.fit(model, loaders(n=256, batch_size=16))

    # Identical on both ranks (bit for bit: every HVP is all-reduced, start vectors seeded identically).
    v0 = torch.load(tmp_path / "values_step1_rank0.pt")
    v1 = torch.load(tmp_path / "values_step1_rank1.pt")
    physics = [k for k in v0 if not k.startswith("landscape/monitor/")]
    assert physics and all(v0[k] == v1[k] for k in physics), {k: (v0[k], v1[k]) for k in physics}

    # Equal to one process measuring the union of both ranks' first batches at the same weights.
    batches = [torch.load(tmp_path / f"batch_rank{r}.pt") for r in (0, 1)]
    reference = small_task(lr=0.05, momentum=0.0, weight_decay=1e-2)
    reference.load_state_dict(torch.load(tmp_path / "weights_rank0.pt"))

    def closure():
        return torch.stack([rmse(reference, tuple(b)) for b in batches]).mean()

    opt = torch.optim.SGD(reference.parameters(), lr=0.05, weight_decay=1e-2)
    from lightning_landscape.optim_info import describe_optimizer

    with probe_guard(reference):
        ctx = ProbeContext(reference, closure, step=1, optimizer=opt, optimizer_info=describe_optimizer(opt))
        single = {}
        for probe in sorted(_probes(), key=lambda p: (p.name != "hessian_spectrum", not p.needs_hessian)):
            single.update({f"landscape/{probe.group}/{k}": v for k, v in probe.run(ctx).scalars.items()})
    compared = [k for k in physics if k in single]
    assert len(compared) >= 40, compared  # every probe contributes
    mismatched = {k: (v0[k], single[k]) for k in compared if v0[k] != pytest.approx(single[k], rel=2e-3, abs=1e-5)}
    assert not mismatched

    # Alert and controller decisions are identical on both ranks (and they did act).
    d0, d1 = (torch.load(tmp_path / f"decisions_rank{r}.pt") for r in (0, 1))
    assert d0 == d1
    assert d0["weight_decay"][0] > 1e-2  # the controller raised weight decay on every rank alike
    assert {e["rule"] for e in d0["alerts"]["history"]} >= {"l2_threshold", "edge_of_stability"}

    # Logged on rank zero only: one event file.
    assert len(list((tmp_path / "tb").rglob("events.out.tfevents.*"))) == 1
    # ddp_spawn returns callback_metrics to the main process.
    assert "landscape/hessian/lambda_max" in trainer.callback_metrics
