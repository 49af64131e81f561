"""Resumable scan state, rewritten atomically after every point.

``scan_state.pt`` is authoritative: the finished points *and* the weights after the last of them, in
one file, so the two can never disagree after a crash. ``scan_state.json`` mirrors the points (and
whether the scan finished) for people and scripts. A rerun with the same settings continues after the
last finished point; a rerun with other settings refuses rather than mixing two scans.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lightning_landscape.scan.point import ScanPoint
from lightning_landscape.scan.problem import ScanProblem

STATE_JSON = "scan_state.json"
STATE_WEIGHTS = "scan_state.pt"


def fingerprint(problem: ScanProblem, config: Any) -> str:
    """What must match for a rerun to continue an earlier scan: the config and the problem's identity."""
    ident = {
        "config": config.to_dict(),
        "problem": problem.name,
        "decayed": problem.decayed,
        "shapes": [[n, list(p.shape)] for n, p in problem.module.named_parameters()],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


class ScanState:
    """Load-or-create the state of one scan in ``directory`` (see the module docstring)."""

    def __init__(self, directory: Path, key: str, points: list, rms: list[float] | None,
                 weights: dict[str, torch.Tensor] | None) -> None:
        self.directory = directory
        self.key = key
        self.points = points
        self._rms = rms
        self._weights = weights

    @classmethod
    def open(cls, directory: str | Path, problem: ScanProblem, config: Any) -> "ScanState":
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        key = fingerprint(problem, config)
        path = directory / STATE_WEIGHTS
        if not path.exists():
            return cls(directory, key, [], None, None)
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") != key:
            raise RuntimeError(
                f"{path} belongs to a different scan (other settings or model): use another output "
                "directory, or --fresh to start over"
            )
        names = {f.name for f in fields(ScanPoint)}
        points = [ScanPoint(**{k: v for k, v in p.items() if k in names}) for p in saved["points"]]
        return cls(directory, key, points, saved.get("init_rms"), saved.get("state_dict"))

    @property
    def finished_points(self) -> int:
        return len(self.points)

    def init_rms(self, fresh: list[float]) -> list[float]:
        """The jitter scale of the first run (a resumed model no longer has its initial weights)."""
        if self._rms is None:
            self._rms = fresh
        return self._rms

    def restore_weights(self, module: nn.Module) -> None:
        if self.points and self._weights is not None:
            module.load_state_dict(self._weights)

    def save(self, points: list, module: nn.Module, finished: bool = False) -> None:
        self.points = points
        rows = [dict(vars(pt)) for pt in points]
        payload = {
            "fingerprint": self.key,
            "finished": finished,
            "init_rms": self._rms,
            "points": rows,
            "state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
        }
        _atomic_write(self.directory / STATE_WEIGHTS, lambda p: torch.save(payload, p))
        mirror = {k: v for k, v in payload.items() if k != "state_dict"}
        _atomic_write(self.directory / STATE_JSON, lambda p: p.write_text(json.dumps(mirror, indent=1)))
