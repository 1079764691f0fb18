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


def sliced_reference(y: torch.Tensor, n_projections: int = 128, seed: int = 0) -> Dict[str, torch.Tensor]:
    """The reference side of :func:`sliced_wasserstein`: the directions and y's sorted projections
    (computed once per reference set, shared by every cell compared with it)."""
    y = y.reshape(y.shape[0], -1).double()
    dirs = torch.randn(y.shape[1], n_projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    return {"dirs": dirs, "sorted": torch.sort(y @ dirs, dim=0)[0]}


def sliced_from_reference(x: torch.Tensor, reference: Dict[str, torch.Tensor]) -> float:
    x = x.reshape(x.shape[0], -1).double()
    if x.shape[0] != reference["sorted"].shape[0] or x.shape[1] != reference["dirs"].shape[0]:
        raise ValueError(f"sliced_wasserstein needs equal-size samples, got {tuple(x.shape)} and "
                         f"{(reference['sorted'].shape[0], reference['dirs'].shape[0])}")
    px, _ = torch.sort(x @ reference["dirs"], dim=0)
    return float(((px - reference["sorted"]) ** 2).mean().sqrt())


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 128, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size samples (flattened)."""
    return sliced_from_reference(x, sliced_reference(y, n_projections, seed))


def mmd_reference(y: torch.Tensor, bandwidth: Optional[float] = None) -> Dict[str, object]:
    """The reference side of :func:`mmd_rbf`: y, the bandwidth (median distance within y) and
    the mean of k(y, y') over distinct pairs (computed once per reference set)."""
    y = y.reshape(y.shape[0], -1).double()
    dyy = torch.cdist(y, y)
    if bandwidth is None:
        bandwidth = float(dyy[torch.triu_indices(len(y), len(y), 1).unbind()].median())
    kyy = torch.exp(-dyy.pow(2) / (2 * bandwidth**2))
    m = len(y)
    return {"y": y, "bandwidth": bandwidth, "kyy_term": (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))}


def mmd_from_reference(x: torch.Tensor, reference: Dict[str, object]) -> float:
    x = x.reshape(x.shape[0], -1).double()
    bandwidth = reference["bandwidth"]
    k = lambda d: torch.exp(-d.pow(2) / (2 * bandwidth**2))
    kxx, kxy = k(torch.cdist(x, x)), k(torch.cdist(x, reference["y"]))
    n = len(x)
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + reference["kyy_term"] - 2 * kxy.mean())


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidth: Optional[float] = None) -> float:
    """Unbiased MMD^2 with k(a, b) = exp(-|a-b|^2 / (2 h^2)); h = median distance within y
    (torch.median's: the lower middle value of an even count)."""
    return mmd_from_reference(x, mmd_reference(y, bandwidth))


class _SampleDistance(Metric):
    """Keeps the cell's samples and compares them with as many exact data samples; the reference
    side of the distance is computed once per model and sample count and shared across cells."""

    reference: Callable[[torch.Tensor], Dict[str, object]]
    from_reference: Callable[[torch.Tensor, Dict[str, object]], float]

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
        key = (self.columns[0], "reference", self.cell.model_key, len(data), n)
        if key not in self.cell.cache:
            self.cell.cache[key] = type(self).reference(data[:n])
        return {self.columns[0]: type(self).from_reference(x[:n], self.cell.cache[key])}


@register_metric("sliced_wasserstein")
class SlicedWasserstein(_SampleDistance):
    columns = ("sliced_wasserstein",)
    reference = staticmethod(sliced_reference)
    from_reference = staticmethod(sliced_from_reference)


@register_metric("mmd")
class MMD(_SampleDistance):
    columns = ("mmd",)
    reference = staticmethod(mmd_reference)
    from_reference = staticmethod(mmd_from_reference)
