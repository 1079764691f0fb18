"""Quality metrics, each a registered name. A metric sees the whole cell (model, noise, samples)
and returns one or more named columns; it says where it does not apply with NaN.

- ``solver_error``: RMS per dimension between the sampler's endpoint and the exact PF-ODE
  endpoint from the same noise (GaussianMixture.exact_ode_solution, DOP853 at 1e-11), or for
  any other model a tight rk45 solve (rtol = atol = 1e-6 by default, [run.reference] rtol)
  from the same noise. Deterministic samplers only.
- ``sliced_wasserstein``: sliced 2-Wasserstein distance between samples and exact data samples
  (128 fixed random directions; Rabin et al. 2011), with the same n on both sides.
- ``mmd``: unbiased squared MMD with a Gaussian kernel whose bandwidth is the median pairwise
  distance of the reference set (Gretton et al. 2012).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch

import solvers
from score_models.analytic import GaussianMixture
from score_models.parameterization import DiffusionModel

__all__ = ["METRICS", "CellData", "register_metric", "sliced_wasserstein", "mmd_rbf"]

REFERENCE_SEED = 2**31 - 1  # exact data samples for distribution metrics use their own stream


@dataclass
class CellData:
    """What a metric may look at for one cell (all tensors on the CPU)."""

    model: DiffusionModel
    sampler: str
    options: Dict[str, Any]
    noise: torch.Tensor  # standard normal noise, [n, *shape]
    samples: torch.Tensor  # sampler output, [n, *shape]
    seed: int
    reference: Dict[str, Any]  # [run.reference] settings
    cache: Dict[Any, Any] = field(default_factory=dict)  # shared across cells of a run
    model_key: str = ""


Metric = Callable[[CellData], Dict[str, float]]
METRICS: Dict[str, Metric] = {}


def register_metric(name: str) -> Callable[[Metric], Metric]:
    def wrap(fn: Metric) -> Metric:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = fn
        return fn
    return wrap


# --- exact solver error --------------------------------------------------------------------
def _ode_endpoint_reference(cell: CellData) -> torch.Tensor:
    """The true PF-ODE endpoint from the cell's noise over the sampler's time span (cached)."""
    sched = cell.model.schedule
    to_zero = cell.options.get("to_zero", True)
    t_max = float(cell.options.get("t_max", sched.t_max))
    t_end = sched.t_data if to_zero else float(cell.options.get("t_min", sched.t_min))
    rtol = float(cell.reference.get("rtol", 1e-6))
    key = ("ode_reference", cell.model_key, cell.seed, cell.noise.shape[0], t_max, t_end, rtol)
    if key not in cell.cache:
        x_T = sched.prior_std * cell.noise.to(torch.float64)
        if isinstance(cell.model, GaussianMixture):
            ref = cell.model.exact_ode_solution(x_T, t_start=t_max, t_end=t_end)
        else:
            # Any other model: a tight adaptive solve of the same ODE from the same noise.
            ref = solvers.sample("rk45", cell.model, cell.noise.to(torch.float64), nfe=None, rtol=rtol, atol=rtol,
                                 t_max=t_max, to_zero=to_zero,
                                 **({} if to_zero else {"t_min": t_end}))
        cell.cache[key] = ref.cpu()
    return cell.cache[key]


@register_metric("solver_error")
def solver_error(cell: CellData) -> Dict[str, float]:
    if solvers.get(cell.sampler).is_stochastic(cell.options):
        return {"solver_error": math.nan}
    ref = _ode_endpoint_reference(cell)
    diff = cell.samples.to(torch.float64) - ref
    return {"solver_error": float(diff.pow(2).mean().sqrt())}


# --- distribution distances ----------------------------------------------------------------
def _data_reference(cell: CellData) -> Optional[torch.Tensor]:
    if not isinstance(cell.model, GaussianMixture):
        return None
    n = int(cell.reference.get("n_data", cell.samples.shape[0]))
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


@register_metric("sliced_wasserstein")
def _sliced_wasserstein_metric(cell: CellData) -> Dict[str, float]:
    data = _data_reference(cell)
    if data is None:
        return {"sliced_wasserstein": math.nan}
    n = min(len(data), len(cell.samples))
    return {"sliced_wasserstein": sliced_wasserstein(cell.samples[:n], data[:n])}


@register_metric("mmd")
def _mmd_metric(cell: CellData) -> Dict[str, float]:
    data = _data_reference(cell)
    if data is None:
        return {"mmd": math.nan}
    return {"mmd": mmd_rbf(cell.samples, data)}
