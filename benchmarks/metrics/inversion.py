"""``inversion_error`` and ``reconstruction_error``: the cell's sampler run from real data points
to noise (:func:`solvers.invert`) and back, at the cell's NFE budget.

The data points are the model's own (exact mixture samples, toy2d data, the digits test split;
:func:`benchmarks.metrics.distances.exact_data`), n = min(cell n_samples, 256) of them from a
fixed seed, independent of the cell's generated samples.

- ``inversion_error``: RMS per dimension of the computed latent against the exact encoding
  (GaussianMixture.exact_encoding) or, for any other model, a tight rk45 inversion over the same
  span (rtol = atol = [run.reference] rtol, default 1e-6); with ``inversion_nfe``, the NFE the
  inversion counted.
- ``reconstruction_error``: RMS per dimension of x0 against its round trip (decoded with the
  same budget; EDICT and BDIA decode from their coupled state, their exact inverse).

NaN for stochastic samplers, samplers that cannot run backwards, and models with native samplers
(few-step students), as ``solver_error``.
"""
from __future__ import annotations

import math
from typing import Dict

import torch

import solvers
from score_models.analytic import GaussianMixture

from ..budget import phase
from .base import CellInfo, Metric, register_metric
from .distances import exact_data

__all__ = ["InversionError", "ReconstructionError", "MAX_INVERSION_POINTS"]

#: The most data points a cell inverts.
MAX_INVERSION_POINTS = 256


def _applies(cell: CellInfo) -> bool:
    spec = solvers.get(cell.sampler)
    return (not cell.model.native_samplers and hasattr(cell.model, "sample_data") and not spec.exclusive
            and (spec.alias_of or cell.sampler) in solvers.invertible_samplers())


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().cpu().to(torch.float64) - b.detach().cpu().to(torch.float64)).pow(2).mean().sqrt())


def _data_points(cell: CellInfo, dtype: torch.dtype) -> torch.Tensor:
    n = min(cell.n_samples, MAX_INVERSION_POINTS)
    return exact_data(cell, n).to(device=cell.device, dtype=dtype)


def _span(cell: CellInfo) -> tuple[float, float, dict]:
    """(t_start at the data end, t_end at the noise end, the grid options that fix that span)."""
    sched = cell.model.schedule
    to_zero = solvers.get(cell.sampler).ends_at_data(cell.options, cell.model)
    t_max = float(cell.options.get("t_max", sched.t_max))
    t_start = sched.t_data if to_zero else float(cell.options.get("t_min", sched.t_min))
    return t_start, t_max, {"t_max": t_max, "to_zero": to_zero, **({} if to_zero else {"t_min": t_start})}


def _round_trip(cell: CellInfo, dtype: torch.dtype) -> dict:
    """Inverted latent, reconstruction and counted NFE for this cell (cached for both metrics)."""
    key = ("inversion", cell.model_key, cell.sampler, repr(sorted(cell.options.items())), cell.nfe_budget,
           cell.n_samples, str(dtype))
    if key not in cell.cache:
        x0 = _data_points(cell, dtype)
        with torch.inference_mode():
            encoding = solvers.encode(cell.sampler, cell.model, x0, nfe=cell.nfe_budget, **cell.options)
            back = solvers.decode(cell.sampler, cell.model, encoding, nfe=cell.nfe_budget, **cell.options)
        cell.cache[key] = dict(x0=x0, noise=encoding.noise, nfe=encoding.nfe, reconstruction=back)
    return cell.cache[key]


def _reference_encoding(cell: CellInfo, x0: torch.Tensor) -> torch.Tensor:
    """The exact (mixtures) or tight rk45 (networks) latent of x0 over the sampler's span (cached)."""
    t_start, t_end, span = _span(cell)
    rtol = float(cell.reference.get("rtol", 1e-6))
    key = ("inversion_reference", cell.model_key, x0.shape[0], str(x0.dtype), t_start, t_end, rtol)
    if key not in cell.cache:
        with phase("reference_solutions"):
            if isinstance(cell.model, GaussianMixture):
                ref = cell.model.exact_encoding(x0.cpu().to(torch.float64), t_end=t_end, t_start=t_start)
            else:
                with torch.inference_mode():
                    ref = solvers.invert("rk45", cell.model, x0, nfe=None, rtol=rtol, atol=rtol, **span)
            cell.cache[key] = ref.cpu()
    return cell.cache[key]


class _InversionMetric(Metric):
    def __init__(self, cell: CellInfo):
        super().__init__(cell)
        self.applies = _applies(cell) and not solvers.get(cell.sampler).is_stochastic(cell.options)
        self.dtype = None

    def update(self, batch_index: int, noise: torch.Tensor, samples: torch.Tensor) -> None:
        # The cell's own samples are not used: the data points are real ones. The run's dtype is.
        self.dtype = self.dtype or (torch.float64 if isinstance(self.cell.model, GaussianMixture) else samples.dtype)


@register_metric("inversion_error")
class InversionError(_InversionMetric):
    columns = ("inversion_error", "inversion_nfe")

    def result(self) -> Dict[str, float]:
        if not self.applies or self.dtype is None:
            return {"inversion_error": math.nan, "inversion_nfe": math.nan}
        trip = _round_trip(self.cell, self.dtype)
        return {"inversion_error": _rms(trip["noise"], _reference_encoding(self.cell, trip["x0"])),
                "inversion_nfe": float(trip["nfe"])}


@register_metric("reconstruction_error")
class ReconstructionError(_InversionMetric):
    columns = ("reconstruction_error",)

    def result(self) -> Dict[str, float]:
        if not self.applies or self.dtype is None:
            return {"reconstruction_error": math.nan}
        trip = _round_trip(self.cell, self.dtype)
        return {"reconstruction_error": _rms(trip["reconstruction"], trip["x0"])}
