"""Scan a user's LightningModule: by import path (+ JSON init args) or from a LightningCLI config.

The module's own loss is used — ``landscape_loss(batch)`` if defined, else ``training_step`` with its
``self.log`` calls muted (as the monitor does). The first ``max_batches`` batches of the training
dataloader are cached; one batch means full-batch gradient descent, several are cycled. The penalty
``β‖θ‖²`` is added explicitly; the module's own optimizer is not used (its weight decay would be a
second, unaccounted penalty).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Literal

from torch import nn

from lightning_landscape._imports import import_object
from lightning_landscape.scan.problem import ScanProblem


def load_object(path: str) -> Any:
    """``"package.module:Name"`` or ``"package.module.Name"`` → the object.

    >>> load_object("collections:OrderedDict").__name__
    'OrderedDict'
    """
    return import_object(path, "module")


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

    Nested ``class_path`` objects inside ``init_args`` are instantiated one level deep.
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
        args = {k: _instantiate_nested(v) for k, v in (entry.get("init_args") or {}).items()}
        out[key] = {"class_path": entry.get("class_path"), "init_args": args}
    return out


def _instantiate_nested(value: Any) -> Any:
    if isinstance(value, dict) and "class_path" in value:
        return load_object(value["class_path"])(**(value.get("init_args") or {}))
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
    model = load_object(model_path)(**m_args)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{model_path} did not build an nn.Module (got {type(model).__name__})")

    data_path = datamodule or (cfg.get("data") or {}).get("class_path")
    if data_path:
        d_args = {**(cfg.get("data") or {}).get("init_args", {}), **_parse_args(datamodule_args, "datamodule args")}
        dm = load_object(data_path)(**d_args)
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
