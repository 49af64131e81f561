"""The operator protocol every estimator in :mod:`lightning_landscape.linalg` takes.

A symmetric linear operator is anything with ``matvec(v) -> A v`` and the ``dim``, ``dtype`` and
``device`` of the vectors it acts on (in the spirit of curvlinops' linear operators).
:class:`~lightning_landscape.hessian.HessianOperator` satisfies it; :class:`MatrixOperator` wraps an
explicit matrix and :class:`CallableOperator` a bare function (tests, user code). The estimators also
still accept a bare ``matvec`` callable followed by ``dim`` (and ``dtype`` / ``device``).

>>> op = MatrixOperator(torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)))
>>> isinstance(op, LinearOperator), op.dim, op.dtype
(True, 3, torch.float64)
>>> op.matvec(torch.ones(3, dtype=torch.float64)).tolist()
[1.0, 2.0, 3.0]
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch

Matvec = Callable[[torch.Tensor], torch.Tensor]


@runtime_checkable
class LinearOperator(Protocol):
    """A symmetric ``dim × dim`` operator applied to 1-D tensors of ``dtype`` on ``device``."""

    @property
    def dim(self) -> int: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def matvec(self, vector: torch.Tensor) -> torch.Tensor: ...


class MatrixOperator:
    """An explicit symmetric matrix as a :class:`LinearOperator` (``matvecs`` counts the products).

    >>> op = MatrixOperator(torch.eye(2) * 3)
    >>> op(torch.ones(2)).tolist(), op.matvecs
    ([3.0, 3.0], 1)
    """

    def __init__(self, matrix: torch.Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"MatrixOperator needs a square matrix, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.matvecs = 0

    @property
    def dim(self) -> int:
        return self.matrix.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        self.matvecs += 1
        return self.matrix @ vector

    __call__ = matvec


class CallableOperator:
    """A bare ``matvec`` function with the ``dim`` / ``dtype`` / ``device`` it expects.

    >>> op = CallableOperator(lambda v: 2 * v, 3)
    >>> op.matvec(torch.ones(3)).tolist(), op.dtype
    ([2.0, 2.0, 2.0], torch.float32)
    """

    def __init__(self, matvec: Matvec, dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        if not callable(matvec):
            raise TypeError(f"matvec must be callable, got {type(matvec).__name__}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self._matvec, self.dim, self.dtype = matvec, dim, dtype
        self.device = torch.device(device if device is not None else "cpu")

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        return self._matvec(vector)

    __call__ = matvec


def matvec_of(operator: LinearOperator | Matvec) -> Matvec:
    """The product function of an operator or a bare callable (which is returned as is)."""
    if isinstance(operator, LinearOperator):
        return operator.matvec
    if not callable(operator):
        raise TypeError(f"expected a LinearOperator or a matvec callable, got {type(operator).__name__}")
    return operator


def resolve(
    operator: LinearOperator | Matvec, dim: int | None, dtype: torch.dtype | None, device: torch.device | str | None,
) -> tuple[Matvec, int, torch.dtype, torch.device | str | None]:
    """``(matvec, dim, dtype, device)`` from an operator, or from a bare callable and the explicit settings.

    With an operator, settings left ``None`` come from it and given ones must agree with it. With a
    callable, ``dim`` is required and ``dtype`` defaults to float32 (the estimators' historical default).
    """
    if isinstance(operator, LinearOperator):
        if dim is not None and dim != operator.dim:
            raise ValueError(f"dim={dim} disagrees with the operator's dim={operator.dim}")
        if dtype is not None and dtype != operator.dtype:
            raise ValueError(f"dtype={dtype} disagrees with the operator's dtype={operator.dtype}")
        return operator.matvec, operator.dim, operator.dtype, operator.device if device is None else device
    if not callable(operator):
        raise TypeError(f"expected a LinearOperator or a matvec callable, got {type(operator).__name__}")
    if dim is None:
        raise TypeError("dim is required when the operator is a bare matvec callable")
    return operator, dim, torch.float32 if dtype is None else dtype, device


def required(name: str, value: object) -> object:
    """``value``, or a TypeError naming the missing argument (estimators take them by keyword with an operator)."""
    if value is None:
        raise TypeError(f"missing required argument {name!r}")
    return value
