"""The exact-optimal grid of a model whose PF-ODE solution is known: minimise the sampler's true
endpoint error over the grid itself.

Optimiser: derivative-free (Powell's method, scipy). Gradients through the sampler are out of
reach without rewriting every sampler: they read the grid as Python floats (``.tolist()``, the
per-step coefficients), so autograd never sees the times, and adaptive step-order rules branch on
them. With at most ``n_steps - 1`` free noise levels (9 at 10 NFE) and one sampler run of a few
milliseconds per evaluation on a mixture, Powell's line searches converge in a few hundred runs.
One search starts from each fixed grid (EDM rho = 7, log-SNR, uniform) on the same noise; the
best of those grids is kept unless a search finds better, so the result is never worse than its
start."""
from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np
import torch
from scipy.optimize import minimize

from ..grids import time_grid
from .problem import GridProblem, endpoint_rmse, has_exact_solution, run_sampler

__all__ = ["exact_grid", "STARTING_GRIDS", "levels_to_times", "times_to_levels"]

#: The smallest gap between neighbouring levels, as a fraction of log(sigma_max / sigma_min).
_MIN_GAP = 1e-6
#: The fixed grids the search may start from (the best on the optimiser's noise is used).
STARTING_GRIDS = ("edm", "logsnr", "uniform")


def levels_to_times(problem: GridProblem, theta: np.ndarray) -> torch.Tensor:
    """Unconstrained parameters -> a valid grid: softmax(theta, 0) splits log(sigma_max/sigma_min)
    into n_steps gaps; the first n_steps - 1 give the interior noise levels (strictly decreasing,
    inside the schedule's range), then sigma = 0."""
    sched = problem.schedule
    s_max, s_min = float(sched.sigma_tilde(sched.t_max)), float(sched.sigma_tilde(sched.t_min))
    logits = np.append(theta, 0.0)
    gaps = np.exp(logits - logits.max())
    span = math.log(s_max) - math.log(s_min)
    # a floor under every gap keeps the levels strictly decreasing however far the search goes
    floor = _MIN_GAP * span
    gaps = floor + gaps / gaps.sum() * (span - floor * gaps.size)
    log_levels = math.log(s_max) - np.cumsum(gaps)[:-1]
    sigmas = torch.tensor(np.concatenate([[s_max], np.exp(log_levels)]), dtype=torch.float64)
    times = sched.t_from_sigma_tilde(sigmas).clamp(sched.t_min, sched.t_max)
    times[0] = sched.t_max
    return torch.cat([times, torch.tensor([sched.t_data], dtype=torch.float64)])


def times_to_levels(problem: GridProblem, times: torch.Tensor) -> np.ndarray:
    """The inverse of :func:`levels_to_times` for a grid [t_max, ..., t_data] whose last level is
    >= sigma_min: the log-gap logits relative to the final (slack) gap."""
    sched = problem.schedule
    s_max, s_min = float(sched.sigma_tilde(sched.t_max)), float(sched.sigma_tilde(sched.t_min))
    logs = np.log(sched.sigma_tilde(times[:-1]).numpy())
    gaps = np.append(-np.diff(logs), logs[-1] - math.log(s_min))
    gaps = np.maximum(gaps, 1e-3 * (math.log(s_max) - math.log(s_min)))
    return np.log(gaps[:-1]) - np.log(gaps[-1])


def exact_grid(problem: GridProblem, *, seed: int = 0, n_samples: int = 128, max_evaluations: int = 400,
               ) -> tuple[torch.Tensor, Dict[str, Any]]:
    """The grid of the sampler's step count minimising the RMS distance between the sampler's
    endpoint and the exact PF-ODE endpoint from ``n_samples`` seeded noises."""
    model = problem.model
    if not has_exact_solution(model):
        raise ValueError(f"method 'exact' needs a model whose exact PF-ODE solution is known (a Gaussian "
                         f"mixture, gmm:...); {model!r} has none; valid here: gits, ays, dp")
    x_T = problem.x_T(problem.noise(n_samples, seed))
    sched = problem.schedule
    target = model.exact_ode_solution(x_T, t_start=sched.t_max, t_end=sched.t_data, rtol=1e-9, atol=1e-9)

    def error(times: torch.Tensor) -> float:
        try:
            value = endpoint_rmse(run_sampler(problem, x_T, times), target)
        except (ZeroDivisionError, OverflowError):  # a step size the sampler's arithmetic cannot take
            return math.inf
        return value if math.isfinite(value) else math.inf

    starts = {name: time_grid(sched, problem.n_steps, name) for name in STARTING_GRIDS}
    start_errors = {name: error(grid) for name, grid in starts.items()}
    start_name = min(start_errors, key=start_errors.get)
    best_times, best_error = starts[start_name], start_errors[start_name]
    info: Dict[str, Any] = {"n_samples": n_samples, "start_grid": start_name, "start_error": best_error}
    if problem.n_steps >= 2:
        # one local search from each fixed grid (the landscape has several basins at few steps)
        evaluations = len(starts)
        for name in sorted(start_errors, key=start_errors.get):
            result = minimize(lambda th: error(levels_to_times(problem, th)), times_to_levels(problem, starts[name]),
                              method="Powell", options={"maxfev": max_evaluations, "xtol": 1e-4, "ftol": 1e-10})
            found = levels_to_times(problem, result.x)
            found_error = error(found)
            evaluations += int(result.nfev) + 1
            if found_error < best_error:
                best_times, best_error = found, found_error
        info["evaluations"] = evaluations
    info["optimized_error"] = best_error
    return best_times, info
