"""GITS: geometry-inspired time scheduling (Chen et al. 2024, "On the Trajectory Regularity of
ODE-based Diffusion Sampling", sec. 4).

Teacher trajectories on a fine grid, a cost matrix of one-step errors between every pair of fine
times, and a dynamic programme choosing the n-step path of least discounted total cost: the
authors' ``dp`` weighs the k-th step from the start by coeff^k, and their code's default
coefficient is 1.15 (``--coeff``, the value of every pixel-space example in their launch
script), which makes the later steps' local errors count more than the early ones'."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch

from .paths import cheapest_path
from .problem import GridProblem, fine_grid, teacher_trajectory

__all__ = ["gits_grid", "gits_cost_matrix"]


def gits_cost_matrix(problem: GridProblem, times: torch.Tensor, states: list) -> np.ndarray:
    """cost[i, j] = mean over the batch of || x_j - Euler(x_i: t_i -> t_j) ||_2 for i < j, with
    x_i the teacher's states: the local error of one step of the Euler method from the teacher
    trajectory, which GITS uses for every solver (their ``cal_cost_mat``, metric 'l2'). The
    Euler step is taken on the scaled PF-ODE dx~/dsigma~ = (x~ - D)/sigma~."""
    model, sched = problem.model, problem.schedule
    sigmas, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    m = len(sigmas)
    cost = np.full((m, m), np.inf)
    with torch.inference_mode():
        for i in range(m - 1):
            x_scaled = states[i] / alphas[i]
            slope = (x_scaled - model.x0(states[i], times[i])) / sigmas[i]
            for j in range(i + 1, m):
                euler = alphas[j] * (x_scaled + (sigmas[j] - sigmas[i]) * slope)
                diff = (euler - states[j]).to(torch.float64).flatten(1)
                cost[i, j] = float(diff.norm(dim=1).mean())
    return cost


def gits_grid(problem: GridProblem, *, seed: int = 0, n_samples: int = 64, fine_steps: int = 60,
              coeff: float = 1.15, teacher_substeps: int = 4) -> tuple[torch.Tensor, Dict[str, Any]]:
    """GITS's grid: ``n_samples`` teacher trajectories (seeded) on the EDM rho = 7 grid of
    ``fine_steps`` steps, their Euler cost matrix, and the least-cost path of the sampler's step
    count through it (:func:`~.paths.cheapest_path`) with the authors' default ``coeff`` = 1.15."""
    times = fine_grid(problem, fine_steps)
    states = teacher_trajectory(problem, problem.x_T(problem.noise(n_samples, seed)), times, teacher_substeps)
    cost = gits_cost_matrix(problem, times, states)
    path = cheapest_path(cost, problem.n_steps, coeff)
    return times[path], {"fine_steps": fine_steps, "n_samples": n_samples, "coeff": coeff, "path_cost": float(
        sum(coeff**k * cost[a, b] for k, (a, b) in enumerate(zip(path[:-1], path[1:]))))}
