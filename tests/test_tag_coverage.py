"""Every tag a run writes is in the documented tag table (scalars, histograms, images and texts alike)."""

from __future__ import annotations

import re

import lightning.pytorch as L
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_helpers import loaders, small_task, trainer
from lightning_landscape import LandscapeMonitor
from lightning_landscape.alerts import AlertManager
from lightning_landscape.control import WeightDecayController
from lightning_landscape.probes import PROBES
from lightning_landscape.tags import load_all_probes, rows

load_all_probes()


def _pattern(documented: str) -> re.Pattern[str]:
    """``landscape/weights/<layer>/norm`` -> a regex where each ``<…>`` stands for one or more path parts."""
    parts = re.split(r"<[^>]+>", documented)
    return re.compile("^" + ".+".join(re.escape(p) for p in parts) + "$")


def test_every_written_tag_is_documented(tmp_path) -> None:
    probes = [PROBES[name](every_n_steps=3) for name in sorted(PROBES) if not name.startswith("test_")]
    monitor = LandscapeMonitor(probes=probes, alerts=AlertManager(), weight_decay=WeightDecayController(),
                               on_error="raise")
    tb = L.loggers.TensorBoardLogger(tmp_path, name="tb")
    torch.manual_seed(0)
    trainer(max_steps=6, logger=tb, callbacks=[monitor]).fit(small_task(weight_decay=1e-3), loaders())
    acc = EventAccumulator(tb.log_dir, size_guidance={"scalars": 0, "histograms": 0, "tensors": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    written = {t for t in tags["scalars"] + tags["histograms"] + tags["images"] if t.startswith("landscape/")}
    written |= {t.removesuffix("/text_summary") for t in tags["tensors"] if t.startswith("landscape/")}
    documented = [_pattern(tag) for tag, *_ in rows()]
    undocumented = sorted(t for t in written if not any(p.match(t) for p in documented))
    assert not undocumented, undocumented
    # the kinds this run must have produced, so the check above had something to check
    assert any("/density" in t for t in tags["histograms"]) and any("slice_1d" in t for t in tags["images"])
    assert "landscape/l2/weight_decay" in tags["scalars"] and "landscape/alerts/nonfinite" in tags["scalars"]
