"""PeakMemory on the CPU: the process's peak RSS during a block, including a peak the block
no longer holds at its end."""
import sys

import pytest
import torch

from benchmarks import timing
from benchmarks.timing import PeakMemory

MB = 2**20
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
kernel_peak = pytest.mark.skipif(not sys.platform.startswith("linux") or not timing._reset_peak_rss(),
                                 reason="this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")


def _touch(n_mb: int) -> torch.Tensor:
    return torch.ones(n_mb * MB // 8, dtype=torch.float64)  # written, so resident


def _rss_mb() -> float:
    return timing._rss_bytes() / MB


@kernel_peak
def test_a_peak_freed_before_the_block_ends_is_counted():
    before = _rss_mb()
    with PeakMemory(torch.device("cpu")) as mem:
        x = _touch(200)
        del x  # freed at once (an mmap'd block goes back to the kernel): no sampler could see it reliably
    assert mem.mb >= before + 190
    assert _rss_mb() < before + 100  # the memory really was given back


@linux_only
def test_the_peak_is_of_this_block_not_of_the_process_lifetime():
    x = _touch(300)
    del x
    with PeakMemory(torch.device("cpu")) as mem:
        y = _touch(20)
    assert mem.mb < _rss_mb() + 100  # the earlier 300 MB are not this block's
    assert mem.mb >= _rss_mb() - 1
    del y


@linux_only
def test_the_polling_fallback_sees_memory_held_at_the_end(monkeypatch):
    monkeypatch.setattr(timing, "_reset_peak_rss", lambda: False)
    before = _rss_mb()
    with PeakMemory(torch.device("cpu")) as mem:
        x = _touch(100)
    assert mem.mb >= before + 95
    del x
