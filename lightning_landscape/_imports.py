"""Resolve ``"package.module:attr"`` import paths (YAML callables, CLI ``--module`` options)."""

from __future__ import annotations

import importlib
from typing import Any


def import_object(path: str, name: str = "path") -> Any:
    """Import ``"package.module:attr"`` or ``"package.module.attr"`` (dotted attributes allowed).

    Errors are ``ValueError`` naming the setting ``name``.

    >>> import_object("collections:OrderedDict").__name__
    'OrderedDict'
    >>> import_object("json.dumps")({"a": 1})
    '{"a": 1}'
    """
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{name} must be an import path like 'package.module:attr', got {path!r}")
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:  # "pkg.mod.attr", the form LightningCLI writes as _class_path
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{name} must be an import path like 'package.module:attr', got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{name}={path!r}: cannot import module {module_name!r}: {err}") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{name}={path!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj
