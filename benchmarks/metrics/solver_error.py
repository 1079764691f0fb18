"""``solver_error``: the endpoint error against the exact PF-ODE solution from the same noise."""
from __future__ import annotations

import math
from typing import Dict

import torch

import solvers
from score_models.analytic import GaussianMixture

from ..budget import phase
from .base import CellInfo, Metric, register_metric

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
                cell.cache[key] = self._solve(noise, to_zero, t_max, t_end, rtol)
        return cell.cache[key]

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
