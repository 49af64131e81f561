"""Which Lightning packages are importable, and their classes side by side.

Users import either ``lightning.pytorch`` or ``pytorch_lightning``; the two ship distinct (but
identical) ``Callback`` and logger classes, and each Trainer / LightningCLI only accepts its own.
Everything that needs a Lightning class goes through this module so both flavours work.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def _try_import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - depends on the environment
        return None


lightning_pytorch = _try_import("lightning.pytorch")
pytorch_lightning = _try_import("pytorch_lightning")

FLAVOURS: tuple[ModuleType, ...] = tuple(m for m in (lightning_pytorch, pytorch_lightning) if m is not None)
if not FLAVOURS:  # pragma: no cover
    raise ImportError(
        "lightning_landscape needs `lightning` or `pytorch-lightning`: pip install lightning"
    )

CALLBACK_BASES: tuple[type, ...] = tuple(m.Callback for m in FLAVOURS)


def _classes(path: str) -> tuple[type, ...]:
    """The class at ``path`` (relative to the flavour root) from every installed flavour."""
    found = []
    module_path, _, attr = path.rpartition(".")
    for flavour in FLAVOURS:
        module = _try_import(f"{flavour.__name__}.{module_path}")
        if module is not None and hasattr(module, attr):
            found.append(getattr(module, attr))
    return tuple(found)


TENSORBOARD_LOGGERS: tuple[type, ...] = _classes("loggers.TensorBoardLogger")
FSDP_STRATEGIES: tuple[type, ...] = _classes("strategies.FSDPStrategy")
DEEPSPEED_STRATEGIES: tuple[type, ...] = _classes("strategies.DeepSpeedStrategy")
MODEL_PARALLEL_STRATEGIES: tuple[type, ...] = _classes("strategies.ModelParallelStrategy")
