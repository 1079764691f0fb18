"""``--jobs K``: independent cells in K worker processes on one machine.

Each worker builds its own run context (models loaded once per worker, its own reference
caches; the forward probes, one per model and batch shape, are shared through a manager's dict),
expands the same cells from the same config, and runs the cells it is handed by index;
the parent appends each row as it arrives and sorts the table into cell order at the end. A
cell's numbers depend only on its own generators (seeded by seed and batch), never on which
process ran it or what ran before, so the rows equal a single process's (tested, quality
columns exactly). Workers are started with ``spawn`` (a forked copy of a process whose torch
thread pool is running can hang) and share the machine's cores: each gets cores // K torch
threads (torch and the BLAS under numpy), at least one. This module imports nothing heavy, so
``nfebench run`` starts the workers first and they import torch and load the models side by
side with the parent.

The same workers then render the run's plots and sample grids, one per task (:meth:`Workers.submit`),
while the parent writes results.md, so a run with ``--jobs K`` keeps K processes busy after its
last cell too instead of plotting in one.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from .budget import BUDGET, phase

if TYPE_CHECKING:
    from .config import SweepConfig
    from .sweep.cells import Cell

__all__ = ["Workers", "interleave_models", "run_cells_in_processes", "worker_threads"]

_WORKER: Dict[str, Any] = {}

#: A worker's config: the parsed one, or ("path", CONFIG or None for the embedded default) to
#: parse in the worker, so that workers can start before the parent has imported anything heavy.
ConfigSource = Union["SweepConfig", Tuple[str, Optional[str]]]


def _start_worker(config: ConfigSource, threads: int, probes) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    from .config import load_config
    from .distributed import Distributed
    from .sweep.cells import expand_cells
    from .sweep.execute import RunContext, load_model
    from .timing import resolve_device

    torch.set_num_threads(threads)
    # numpy/scipy's BLAS keeps a thread per core otherwise: K workers would each run that many
    # on the K-share of the cores they were given (torch-fidelity's FID took about 1 s a cell
    # that way on 2 busy cores, 8.5 ms with one BLAS thread).
    threadpool_limits(threads)
    try:
        with phase("setup"):
            cfg = load_config(config[1]) if isinstance(config, tuple) else config
            device = resolve_device(cfg.device)
            # the run directory comes with each cell (the workers may start before it is known)
            ctx = RunContext(cfg, device, getattr(torch, cfg.dtype), {}, {}, Distributed(), Path(), probes)
            cells, _ = expand_cells(cfg, lambda spec: load_model(ctx, spec))
    except Exception as e:  # noqa: BLE001 - kept for the first cell: the parent meets a bad config first and stops
        _WORKER.update(error=e)
        return
    _WORKER.update(ctx=ctx, cells=cells)


def _run_one(job: Tuple[int, Tuple, str]) -> Tuple[Dict[str, Any], Dict[str, float]]:
    from .sweep.execute import run_cell

    index, key, out_dir = job
    if "error" in _WORKER:
        raise _WORKER["error"]
    cell = _WORKER["cells"][index]
    if cell.key != key:  # the worker expanded another config than the parent: never mix them
        raise RuntimeError(f"worker cell {cell.key} is not the parent's {key}")
    ctx = _WORKER["ctx"]
    ctx.out_dir = Path(out_dir)
    row = run_cell(ctx, cell)
    return row.as_dict(), BUDGET.take()


def worker_threads(jobs: int) -> int:
    """torch threads per worker process: the machine's cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // jobs)


def interleave_models(cells: List["Cell"]) -> List["Cell"]:
    """The cells dealt out one model at a time (first cell of each model, then the second, ...),
    each model's cells in their own order. In cell order a model's cells are consecutive, so two
    workers would start the same model together and the second would wait on the file lock
    while the first solves that model's reference solution (minutes for a UNet); dealt out this
    way the workers solve different models' references side by side, and the many small
    mixture cells, not one model's heaviest cells, make up the end of the run."""
    by_model: Dict[str, List["Cell"]] = {}
    for cell in cells:
        by_model.setdefault(cell.model.key, []).append(cell)
    queues = list(by_model.values())
    return [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]


class Workers:
    """K worker processes held for one invocation: its cells (:meth:`run_cells`), then any
    other work shared out (:meth:`submit`). Started at first use or by :meth:`start`; a context
    manager that stops them (at once when the block raised)."""

    def __init__(self, config: ConfigSource, jobs: int, threads: Optional[int] = None):
        if jobs < 2:
            raise ValueError(f"worker processes are for --jobs 2 or more, got {jobs}")
        self.config, self.jobs = config, jobs
        self.threads = threads or worker_threads(jobs)
        self._pool = self._manager = None

    def start(self) -> "Workers":
        """Start the processes now (they load the models while the caller prepares the run)."""
        self._workers()
        return self

    def _workers(self):
        if self._pool is None:
            context = mp.get_context("spawn")
            # One forward probe per model and batch shape for all workers, not one per worker.
            self._manager = context.Manager()
            self._pool = context.Pool(self.jobs, initializer=_start_worker,
                                      initargs=(self.config, self.threads, self._manager.dict()))
        return self._pool

    def run_cells(self, cells: List["Cell"], todo: List["Cell"], out_dir: Path
                  ) -> Iterator[Tuple[Dict[str, Any], Dict[str, float]]]:
        """Rows of the ``todo`` cells (as ``ResultRow.as_dict`` gives them) with the time budget
        each worker spent on them, in the order they finish (handed out by :func:`interleave_models`)."""
        index = {c.key: i for i, c in enumerate(cells)}
        jobs = [(index[c.key], c.key, str(out_dir)) for c in interleave_models(todo)]
        yield from self._workers().imap_unordered(_run_one, jobs, chunksize=1)

    def submit(self, phase_name: str, fn: Callable[[Any], Any], items: Iterable[Any]) -> Callable[[], List[Any]]:
        """Start [fn(item) for item in items] in the workers (``fn`` a module-level function, each
        call booked under ``phase_name`` in the worker's budget) and return at once; the returned
        function waits for the results and adds the workers' budgets to this process's."""
        pending = self._workers().map_async(_call_in_phase, [(phase_name, fn, item) for item in items], chunksize=1)

        def results() -> List[Any]:
            done = pending.get()
            for _, spent in done:
                BUDGET.merge(spent)
            return [result for result, _ in done]
        return results

    def close(self, abort: bool = False) -> None:
        if self._pool is not None:
            if abort:
                self._pool.terminate()
            else:
                self._pool.close()
            self._pool.join()
            self._manager.shutdown()
            self._pool = self._manager = None

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(abort=exc_type is not None)


def _call_in_phase(job: Tuple[str, Callable[[Any], Any], Any]) -> Tuple[Any, Dict[str, float]]:
    name, fn, item = job
    with phase(name):
        result = fn(item)
    return result, BUDGET.take()


def run_cells_in_processes(cfg: "SweepConfig", out_dir: Path, cells: List["Cell"], todo: List["Cell"], jobs: int,
                           threads: Optional[int] = None) -> Iterator[Tuple[Dict[str, Any], Dict[str, float]]]:
    """:meth:`Workers.run_cells` in workers started for these cells alone."""
    with Workers(cfg, jobs, threads) as workers:
        yield from workers.run_cells(cells, todo, out_dir)
