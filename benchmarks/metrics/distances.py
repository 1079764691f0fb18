"""Distribution distances to exact data samples on low-dimensional models: sliced W2 and MMD."""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .base import REFERENCE_SEED, CellInfo, Metric, register_metric

__all__ = ["exact_data", "sliced_wasserstein", "mmd_rbf", "offdiagonal_sum", "gaussian_kernel",
           "SlicedWasserstein", "MMD"]


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
    return {"dirs": dirs, "sorted": _sorted_columns(y @ dirs)}


def sliced_from_reference(x: torch.Tensor, reference: Dict[str, torch.Tensor]) -> float:
    x = x.reshape(x.shape[0], -1).double()
    if x.shape[0] != reference["sorted"].shape[0] or x.shape[1] != reference["dirs"].shape[0]:
        raise ValueError(f"sliced_wasserstein needs equal-size samples, got {tuple(x.shape)} and "
                         f"{(reference['sorted'].shape[0], reference['dirs'].shape[0])}")
    px = _sorted_columns(x @ reference["dirs"])
    return float(((px - reference["sorted"]) ** 2).mean().sqrt())


def _sorted_columns(projections: torch.Tensor) -> torch.Tensor:
    """Each column sorted: by numpy, whose SIMD sort is about 8x faster than torch's on the CPU
    for the [n, 128] float64 projections here (sorting is exact, so the values are the same)."""
    return torch.from_numpy(np.sort(projections.cpu().numpy(), axis=0))


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 128, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size samples (flattened)."""
    return sliced_from_reference(x, sliced_reference(y, n_projections, seed))


def offdiagonal_sum(n: int, block_kernel: Callable[[slice, slice], torch.Tensor], block: int = 256) -> torch.Tensor:
    """sum over i != j < n of a symmetric kernel k(x_i, x_j), each pair computed once.

    ``block_kernel(rows, cols)`` gives the kernel matrix of x[rows] against x[cols]; it is asked
    for row blocks against the columns from the block's first row on (the diagonal block and the
    part right of it), so the matmuls and elementwise passes cover about half the matrix and one
    block stays in cache while it is worked on. The matrix it returns may be overwritten."""
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, n, block):
        stop = min(start + block, n)
        k = block_kernel(slice(start, stop), slice(start, n))
        diagonal_block = k[:, :stop - start]
        total += diagonal_block.sum() - diagonal_block.diagonal().sum() + 2 * k[:, stop - start:].sum()
    return total


def gaussian_kernel(x: torch.Tensor, x_half_sq: torch.Tensor, y: torch.Tensor, y_half_sq: torch.Tensor,
                    bandwidth: float) -> torch.Tensor:
    """k(x_i, y_j) = exp(-|x_i - y_j|^2 / (2 h^2)), its exponent expanded as
    (x_i.y_j - |x_i|^2/2 - |y_j|^2/2) / h^2 and formed by one matmul (x_half_sq, y_half_sq: the
    halved squared row norms), clamped at 0 as the squared distance is at 0. Four passes over the
    matrix where forming |x_i - y_j|^2 first and scaling it takes six: a fifth of MMD's time."""
    c = 1.0 / bandwidth**2
    exponent = torch.addmm(x_half_sq[:, None], x, y.T, alpha=c, beta=-c)
    return exponent.sub_(y_half_sq, alpha=c).clamp_max_(0).exp_()


def mmd_reference(y: torch.Tensor, bandwidth: Optional[float] = None) -> Dict[str, object]:
    """The reference side of :func:`mmd_rbf`: y, its halved squared row norms, the bandwidth (median
    distance within y) and the mean of k(y, y') over distinct pairs (computed once per reference
    set)."""
    y = y.reshape(y.shape[0], -1).double()
    dyy = torch.cdist(y, y)
    if bandwidth is None:
        bandwidth = float(dyy[torch.triu_indices(len(y), len(y), 1).unbind()].median())
    kyy = torch.exp(-dyy.pow(2) / (2 * bandwidth**2))
    m = len(y)
    return {"y": y, "y_half_sq": (y * y).sum(1) / 2, "bandwidth": bandwidth,
            "kyy_term": (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))}


def mmd_from_reference(x: torch.Tensor, reference: Dict[str, object]) -> float:
    """The per-cell side of :func:`mmd_rbf`: each kernel matrix by one matmul
    (:func:`gaussian_kernel`), the x-x kernel over each pair once (:func:`offdiagonal_sum`)."""
    x = x.reshape(x.shape[0], -1).double()
    y, y_half_sq, bandwidth = reference["y"], reference["y_half_sq"], reference["bandwidth"]
    x_half_sq = (x * x).sum(1) / 2
    n = len(x)
    kxx_sum = offdiagonal_sum(n, lambda rows, cols: gaussian_kernel(x[rows], x_half_sq[rows], x[cols], x_half_sq[cols],
                                                                    bandwidth))
    kxy_mean = gaussian_kernel(x, x_half_sq, y, y_half_sq, bandwidth).mean()
    return float(kxx_sum / (n * (n - 1)) + reference["kyy_term"] - 2 * kxy_mean)


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
