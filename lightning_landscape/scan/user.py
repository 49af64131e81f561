"""Scan a user's LightningModule: by import path (+ JSON init args) or from a LightningCLI config.

The module's own loss is used — ``landscape_loss(batch)`` if defined, else ``training_step`` with its
``self.log`` calls muted (as the monitor does). The first ``max_batches`` batches of the training
dataloader are cached; one batch means full-batch gradient descent, several are cycled. The penalty
``β‖θ‖²`` is added explicitly; the module's own optimizer is not used (its weight decay would be a
second, unaccounted penalty).
"""

from __future__ import annotations

import inspect
import itertools
import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from lightning_landscape._imports import import_object
from lightning_landscape.scan.problem import ScanProblem


def load_object(path: str) -> Any:
    """``"package.module:Name"`` or ``"package.module.Name"`` → the object.

    >>> load_object("collections:OrderedDict").__name__
    'OrderedDict'
    """
    return import_object(path, "module")


#: What a nested ``class_path`` inside ``init_args`` may build: the objects a LightningModule or
#: LightningDataModule takes as arguments. Anything else (``os.system``, ``builtins.eval``, a factory
#: function) is refused *before* it is called.
NESTED_KINDS: tuple[type, ...] = (
    nn.Module,
    torch.optim.Optimizer,
    torch.optim.lr_scheduler.LRScheduler,
    torch.utils.data.Dataset,
    torch.utils.data.Sampler,
)
_NESTED_NAMES = "nn.Module, torch.optim Optimizer/LRScheduler, torch.utils.data Dataset/Sampler"


def _lightning_kind(cls: type, kind: str) -> bool:
    """``cls`` subclasses ``lightning.pytorch``'s or ``pytorch_lightning``'s ``kind`` (checked by name along
    the MRO, so neither package has to be imported for the check)."""
    return any(base.__name__ == kind and base.__module__.startswith(("lightning.pytorch", "pytorch_lightning"))
               for base in getattr(cls, "__mro__", ()))


def resolve_class(path: Any, setting: str, kind: str) -> type:
    """Import ``path`` and check it is a class of the allowed ``kind`` — without calling anything.

    ``kind``: ``"LightningModule"``, ``"LightningDataModule"`` or ``"nested"`` (:data:`NESTED_KINDS`).
    Importing the module a path names runs that module (the user's own config names it); what is then
    *called* is restricted to classes of the documented kind.

    >>> resolve_class("torch.nn.Tanh", "model.init_args.act", "nested").__name__
    'Tanh'
    >>> resolve_class("os.system", "model.init_args.act", "nested")
    Traceback (most recent call last):
    ...
    ValueError: model.init_args.act: class_path 'os.system' is not a class (builtin_function_or_method); a nested class_path may only build nn.Module, torch.optim Optimizer/LRScheduler, torch.utils.data Dataset/Sampler subclasses
    """
    if not isinstance(path, str):
        raise ValueError(f"{setting}: class_path must be a string, got {path!r}")
    obj = import_object(path, f"{setting} class_path")
    allowed = f"{_NESTED_NAMES} subclasses" if kind == "nested" else f"a {kind} subclass"
    where = "a nested class_path may only build" if kind == "nested" else "must name"
    if not inspect.isclass(obj):
        raise ValueError(f"{setting}: class_path {path!r} is not a class ({type(obj).__name__}); {where} {allowed}")
    ok = issubclass(obj, NESTED_KINDS) if kind == "nested" else _lightning_kind(obj, kind)
    if not ok:
        raise ValueError(f"{setting}: class_path {path!r} is {obj.__module__}.{obj.__qualname__}; {where} {allowed}")
    return obj


def _parse_args(text: str | dict | None, what: str) -> dict[str, Any]:
    if text is None:
        return {}
    if isinstance(text, dict):
        return dict(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} must be a JSON object, got {text!r}: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {text!r}")
    return value


def read_cli_config(path: str | Path) -> dict[str, Any]:
    """``model`` / ``data`` entries (``class_path`` + ``init_args``) of a LightningCLI YAML config.

    Nested ``class_path`` objects inside ``init_args`` (at any depth, also inside lists) are built only
    when they resolve to a class of :data:`NESTED_KINDS`; the check runs before anything is called, so a
    config naming ``os.system`` fails with nothing executed. ``model``/``data`` are checked (and built)
    by :func:`user_problem`.
    """
    import yaml

    cfg = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    out: dict[str, Any] = {}
    for key in ("model", "data"):
        entry = cfg.get(key)
        if entry is None:
            continue
        if isinstance(entry, str):
            entry = {"class_path": entry}
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: '{key}' must be a mapping with class_path/init_args")
        init_args = entry.get("init_args") or {}
        if not isinstance(init_args, dict):
            raise ValueError(f"{path}: '{key}.init_args' must be a mapping")
        args = {k: _instantiate_nested(v, f"{key}.init_args.{k}") for k, v in init_args.items()}
        out[key] = {"class_path": entry.get("class_path"), "init_args": args}
    return out


def _instantiate_nested(value: Any, setting: str) -> Any:
    if isinstance(value, list):
        return [_instantiate_nested(v, f"{setting}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and "class_path" in value:
        cls = resolve_class(value["class_path"], setting, "nested")  # checked before anything is called
        init_args = value.get("init_args") or {}
        if not isinstance(init_args, dict):
            raise ValueError(f"{setting}.init_args must be a mapping")
        return cls(**{k: _instantiate_nested(v, f"{setting}.init_args.{k}") for k, v in init_args.items()})
    if isinstance(value, dict):
        return {k: _instantiate_nested(v, f"{setting}.{k}") for k, v in value.items()}
    return value


def user_problem(
    module: str | None = None,
    module_args: str | dict | None = None,
    datamodule: str | None = None,
    datamodule_args: str | dict | None = None,
    config: str | Path | None = None,
    max_batches: int = 1,
    decay: Literal["all", "weights"] = "all",
) -> ScanProblem:
    """Build a :class:`ScanProblem` from a LightningModule (and optional LightningDataModule).

    ``module`` / ``datamodule``: import paths; ``*_args``: JSON objects of init args (merged over the
    config's ``init_args``); ``config``: a LightningCLI YAML (``model:``/``data:`` with ``class_path``).
    Without a datamodule the module's own ``train_dataloader()`` is used. ``decay``: which parameters
    the penalty acts on — all trainable ones (what ``SGD(model.parameters(), weight_decay=...)`` does)
    or only tensors with ≥ 2 dimensions.
    """
    from lightning_landscape.callbacks.loss_closure import resolve_loss

    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    if decay not in ("all", "weights"):
        raise ValueError(f"decay must be 'all' or 'weights', got {decay!r}")
    cfg = read_cli_config(config) if config is not None else {}
    model_path = module or (cfg.get("model") or {}).get("class_path")
    if not model_path:
        raise ValueError("give the LightningModule: --module package.module:Class (or a --config with model.class_path)")
    m_args = {**(cfg.get("model") or {}).get("init_args", {}), **_parse_args(module_args, "module args")}
    model = resolve_class(model_path, "--module" if module else "model", "LightningModule")(**m_args)

    data_path = datamodule or (cfg.get("data") or {}).get("class_path")
    if data_path:
        d_args = {**(cfg.get("data") or {}).get("init_args", {}), **_parse_args(datamodule_args, "datamodule args")}
        dm = resolve_class(data_path, "--datamodule" if datamodule else "data", "LightningDataModule")(**d_args)
        for hook, args in (("prepare_data", ()), ("setup", ("fit",))):
            if callable(getattr(dm, hook, None)):
                getattr(dm, hook)(*args)
        loader = dm.train_dataloader()
        source = data_path
    else:
        if callable(getattr(model, "setup", None)):
            model.setup("fit")
        loader = model.train_dataloader()
        source = f"{model_path}.train_dataloader"
    batches = list(itertools.islice(iter(loader), max_batches))
    if not batches:
        raise ValueError(f"the training dataloader of {source} is empty")
    batch_loss, _ = resolve_loss(model, None)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decayed = [n for n, p in named if decay == "all" or p.ndim >= 2]
    name = f"{model_path.rsplit(':', 1)[-1].rsplit('.', 1)[-1]} on {len(batches)} batch(es) of {source}"
    return ScanProblem(name, model, batches, lambda _module, batch: batch_loss(batch), decayed, {})
