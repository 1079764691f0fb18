"""``solver_error``: the endpoint error against the exact PF-ODE solution from the same noise.

A reference solution depends only on the model, the noise and the time span, not on the sampler,
so it is solved once per run and kept on disk (``solutions/`` in the reference cache directory,
keyed by a digest of the model's weights or closed form, the noise's bytes, the span, the
tolerance, dtype and device type): later runs, and the other worker processes of ``--jobs``,
read it instead of solving again (a file lock makes the workers wait for the one solving)."""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
from typing import Dict

import torch

import solvers
from score_models.analytic import GaussianMixture
from score_models.weights import load_tensors

from ..budget import phase
from ..provenance import model_fingerprint
from ..results import write_bytes_atomic
from .base import CellInfo, Metric, register_metric
from .features import cache_dir

#: Bumped when the way references are solved changes, so that cached solutions are solved again.
SOLUTION_CACHE_VERSION = 1

__all__ = ["SolverError"]


@register_metric("solver_error")
class SolverError(Metric):
    columns = ("solver_error",)

    def __init__(self, cell: CellInfo):
        super().__init__(cell)
        # A model with native samplers (a few-step student) is not sampled along its own PF-ODE,
        # so that ODE's solution is no reference for it (its quality shows in the distribution metrics).
        self.applies = not solvers.get(cell.sampler).is_stochastic(cell.options) and not cell.model.native_samplers
        self.sum_sq, self.count = 0.0, 0

    def _reference(self, batch_index: int, noise: torch.Tensor) -> torch.Tensor:
        """The true PF-ODE endpoint from this batch's noise over the sampler's time span (cached)."""
        cell = self.cell
        sched = cell.model.schedule
        to_zero = solvers.get(cell.sampler).ends_at_data(cell.options, cell.model)
        t_max = float(cell.options.get("t_max", sched.t_max))
        t_end = sched.t_data if to_zero else float(cell.options.get("t_min", sched.t_min))
        rtol = float(cell.reference.get("rtol", 1e-6))
        key = ("ode_reference", cell.model_key, cell.seed, batch_index, noise.shape[0], t_max, t_end, rtol)
        if key not in cell.cache:
            with phase("reference_solutions"):
                cell.cache[key] = self._cached_solve(noise, to_zero, t_max, t_end, rtol)
        return cell.cache[key]

    def _cached_solve(self, noise: torch.Tensor, to_zero: bool, t_max: float, t_end: float, rtol: float) -> torch.Tensor:
        cell = self.cell
        exact = isinstance(cell.model, GaussianMixture)
        fingerprint_key = ("model_fingerprint", cell.model_key)
        if fingerprint_key not in cell.cache:
            cell.cache[fingerprint_key] = model_fingerprint(cell.model)
        identity = {"version": SOLUTION_CACHE_VERSION, "model": cell.model_key, "weights": cell.cache[fingerprint_key],
                    "noise": hashlib.sha256(noise.contiguous().numpy().tobytes()).hexdigest(),
                    "shape": list(noise.shape), "dtype": str(noise.dtype), "t_max": t_max, "t_end": t_end,
                    "to_zero": to_zero, "solver": "exact" if exact else f"rk45 rtol=atol={rtol}",
                    "device": "cpu" if exact else cell.device.type, "torch": torch.__version__.split("+")[0]}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
        path = cache_dir(cell.reference) / "solutions" / f"solution-{digest}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.is_file():
                try:
                    return load_tensors(path)
                except ValueError:  # a damaged file is solved again and replaced
                    pass
            solution = self._solve(noise, to_zero, t_max, t_end, rtol)
            buffer = io.BytesIO()
            torch.save(solution, buffer)
            write_bytes_atomic(path, buffer.getvalue())
        return solution

    def _solve(self, noise: torch.Tensor, to_zero: bool, t_max: float, t_end: float, rtol: float) -> torch.Tensor:
        cell = self.cell
        if isinstance(cell.model, GaussianMixture):
            noise64 = noise.to(torch.float64)
            prior_std = cell.model.schedule.prior_std_at(t_max)
            return cell.model.exact_ode_solution(prior_std * noise64, t_start=t_max, t_end=t_end).cpu()
        # Any other model: a tight adaptive solve of the same ODE from the same noise, in the
        # run's dtype and on its device (the network's own precision bounds this reference).
        span = {"t_max": t_max, "to_zero": to_zero, **({} if to_zero else {"t_min": t_end})}
        with torch.inference_mode():
            ref = solvers.sample("rk45", cell.model, noise.to(cell.device), nfe=None, rtol=rtol, atol=rtol, **span)
        return ref.cpu()

    def update(self, batch_index: int, noise: torch.Tensor, samples: torch.Tensor) -> None:
        if not self.applies:
            return
        diff = samples.detach().cpu().to(torch.float64) - self._reference(batch_index, noise.detach().cpu())
        self.sum_sq += float(diff.pow(2).sum())
        self.count += diff.numel()

    def result(self) -> Dict[str, float]:
        if not self.applies or self.count == 0:
            return {"solver_error": math.nan}
        return {"solver_error": math.sqrt(self.sum_sq / self.count)}
