"""Built-in tasks on synthetic data (no downloads): teacher–student regression and classification."""

from lightning_landscape.tasks.data import make_teacher_student
from lightning_landscape.tasks.datamodule import TeacherStudentDataModule
from lightning_landscape.tasks.models import MLPTask, build_mlp

__all__ = ["MLPTask", "TeacherStudentDataModule", "build_mlp", "make_teacher_student"]
