"""Purity matrix over the probe registry: every probe, every awkward set-up, bit-identical training.

New probes are covered automatically: the tests are parametrised over ``PROBES``. Probes run with
``on_error="raise"`` so a probe that fails cannot pass by being skipped.
"""

from __future__ import annotations

import random

import lightning.pytorch as L
import numpy as np
import pytest
import torch
import torchmetrics
from torch import nn

from lightning_helpers import UserMetricsLogger, loaders, small_task, trainer
from lightning_landscape import LandscapeMonitor
from lightning_landscape.probes import PROBES
from lightning_landscape.tags import load_all_probes

load_all_probes()
REGISTERED = sorted(name for name in PROBES if not name.startswith("test_"))


def _all_probes(every: int = 1):
    return [PROBES[name](every_n_steps=every) for name in REGISTERED]


class MatrixTask(type(small_task())):
    """BatchNorm + Dropout, an unused parameter, and a training_step that logs and updates a metric."""

    def __init__(self, **kwargs):
        super().__init__(**{"input_dim": 6, "hidden": (16, 16), "batch_norm": True, "dropout": 0.2,
                            "weight_decay": 1e-3, "lr": 0.05, "momentum": 0.9, **kwargs})
        self.unused = nn.Linear(2, 2)
        self.mae = torchmetrics.MeanAbsoluteError()

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        loss = nn.functional.mse_loss(out, y)
        self.mae.update(out.detach(), y)
        self.log("train/loss", loss)
        self.log("train/mae", self.mae, on_step=True, on_epoch=True)
        return loss


SETUPS = {
    "bn_dropout_accumulate": dict(accumulate_grad_batches=2),
    "gradient_clipping": dict(gradient_clip_val=0.1),
    "bf16_mixed": dict(precision="bf16-mixed"),
    "compiled": dict(compile=True),
}


def _fit(monitor, setup: str, steps: int = 6):
    kwargs = dict(SETUPS[setup])
    compile_module = kwargs.pop("compile", False)
    L.seed_everything(11, verbose=False)
    model = MatrixTask()
    if compile_module:
        model.net = torch.compile(model.net, backend="aot_eager")
    logger = UserMetricsLogger()
    t = trainer(max_steps=steps, callbacks=[monitor] if monitor else [], logger=logger, **kwargs)
    t.fit(model, loaders(n=512, batch_size=16))
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    return model, t.optimizers[0].state_dict(), logger.rows, rng


def _assert_identical(a, b) -> None:
    for (name, x), (_, y) in zip(a[0].state_dict().items(), b[0].state_dict().items()):
        assert torch.equal(x, y), f"{name} differs"
    for key, state in a[1]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, b[1]["state"][key][k]), f"optimizer state {key}/{k} differs"
    assert a[1]["param_groups"] == b[1]["param_groups"]
    assert a[2] == b[2], "user-logged values differ"
    assert torch.equal(a[3][0], b[3][0]) and np.array_equal(a[3][1], b[3][1]) and a[3][2] == b[3][2], "RNG differs"


_BASELINES: dict[str, tuple] = {}


def _baseline(setup: str):
    if setup not in _BASELINES:
        _BASELINES[setup] = _fit(None, setup)
    return _BASELINES[setup]


@pytest.mark.parametrize("probe_name", REGISTERED)
def test_each_probe_is_pure(probe_name: str) -> None:
    monitor = LandscapeMonitor(probes=[PROBES[probe_name](every_n_steps=1)], on_error="raise")
    monitored = _fit(monitor, "bn_dropout_accumulate")
    assert monitor.num_measurements == 6
    group = PROBES[probe_name].group
    measured = any(tag.split("/")[1] == group for tag in monitor.last_values)
    explained = any(tag.split("/")[1] == group for tag in monitor.not_measured)  # e.g. no neuron layer: absent, with a reason
    assert measured or explained, "probe logged nothing and gave no reason"
    _assert_identical(_baseline("bn_dropout_accumulate"), monitored)


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_all_probes_together_are_pure(setup: str) -> None:
    monitor = LandscapeMonitor(probes=_all_probes(every=2), on_error="raise")
    monitored = _fit(monitor, setup)
    _assert_identical(_baseline(setup), monitored)
