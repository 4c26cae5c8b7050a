"""Where the time goes: wall seconds and peak memory per named stage of a run.

Code marks its stages with :func:`stage`; the marks cost nothing unless a :class:`Profiler` is active::

    with Profiler() as prof:
        with stage("load"):
            adapter = load_clip("toy-clip")
        with stage("search/text.blocks.3.mlp.c_fc.weight"):
            ...
    prof.to_dict()   # {"stages": {"load": {"seconds": 1.2, "peak_rss_mb": 410.0}, ...}, "total_seconds": ...}

A stage entered twice adds up its seconds; a stage inside another is timed on its own and also counts
towards the outer one (report only one level when summing). ``peak_rss_mb`` is the process's peak
resident memory when the stage ended (it never decreases: a stage's own increase is the difference to
the previous stage's).
"""
from __future__ import annotations

import contextvars
import os
import resource
import sys
import time
from contextlib import contextmanager
from typing import Iterator

_ACTIVE: contextvars.ContextVar["Profiler | None"] = contextvars.ContextVar("slugkit_profiler", default=None)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``, 10 ms resolution), or ``None`` where unknown."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class Profiler:
    """Collects :func:`stage` timings while active (``with Profiler() as prof:``).

    ``start`` (a ``time.perf_counter()`` value) lets the total include time spent before the profiler
    was created, e.g. interpreter start-up measured from the process start.
    """

    def __init__(self, start: float | None = None):
        self.start = time.perf_counter() if start is None else start
        self.stages: dict[str, dict[str, float]] = {}
        self.end: float | None = None
        self._token = None

    def __enter__(self) -> "Profiler":
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc) -> None:
        self.end = time.perf_counter()
        _ACTIVE.reset(self._token)

    def add(self, name: str, seconds: float) -> None:
        """Record ``seconds`` under ``name`` (added to what it already has) with the current peak memory."""
        entry = self.stages.setdefault(name, {"seconds": 0.0, "peak_rss_mb": 0.0})
        entry["seconds"] += seconds
        entry["peak_rss_mb"] = round(peak_rss_mb(), 1)

    @property
    def total_seconds(self) -> float:
        return (self.end if self.end is not None else time.perf_counter()) - self.start

    def to_dict(self) -> dict:
        """``{"stages": {name: {"seconds", "peak_rss_mb"}}, "total_seconds", "peak_rss_mb"}`` (rounded)."""
        return {"stages": {k: {"seconds": round(v["seconds"], 3), "peak_rss_mb": v["peak_rss_mb"]}
                           for k, v in self.stages.items()},
                "total_seconds": round(self.total_seconds, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}

    def summary(self) -> str:
        """One line per stage: seconds, share of the total, peak memory."""
        total = self.total_seconds
        lines = [f"profile ({total:.2f} s in total):"]
        for name, v in self.stages.items():
            lines.append(f"  {name:48s}{v['seconds']:8.2f} s {100 * v['seconds'] / total:5.1f}%"
                         f"  peak {v['peak_rss_mb']:7.0f} MiB")
        return "\n".join(lines)


def active() -> Profiler | None:
    """The profiler collecting stages in this context, or ``None``."""
    return _ACTIVE.get()


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block as stage ``name`` of the active :class:`Profiler` (nothing happens without one)."""
    prof = _ACTIVE.get()
    if prof is None:
        yield
        return
    t = time.perf_counter()
    try:
        yield
    finally:
        prof.add(name, time.perf_counter() - t)


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
HEAP_RETURN_BYTES = 1 << 20  # within heap_returned(), blocks from this size on are mapped apart and unmapped on free
HEAP_AFTER_BYTES = 32 << 20  # the threshold afterwards: the largest glibc's own adaptive threshold reaches


@contextmanager
def heap_returned(min_bytes: int = HEAP_RETURN_BYTES) -> Iterator[bool]:
    """Within the block, memory blocks of at least ``min_bytes`` (tensors of a batch's activations) are mapped apart
    and go back to the operating system when freed (glibc ``mallopt(M_MMAP_THRESHOLD)``); yields whether it could be
    set (False off glibc). glibc's default adapts the threshold upwards, so freed activations stay in the heap as
    holes around longer-lived tensors: on ViT-B-32's gradient stage about 0.5 GB the process keeps but no longer
    uses, counted in its peak memory. Afterwards the threshold is :data:`HEAP_AFTER_BYTES`."""
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
        ok = bool(mallopt(_M_MMAP_THRESHOLD, int(min_bytes)))
    except (OSError, AttributeError):
        mallopt, ok = None, False
    try:
        yield ok
    finally:
        if ok:
            mallopt(_M_MMAP_THRESHOLD, HEAP_AFTER_BYTES)
