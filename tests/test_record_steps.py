"""Every record at the step it describes: scalars, alert texts and alert states share the optimizer step
whose weights were measured, which is also the step the event's text names."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from lightning_landscape import HessianSpectrum, LandscapeMonitor  # noqa: E402
from lightning_landscape.alerts import AlertManager, Threshold  # noqa: E402
from lightning_landscape.alerts.sinks import TensorBoardSink  # noqa: E402

LR, LR_LATER, SWITCH = 0.05, 0.25, 15


class _Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = ((self.net(x) - y) ** 2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=LR)
        # The learning rate jumps after step SWITCH: the tracked edge-of-stability ratio jumps with it,
        # between two measurements and off the logging cadence.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < SWITCH else LR_LATER / LR)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _texts(acc: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]


def test_scalars_and_alert_texts_are_written_at_the_step_they_describe(tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=32)
    rules = [
        Threshold("landscape/hessian/lambda_max", level=-1e9, name="always"),  # fires at the first measurement
        Threshold("landscape/hessian/eos_ratio_tracked", level=0.4, name="jump"),  # fires when the lr jumps
    ]
    monitor = LandscapeMonitor(
        probes=[HessianSpectrum(every_n_steps=10)],
        alerts=AlertManager(rules, sinks=[TensorBoardSink()]),
    )
    logger = TensorBoardLogger(str(tmp_path), name="run", version=0)
    trainer = pl.Trainer(
        max_steps=40, logger=logger, callbacks=[monitor], log_every_n_steps=10, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )
    trainer.fit(_Regression(), data)

    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    # Measured after optimizer steps 1 (first step), 10, 20, 30, 40: written at exactly those steps.
    assert [e.step for e in acc.Scalars("landscape/hessian/lambda_max")] == [1, 10, 20, 30, 40]
    texts = _texts(acc, "landscape/alerts/events/text_summary")
    fired = {}
    for step, text in texts:
        for rule, named in re.findall(r"\*\*\[WARNING\] (\w+)\*\* \(step (\d+),", text):
            assert int(named) == step, f"{rule}: text says step {named}, written at step {step}"
            fired[rule] = step
    assert fired["always"] == 1
    # The jump alert comes from the tracked ratio between measurements, at a step Lightning does not log
    # (log_every_n_steps=10): its text and its 0/1 state are still written, at that step.
    assert SWITCH <= fired["jump"] < 20 and fired["jump"] % 10 != 0
    states = {e.step: e.value for e in acc.Scalars("landscape/alerts/jump")}
    assert states[fired["jump"]] == 1.0
