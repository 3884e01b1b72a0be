"""Give the memory of a burst back to the system once the burst is over.

What the operator keeps per object is small and bounded (cache.py); a burst also allocates,
for a while, every in-flight event, body, request and reconcile of thousands of objects. Freed,
that memory mostly stays with the process: CPython returns its small-object arenas only when
they are entirely empty, and glibc's malloc keeps freed heap pages for reuse. So when the work
queue is idle and, since the last time, the resident size has grown by GROWTH (a burst of new
objects) or the watched objects have become GROWTH times fewer (a burst of deletions),
`Releaser` collects garbage cycles and asks glibc to return its free pages (`malloc_trim(0)`,
which also releases free pages inside the heap since glibc 2.8). Elsewhere (musl, macOS) only
the collection runs; without /proc (not Linux) nothing does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import pathlib
from collections.abc import Callable

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


MALLOC_TRIM = _malloc_trim()


YOUNGEST_GENERATION_THRESHOLD = 10_000
"""Allocations (net of deallocations) between two collections of the youngest generation (Python's
default: 700)."""


def tune_garbage_collector() -> None:
    """Called once started. Every object alive then (the imported modules: some 300,000 objects,
    alive as long as the process) is left out of the cyclic garbage collector (`gc.freeze`), which
    traversed them all at each full collection; and the youngest generation is collected after
    YOUNGEST_GENERATION_THRESHOLD allocations, so that fewer of a burst's short-lived objects (events,
    bodies, requests in flight) are traversed and promoted. In a burst of 200 + 200 objects the
    collector took 0.9 s of the operator's 5.6 s of CPU before, 0.4 s after (benchmarks/operator_scale.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNGEST_GENERATION_THRESHOLD, *gc.get_threshold()[1:])


GROWTH = 1.1
"""Release once the resident size is 10% above what it was after the last release."""


def resident_bytes() -> int | None:
    """The process's resident set size (Linux), else None."""
    try:
        return int(pathlib.Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Releaser:
    """Releases freed memory to the system after a busy spell; one per process (the resync loop's)."""

    def __init__(self) -> None:
        self.baseline = resident_bytes()
        self.objects = 0
        """Watched objects at the last release."""

    def after_work(self, idle: bool, objects: int) -> None:
        """Called now and then (each resync tick) with the number of watched objects: release when
        `idle` and the resident size grew, or the objects shrank, by GROWTH."""
        resident = resident_bytes()
        if not idle or resident is None or self.baseline is None:
            return
        if resident < self.baseline * GROWTH and objects * GROWTH >= self.objects:
            return
        collected = gc.collect()
        trimmed = bool(MALLOC_TRIM(0)) if MALLOC_TRIM is not None else False
        self.baseline = resident_bytes()
        self.objects = objects
        log.info(
            "released memory after a busy spell: %d MB -> %d MB (%d objects collected, heap trimmed: %s)",
            resident // 2**20,
            (self.baseline or 0) // 2**20,
            collected,
            trimmed,
        )
