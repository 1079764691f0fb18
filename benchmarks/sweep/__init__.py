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
from ..results import RESULT_COLUMNS, read_results, write_atomic
from ..timing import resolve_device
from .cells import Cell, all_batches, batch_generator, expand_cells, runs_on
from .execute import RunContext, compile_network, load_model, run_cell

__all__ = ["run_sweep", "expand_cells", "runs_on", "run_cell", "compile_network", "Cell", "batch_generator",
           "all_batches"]


def run_sweep(cfg: SweepConfig, out_dir: Path, resume: bool = False, progress: bool = True) -> pd.DataFrame:
    """Run every cell of ``cfg`` into ``out_dir`` (results.csv, metadata.json; the CLI adds the
    report and plots)."""
    from tqdm.auto import tqdm

    dist = init_distributed()
    out_dir = Path(out_dir)
    csv_path = out_dir / "results.csv"
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    ctx = RunContext(cfg, device, getattr(torch, cfg.dtype), {}, {}, dist, out_dir)
    cells, skipped = expand_cells(cfg, lambda spec: load_model(ctx, spec))
    columns = RESULT_COLUMNS + [c for name in cfg.metrics for c in METRICS[name].columns]
    rows: List[Dict[str, Any]] = []
    if dist.rank == 0:
        if csv_path.exists() and not resume:
            error = f"{csv_path} exists; pass --resume to continue it or choose another --out"
        else:
            error = ""
            if csv_path.exists():
                rows = read_results(csv_path).to_dict("records")
            for stale in out_dir.glob(".*.tmp") if out_dir.is_dir() else ():  # left by a killed run
                stale.unlink(missing_ok=True)
            write_atomic(out_dir / "metadata.json", json.dumps(metadata(cfg, device, skipped, dist.world), indent=2) + "\n")
        done = {(r["model"], r["series"], int(r["nfe_budget"]), int(r["seed"])) for r in rows}
        plan = (error, done)
    else:
        plan = None
    error, done = dist.broadcast(plan)
    if error:
        raise FileExistsError(error)

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
    rows.sort(key=lambda r: order.get((r["model"], r["series"], int(r["nfe_budget"]), int(r["seed"])), len(order)))
    df = pd.DataFrame(rows, columns=columns)
    write_atomic(csv_path, df.to_csv(index=False))
    return df
