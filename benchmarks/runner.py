"""The sweep runner: (models x sampler series x NFE budgets x seeds) -> one row per cell.

Protocol per cell:
1. Noise and per-step randomness come from per-batch generators seeded by (seed, batch index),
   so every sampler sees the same noise and a sharded run draws the same numbers.
2. Timing: one warm-up network call, then the median of 5 single forward passes at the batch
   shape (``forward_s``), then the whole sampling run timed (CUDA events on GPU); the loop's own
   cost is ``overhead_frac`` = 1 - (counted NFE x forward_s) / wall.
3. Any NaN/Inf in a batch makes the row ``diverged``; the batch is re-run with a watch on the
   network's input to name the first evaluation that saw a non-finite state. An exception makes
   it ``failed`` with the message. The sweep goes on either way.
4. Each finished row is written at once (temporary file, then rename); ``resume`` skips cells
   already in results.csv.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pandas as pd
import torch

import solvers
from score_models import zoo
from score_models.analytic import GaussianMixture
from score_models.parameterization import DiffusionModel

from .config import ModelSpec, SeriesSpec, SweepConfig
from .metrics import METRICS, CellInfo
from .timing import PeakMemory, Stopwatch, median_seconds, resolve_device

__all__ = ["Cell", "expand_cells", "run_sweep", "compile_network", "RESULT_COLUMNS", "write_atomic", "batch_generator", "init_distributed"]

RESULT_COLUMNS = [
    "model", "schedule", "sampler", "series", "options", "nfe_budget", "nfe", "network_passes", "n_samples", "seed",
    "wall_s", "s_per_sample", "nfe_per_s", "forward_s", "overhead_frac", "peak_mem_mb", "device", "dtype",
    "status", "error", "diverged_at_nfe",
]


@dataclass(frozen=True)
class Cell:
    model: ModelSpec
    series: SeriesSpec
    nfe_budget: int
    seed: int

    @property
    def key(self) -> Tuple[str, str, int, int]:
        return (self.model.key, self.series.key, self.nfe_budget, self.seed)


def expand_cells(cfg: SweepConfig) -> Tuple[List[Cell], List[str]]:
    """All cells in run order, and a note for each budget a sampler cannot honour."""
    cells, skipped = [], []
    for model in cfg.models:
        for series in cfg.samplers:
            if model.series is not None and series.key not in model.series:
                continue
            spec = solvers.get(series.sampler)
            if zoo.is_known(model.name) and spec.student != zoo.student_kind(model.name):
                continue  # a student's sampler on a teacher, or a teacher's sampler on a student
            for nfe in series.nfe or model.nfe or cfg.nfe:
                if not spec.adaptive:
                    try:
                        spec.steps_for_budget(nfe, spec.ends_at_data(series.options), series.options)
                    except ValueError as e:
                        skipped.append(f"{series.key} @ nfe={nfe}: {e}")
                        continue
                for seed in cfg.seeds:
                    cells.append(Cell(model, series, nfe, seed))
    return cells, sorted(set(skipped))


def batch_generator(seed: int, batch_index: int, stream: int) -> torch.Generator:
    """Generator for (seed, batch, stream): stream 0 draws the noise, stream 1 the sampler's steps."""
    return torch.Generator().manual_seed(seed * 1_000_003 + 2 * batch_index + stream)


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


class Distributed:
    """This process's rank among ``world`` (torchrun), or a single process; ``gather`` collects
    one picklable object per rank on rank 0 (gloo on the CPU, nccl on GPUs)."""

    def __init__(self) -> None:
        import torch.distributed as tdist

        self.tdist = tdist
        self.active = tdist.is_available() and tdist.is_initialized()
        self.rank = tdist.get_rank() if self.active else 0
        self.world = tdist.get_world_size() if self.active else 1

    def gather(self, obj: Any) -> List[Any]:
        if not self.active:
            return [obj]
        out = [None] * self.world if self.rank == 0 else None
        self.tdist.gather_object(obj, out, dst=0)
        return out if self.rank == 0 else []

    def barrier(self) -> None:
        if self.active:
            self.tdist.barrier()

    def broadcast(self, obj: Any) -> Any:
        if not self.active:
            return obj
        box = [obj]
        self.tdist.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed() -> Distributed:
    """Join the process group torchrun describes in the environment (if any)."""
    import torch.distributed as tdist

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        tdist.init_process_group(backend=backend)
    return Distributed()


@dataclass
class _RunContext:
    cfg: SweepConfig
    device: torch.device
    dtype: torch.dtype
    models: Dict[str, DiffusionModel]
    cache: Dict[Any, Any]
    dist: Distributed
    out_dir: Path

    def save_samples(self, cell: Cell, samples: torch.Tensor) -> None:
        name = "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in "_".join(map(str, cell.key)))
        path = self.out_dir / "samples" / f"{name}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(samples, tmp)
        os.replace(tmp, path)


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


def _load_model(ctx: _RunContext, spec: ModelSpec) -> DiffusionModel:
    if spec.key not in ctx.models:
        model = zoo.load(spec.name, schedule=spec.schedule).to(ctx.device)
        if model.sample_shape is None:
            raise ValueError(f"model {spec.name!r} does not declare its sample_shape")
        if ctx.cfg.compile:
            compile_network(model)
        ctx.models[spec.key] = model
    return ctx.models[spec.key]


def all_batches(n_samples: int, batch_size: int) -> List[Tuple[int, int]]:
    """(batch index, size) covering n_samples; the batching is fixed by the config alone."""
    return [(i, min(batch_size, n_samples - i * batch_size)) for i in range(math.ceil(n_samples / batch_size))]


def _sample_batch(ctx: _RunContext, model: DiffusionModel, cell: Cell, index: int, size: int
                  ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    noise = torch.randn((size,) + model.sample_shape, generator=batch_generator(cell.seed, index, 0))
    noise = noise.to(device=ctx.device, dtype=ctx.dtype)
    stats: Dict[str, Any] = {}
    out = solvers.sample(cell.series.sampler, model, noise, nfe=cell.nfe_budget,
                         generator=batch_generator(cell.seed, index, 1), stats=stats, **cell.series.options)
    return noise, out, stats


def run_cell(ctx: _RunContext, cell: Cell, progress: bool = False) -> Dict[str, Any]:
    """Sample one cell batch by batch (this rank's share), time it, stream the batches into the
    metrics on rank 0; never raises for a sampler's failure."""
    cfg, dist = ctx.cfg, ctx.dist
    n_samples = cell.model.n_samples or cfg.n_samples
    batches = all_batches(n_samples, cfg.batch_size)
    row: Dict[str, Any] = dict(
        model=cell.model.key, schedule="", sampler=cell.series.sampler, series=cell.series.key,
        options=json.dumps(cell.series.options, sort_keys=True), nfe_budget=cell.nfe_budget, nfe=math.nan,
        network_passes=math.nan,
        n_samples=n_samples, seed=cell.seed, wall_s=math.nan, s_per_sample=math.nan,
        nfe_per_s=math.nan, forward_s=math.nan, overhead_frac=math.nan, peak_mem_mb=math.nan,
        device=str(ctx.device), dtype=cfg.dtype, status="ok", error="", diverged_at_nfe=math.nan,
    )
    for name in cfg.metrics:
        row.update({col: math.nan for col in METRICS[name].columns})
    saved: List[torch.Tensor] = []
    try:
        model = _load_model(ctx, cell.model)
        row["schedule"] = model.schedule.name
        metrics = []
        if dist.rank == 0:
            info = CellInfo(model=model, model_key=cell.model.key, sampler=cell.series.sampler,
                            options=cell.series.options, seed=cell.seed, n_samples=n_samples, device=ctx.device,
                            reference={**cfg.reference, **dict(cell.model.reference)}, cache=ctx.cache)
            metrics = [METRICS[name](info) for name in cfg.metrics]
        with torch.inference_mode():
            probe = torch.zeros((batches[0][1],) + model.sample_shape, device=ctx.device, dtype=ctx.dtype)
            t_probe = model.schedule.t_max
            row["forward_s"] = median_seconds(lambda: model.raw(probe, t_probe), ctx.device)
        wall, peak, total_nfe, max_nfe, max_passes, diverged = 0.0, 0.0, 0, 0, 0, None
        from tqdm.auto import tqdm

        batch_bar = tqdm(total=len(batches), disable=not progress or len(batches) < 2, leave=False,
                         unit="batch", desc="cell")
        # Rounds of world_size batches: rank r samples batch round*world + r; rank 0 gathers them
        # in batch order and streams them into the metrics (at most world batches held at once).
        for first in range(0, len(batches), dist.world):
            mine = batches[first + dist.rank] if first + dist.rank < len(batches) else None
            result = None
            if mine is not None:
                with torch.inference_mode(), PeakMemory(ctx.device) as mem, Stopwatch(ctx.device) as sw:
                    noise, out, stats = _sample_batch(ctx, model, cell, *mine)
                finite = bool(torch.isfinite(out).all())
                result = (mine, noise.cpu(), out.cpu(), stats["nfe"], sw.seconds, mem.mb, finite, stats["network_passes"])
            gathered = [r for r in dist.gather(result) if r is not None]
            batch_bar.update(len(gathered))
            if dist.rank != 0:
                continue
            wall += max(r[4] for r in gathered)  # ranks sample side by side: a round lasts its slowest batch
            peak = max([peak] + [r[5] for r in gathered])
            total_nfe += sum(r[3] for r in gathered)
            max_nfe = max([max_nfe] + [r[3] for r in gathered])
            max_passes = max([max_passes] + [r[7] for r in gathered])
            for (index, size), noise, out, _, _, _, finite, _ in gathered:
                if not finite and diverged is None:
                    diverged = (index, size)
                if diverged is None:
                    for m in metrics:
                        m.update(index, noise, out)
                    if cfg.save_samples:
                        saved.append(out)
        batch_bar.close()
        if dist.rank != 0:
            return row
        row.update(nfe=max_nfe, network_passes=max_passes, peak_mem_mb=peak)
        if diverged is not None:
            row["status"] = "diverged"
            row["diverged_at_nfe"] = _find_divergence(ctx, model, cell, *diverged)
            row["error"] = f"non-finite samples (first in batch {diverged[0]})"
            return row
        row.update(wall_s=wall, s_per_sample=wall / n_samples, nfe_per_s=total_nfe / wall,
                   overhead_frac=1.0 - total_nfe * row["forward_s"] / wall)
        for m in metrics:
            row.update(m.result())
        if saved:
            ctx.save_samples(cell, torch.cat(saved))
    except Exception as e:  # a failing cell is a row, not the end of the sweep
        row["status"] = "failed"
        row["error"] = f"{type(e).__name__}: {e}".replace("\n", " ")[:500]
        if os.environ.get("NFEBENCH_DEBUG"):
            traceback.print_exc()
    return row


def _find_divergence(ctx: _RunContext, model: DiffusionModel, cell: Cell, index: int, size: int) -> float:
    """Re-run one batch with a watch on the network's input: the first evaluation that saw NaN/Inf."""
    watch = _NonFiniteWatch(model.net)
    original, model.net = model.net, watch
    try:
        with torch.inference_mode():
            _sample_batch(ctx, model, cell, index, size)
    finally:
        model.net = original
    return float(watch.first_bad) if watch.first_bad is not None else math.nan


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def metadata(cfg: SweepConfig, device: torch.device, skipped: List[str], world_size: int = 1) -> Dict[str, Any]:
    import numpy
    import scipy
    import torchdiffeq

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
                "scipy": scipy.__version__, "pandas": pd.__version__, "torchdiffeq": torchdiffeq.__version__}
    try:
        from importlib.metadata import version
        versions["nfebench"] = version("nfebench")
    except Exception:
        versions["nfebench"] = "unknown"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "config": cfg.to_dict(),
        "versions": versions,
        "git_commit": _git_commit(),
        "device": str(device),
        "device_name": device_name,
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size,
        "protocol": {
            "n_samples": cfg.n_samples, "batch_size": cfg.batch_size, "seeds": cfg.seeds, "dtype": cfg.dtype,
            "reference": cfg.reference,
            "models": {m.key: {"n_samples": m.n_samples or cfg.n_samples,
                               "reference": {**cfg.reference, **dict(m.reference)}} for m in cfg.models},
            "noise": "per batch: torch.Generator seeded seed*1000003 + 2*batch (noise) and +1 (sampler steps)",
            "solver_error": "RMS per dimension vs the exact PF-ODE endpoint from the same noise "
                            "(GaussianMixture: scipy DOP853 rtol=atol=1e-11; other models: rk45 at reference rtol)",
            "distribution_reference": "exact data samples of the GaussianMixture, same n, fixed seed",
            "timing": "warm-up call, median of 5 forward passes (forward_s), then the whole sampling run",
        },
        "skipped": skipped,
        "argv": sys.argv,
    }


def read_results(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"error": str, "options": str}).fillna({"error": ""})


def run_sweep(cfg: SweepConfig, out_dir: Path, resume: bool = False, progress: bool = True) -> pd.DataFrame:
    """Run every cell of ``cfg`` into ``out_dir`` (results.csv, metadata.json; see report for the
    rest). Under torchrun every rank samples its share of each cell and rank 0 alone writes."""
    from tqdm.auto import tqdm

    dist = init_distributed()
    out_dir = Path(out_dir)
    csv_path = out_dir / "results.csv"
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = getattr(torch, cfg.dtype)
    cells, skipped = expand_cells(cfg)
    columns = RESULT_COLUMNS + [c for name in cfg.metrics for c in METRICS[name].columns]
    rows: List[Dict[str, Any]] = []
    if dist.rank == 0:
        if csv_path.exists() and not resume:
            error = f"{csv_path} exists; pass --resume to continue it or choose another --out"
        else:
            error = ""
            if csv_path.exists():
                rows = read_results(csv_path).to_dict("records")
            write_atomic(out_dir / "metadata.json",
                         json.dumps(metadata(cfg, device, skipped, dist.world), indent=2) + "\n")
        done = {(r["model"], r["series"], int(r["nfe_budget"]), int(r["seed"])) for r in rows}
        plan = (error, done)
    else:
        plan = None
    error, done = dist.broadcast(plan)
    if error:
        raise FileExistsError(error)

    ctx = _RunContext(cfg, device, dtype, {}, {}, dist, out_dir)
    todo = [c for c in cells if c.key not in done]
    show = progress and dist.rank == 0
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), disable=not show, unit="cell", desc="sweep")
    for cell in todo:
        bar.set_postfix_str(f"{cell.model.key} {cell.series.key} nfe={cell.nfe_budget}", refresh=False)
        row = run_cell(ctx, cell, progress=show)
        if dist.rank == 0:
            rows.append(row)
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
