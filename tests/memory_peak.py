"""The ``rss_peak`` fixture: peak resident memory of a call, in bytes, above what was resident before it."""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable, Iterator

import pytest

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def rss_meter() -> tuple[Callable[[Callable[[], object]], int], Callable[[], None]]:
    """``(measure, restore)``: ``measure(fn)`` is the peak RSS of ``fn()`` above the RSS before it (``VmHWM``
    reset by ``clear_refs``); ``restore()`` gives glibc its initial mmap threshold back. Raises
    ``RuntimeError`` where Linux ``/proc`` or glibc's ``mallopt`` is missing.

    As benchmarks/memory.py does with ``MALLOC_MMAP_THRESHOLD_``, glibc gets a fixed 64 KiB mmap threshold
    so that freed vectors go back to the OS at once (and ``malloc_trim`` discards free heap pages first):
    the peak then counts live memory, not reused or retained free chunks.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _status("VmHWM")
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError, RuntimeError) as err:
        raise RuntimeError(f"needs Linux /proc/self/clear_refs and glibc malloc: {err}") from None
    if mallopt(M_MMAP_THRESHOLD, 64 * 1024) != 1:
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed")

    def measure(fn: Callable[[], object]) -> int:
        gc.collect()
        malloc_trim(0)
        before = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        fn()
        return _status("VmHWM") - before

    def restore() -> None:
        mallopt(M_MMAP_THRESHOLD, 128 * 1024)  # glibc's initial value (the dynamic threshold stays off)

    return measure, restore


@pytest.fixture
def rss_peak() -> Iterator[Callable[[Callable[[], object]], int]]:
    """The peak RSS of a call (see :func:`rss_meter`); skips where it cannot be measured."""
    try:
        measure, restore = rss_meter()
    except RuntimeError as err:
        pytest.skip(str(err))
    yield measure
    restore()
