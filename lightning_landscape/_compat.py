"""The two Lightning flavours, imported only when they are in use.

Users import either ``lightning.pytorch`` or ``pytorch_lightning``; the two ship distinct (but
identical) ``Callback`` and logger classes. Each Trainer accepts a list of callbacks of either flavour
(it calls their hooks by name), but a LightningCLI accepts a ``trainer.callbacks`` class only if it
subclasses *its* flavour's ``Callback`` (jsonargparse checks ``issubclass``), and a Trainer given one
callback outside a list checks ``isinstance``. So :class:`~lightning_landscape.LandscapeMonitor` must
subclass the ``Callback`` of every flavour the user works with — without importing a flavour the user
does not work with (each is ~250 modules and seconds of start-up).

:func:`callback_bases` gives a class the ``Callback`` of every flavour already imported (the primary
one, ``lightning.pytorch``, if none is), and :func:`adopt_flavours` keeps it that way: when another
flavour is imported later, its ``Callback`` is appended to the class's bases at the end of that
import (a post-import hook on ``sys.meta_path``). Everything else here looks only at the flavours
already in ``sys.modules`` (a logger or strategy object of a flavour implies it is loaded).

>>> import lightning_landscape._compat as compat
>>> compat.FLAVOUR_NAMES
('lightning.pytorch', 'pytorch_lightning')
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading
import warnings
from types import ModuleType
from typing import Any

FLAVOUR_NAMES: tuple[str, ...] = ("lightning.pytorch", "pytorch_lightning")

_adopters: list[type] = []  # classes that subclass the Callback of every loaded flavour
_lock = threading.RLock()


def _try_import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - depends on the environment
        return None


def _loaded(name: str) -> ModuleType | None:
    """The flavour module if its import has finished (``Callback`` defined), else None."""
    module = sys.modules.get(name)
    return module if module is not None and hasattr(module, "Callback") else None


def loaded_flavours() -> tuple[ModuleType, ...]:
    """The flavours imported so far (none is imported here)."""
    return tuple(m for m in (_loaded(n) for n in FLAVOUR_NAMES) if m is not None)


def primary() -> ModuleType:
    """The flavour our own LightningModules and Trainers use: ``lightning.pytorch`` if installed."""
    for name in FLAVOUR_NAMES:
        module = _try_import(name)
        if module is not None:
            return module
    raise ImportError("lightning_landscape needs `lightning` or `pytorch-lightning`: pip install lightning")


def callback_bases() -> tuple[type, ...]:
    """``Callback`` of every flavour imported so far; of the primary flavour if none is."""
    return tuple(m.Callback for m in (loaded_flavours() or (primary(),)))


def loaded_classes(path: str) -> tuple[type, ...]:
    """The class at ``path`` (relative to the flavour root) from every flavour imported so far.

    Submodules are imported only within a loaded flavour (an object of a flavour's class implies that
    flavour is loaded, so ``isinstance`` against this tuple misses nothing).
    """
    found = []
    module_path, _, attr = path.rpartition(".")
    for flavour in loaded_flavours():
        module = _try_import(f"{flavour.__name__}.{module_path}")
        if module is not None and hasattr(module, attr):
            found.append(getattr(module, attr))
    return tuple(found)


def _top_up(cls: type) -> None:
    missing = tuple(m.Callback for m in loaded_flavours() if not issubclass(cls, m.Callback))
    if missing:
        cls.__bases__ = cls.__bases__ + missing


def _flavour_loaded() -> None:
    with _lock:
        for cls in _adopters:
            try:
                _top_up(cls)
            except TypeError as err:  # pragma: no cover - a layout Python refuses; never break the import
                warnings.warn(f"{cls.__name__} cannot subclass the new Lightning flavour's Callback: {err}", stacklevel=2)
        if len(loaded_flavours()) == len(FLAVOUR_NAMES):
            _uninstall_watcher()


class _AfterLoad:
    """A loader that runs the wrapped one, then :func:`_flavour_loaded` (other attributes delegated)."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _flavour_loaded()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _FlavourWatcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader the other finders return for a flavour not yet loaded."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in FLAVOUR_NAMES or _loaded(fullname) is not None:
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _AfterLoad(spec.loader)
                return spec
        return None


_watcher = _FlavourWatcher()


def _uninstall_watcher() -> None:
    if _watcher in sys.meta_path:
        sys.meta_path.remove(_watcher)


def adopt_flavours(cls: type) -> type:
    """Class decorator: ``cls`` subclasses the ``Callback`` of every flavour loaded now or later."""
    with _lock:
        _adopters.append(cls)
        _top_up(cls)
        if len(loaded_flavours()) < len(FLAVOUR_NAMES) and _watcher not in sys.meta_path:
            sys.meta_path.insert(0, _watcher)
    return cls


def __getattr__(name: str) -> Any:
    # Names kept for code that imported them from here: they import every installed flavour.
    if name == "FLAVOURS":
        return tuple(m for m in (_try_import(n) for n in FLAVOUR_NAMES) if m is not None)
    paths = {
        "TENSORBOARD_LOGGERS": "loggers.TensorBoardLogger",
        "FSDP_STRATEGIES": "strategies.FSDPStrategy",
        "DEEPSPEED_STRATEGIES": "strategies.DeepSpeedStrategy",
        "MODEL_PARALLEL_STRATEGIES": "strategies.ModelParallelStrategy",
    }
    if name in paths:
        for flavour in FLAVOUR_NAMES:
            _try_import(flavour)
        return loaded_classes(paths[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
