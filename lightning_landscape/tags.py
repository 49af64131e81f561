"""The table of every tag the library logs (``python -m lightning_landscape.tags`` prints it as Markdown).

The README's tag table is generated from here, and a test checks that the README lists every tag.
"""

from __future__ import annotations

import importlib
import pkgutil

from lightning_landscape._readme import replace_block

import lightning_landscape.probes as probes_pkg
from lightning_landscape.probes.base import PROBES

#: Tags written by the monitor itself (not by a probe): key -> (meaning, cost, when).
MONITOR_TAGS: dict[str, tuple[str, str, str]] = {
    "hessian/hvps": ("Hessian-vector products spent at this measurement (all probes)", "—", "each measurement"),
    "hessian/hvp_error": ("sharded parameters (FSDP2): estimated relative error of a Hessian-vector product taken by "
                          "central differences of gradients (‖Hv(h) − Hv(2h)‖ / ‖Hv(h)‖)", "2 gradients",
                          "each measurement with Hessian probes"),
    "monitor/seconds": ("wall time of this measurement", "—", "each measurement"),
    "monitor/overhead": ("monitoring time so far / training time so far", "—", "each measurement"),
    "monitor/nonfinite": ("1 when the probe loss or gradient was NaN/Inf (Hessian probes skipped), else 0", "—",
                          "each measurement"),
    "monitor/states": ("text: what is warming up or not measured, and why (each new reason once)", "—", "when it changes"),
    "alerts/<rule>": ("1 while the rule is in alarm, else 0 (one tag per rule of the `AlertManager`)", "—",
                      "each measurement, and when an alert fires"),
    "alerts/events": ("text: one line per fired alert and weight-decay change, at its step", "—", "when one fires"),
    "l2/weight_decay": ("weight decay applied by the `WeightDecayController` (first controlled group)", "—",
                        "with the controller"),
    "l2/weight_decay/group_<i>": ("weight decay applied to param group i (with several controlled groups)", "—",
                                  "with the controller"),
}


def load_all_probes() -> None:
    """Import every probe module so the registry is complete."""
    for info in pkgutil.iter_modules(probes_pkg.__path__):
        importlib.import_module(f"{probes_pkg.__name__}.{info.name}")


def rows(prefix: str = "landscape") -> list[tuple[str, str, str, str]]:
    """``(tag, meaning, cost, default interval)`` for every documented tag (histogram, image and text tags
    say their kind first)."""
    load_all_probes()
    out = []
    for name in sorted(PROBES):
        cls = PROBES[name]
        for key, meaning in {**cls.scalar_tags, **cls.other_tags}.items():
            out.append((f"{prefix}/{cls.group}/{key}", meaning, cls.cost or "—", f"{cls.default_every_n_steps} steps ({name})"))
    for key, (meaning, cost, when) in MONITOR_TAGS.items():
        out.append((f"{prefix}/{key}", meaning, cost, when))
    return out


def markdown(prefix: str = "landscape") -> str:
    """The tag table as Markdown.

    >>> "landscape/hessian/lambda_max" in markdown()
    True
    """
    lines = ["| tag | meaning / convention | cost per measurement | default interval (probe) |", "|---|---|---|---|"]
    lines += [f"| `{t}` | {m} | {c} | {w} |" for t, m, c, w in rows(prefix)]
    return "\n".join(lines)


def update_readme(path: str, prefix: str = "landscape") -> None:
    """Replace the table between ``<!-- tags:start -->`` and ``<!-- tags:end -->`` in ``path``."""
    replace_block(path, "tags", markdown(prefix))


if __name__ == "__main__":  # pragma: no cover
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--update":
        update_readme(sys.argv[2])
    else:
        print(markdown())
