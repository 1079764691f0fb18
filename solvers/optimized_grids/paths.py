"""Shortest paths of a fixed number of edges through a fine grid: the dynamic programme GITS
solves over its cost matrix."""
from __future__ import annotations

from typing import List

import numpy as np

__all__ = ["cheapest_path"]


def cheapest_path(cost: np.ndarray, n_edges: int, coeff: float = 1.0) -> List[int]:
    """Indices 0 = i_0 < i_1 < ... < i_n = M - 1 of the M x M upper-triangular ``cost`` matrix
    minimising cost[i_0, i_1] + coeff cost[i_1, i_2] + coeff^2 ... with exactly ``n_edges``
    edges (Chen et al. 2024, sec. 4: V_k(j) = min_i cost[j, i] + coeff V_{k-1}(i), the
    recursion of their ``dp``, whose default coeff is 1.15; coeff = 1 is a plain sum of local
    errors)."""
    m = cost.shape[0]
    if cost.shape != (m, m) or not 1 <= n_edges <= m - 1:
        raise ValueError(f"need a square cost matrix with at least {n_edges + 1} points, got shape {cost.shape}")
    # value[k][j]: least cost from point j to the last point in exactly k edges
    value = np.full((n_edges + 1, m), np.inf)
    choice = np.full((n_edges + 1, m), -1, dtype=np.int64)
    value[0][m - 1] = 0.0
    for k in range(1, n_edges + 1):
        for j in range(m - 1):
            later = np.arange(j + 1, m)
            totals = cost[j, later] + coeff * value[k - 1][later]
            best = int(np.argmin(totals))
            if np.isfinite(totals[best]):
                value[k][j], choice[k][j] = totals[best], later[best]
    path, j = [0], 0
    for k in range(n_edges, 0, -1):
        j = int(choice[k][j])
        path.append(j)
    return path
