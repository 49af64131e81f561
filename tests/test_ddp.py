"""DDP (ddp_spawn, 2 CPU processes, gloo): values equal the single-process values on the global probe batch."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from ddp_helpers import Recorder
from lightning_helpers import loaders, small_task
from lightning_landscape import HessianDensity, HessianSpectrum, HessianTrace, LandscapeMonitor, ProbeContext
from lightning_landscape.guards import probe_guard

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def _probes():
    return [HessianSpectrum(every_n_steps=1, max_iter=30, tol=1e-4), HessianTrace(every_n_steps=1, num_matvecs=12),
            HessianDensity(every_n_steps=1, num_probes=1, num_steps=10)]


def test_ddp_spawn_matches_single_process_on_global_batch(tmp_path: Path) -> None:
    monitor = LandscapeMonitor(probes=_probes())
    tb = L.loggers.TensorBoardLogger(tmp_path, name="tb")
    trainer = L.Trainer(
        strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=2, logger=tb,
        callbacks=[monitor, Recorder(str(tmp_path))], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, log_every_n_steps=1,
    )
    model = small_task(lr=0.05, momentum=0.0)
    trainer.fit(model, loaders(n=256, batch_size=16))

    # Identical on both ranks (bit for bit: every HVP is all-reduced, start vectors seeded identically).
    v0 = torch.load(tmp_path / "values_step1_rank0.pt")
    v1 = torch.load(tmp_path / "values_step1_rank1.pt")
    physics = [k for k in v0 if not k.startswith("landscape/monitor/")]
    assert physics and all(v0[k] == v1[k] for k in physics), {k: (v0[k], v1[k]) for k in physics}

    # Equal to one process measuring the union of both ranks' first batches at the same weights.
    batches = [torch.load(tmp_path / f"batch_rank{r}.pt") for r in (0, 1)]
    reference = small_task(lr=0.05, momentum=0.0)
    reference.load_state_dict(torch.load(tmp_path / "weights_rank0.pt"))

    def closure():
        return torch.stack([reference.compute_loss(tuple(b)) for b in batches]).mean()

    opt = torch.optim.SGD(reference.parameters(), lr=0.05)
    from lightning_landscape.optim_info import describe_optimizer

    with probe_guard(reference):
        ctx = ProbeContext(reference, closure, step=1, optimizer=opt, optimizer_info=describe_optimizer(opt))
        single = {}
        for probe in _probes():
            single.update({f"landscape/hessian/{k}": v for k, v in probe.run(ctx).scalars.items()})
    for key in ("lambda_max", "lambda_min", "trace", "eos_ratio", "negative_mass"):
        tag = f"landscape/hessian/{key}"
        assert v0[tag] == pytest.approx(single[tag], rel=2e-4, abs=1e-6), key

    # Logged on rank zero only: one event file.
    assert len(list((tmp_path / "tb").rglob("events.out.tfevents.*"))) == 1
    # ddp_spawn returns callback_metrics to the main process.
    assert "landscape/hessian/lambda_max" in trainer.callback_metrics
