"""Wall time and peak memory of a block, on CUDA (events + synchronize, max_memory_allocated)
or on the CPU (perf_counter, the kernel's peak resident set size of the process)."""
from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from typing import Callable

import torch

__all__ = ["Stopwatch", "PeakMemory", "median_seconds", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is an error naming the choices."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available; valid here: auto, cpu")
    return torch.device(name)


class Stopwatch:
    """``with Stopwatch(device) as sw: ...`` then ``sw.seconds`` (CUDA events on a GPU, the host
    clock otherwise) and ``sw.wall_seconds`` (the host clock from the synchronised start to the
    synchronised end, on every device: on a GPU the two should agree)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds = 0.0
        self.wall_seconds = 0.0

    def __enter__(self) -> "Stopwatch":
        if self.cuda:
            torch.cuda.synchronize()
            self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._start.record()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._end.record()
            torch.cuda.synchronize()
        self.wall_seconds = time.perf_counter() - self._t0
        self.seconds = self._start.elapsed_time(self._end) / 1000.0 if self.cuda else self.wall_seconds


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the process-lifetime peak is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> bool:
    """Set the kernel's record of this process's peak RSS (VmHWM) to its current RSS, as Linux
    (4.0 on) does when 5 is written to /proc/self/clear_refs; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    """VmHWM: the process's peak RSS since it started or since :func:`_reset_peak_rss`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/self/status has no VmHWM line")


class PeakMemory:
    """Peak memory during a block in MB: CUDA max_memory_allocated, or on the CPU the process's
    peak RSS. On Linux the kernel keeps that peak exactly (reset at the start of the block,
    read at its end: no thread runs beside the block); elsewhere a background thread samples the
    RSS every ``interval`` seconds, which can miss a short peak. The CPU peak is the process's:
    blocks must not nest or overlap in one process."""

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.cuda = device.type == "cuda"
        self.device = device
        self.interval = interval
        self.mb = 0.0

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        # A polling thread would take the GIL hundreds of times a second from the block it measures.
        self._kernel_peak = _reset_peak_rss()
        if not self._kernel_peak:
            self._peak = _rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._kernel_peak:
            self.mb = _peak_rss_bytes() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.mb = max(self._peak, _rss_bytes()) / 2**20


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 5) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        with Stopwatch(device) as sw:
            fn()
        times.append(sw.seconds)
    return statistics.median(times)
