"""Shared fixtures: one thread per test process (the suite runs with pytest-xdist on 2 cores)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)
os.environ.setdefault("PL_DISABLE_FORK", "1")


@pytest.fixture(autouse=True)
def _quiet_lightning_tips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITLOGGER_DISABLED", "1")
