"""Built-in tasks on synthetic data (no downloads): teacher–student regression and classification.

``build_mlp`` and ``make_teacher_student`` are plain torch; the LightningModule and DataModule import
Lightning on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_landscape.tasks.data import make_teacher_student
from lightning_landscape.tasks.mlp import build_mlp

_LAZY = {
    "MLPTask": "lightning_landscape.tasks.models",
    "TeacherStudentDataModule": "lightning_landscape.tasks.datamodule",
}

if TYPE_CHECKING:
    from lightning_landscape.tasks.datamodule import TeacherStudentDataModule
    from lightning_landscape.tasks.models import MLPTask

__all__ = ["MLPTask", "TeacherStudentDataModule", "build_mlp", "make_teacher_student"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
