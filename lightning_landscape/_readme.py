"""Regenerated blocks of the README (tag table, runbook): replace what stands between two markers."""

from __future__ import annotations


def replace_block(path: str, name: str, body: str) -> None:
    """Replace the text between ``<!-- {name}:start -->`` and ``<!-- {name}:end -->`` in ``path`` by ``body``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{start}\n{body}\n{end}{tail}")
