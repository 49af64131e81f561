"""What an import costs: the maths without Lightning, and only the Lightning flavour in use.

Each check runs in a fresh interpreter (``sys.modules`` of the test process already holds everything).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric")


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object on its last line."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "LITLOGGER_DISABLED": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_maths_packages_import_no_lightning() -> None:
    seen = _run(
        """
        import json, sys
        import lightning_landscape
        top = sorted(sys.modules)
        import lightning_landscape.linalg, lightning_landscape.geometry, lightning_landscape.l2
        import lightning_landscape.flatness, lightning_landscape.neurons, lightning_landscape.compare
        import lightning_landscape.probes, lightning_landscape.alerts, lightning_landscape.control
        import lightning_landscape.alerts.detectors
        print(json.dumps({"top": top, "all": sorted(sys.modules)}))
        """
    )
    roots = {name.split(".")[0] for name in seen["all"]}
    assert not roots & set(LIGHTNING), sorted(roots & set(LIGHTNING))
    # the top-level package alone imports nothing heavy (not even torch)
    assert not {name.split(".")[0] for name in seen["top"]} & {"torch", *LIGHTNING}


@pytest.mark.parametrize("flavour", ["lightning.pytorch", "pytorch_lightning"])
def test_monitor_imports_only_the_flavour_in_use(flavour: str) -> None:
    seen = _run(
        f"""
        import json, sys
        import {flavour} as flavour
        from lightning_landscape import LandscapeMonitor, HessianSpectrum
        print(json.dumps({{
            "modules": sorted(sys.modules),
            "subclass": issubclass(LandscapeMonitor, flavour.Callback),
            "instance": isinstance(LandscapeMonitor(probes=[HessianSpectrum()]), flavour.Callback),
        }}))
        """
    )
    other = "pytorch_lightning" if flavour == "lightning.pytorch" else "lightning.pytorch"
    assert seen["subclass"] and seen["instance"]
    assert other not in seen["modules"]


def test_flavour_imported_after_the_monitor_is_adopted_by_its_trainer_and_cli(tmp_path: Path) -> None:
    """The monitor is defined before ``pytorch_lightning`` is imported (``lightning_landscape`` sorts first):
    that flavour's LightningCLI still resolves its class path, and its Trainer takes a lone callback."""
    seen = _run(
        f"""
        import json, sys
        from lightning_landscape import HessianSpectrum, LandscapeMonitor
        before = "pytorch_lightning" in sys.modules
        import pytorch_lightning as pl
        from pytorch_lightning.cli import LightningCLI
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from pl_task import PLDataModule, PLTask

        trainer = {{"max_steps": 2, "logger": False, "enable_progress_bar": False, "enable_checkpointing": False,
                   "enable_model_summary": False, "default_root_dir": {str(tmp_path)!r},
                   "callbacks": [{{"class_path": "lightning_landscape.LandscapeMonitor",
                                  "init_args": {{"probes": ["hessian_spectrum"]}}}}]}}
        cli = LightningCLI(PLTask, PLDataModule, args={{"trainer": trainer}}, run=False)
        from_cli = [type(cb).__name__ for cb in cli.trainer.callbacks if isinstance(cb, LandscapeMonitor)]

        monitor = LandscapeMonitor(probes=[HessianSpectrum(every_n_steps=1, max_iter=5)])
        t = pl.Trainer(max_steps=2, callbacks=monitor, logger=False, enable_progress_bar=False,
                       enable_checkpointing=False, enable_model_summary=False, default_root_dir={str(tmp_path)!r})
        t.fit(PLTask(), PLDataModule())
        print(json.dumps({{"before": before, "from_cli": from_cli, "measured": monitor.num_measurements,
                          "mro": [c.__module__ for c in LandscapeMonitor.__mro__]}}))
        """
    )
    assert seen["before"] is False
    assert seen["from_cli"] == ["LandscapeMonitor"]
    assert seen["measured"] >= 2
    assert "pytorch_lightning.callbacks.callback" in seen["mro"] and "lightning.pytorch.callbacks.callback" in seen["mro"]
