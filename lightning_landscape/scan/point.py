"""One point of a scan: what is measured there (a row of the CSV, an entry of the resumable state)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ScanPoint:
    """Everything measured at one point of the sweep (a row of the CSV)."""

    index: int
    direction: str
    beta: float
    loss: float
    objective: float
    theta_sq: float
    loss_trivial: float
    collapse_ratio: float
    critical_beta: float = float("nan")
    ray_argmax_scale: float = float("nan")
    lambda_max: float = float("nan")
    lambda_min: float = float("nan")
    grad_norm: float = float("nan")
    steps: int = 0
    converged: bool = False
    theta_sq_invariant: float = 0.0
    seconds: float = 0.0
    layer_norms: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "layer_norms"}
        out.update({f"norm/{k}": v for k, v in self.layer_norms.items()})
        return out
