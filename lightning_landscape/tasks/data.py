"""Teacher–student data: inputs x ~ N(0, I), targets from a random teacher network (+ noise)."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "linear": nn.Identity,
}


def make_teacher_student(
    num_samples: int = 4096,
    input_dim: int = 20,
    output_dim: int = 1,
    teacher_width: int = 8,
    activation: str = "tanh",
    noise: float = 0.05,
    classes: int = 0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x, y)``. With ``classes > 0`` the teacher's logits' argmax gives integer labels.

    A private generator is used, so calling this never moves the global RNG.

    >>> x, y = make_teacher_student(num_samples=10, input_dim=3)
    >>> tuple(x.shape), tuple(y.shape)
    ((10, 3), (10, 1))
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, input_dim, generator=g)
    out_dim = classes if classes > 0 else output_dim
    w1 = torch.randn(input_dim, teacher_width, generator=g) / input_dim**0.5
    w2 = torch.randn(teacher_width, out_dim, generator=g) / teacher_width**0.5
    hidden = ACTIVATIONS[activation]()(x @ w1)
    target = hidden @ w2
    if classes > 0:
        return x, target.argmax(dim=1)
    return x, target + noise * torch.randn(target.shape, generator=g)
