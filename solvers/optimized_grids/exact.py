"""The exact-optimal grid of a model whose PF-ODE solution is known: minimise the sampler's true
endpoint error over the grid itself.

Optimiser: derivative-free (Powell's method, scipy). Gradients through the sampler are out of
reach without rewriting every sampler: they read the grid as Python floats (``.tolist()``, the
per-step coefficients), so autograd never sees the times, and adaptive step-order rules branch on
them. With at most ``n_steps - 1`` free noise levels (9 at 10 NFE) and one sampler run of a few
milliseconds per evaluation on a mixture, Powell's line searches converge in a few hundred runs.
Starts: the fixed grids (EDM rho = 7, log-SNR, uniform) and the GITS and DP grids of the same
noise; a local search runs from each of the ``searches`` best, and the best start is kept unless a
search finds better, so the result is never worse than its start (nor than those grids)."""
from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np
import torch
from scipy.optimize import minimize

from ..grids import time_grid
from .dp import dp_grid
from .gits import gits_grid
from .problem import GridProblem, endpoint_rmse, has_exact_solution, run_sampler

__all__ = ["exact_grid", "STARTING_GRIDS", "levels_to_times", "times_to_levels"]

#: The least fraction of the remaining log-range a level moves down by (and the most, 1 - it):
#: keeps the levels strictly decreasing and above sigma_min however far the search goes.
_MIN_FRACTION = 1e-6
#: The fixed grids the search starts from (one local search from each).
STARTING_GRIDS = ("edm", "logsnr", "uniform")


def levels_to_times(problem: GridProblem, theta: np.ndarray) -> torch.Tensor:
    """Unconstrained parameters -> a valid grid, by stick-breaking in log sigma: level i sits
    the fraction sigmoid(theta_i) of the way from level i-1 down to sigma_min, so any theta gives
    n_steps - 1 strictly decreasing levels inside the schedule's range (each free to move on its
    own, the last one included), then sigma = 0."""
    sched = problem.schedule
    s_max, s_min = float(sched.sigma_tilde(sched.t_max)), float(sched.sigma_tilde(sched.t_min))
    fractions = _MIN_FRACTION + (1 - 2 * _MIN_FRACTION) / (1 + np.exp(-np.asarray(theta, dtype=np.float64)))
    logs, floor = [math.log(s_max)], math.log(s_min)
    for f in fractions:
        logs.append(logs[-1] - f * (logs[-1] - floor))
    times = sched.t_from_sigma_tilde(torch.tensor(np.exp(logs), dtype=torch.float64)).clamp(sched.t_min, sched.t_max)
    times[0] = sched.t_max
    return torch.cat([times, torch.tensor([sched.t_data], dtype=torch.float64)])


def times_to_levels(problem: GridProblem, times: torch.Tensor) -> np.ndarray:
    """The inverse of :func:`levels_to_times` for a grid [t_max, ..., t_data] (fractions clipped
    to [0.02, 0.98]: a level at sigma_min starts where the sigmoid is not flat, so the search
    can still move it)."""
    sched = problem.schedule
    floor = math.log(float(sched.sigma_tilde(sched.t_min)))
    logs = np.log(sched.sigma_tilde(times[:-1]).numpy())
    fractions = (logs[:-1] - logs[1:]) / np.maximum(logs[:-1] - floor, 1e-300)
    fractions = np.clip(fractions, 0.02, 0.98)
    u = (fractions - _MIN_FRACTION) / (1 - 2 * _MIN_FRACTION)
    return np.log(u) - np.log1p(-u)


def exact_grid(problem: GridProblem, *, seed: int = 0, n_samples: int = 128, max_evaluations: int = 400,
               searches: int = 3, fine_steps: int = 60, teacher_steps: int = 24) -> tuple[torch.Tensor, Dict[str, Any]]:
    """The grid of the sampler's step count minimising the RMS distance between the sampler's
    endpoint and the exact PF-ODE endpoint from ``n_samples`` seeded noises. ``fine_steps`` and
    ``teacher_steps`` are those of the GITS and DP starts (the grids those methods give with the
    same seed and n_samples)."""
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
    # The optimisers' grids are starts too: the landscape has several basins at few steps, and a
    # ceiling must be at least as good as every grid the other methods find on this noise.
    starts["gits"], _ = gits_grid(problem, seed=seed, n_samples=n_samples, fine_steps=fine_steps)
    starts["dp"], _ = dp_grid(problem, seed=seed, n_samples=n_samples, teacher_steps=teacher_steps)
    start_errors = {name: error(grid) for name, grid in starts.items()}
    start_name = min(start_errors, key=start_errors.get)
    best_times, best_error = starts[start_name], start_errors[start_name]
    info: Dict[str, Any] = {"n_samples": n_samples, "start_grid": start_name, "start_error": best_error}
    if problem.n_steps >= 2:
        evaluations = len(starts)
        for name in sorted(start_errors, key=start_errors.get)[:searches]:
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
