"""Short errors for bad settings in a LightningCLI / jsonargparse configuration.

jsonargparse rejects a typo while parsing, but a value out of range only fails when it instantiates
the class, and then it wraps our one-line ``ValueError`` in a chained exception per nesting level
(trainer.callbacks → LandscapeMonitor.probes → the probe): ~150 lines of tracebacks. This hook
prints the root message instead, and only for that case:

* the exception reached the top level uncaught (``sys.excepthook``; nothing changes for code that
  catches it, nor in notebooks, which do not use ``sys.excepthook``);
* it passed through jsonargparse (a configuration being instantiated);
* its root cause is a ``ValueError``/``TypeError`` raised by ``lightning_landscape`` code (a setting
  check: its message names the setting and what is allowed).

Everything else goes to the previous hook untouched. ``LIGHTNING_LANDSCAPE_TRACEBACK=1`` restores the
full traceback.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import Any, Callable

_INSTALLED = False


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, outermost first."""
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return out


def _modules(tb: TracebackType | None) -> list[str]:
    names = []
    while tb is not None:
        names.append(str(tb.tb_frame.f_globals.get("__name__", "")))
        tb = tb.tb_next
    return names


def setting_error(exc: BaseException) -> BaseException | None:
    """The setting error at the root of ``exc`` if ``exc`` is a configuration failure to shorten."""
    chain = _chain(exc)
    root = chain[-1]
    if not isinstance(root, (ValueError, TypeError)) or len(chain) < 2:
        return None
    through_jsonargparse = any(m.startswith("jsonargparse") for e in chain for m in _modules(e.__traceback__))
    raised_here = _modules(root.__traceback__)
    if through_jsonargparse and raised_here and raised_here[-1].startswith("lightning_landscape"):
        return root
    return None


def _hook(previous: Callable[..., Any]) -> Callable[..., Any]:
    def excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        root = None if os.environ.get("LIGHTNING_LANDSCAPE_TRACEBACK") else setting_error(exc)
        if root is None:
            previous(kind, exc, tb)
            return
        sys.stderr.write(
            f"error: {root}\n"
            f"  ({type(root).__name__} while the configuration was instantiated; "
            "LIGHTNING_LANDSCAPE_TRACEBACK=1 shows the full traceback)\n"
        )

    excepthook._lightning_landscape = True  # type: ignore[attr-defined]
    return excepthook


def install() -> None:
    """Put the hook in front of the current ``sys.excepthook`` (once per process)."""
    global _INSTALLED
    if _INSTALLED or getattr(sys.excepthook, "_lightning_landscape", False):
        return
    sys.excepthook = _hook(sys.excepthook)
    _INSTALLED = True
