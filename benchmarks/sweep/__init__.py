"""The sweep: (models x sampler series x NFE budgets x seeds) -> one row per cell.

:mod:`.cells` expands a config into cells and seeds their random streams, :mod:`.execute` runs
one cell; :func:`run_sweep` runs them all into a run directory: each finished row is appended at
once (one whole line per write), and ``resume`` skips cells already in results.csv. Under torchrun every rank
samples its share of each cell and rank 0 alone writes.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pandas as pd
import torch

from ..budget import BUDGET, phase
from ..config import SweepConfig
from ..distributed import init_distributed
from ..metrics import METRICS
from ..provenance import metadata
from ..results import RESULT_COLUMNS, append_csv_row, write_atomic
from ..rundir import RunDirectory
from ..timing import resolve_device
from .cells import Cell, all_batches, batch_generator, expand_cells, runs_on
from .execute import RunContext, compile_network, load_model, run_cell
from .optimized_grids import optimized_grid_metadata

__all__ = ["run_sweep", "time_budget", "record_time_budget", "expand_cells", "runs_on", "run_cell", "compile_network", "Cell", "batch_generator",
           "all_batches"]


def _row_key(row: Dict[str, Any]) -> tuple:
    """A results row's cell key, as Cell.key spells it."""
    return (str(row["model"]), str(row["series"]), int(row["nfe_budget"]), int(row["seed"]))


def run_sweep(cfg: SweepConfig, out_dir: Path, resume: bool = False, progress: bool = True,
              extend: bool = False, jobs: int = 1, workers=None) -> pd.DataFrame:
    """Run every cell of ``cfg`` into ``out_dir`` (results.csv, metadata.json with the run's time
    budget; the CLI adds the report and plots), holding the directory for the whole sweep
    (:class:`RunDirectory`). ``jobs`` > 1 runs cells in that many worker processes
    (:mod:`benchmarks.parallel`; ``workers``: a :class:`~benchmarks.parallel.Workers` the caller
    keeps for more work, else started here); the rows are the same as one process writes."""
    if jobs < 1:
        raise ValueError(f"--jobs must be a positive number of processes, got {jobs}")
    start, before = time.perf_counter(), BUDGET.snapshot()
    dist = init_distributed()
    if jobs > 1 and dist.world > 1:
        raise ValueError(f"--jobs {jobs} cannot be combined with torchrun (world size {dist.world}); use one or the other")
    run_dir = RunDirectory(Path(out_dir))
    error = None
    if dist.rank == 0:
        try:
            with phase("setup"):
                run_dir.open(cfg.to_dict(), resume, extend)
        except Exception as e:  # noqa: BLE001 - passed to every rank, then raised
            error = e
    error = dist.broadcast(error)  # every rank stops when the directory cannot be used
    if error is not None:
        raise error
    try:
        df, sampled = _run(cfg, Path(out_dir), run_dir.rows, dist, progress, jobs, workers)
        if dist.rank == 0:
            spent = {k: v - before.get(k, 0.0) for k, v in BUDGET.snapshot().items()}
            with phase("result_writing"):
                record_time_budget(Path(out_dir), time_budget(spent, time.perf_counter() - start, sampled, jobs))
        return df
    finally:
        run_dir.close()


def _run(cfg: SweepConfig, out_dir: Path, rows: List[Dict[str, Any]], dist, progress: bool, jobs: int,
         workers) -> Tuple[pd.DataFrame, Dict[str, float]]:
    """The sweep proper: (the table, the summed wall_s and count of the cells run now)."""
    from tqdm.auto import tqdm

    csv_path = out_dir / "results.csv"
    with phase("setup"):
        device = resolve_device(cfg.device)
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        ctx = RunContext(cfg, device, getattr(torch, cfg.dtype), {}, {}, dist, out_dir)
        cells, skipped = expand_cells(cfg, lambda spec: load_model(ctx, spec))
    columns = RESULT_COLUMNS + [c for name in cfg.metrics for c in METRICS[name].columns]
    # Columns of rows already there (a run extended with another config's metrics) are kept.
    columns += [c for c in dict.fromkeys(k for r in rows for k in r) if c not in columns]
    done = None
    if dist.rank == 0:
        with phase("result_writing"):
            write_atomic(out_dir / "metadata.json",
                         json.dumps({**metadata(cfg, device, skipped, dist.world), **optimized_grid_metadata(ctx, cells)}, indent=2) + "\n")
            # The header (and any finished rows) once; each new row is then appended.
            if not csv_path.is_file() or _csv_header(csv_path) != columns:
                write_atomic(csv_path, pd.DataFrame(rows, columns=columns).to_csv(index=False))
        done = {_row_key(r) for r in rows}
    done = dist.broadcast(done)

    todo = [c for c in cells if c.key not in done]
    show = progress and dist.rank == 0
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), disable=not show, unit="cell", desc="sweep")
    sampled = {"wall_s": 0.0, "cells": 0}

    def finished(row: Dict[str, Any]) -> None:
        rows.append(row)
        with phase("result_writing"):
            append_csv_row(csv_path, columns, row)
        if row["status"] == "ok":
            sampled["wall_s"] += row["wall_s"]
        sampled["cells"] += 1
        bar.update(1)

    if jobs > 1:
        from ..parallel import run_cells_in_processes

        dealt = (workers.run_cells(cells, todo, out_dir) if workers is not None
                 else run_cells_in_processes(cfg, out_dir, cells, todo, jobs))
        for row, spent in dealt:
            BUDGET.merge(spent)
            bar.set_postfix_str(f"{row['model']} {row['series']} nfe={row['nfe_budget']}", refresh=False)
            finished(row)
    else:
        for cell in todo:
            bar.set_postfix_str(f"{cell.model.key} {cell.series.key} nfe={cell.nfe_budget}", refresh=False)
            row = run_cell(ctx, cell, progress=show)
            if dist.rank == 0:
                finished(row.as_dict())
            else:
                bar.update(1)
    bar.close()
    dist.barrier()
    if dist.rank != 0:
        return pd.DataFrame(columns=columns), sampled
    order = {c.key: i for i, c in enumerate(cells)}
    rows.sort(key=lambda r: order.get(_row_key(r), len(order)))
    df = pd.DataFrame(rows, columns=columns)
    with phase("result_writing"):
        write_atomic(csv_path, df.to_csv(index=False))  # in cell order, whatever order the cells finished in
    return df, sampled


def _csv_header(path: Path) -> List[str]:
    return list(pd.read_csv(path, nrows=0).columns)


def time_budget(phases: Dict[str, float], elapsed: float, sampled: Dict[str, float], jobs: int = 1) -> Dict[str, Any]:
    """metadata.json's ``time_budget``: seconds per phase (:mod:`benchmarks.budget`), the elapsed
    time, and the cells' summed sampling wall time with its share of the time available (elapsed x
    processes). Covers this invocation only (a resumed run's earlier ones are not included)."""
    from ..parallel import worker_threads

    available = elapsed * jobs
    threads = torch.get_num_threads() if jobs == 1 else worker_threads(jobs)
    return {"elapsed_s": elapsed, "jobs": jobs, "torch_threads_per_process": threads,
            "phases": dict(sorted(phases.items())),
            "cells_run": int(sampled["cells"]), "cells_sampling_s": sampled["wall_s"],
            "sampling_share": sampled["wall_s"] / available if available > 0 else float("nan"),
            "scope": "this invocation of the run; phases with jobs > 1 are summed over the worker processes, "
                     "shares are of elapsed x jobs"}


def record_time_budget(out_dir: Path, budget: Dict[str, Any]) -> None:
    """Put ``budget`` into the run's metadata.json (atomically)."""
    path = Path(out_dir) / "metadata.json"
    meta = json.loads(path.read_text())
    meta["time_budget"] = budget
    write_atomic(path, json.dumps(meta, indent=2) + "\n")
