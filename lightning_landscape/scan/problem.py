"""What a scan trains: a module, its (cached) batches, a loss and the parameters the penalty decays.

Built-in problems use teacher–student data from :mod:`lightning_landscape.tasks`; deep *linear* ones
come with their closed-form thresholds (inputs whitened, no biases, scalar target) so a scan can be
checked against theory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from lightning_landscape.l2.closed_form import (
    cross_moment_norm,
    deep_linear_critical_beta,
    deep_linear_order,
    deep_linear_spinodal,
    whiten,
)
from lightning_landscape.tasks import build_mlp, make_teacher_student

ProblemLoss = Callable[[nn.Module, Any], torch.Tensor]


def mse_loss(module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``mean((module(x) − y)²)`` — the convention of every closed form here."""
    x, y = batch
    return torch.nn.functional.mse_loss(module(x), y)


@dataclass
class ScanProblem:
    """A module to sweep. ``decayed`` names the parameters the penalty ``β‖θ‖²`` applies to.

    ``batches``: one batch = full-batch gradient descent; several are cycled (mini-batch SGD) and the
    measured loss is their mean. ``theory``: optional ground truth (``beta_c``, ``beta_spinodal``,
    ``order``) drawn in the figure and compared in the table.
    """

    name: str
    module: nn.Module
    batches: Sequence[Any]
    loss_fn: ProblemLoss = mse_loss
    decayed: list[str] | None = None
    theory: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.batches:
            raise ValueError("ScanProblem.batches must hold at least one batch")
        names = [n for n, p in self.module.named_parameters() if p.requires_grad]
        if self.decayed is None:
            self.decayed = names
        unknown = sorted(set(self.decayed) - set(names))
        if unknown:
            raise ValueError(f"ScanProblem.decayed names unknown or frozen parameters: {unknown}")
        if not self.decayed:
            raise ValueError("ScanProblem.decayed is empty: nothing for weight decay to act on")

    def named_decayed(self) -> list[tuple[str, torch.Tensor]]:
        wanted = set(self.decayed or [])
        return [(n, p) for n, p in self.module.named_parameters() if n in wanted]


#: Built-in tasks: name -> (hidden layers, activation). Widths come from ``width``.
BUILTIN_TASKS: dict[str, tuple[int, str]] = {
    "linear-1": (1, "linear"),
    "linear-2": (2, "linear"),
    "linear-3": (3, "linear"),
    "tanh-1": (1, "tanh"),
    "tanh-2": (2, "tanh"),
    "relu-1": (1, "relu"),
    "relu-2": (2, "relu"),
}


def builtin_problem(
    task: str = "linear-2",
    width: int = 8,
    input_dim: int = 8,
    num_samples: int = 256,
    teacher_width: int = 4,
    noise: float = 0.1,
    hidden_layers: int | None = None,
    activation: str | None = None,
    bias: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ScanProblem:
    """A teacher–student regression problem (full batch), with closed forms for linear students.

    Inputs are whitened exactly (``xᵀx/N = I``) so the deep-linear closed forms apply; the teacher has
    the task's activation. Parameters are initialised under a private seed (the global RNG is untouched).

    >>> p = builtin_problem("linear-1", num_samples=64, input_dim=4)
    >>> p.theory["order"], round(p.theory["beta_c"], 4) == round(p.theory["beta_spinodal"], 4)
    ('continuous', True)
    """
    if task not in BUILTIN_TASKS:
        raise ValueError(f"task must be one of {sorted(BUILTIN_TASKS)}, got {task!r}")
    depth, act = BUILTIN_TASKS[task]
    depth = depth if hidden_layers is None else hidden_layers
    act = act if activation is None else activation
    x, y = make_teacher_student(num_samples, input_dim, 1, teacher_width, act, noise, seed=seed)
    x = whiten(x.double()).to(dtype)
    y = (y - y.mean()).to(dtype)  # centred: the collapsed model (all decayed weights 0) is then a critical point
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_mlp(input_dim, [width] * depth, 1, act, bias=bias).to(dtype)
    theory: dict[str, Any] = {"b_norm": cross_moment_norm(x, y)}
    if act == "linear" and not bias:
        b = theory["b_norm"]
        theory.update(
            beta_c=deep_linear_critical_beta(b, depth),
            beta_spinodal=deep_linear_spinodal(b, depth),
            order=deep_linear_order(depth),
        )
    name = f"{act}-{depth} (width {width}, d={input_dim}, N={num_samples})"
    return ScanProblem(name, module, [(x, y)], mse_loss, None, theory)
