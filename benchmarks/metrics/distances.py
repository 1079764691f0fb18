"""Distribution distances to exact data samples on low-dimensional models: sliced W2 and MMD."""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import torch

from .base import REFERENCE_SEED, CellInfo, Metric, register_metric

__all__ = ["exact_data", "sliced_wasserstein", "mmd_rbf", "SlicedWasserstein", "MMD"]


def exact_data(cell: CellInfo, n: int) -> Optional[torch.Tensor]:
    """n exact data samples of the model (fixed seed, cached), or None when it has none."""
    if not hasattr(cell.model, "sample_data"):
        return None
    key = ("data", cell.model_key, n)
    if key not in cell.cache:
        g = torch.Generator().manual_seed(REFERENCE_SEED)
        cell.cache[key] = cell.model.sample_data(n, generator=g, dtype=torch.float64)
    return cell.cache[key]


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 128, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size samples (flattened)."""
    x, y = x.reshape(x.shape[0], -1).double(), y.reshape(y.shape[0], -1).double()
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs equal-size samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    dirs = torch.randn(x.shape[1], n_projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ dirs, dim=0)
    py, _ = torch.sort(y @ dirs, dim=0)
    return float(((px - py) ** 2).mean().sqrt())


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidth: Optional[float] = None) -> float:
    """Unbiased MMD^2 with k(a, b) = exp(-|a-b|^2 / (2 h^2)); h = median distance within y."""
    x, y = x.reshape(x.shape[0], -1).double(), y.reshape(y.shape[0], -1).double()
    dyy = torch.cdist(y, y)
    if bandwidth is None:
        bandwidth = float(dyy[torch.triu_indices(len(y), len(y), 1).unbind()].median())
    k = lambda d: torch.exp(-d.pow(2) / (2 * bandwidth**2))
    kxx, kyy, kxy = k(torch.cdist(x, x)), k(dyy), k(torch.cdist(x, y))
    n, m = len(x), len(y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())


class _SampleDistance(Metric):
    """Keeps the cell's samples and compares them with as many exact data samples."""

    distance: Callable[[torch.Tensor, torch.Tensor], float]

    def __init__(self, cell: CellInfo):
        super().__init__(cell)
        self.samples: List[torch.Tensor] = []

    def update(self, batch_index: int, noise: torch.Tensor, samples: torch.Tensor) -> None:
        self.samples.append(samples.detach().cpu().to(torch.float64))

    def result(self) -> Dict[str, float]:
        x = torch.cat(self.samples)
        data = exact_data(self.cell, int(self.cell.reference.get("n_data", len(x))))
        if data is None:
            return {self.columns[0]: math.nan}
        n = min(len(x), len(data))
        return {self.columns[0]: type(self).distance(x[:n], data[:n])}


@register_metric("sliced_wasserstein")
class SlicedWasserstein(_SampleDistance):
    columns = ("sliced_wasserstein",)
    distance = staticmethod(sliced_wasserstein)


@register_metric("mmd")
class MMD(_SampleDistance):
    columns = ("mmd",)
    distance = staticmethod(mmd_rbf)
