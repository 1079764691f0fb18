"""The sweep: (models x sampler series x NFE budgets x seeds) -> one row per cell.

:mod:`.cells` expands a config into cells and seeds their random streams, :mod:`.execute` runs
one cell; :func:`run_sweep` runs them all into a run directory: each finished row is written at
once (atomically), and ``resume`` skips cells already in results.csv. Under torchrun every rank
samples its share of each cell and rank 0 alone writes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pandas as pd
import torch

from ..config import SweepConfig
from ..distributed import init_distributed
from ..metrics import METRICS
from ..provenance import metadata
from ..results import RESULT_COLUMNS, write_atomic
from ..rundir import RunDirectory
from ..timing import resolve_device
from .cells import Cell, all_batches, batch_generator, expand_cells, runs_on
from .execute import RunContext, compile_network, load_model, run_cell
from .optimized_grids import optimized_grid_metadata

__all__ = ["run_sweep", "expand_cells", "runs_on", "run_cell", "compile_network", "Cell", "batch_generator",
           "all_batches"]


def _row_key(row: Dict[str, Any]) -> tuple:
    """A results row's cell key, as Cell.key spells it."""
    return (str(row["model"]), str(row["series"]), int(row["nfe_budget"]), int(row["seed"]))


def run_sweep(cfg: SweepConfig, out_dir: Path, resume: bool = False, progress: bool = True,
              extend: bool = False) -> pd.DataFrame:
    """Run every cell of ``cfg`` into ``out_dir`` (results.csv, metadata.json; the CLI adds the
    report and plots), holding the directory for the whole sweep (:class:`RunDirectory`)."""
    dist = init_distributed()
    run_dir = RunDirectory(Path(out_dir))
    error = None
    if dist.rank == 0:
        try:
            run_dir.open(cfg.to_dict(), resume, extend)
        except Exception as e:  # noqa: BLE001 - passed to every rank, then raised
            error = e
    error = dist.broadcast(error)  # every rank stops when the directory cannot be used
    if error is not None:
        raise error
    try:
        return _run(cfg, Path(out_dir), run_dir.rows, dist, progress)
    finally:
        run_dir.close()


def _run(cfg: SweepConfig, out_dir: Path, rows: List[Dict[str, Any]], dist, progress: bool) -> pd.DataFrame:
    from tqdm.auto import tqdm

    csv_path = out_dir / "results.csv"
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
        write_atomic(out_dir / "metadata.json", json.dumps({**metadata(cfg, device, skipped, dist.world), **optimized_grid_metadata(ctx, cells)}, indent=2) + "\n")
        done = {_row_key(r) for r in rows}
    done = dist.broadcast(done)

    todo = [c for c in cells if c.key not in done]
    show = progress and dist.rank == 0
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), disable=not show, unit="cell", desc="sweep")
    for cell in todo:
        bar.set_postfix_str(f"{cell.model.key} {cell.series.key} nfe={cell.nfe_budget}", refresh=False)
        row = run_cell(ctx, cell, progress=show)
        if dist.rank == 0:
            rows.append(row.as_dict())
            write_atomic(csv_path, pd.DataFrame(rows, columns=columns).to_csv(index=False))
        bar.update(1)
    bar.close()
    dist.barrier()
    if dist.rank != 0:
        return pd.DataFrame(columns=columns)
    order = {c.key: i for i, c in enumerate(cells)}
    rows.sort(key=lambda r: order.get(_row_key(r), len(order)))
    df = pd.DataFrame(rows, columns=columns)
    write_atomic(csv_path, df.to_csv(index=False))
    return df
