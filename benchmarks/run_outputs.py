"""What ``nfebench run`` writes after the sweep: trade-off plots and sample grids (one pass over
the finished table), report.html, and the whole invocation's time budget in metadata.json."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from .budget import BUDGET, phase
from .sweep import record_time_budget

__all__ = ["write_run_outputs"]


def _budget(out: Path, start: float) -> dict:
    """The sweep's budget entry (cells' sampling) brought up to now with every phase so far."""
    budget = dict(json.loads((Path(out) / "metadata.json").read_text()).get("time_budget", {}))
    elapsed = time.perf_counter() - start
    budget.update(elapsed_s=elapsed, phases=dict(sorted(BUDGET.snapshot().items())))
    available = elapsed * budget.get("jobs", 1)
    budget["sampling_share"] = budget.get("cells_sampling_s", 0.0) / available if available > 0 else float("nan")
    budget["scope"] = ("this invocation of nfebench run, from its start to report.html; phases with jobs > 1 are "
                       "summed over the worker processes, shares are of elapsed x jobs")
    return budget


def write_run_outputs(out: Path, df: pd.DataFrame, start: float, html: bool = True, workers=None,
                      meanwhile: Optional[Callable[[], None]] = None) -> str:
    """Plots, sample grids and (``html``) report.html for the run in ``out``; the time budget of
    the invocation that began at ``start`` (perf_counter) goes into metadata.json. ``workers``
    (a :class:`~benchmarks.parallel.Workers`) render the plots and grids side by side while this
    process runs ``meanwhile`` (run first otherwise). Returns a short list of what was written."""
    from .report import plot_jobs, render_plot, render_plots, write_plots
    from .sample_grids import drawn_grids, grid_jobs, render_grid, render_sample_grids, write_sample_grids

    if workers is None:
        if meanwhile is not None:
            meanwhile()
        with phase("plotting"):
            plots = render_plots(df)
            grids = render_sample_grids(out, df)
    else:  # the workers book their own plotting time
        plots_done = workers.submit("plotting", render_plot, plot_jobs(df))
        grids_done = workers.submit("plotting", render_grid, grid_jobs(out, df))
        if meanwhile is not None:
            meanwhile()
        plots = plots_done()
        grids = drawn_grids(grids_done())
    with phase("result_writing"):
        write_plots(df, out, plots)
        write_sample_grids(out, df, grids)
    written = f"{len(plots)} plots, {len(grids)} sample grids"
    if html:
        from .html_report import REPORT_FILE, budget_section, html_report
        from .results import write_atomic

        meta = json.loads((Path(out) / "metadata.json").read_text())
        meta["time_budget"] = _budget(out, start)
        with phase("report"):
            # The page's budget shows the report's own cost too: rendered and timed once, then
            # its budget section is replaced by one that includes that time.
            began = time.perf_counter()
            page = html_report(df, meta, plots, grids)
            rendered_in = time.perf_counter() - began
            provisional = budget_section(meta, None)
            meta["time_budget"] = _budget(out, start)
            record_time_budget(out, meta["time_budget"])
            write_atomic(Path(out) / REPORT_FILE, page.replace(provisional, budget_section(meta, rendered_in)))
        written += ", report.html"
    with phase("result_writing"):
        record_time_budget(out, _budget(out, start))
    return written
