"""Argument validation shared by probes, rules and the callback: every error names the argument.

>>> check_positive_int("every_n_steps", 0)
Traceback (most recent call last):
...
ValueError: every_n_steps must be an int >= 1, got 0
"""

from __future__ import annotations

import math
import re
from typing import Any

from lightning_landscape import _cli_errors

_cli_errors.install()  # a bad setting in a LightningCLI YAML: one line, not ~150 (see _cli_errors)


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Validate an integer argument, naming it in the error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def check_positive_float(name: str, value: Any, allow_zero: bool = False) -> float:
    """Validate a real argument (> 0, or >= 0 with ``allow_zero``), naming it in the error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """A real bool: ``bool(x)`` would let ``"false"`` or ``0.5`` pass silently."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def check_number(name: str, value: Any, low: float | None = None, strict: bool = False) -> float:
    """A finite real, optionally ``>= low`` (``> low`` with ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value}")
    return value


_TAG_SEGMENT = re.compile(r"[A-Za-z0-9_.\-]+")


def check_tag_prefix(name: str, value: Any) -> str:
    """A TensorBoard-safe tag prefix: ``/``-separated segments of letters, digits, ``_``, ``.`` and ``-``.

    TensorBoard replaces other characters and ``//`` makes an empty segment: tags would not be where
    the docs and the rules look for them.

    >>> check_tag_prefix("log_prefix", "runs/fast-lr.1")
    'runs/fast-lr.1'
    >>> check_tag_prefix("log_prefix", "a b//c")
    Traceback (most recent call last):
    ...
    ValueError: log_prefix must be '/'-separated segments of letters, digits, '_', '.' or '-' (no spaces, no empty segment, no leading or trailing '/'), got 'a b//c'
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__} {value!r}")
    if not value or not all(_TAG_SEGMENT.fullmatch(part) for part in value.split("/")):
        raise ValueError(f"{name} must be '/'-separated segments of letters, digits, '_', '.' or '-' "
                         f"(no spaces, no empty segment, no leading or trailing '/'), got {value!r}")
    return value
