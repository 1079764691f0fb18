"""Where a run's time goes: seconds per phase, recorded in metadata.json and shown in the report.

Phases nest: ``with phase("metric:fid"): ... with phase("feature_extraction"): ...`` books the
extraction under ``feature_extraction`` and only the rest under ``metric:fid`` (each phase keeps
its own time, not its children's), so the phases of a run add up to the time they cover and the
remainder of the elapsed time is the harness's unbooked rest (``other``). Host wall clock
(perf_counter); the cells' sampling is timed separately on the device (``wall_s``).

One process-wide :data:`BUDGET`; a worker process (``--jobs``) returns its budget with each row
and the parent adds it up (:meth:`TimeBudget.merge`).
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Iterator, List

__all__ = ["TimeBudget", "BUDGET", "phase", "PHASE_LABELS", "budget_table"]

#: What each phase covers, in the order the report lists them; metric phases are "metric:NAME".
PHASE_LABELS = {
    "startup": "imports and config parsing",
    "setup": "loading models, expanding cells, metadata",
    "forward_probe": "timing one forward pass per model and batch shape",
    "network_forwards": "sampling: network forwards, estimated as counted NFE x the probed forward time "
                        "(at most the cell's sampling time)",
    "sampler_loop": "sampling: the rest of the sampler loop (noise, grid, updates, copies)",
    "cuda_graph_capture": "capturing fixed-step samplers as CUDA graphs ([run] cuda_graph), untimed",
    "divergence_rerun": "re-running a diverged batch to find the first non-finite evaluation",
    "reference_solutions": "exact / tight-tolerance reference solutions for solver_error and inversion_error",
    "feature_extraction": "feature extraction for FID/KID (samples and reference sets)",
    "sample_previews": "keeping the preview samples of each cell",
    "result_writing": "writing results.csv and metadata.json",
    "plotting": "trade-off plots and sample grids",
    "report": "results.md and report.html",
}


class TimeBudget:
    """Seconds per phase (self time: a nested phase's seconds are not also its parent's)."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = defaultdict(float)
        self._children: List[float] = []  # per open phase: seconds spent in its nested phases

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        self._children.append(0.0)
        try:
            yield
        finally:
            total = time.perf_counter() - start
            self.seconds[name] += total - self._children.pop()
            if self._children:
                self._children[-1] += total

    def move(self, source: str, target: str, seconds: float) -> None:
        """Re-book ``seconds`` of ``source`` under ``target`` (at most what ``source`` holds)."""
        seconds = max(0.0, min(seconds, self.seconds[source]))
        self.seconds[source] -= seconds
        self.seconds[target] += seconds

    def merge(self, other: Dict[str, float]) -> None:
        for name, seconds in other.items():
            self.seconds[name] += seconds

    def snapshot(self) -> Dict[str, float]:
        return {name: seconds for name, seconds in self.seconds.items() if seconds > 0}

    def take(self) -> Dict[str, float]:
        """The seconds so far, and start again from zero (a worker reporting per cell)."""
        out = self.snapshot()
        self.seconds.clear()
        return out

    def reset(self) -> None:
        self.seconds.clear()
        self._children.clear()


BUDGET = TimeBudget()


def phase(name: str):
    """``with phase(name):`` books the block's own time under ``name`` in :data:`BUDGET`."""
    return BUDGET.phase(name)


def budget_table(phases: Dict[str, float], elapsed: float) -> List[Dict]:
    """Rows (phase, what it covers, seconds, share of elapsed): the phases in the order of
    :data:`PHASE_LABELS` (metric phases after feature extraction), then ``other``: elapsed minus
    every phase (the loop itself, progress bars, Python)."""
    fixed = list(PHASE_LABELS)

    def rank(name: str) -> tuple:
        if name in PHASE_LABELS:
            return (fixed.index(name), name)
        return (fixed.index("sample_previews") - 0.5 if name.startswith("metric:") else len(fixed), name)

    def share(seconds: float) -> float:
        return seconds / elapsed if elapsed > 0 else float("nan")

    rows = []
    for name in sorted(phases, key=rank):
        covers = PHASE_LABELS.get(name) or (f"metric {name.split(':', 1)[1]}: its updates and result (own time)"
                                            if name.startswith("metric:") else name)
        rows.append({"phase": name, "covers": covers, "seconds": phases[name], "share": share(phases[name])})
    rest = max(0.0, elapsed - sum(phases.values()))
    rows.append({"phase": "other", "covers": "unbooked: the cell loop itself, progress bars, Python",
                 "seconds": rest, "share": share(rest)})
    return rows
