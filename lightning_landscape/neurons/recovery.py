"""Local recovery: what kind of low-gradient state training is in, and how fast it converges.

Near the global minima that recover the target, gradient flow converges fast (the loss gap
``L − floor`` decays geometrically); on saddle branches and plateaus it stalls. :func:`classify_state`
names the state, :func:`convergence_rate` measures the decay rate ``−d log(L − floor) / d step``.

Example:
    >>> steps = [0, 10, 20, 30]
    >>> losses = [0.01 + math.exp(-0.05 * s) for s in steps]
    >>> round(convergence_rate(steps, losses, floor=0.01), 4)
    0.05
    >>> classify_state(grad_norm=1e-7, loss=0.0100001, floor=0.01, saddle_branch=False, grad_tol=1e-4, floor_tol=1e-4)
    'global_minimum'
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: state name -> code logged as ``recovery_state``
STATES: dict[str, int] = {"moving": 0, "global_minimum": 1, "saddle_branch": 2, "plateau": 3}


def classify_state(grad_norm: float, loss: float, floor: float, saddle_branch: bool, grad_tol: float,
                   floor_tol: float) -> str:
    """``"moving"`` (gradient above ``grad_tol``), else ``"global_minimum"`` (``loss − floor ≤ floor_tol``),
    ``"saddle_branch"`` (the function is that of a narrower net) or ``"plateau"``."""
    if not math.isfinite(grad_norm) or grad_norm > grad_tol:
        return "moving"
    if loss - floor <= floor_tol:
        return "global_minimum"
    return "saddle_branch" if saddle_branch else "plateau"


def convergence_rate(steps: Sequence[float], losses: Sequence[float], floor: float = 0.0) -> float:
    """``−slope`` of the least-squares fit of ``log(L − floor)`` against the step (per step; > 0 means
    converging geometrically). Points with ``L ≤ floor`` are dropped; NaN with fewer than 2 points left."""
    pts = [(float(s), math.log(l - floor)) for s, l in zip(steps, losses) if math.isfinite(l) and l > floor]
    if len(pts) < 2 or len({s for s, _ in pts}) < 2:
        return float("nan")
    x, y = np.array(pts).T
    return float(-np.polyfit(x, y, 1)[0])
