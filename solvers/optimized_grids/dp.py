"""Optimal-stepsize dynamic programming (Pei et al. 2025, "Optimal Stepsize for Diffusion
Sampling", sec. 3, Algorithm 1).

A teacher trajectory on a fine grid; the student (the sampler itself) takes k steps to reach
fine time j, and the best k-step way to j is built from the best (k-1)-step ways to every
earlier fine time i (optimal substructure): dp[k][j] = min_i || student(path_{k-1}(i) + t_j) -
x_teacher(t_j) ||^2, each node keeping the student state of its best predecessor."""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from .problem import GridProblem, fine_grid, run_sampler, teacher_trajectory

__all__ = ["dp_grid"]


def dp_grid(problem: GridProblem, *, seed: int = 0, n_samples: int = 32, teacher_steps: int = 24,
            teacher_substeps: int = 4) -> tuple[torch.Tensor, Dict[str, Any]]:
    """Pei et al.'s dynamic programme over the EDM rho = 7 grid of ``teacher_steps`` steps with
    ``n_samples`` seeded teacher trajectories; the cost is the mean squared distance to the
    teacher over the batch (their per-sample search, averaged so that one grid serves all).

    The student step from node (k-1, i) to fine time j runs the sampler on the node's whole path
    plus t_j from x_T, so multistep samplers keep their history and every step is the one the
    sampler takes (Pei et al. use the solver's own update; the cost is k steps per candidate)."""
    times = fine_grid(problem, teacher_steps)
    x_T = problem.x_T(problem.noise(n_samples, seed))
    teacher = teacher_trajectory(problem, x_T, times, teacher_substeps)
    m, n = times.numel(), problem.n_steps
    last = m - 1
    # paths[j]: the best path (fine indices, from 0) reaching j in k steps; cost[j] its error
    paths: Dict[int, List[int]] = {0: [0]}
    best: Dict[int, float] = {}
    for k in range(1, n + 1):
        # after k steps a node can sit at fine index k..m-1-(n-k), and only the n-th step lands on t_data
        targets = [last] if k == n else range(k, last - (n - k) + 1)
        if k < n:
            targets = [j for j in targets if j != last]
        new_paths: Dict[int, List[int]] = {}
        new_best: Dict[int, float] = {}
        for j in targets:
            for i, path in paths.items():
                if i >= j:
                    continue
                trial = path + [j]
                z = run_sampler(problem, x_T, times[trial])
                err = float((z.to(torch.float64) - teacher[j].to(torch.float64)).pow(2).mean())
                if err < new_best.get(j, float("inf")):
                    new_best[j], new_paths[j] = err, trial
        paths, best = new_paths, new_best
    if last not in paths:
        raise RuntimeError("optimal-stepsize DP found no finite path (the sampler diverged on every candidate)")
    return times[paths[last]], {"teacher_steps": teacher_steps, "n_samples": n_samples, "teacher_mse": best[last]}
