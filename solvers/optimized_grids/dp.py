"""Optimal-stepsize dynamic programming (Pei et al. 2025, "Optimal Stepsize for Diffusion
Sampling", sec. 3, Algorithm 1).

A teacher trajectory on a fine grid; the student (the sampler itself) takes k steps to reach
fine time j, and the best k-step way to j is built from the best (k-1)-step ways to every
earlier fine time i (optimal substructure): dp[k][j] = min_i || student(path_{k-1}(i) + t_j) -
x_teacher(t_j) ||^2, each node keeping the student state of its best predecessor.

As in the authors' code (``search_OSS``: "process each image separately"), the programme is
solved for every sample on its own, and the grid used for all samples is the per-position median
of the samples' step indices (their ``cal_medium``: the floored mean of the two middle values
of the sorted indices)."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch

from .problem import GridProblem, fine_grid, run_sampler, teacher_trajectory

__all__ = ["dp_grid", "median_path"]


def median_path(paths: List[List[int]]) -> List[int]:
    """Pei et al.'s ``cal_medium``: at each position, the two middle values of the sorted indices
    of all samples' paths, averaged and floored. Strictly increasing whenever every path is
    (each middle value of position k + 1 exceeds the one of position k)."""
    if not paths or len({len(p) for p in paths}) != 1:
        raise ValueError("median_path needs one or more paths of equal length")
    n = len(paths)
    merged = []
    for position in zip(*paths):
        ordered = sorted(position)
        merged.append((ordered[n // 2] + ordered[n // 2 - 1]) // 2 if n > 1 else ordered[0])
    return merged


def dp_grid(problem: GridProblem, *, seed: int = 0, n_samples: int = 32, teacher_steps: int = 24,
            teacher_substeps: int = 4) -> tuple[torch.Tensor, Dict[str, Any]]:
    """Pei et al.'s dynamic programme over the EDM rho = 7 grid of ``teacher_steps`` steps with
    ``n_samples`` seeded teacher trajectories, solved for each sample separately (its squared
    distance to its own teacher state, averaged over its dimensions), then the per-position
    median of the samples' fine indices (:func:`median_path`).

    The student step from node (k-1, i) to fine time j runs the sampler on the node's whole path
    plus t_j from x_T, so multistep samplers keep their history and every step is the one the
    sampler takes (Pei et al. use the solver's own update; the cost is k steps per candidate).
    Samples whose best paths to a node coincide run as one batch: the result is that of n_samples
    separate searches."""
    times = fine_grid(problem, teacher_steps)
    x_T = problem.x_T(problem.noise(n_samples, seed))
    teacher = teacher_trajectory(problem, x_T, times, teacher_substeps)
    m, n = times.numel(), problem.n_steps
    last = m - 1
    # paths[i][b]: sample b's best path (fine indices from 0) reaching i in k steps; best[j][b] its error
    paths: Dict[int, List[Tuple[int, ...]]] = {0: [(0,)] * n_samples}
    best: Dict[int, torch.Tensor] = {}
    for k in range(1, n + 1):
        # after k steps a node can sit at fine index k..m-1-(n-k), and only the n-th step lands on t_data
        targets = [last] if k == n else [j for j in range(k, last - (n - k) + 1) if j != last]
        new_paths: Dict[int, List[Tuple[int, ...]]] = {}
        new_best: Dict[int, torch.Tensor] = {}
        for j in targets:
            err_j = torch.full((n_samples,), float("inf"), dtype=torch.float64)
            path_j: List[Tuple[int, ...]] = [()] * n_samples
            for i, node_paths in paths.items():
                if i >= j:
                    continue
                groups: Dict[Tuple[int, ...], List[int]] = {}
                for b, path in enumerate(node_paths):
                    if path:  # () where the sample has no finite path to i
                        groups.setdefault(path, []).append(b)
                for path, members in groups.items():
                    rows = torch.tensor(members)
                    z = run_sampler(problem, x_T[rows], times[list(path) + [j]]).to(torch.float64)
                    err = (z - teacher[j][rows].to(torch.float64)).flatten(1).pow(2).mean(1).cpu()
                    err = torch.where(torch.isfinite(err), err, torch.full_like(err, float("inf")))
                    for row, b in enumerate(members):
                        if err[row] < err_j[b]:
                            err_j[b], path_j[b] = err[row], path + (j,)
            if any(path_j):
                new_paths[j], new_best[j] = path_j, err_j
        paths, best = new_paths, new_best
    if last not in paths or not all(paths[last]):
        raise RuntimeError("optimal-stepsize DP found no finite path for some sample (the sampler diverged on every candidate)")
    chosen = median_path([list(p) for p in paths[last]])
    return times[chosen], {"teacher_steps": teacher_steps, "n_samples": n_samples,
                           "teacher_mse": float(best[last].mean()),
                           "distinct_paths": len(set(paths[last]))}
