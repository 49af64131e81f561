"""The alerts and the controller on realistic runs: the scenario benchmark's ``--quick`` subset.

``benchmarks/scenarios.py --quick`` trains an MLP, a BatchNorm ResNet and a Transformer that are healthy,
and runs that fail (a learning-rate ramp, an Adam loss spike, a weight-decay ramp through the L2 collapse,
a channel to infinity), each failure step taken from an identical unmonitored run. With the library's
defaults this test requires: no alert and no controller action on any healthy run, every failure alerted
before it happens, the controller preventing the L2 collapse and the channel, and monitoring that leaves
the loss curves bit-identical.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("scenarios") / "quick.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scenarios.py"), "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_healthy_runs_get_no_alert_and_no_controller_action(quick: dict) -> None:
    summary = quick["summary"]
    assert summary["healthy_runs"] >= 3 and not summary["healthy_not_trained"]
    assert summary["false_alarms"] == 0, summary["false_alarm_list"]
    assert summary["healthy_runs_changed"] == 0, summary["healthy_runs_changed_list"]


@pytest.mark.slow
def test_every_failure_is_alerted_before_it_happens(quick: dict) -> None:
    summary = quick["summary"]
    assert not summary["failure_runs_that_did_not_fail"]
    assert set(summary["recall"]) >= {"lr_divergence", "adam_spike", "l2_collapse", "channel"}
    assert all(r == 1.0 for r in summary["recall"].values()), summary["recall"]
    for run in quick["failures"]:
        first = min(a["step"] for a in run["alerts"])
        assert first < run["failure_step"], run["scenario"]


@pytest.mark.slow
def test_controller_prevents_the_collapse_and_bounds_the_channel(quick: dict) -> None:
    assert quick["summary"]["controller_prevented"] == {"l2_collapse": 1.0, "channel": 1.0}


@pytest.mark.slow
def test_monitoring_leaves_the_loss_curves_bit_identical(quick: dict) -> None:
    summary = quick["summary"]
    assert summary["monitored_differs_from_reference"] == []
    assert summary["controlled_differs_before_first_action"] == []
