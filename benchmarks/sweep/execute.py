"""Running one cell: sample it batch by batch (this rank's share), time it, stream the batches
into the metrics on rank 0, and turn any failure into a row.

Protocol per cell:
1. Noise and per-step randomness come from per-batch generators seeded by (seed, batch index),
   so every sampler sees the same noise and a sharded run draws the same numbers.
2. Timing: one warm-up network call, then the median of 3 single forward passes at the batch
   shape (``forward_s``, measured once per model and batch shape), then the whole sampling run timed (CUDA events on GPU); the loop's own
   cost is ``overhead_frac`` = 1 - (counted NFE x forward_s) / wall.
3. Any NaN/Inf in a batch makes the row ``diverged``; the batch is re-run with a watch on the
   network's input to name the first evaluation that saw a non-finite state. An exception makes
   it ``failed`` with the message. The sweep goes on either way.
"""
from __future__ import annotations

import io
import json
import math
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, MutableMapping, Optional, Tuple

import torch

import solvers
from score_models import zoo
from score_models.analytic import GaussianMixture
from score_models.parameterization import DiffusionModel

from ..budget import BUDGET, phase
from ..config import ModelSpec, SweepConfig
from ..distributed import Distributed
from ..metrics import METRICS, REFERENCE_SEED, CellInfo
from ..results import ResultRow, safe_file_name, write_bytes_atomic
from ..timing import PeakMemory, Stopwatch, median_seconds
from .cells import Cell, all_batches, batch_generator
from .optimized_grids import series_options
from solvers.cuda_graph import GraphedSampler, graph_refusal

__all__ = ["RunContext", "BatchResult", "run_cell", "compile_network", "load_model"]


@dataclass
class RunContext:
    cfg: SweepConfig
    device: torch.device
    dtype: torch.dtype
    models: Dict[str, DiffusionModel]
    cache: Dict[Any, Any]
    dist: Distributed
    out_dir: Path
    # forward probes shared with the other --jobs workers (a manager's dict), else kept in cache
    shared_probes: Optional[MutableMapping] = None

    def save_samples(self, cell: Cell, samples: torch.Tensor) -> None:
        name = safe_file_name("_".join(map(str, cell.key)))
        buffer = io.BytesIO()
        torch.save(samples, buffer)
        write_bytes_atomic(self.out_dir / "samples" / f"{name}.pt", buffer.getvalue())

    def save_preview(self, cell: Cell, model: DiffusionModel, samples: torch.Tensor) -> None:
        """Keep the first samples of the cell (the same noise for every sampler) for the report's
        sample grids: a few images of an image-shaped model, a scatter's worth of a 2-D one."""
        preview = preview_samples(model, samples)
        if preview is None:
            return
        with phase("sample_previews"):
            _save_tensor(self.out_dir / PREVIEW_DIR / preview_file_name(cell.key), preview)
            data_path = self.out_dir / PREVIEW_DIR / preview_data_file_name(cell.model.key)
            if preview.dim() == 2 and hasattr(model, "sample_data") and not data_path.is_file():
                data = model.sample_data(len(preview), generator=torch.Generator().manual_seed(REFERENCE_SEED))
                _save_tensor(data_path, data.float())


@dataclass
class BatchResult:
    """One batch as its rank reports it to rank 0."""

    index: int
    size: int
    noise: torch.Tensor
    samples: torch.Tensor
    nfe: int
    network_passes: int
    sequential_depth: int
    seconds: float
    peak_mb: float
    finite: bool


#: The run directory's folder of preview samples, one file per cell (see RunContext.save_preview).
PREVIEW_DIR = "previews"
#: How many samples a preview keeps: images shown per grid cell, points per scatter.
PREVIEW_IMAGES, PREVIEW_POINTS = 4, 500


def preview_file_name(key: Tuple[str, str, int, int]) -> str:
    return safe_file_name("_".join(map(str, key))) + ".pt"


def preview_data_file_name(model_key: str) -> str:
    """The exact data points a 2-D model's scatter previews are drawn against."""
    return "data--" + safe_file_name(model_key) + ".pt"


def _save_tensor(path: Path, tensor: torch.Tensor) -> None:
    buffer = io.BytesIO()
    torch.save(tensor.detach().cpu().clone(), buffer)
    write_bytes_atomic(path, buffer.getvalue())


def preview_samples(model: DiffusionModel, samples: torch.Tensor) -> Optional[torch.Tensor]:
    """The samples a preview keeps, or None for shapes the report does not draw."""
    shape = tuple(model.sample_shape or ())
    if len(shape) == 3 and shape[0] in (1, 3):
        return samples[:PREVIEW_IMAGES].float()
    if shape == (2,):
        return samples[:PREVIEW_POINTS].float()
    return None


class _NonFiniteWatch:
    """Wraps a network and records the first call whose input state is not finite."""

    def __init__(self, net: Any):
        self.net, self.calls, self.first_bad = net, 0, None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kw: Any) -> torch.Tensor:
        self.calls += 1
        if self.first_bad is None and not bool(torch.isfinite(x).all()):
            self.first_bad = self.calls
        out = self.net(x, t, **kw)
        if self.first_bad is None and not bool(torch.isfinite(out).all()):
            self.first_bad = self.calls
        return out


def compile_network(model: DiffusionModel) -> bool:
    """torch.compile (static shapes) the network module of ``model``, or of the model a guidance
    wrapper wraps; False where there is none worth compiling (exact mixtures, plain functions).
    Measured on 2 CPU cores (python -m benchmarks.perf.overhead): 1.3-1.6x on the digits UNet
    at batch 256, 0.95-0.97x on the toy2d MLP, up to ~15 s of compilation per batch shape (less
    when inductor's on-disk cache already holds the graph)."""
    owner = getattr(model, "base", model)
    if isinstance(owner, GaussianMixture) or not isinstance(owner.net, torch.nn.Module):
        return False
    owner.net = torch.compile(owner.net, dynamic=False)
    return True


def load_model(ctx: RunContext, spec: ModelSpec) -> DiffusionModel:
    """The model of a spec on the run's device and in its dtype, loaded once per run."""
    if spec.key not in ctx.models:
        model = zoo.load(spec.name, schedule=spec.schedule).to(ctx.device)
        if isinstance(model.net, torch.nn.Module):
            model.net.to(ctx.dtype)  # a float64 run evaluates the network in float64 too
        if model.sample_shape is None:
            raise ValueError(f"model {spec.name!r} does not declare its sample_shape")
        if ctx.cfg.compile:
            compile_network(model)
        ctx.models[spec.key] = model
    return ctx.models[spec.key]


def _sample_batch(ctx: RunContext, model: DiffusionModel, cell: Cell, index: int, size: int,
                  graphed: Optional[GraphedSampler] = None) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    noise = torch.randn((size,) + model.sample_shape, generator=batch_generator(cell.seed, index, 0))
    noise = noise.to(device=ctx.device, dtype=ctx.dtype)
    stats: Dict[str, Any] = {}
    if graphed is not None:
        return noise, graphed(noise, stats=stats), stats
    out = solvers.sample(cell.series.sampler, model, noise, nfe=cell.nfe_budget,
                         generator=batch_generator(cell.seed, index, 1), stats=stats, **series_options(ctx, model, cell))
    return noise, out, stats


def _graph_for(ctx: RunContext, model: DiffusionModel, cell: Cell, size: int) -> Optional[GraphedSampler]:
    """The cell's sampler captured as a CUDA graph for batches of ``size`` (``[run] cuda_graph``),
    or None where it samples eagerly. Captured untimed, once per series, budget and batch size;
    only the latest capture is kept, so graphs' memory pools do not pile up over a sweep."""
    options = series_options(ctx, model, cell)
    if not ctx.cfg.cuda_graph or graph_refusal(cell.series.sampler, options, ctx.device) is not None:
        return None
    key = (cell.model.key, cell.series.key, cell.nfe_budget, size)
    held = ctx.cache.get("cuda_graph")
    if held is None or held[0] != key:
        ctx.cache.pop("cuda_graph", None)
        with phase("cuda_graph_capture"), torch.inference_mode():
            example = torch.zeros((size,) + model.sample_shape, device=ctx.device, dtype=ctx.dtype)
            ctx.cache["cuda_graph"] = (key, GraphedSampler(cell.series.sampler, model, example,
                                                           nfe=cell.nfe_budget, **options))
    return ctx.cache["cuda_graph"][1]


def _run_batch(ctx: RunContext, model: DiffusionModel, cell: Cell, index: int, size: int) -> BatchResult:
    graphed = _graph_for(ctx, model, cell, size)
    with phase("sampler_loop"), torch.inference_mode(), PeakMemory(ctx.device) as mem, Stopwatch(ctx.device) as sw:
        noise, out, stats = _sample_batch(ctx, model, cell, index, size, graphed)
    return BatchResult(index, size, noise.cpu(), out.cpu(), stats["nfe"], stats["network_passes"],
                       stats["sequential_depth"], sw.seconds,
                       mem.mb, bool(torch.isfinite(out).all()))


def run_cell(ctx: RunContext, cell: Cell, progress: bool = False) -> ResultRow:
    """Sample one cell batch by batch (this rank's share), time it, stream the batches into the
    metrics on rank 0; never raises for a sampler's failure."""
    from tqdm.auto import tqdm

    cfg, dist = ctx.cfg, ctx.dist
    n_samples = cell.model.n_samples or cfg.n_samples
    batches = all_batches(n_samples, cfg.batch_size)
    row = ResultRow(model=cell.model.key, sampler=cell.series.sampler, series=cell.series.key,
                    options=json.dumps(cell.series.options, sort_keys=True), nfe_budget=cell.nfe_budget,
                    n_samples=n_samples, seed=cell.seed, device=str(ctx.device), dtype=cfg.dtype,
                    metrics={col: math.nan for name in cfg.metrics for col in METRICS[name].columns})
    saved: List[torch.Tensor] = []
    try:
        model = load_model(ctx, cell.model)
        row.schedule = model.schedule.name
        metrics = []
        if dist.rank == 0:
            info = CellInfo(model=model, model_key=cell.model.key, sampler=cell.series.sampler,
                            options=cell.series.options, seed=cell.seed, n_samples=n_samples, device=ctx.device,
                            reference={**cfg.reference, **dict(cell.model.reference)}, cache=ctx.cache,
                            nfe_budget=cell.nfe_budget)
            metrics = []
            for name in cfg.metrics:
                with phase(f"metric:{name}"):
                    metrics.append((name, METRICS[name](info)))
        row.forward_s = _forward_seconds(ctx, model, cell, batches[0][1])
        wall, peak, total_nfe, max_nfe, max_passes, max_depth, diverged = 0.0, 0.0, 0, 0, 0, 0, None
        batch_bar = tqdm(total=len(batches), disable=not progress or len(batches) < 2, leave=False,
                         unit="batch", desc="cell")
        # Rounds of world_size batches: rank r samples batch round*world + r; rank 0 gathers them
        # in batch order and streams them into the metrics (at most world batches held at once).
        for first in range(0, len(batches), dist.world):
            mine: Optional[BatchResult] = None
            if first + dist.rank < len(batches):
                mine = _run_batch(ctx, model, cell, *batches[first + dist.rank])
            gathered: List[BatchResult] = [r for r in dist.gather(mine) if r is not None]
            batch_bar.update(len(gathered))
            if dist.rank != 0:
                continue
            wall += max(r.seconds for r in gathered)  # ranks sample side by side: a round lasts its slowest batch
            peak = max([peak] + [r.peak_mb for r in gathered])
            total_nfe += sum(r.nfe for r in gathered)
            max_nfe = max([max_nfe] + [r.nfe for r in gathered])
            max_passes = max([max_passes] + [r.network_passes for r in gathered])
            max_depth = max([max_depth] + [r.sequential_depth for r in gathered])
            for batch in gathered:
                if not batch.finite and diverged is None:
                    diverged = (batch.index, batch.size)
                if diverged is None:
                    for name, m in metrics:
                        with phase(f"metric:{name}"):
                            m.update(batch.index, batch.noise, batch.samples)
                    if cfg.save_samples:
                        saved.append(batch.samples)
                    if batch.index == 0:
                        ctx.save_preview(cell, model, batch.samples)
        batch_bar.close()
        if dist.rank != 0:
            return row
        row.nfe, row.network_passes, row.sequential_depth, row.peak_mem_mb = max_nfe, max_passes, max_depth, peak
        BUDGET.move("sampler_loop", "network_forwards", total_nfe * row.forward_s)
        if diverged is not None:
            row.status = "diverged"
            with phase("divergence_rerun"):
                row.diverged_at_nfe = _find_divergence(ctx, model, cell, *diverged)
            row.error = f"non-finite samples (first in batch {diverged[0]})"
            return row
        row.wall_s, row.s_per_sample, row.nfe_per_s = wall, wall / n_samples, total_nfe / wall
        row.overhead_frac = 1.0 - total_nfe * row.forward_s / wall
        for name, m in metrics:
            with phase(f"metric:{name}"):
                row.metrics.update(m.result())
        if saved:
            ctx.save_samples(cell, torch.cat(saved))
    except Exception as e:  # a failing cell is a row, not the end of the sweep
        row.status = "failed"
        row.error = f"{type(e).__name__}: {e}".replace("\n", " ")[:500]
        if os.environ.get("NFEBENCH_DEBUG"):
            traceback.print_exc()
    return row


def _forward_seconds(ctx: RunContext, model: DiffusionModel, cell: Cell, batch: int) -> float:
    """One forward pass's time at the cell's batch shape: a warm-up call, then the median of 3,
    measured once per model and batch shape and shared by its cells (and by the --jobs workers)."""
    key = ("forward_s", cell.model.key, batch)
    if key not in ctx.cache:
        shared = ctx.shared_probes
        if shared is not None and key in shared:
            ctx.cache[key] = shared[key]
        else:
            with phase("forward_probe"), torch.inference_mode():
                probe = torch.zeros((batch,) + model.sample_shape, device=ctx.device, dtype=ctx.dtype)
                t_probe = model.schedule.t_max
                measured = median_seconds(lambda: model.raw(probe, t_probe), ctx.device, repeats=3)
            # two workers may probe side by side: every cell of the run takes the first value stored
            ctx.cache[key] = measured if shared is None else shared.setdefault(key, measured)
    return ctx.cache[key]


def _find_divergence(ctx: RunContext, model: DiffusionModel, cell: Cell, index: int, size: int) -> float:
    """Re-run one batch with a watch on the network's input: the first evaluation that saw NaN/Inf."""
    watch = _NonFiniteWatch(model.net)
    original, model.net = model.net, watch
    try:
        with torch.inference_mode():
            _sample_batch(ctx, model, cell, index, size)
    finally:
        model.net = original
    return float(watch.first_bad) if watch.first_bad is not None else math.nan
