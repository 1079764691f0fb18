"""Grids named by a sweep config rather than given: ``grid = "optimized:<method>"`` (computed
once per model x sampler x NFE with solvers.optimize_grid, cached on disk beside the reference
features) and ``grid = "file:<path>"`` (times read from JSON). :func:`series_options` gives a
cell's sampler options with the grid as a tensor; :func:`optimized_grid_metadata` resolves every
optimised grid of a sweep before its cells run and reports each one's cost for metadata.json."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List

import torch

import solvers
from score_models.parameterization import DiffusionModel

from ..grid_spec import grid_kind, load_grid_file, method_settings, options_without_special_grid
from ..metrics.features import cache_dir
from ..provenance import model_fingerprint
from ..results import write_atomic
from .cells import Cell

__all__ = ["series_options", "optimized_grid_metadata", "resolve_grid"]

#: Bumped when the cache's record changes; each method's own revision (solvers' METHOD_VERSIONS)
#: and all of its settings, defaults included, are part of the identity too.
CACHE_VERSION = 2


def _identity(ctx: Any, model: DiffusionModel, cell: Cell, method: str) -> Dict[str, Any]:
    from solvers.optimized_grids import METHOD_VERSIONS

    return {"version": CACHE_VERSION, "method_version": METHOD_VERSIONS[method], "model": cell.model.name, "model_schedule": cell.model.schedule,
            "schedule": model.schedule.name, "weights": model_fingerprint(model), "sampler": cell.series.sampler,
            "options": options_without_special_grid(cell.series.options), "nfe": cell.nfe_budget, "method": method,
            "settings": method_settings(method, ctx.cfg.grid_optimizer)}


def resolve_grid(ctx: Any, model: DiffusionModel, cell: Cell) -> Dict[str, Any]:
    """The cell's grid as {"times": tensor, ...}: an optimised grid from the run's memory, the disk
    cache or computed now (with its cost), or a file's times."""
    what, value = grid_kind(cell.series.options)
    if what == "file":
        key = ("grid_file", value)
        if key not in ctx.cache:
            ctx.cache[key] = {"times": load_grid_file(value), "source": value}
        return ctx.cache[key]
    identity = _identity(ctx, model, cell, value)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    key = ("optimized_grid", digest)
    if key in ctx.cache:
        return ctx.cache[key]
    path = cache_dir({**ctx.cfg.reference, **dict(cell.model.reference)}) / "grids" / f"grid-{digest}.json"
    if path.is_file():
        record = json.loads(path.read_text())
        cached = True
    else:
        settings = dict(identity["settings"])
        seed = settings.pop("seed", 0)
        stats: Dict[str, Any] = {}
        times = solvers.optimize_grid(model, cell.series.sampler, cell.nfe_budget, value, seed=seed, settings=settings,
                                      stats=stats, **identity["options"])
        record = {**identity, "times": times.tolist(), "cost": {k: stats.pop(k) for k in
                                                                 ("optimizer_nfe", "optimizer_seconds")},
                  "info": {k: v for k, v in stats.items() if isinstance(v, (int, float, str))}}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(record, indent=2) + "\n")
        cached = False
    ctx.cache[key] = {**record, "times": torch.tensor(record["times"], dtype=torch.float64), "cached": cached,
                      "cache_file": str(path)}
    return ctx.cache[key]


def series_options(ctx: Any, model: DiffusionModel, cell: Cell) -> Dict[str, Any]:
    """The sampler options of a cell, with an optimised or file grid as its tensor of times."""
    if grid_kind(cell.series.options) is None:
        return cell.series.options
    return {**options_without_special_grid(cell.series.options), "grid": resolve_grid(ctx, model, cell)["times"]}


def optimized_grid_metadata(ctx: Any, cells: List[Cell]) -> Dict[str, Any]:
    """Resolve every optimised grid of the sweep (once per model x series x NFE) and report them:
    {"optimized_grids": [{model, series, nfe, method, times, cost, cached}, ...]}, or {} when the
    sweep has none."""
    from .execute import load_model

    seen, report = set(), []
    for cell in cells:
        kind = grid_kind(cell.series.options)
        if kind is None or kind[0] != "optimized" or (cell.model.key, cell.series.key, cell.nfe_budget) in seen:
            continue
        seen.add((cell.model.key, cell.series.key, cell.nfe_budget))
        grid = resolve_grid(ctx, load_model(ctx, cell.model), cell)
        report.append({"model": cell.model.key, "series": cell.series.key, "nfe": cell.nfe_budget, "method": kind[1],
                       "times": grid["times"].tolist(), "cost": grid["cost"], "cached": grid["cached"],
                       "settings": grid["settings"]})
    return {"optimized_grids": report} if report else {}
