"""``nll``: the model's negative log-likelihood of real data by its probability-flow ODE
(score_models.log_likelihood), a property of the model and the solver tolerance, not of the
cell's sampler, so it is computed once per model and tolerance and shared across cells."""
from __future__ import annotations

import math
from typing import Dict

import torch

import solvers
from score_models.analytic import GaussianMixture
from score_models.likelihood import bits_per_dim, log_likelihood

from ..budget import phase
from .base import REFERENCE_SEED, CellInfo, Metric, register_metric
from .distances import exact_data
from .features import is_image_model

__all__ = ["NLL", "MAX_POINTS", "nll_settings", "nll_tolerance", "exact_ode_log_likelihood"]

MAX_POINTS = 256
DEFAULT_RTOL = 1e-5
#: the exact divergence costs one vector-Jacobian product per dimension per evaluation (on one
#: CPU core, 4 digits images (64-D) at rtol 1e-5 took 108 s exactly, 4.5 s by Hutchinson); above
#: this dimension divergence = "auto" (the default) uses Hutchinson's estimator
EXACT_MAX_DIM = 16
#: image models' data range by default (the shipped digits model's, and diffusers' convention)
IMAGE_DATA_RANGE = (-1.0, 1.0)


def nll_settings(cell: CellInfo) -> tuple[str, int, tuple[float, float]]:
    """(divergence, Hutchinson probes per point, image data range) from [run.reference]
    (``divergence`` = "auto" | "exact" | "hutchinson", ``n_probes``, ``data_range`` = [lo, hi])."""
    divergence = cell.reference.get("divergence", "auto")
    if divergence == "auto":
        shape = cell.model.sample_shape
        divergence = "exact" if shape and math.prod(shape) <= EXACT_MAX_DIM else "hutchinson"
    lo, hi = cell.reference.get("data_range", IMAGE_DATA_RANGE)
    return divergence, int(cell.reference.get("n_probes", 1)), (float(lo), float(hi))


def nll_tolerance(cell: CellInfo) -> tuple[float, float]:
    """(rtol, atol): the cell's own when it samples with rk45, else [run.reference] rtol (both)."""
    if cell.sampler == "rk45":
        defaults = solvers.get("rk45").defaults
        return float(cell.options.get("rtol", defaults["rtol"])), float(cell.options.get("atol", defaults["atol"]))
    rtol = float(cell.reference.get("rtol", DEFAULT_RTOL))
    return rtol, rtol


def exact_ode_log_likelihood(mixture: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """What the exact PF-ODE likelihood of x is for a mixture: log p_{t_min}(x) plus the prior
    mismatch log N(x_T; 0, prior_std^2 I) - log p_T(x_T) at t_max, x_T the exact encoding."""
    sched = mixture.schedule
    x = x.to(torch.float64).cpu()
    x_T = mixture.exact_ode_solution(x, t_start=sched.t_min, t_end=sched.t_max)
    std, d = sched.prior_std_at(sched.t_max), x[0].numel()
    log_prior = -0.5 * (x_T / std).pow(2).flatten(1).sum(1) - d * (math.log(std) + 0.5 * math.log(2 * math.pi))
    return mixture.log_prob(x, sched.t_min) + log_prior - mixture.log_prob(x_T, sched.t_max)


@register_metric("nll")
class NLL(Metric):
    """Negative log-likelihood of n = min(n_samples, 256) real data points (the model's
    ``sample_data`` at the reference seed: a mixture's exact samples, toy2d data, the digits test
    split), all in one batch. By default the divergence is exact up to EXACT_MAX_DIM dimensions
    and Hutchinson's estimator (one Rademacher probe per point, seeded) above: the figure is then
    an unbiased estimate whose spread averages down over the n points. [run.reference] (or a
    model's reference) sets ``divergence`` ("auto", "exact", "hutchinson"), ``n_probes`` and
    the image ``data_range`` (default [-1, 1]).

    Columns: ``nll`` (nats per sample; bits/dim for image models other than mixtures, their
    data read as 8-bit images in the data range, dequantised as score_sde does),
    ``nll_per_dim`` (nll over the dimension; bits/dim again for images), ``nll_nfe`` (network
    evaluations the evaluation cost, for all n points in one batch) and ``nll_error`` (mean
    absolute error in nats per sample against a mixture's exact PF-ODE likelihood, else NaN).
    NaN throughout for models without data or sampled only by their own few-step samplers.
    """

    columns = ("nll", "nll_per_dim", "nll_nfe", "nll_error")

    def __init__(self, cell: CellInfo):
        super().__init__(cell)
        self.values = {name: math.nan for name in self.columns}

    def update(self, batch_index: int, noise: torch.Tensor, samples: torch.Tensor) -> None:
        cell = self.cell
        if batch_index != 0 or cell.model.native_samplers or not hasattr(cell.model, "sample_data"):
            return
        rtol, atol = nll_tolerance(cell)
        n = min(cell.n_samples, MAX_POINTS)
        divergence, n_probes, data_range = nll_settings(cell)
        key = ("nll", cell.model_key, rtol, atol, n, divergence, n_probes, data_range)
        if key not in cell.cache:
            with phase("likelihood"):
                cell.cache[key] = self._evaluate(n, rtol, atol, divergence, n_probes, data_range)
        self.values = cell.cache[key]

    def _evaluate(self, n: int, rtol: float, atol: float, divergence: str, n_probes: int,
                  data_range: tuple[float, float]) -> Dict[str, float]:
        cell, model = self.cell, self.cell.model
        x = exact_data(cell, n)
        exact_model = isinstance(model, GaussianMixture)
        generator = torch.Generator().manual_seed(REFERENCE_SEED)
        options = dict(rtol=rtol, atol=atol, divergence=divergence, n_probes=n_probes)
        if is_image_model(model) and not exact_model:
            lo, hi = data_range
            images = ((x - lo) / (hi - lo)).clamp(0, 1)
            bpd, stats = bits_per_dim(model, images.to(cell.device), data_range=(lo, hi), generator=generator,
                                      dtype=torch.float32, **options)
            value = per_dim = float(bpd.mean())
            error = math.nan
        else:
            dtype = torch.float64 if exact_model else torch.float32
            log_p, stats = log_likelihood(model, x.to(device=cell.device, dtype=dtype), generator=generator, **options)
            value = -float(log_p.mean())
            per_dim = value / x[0].numel()
            error = math.nan
            if exact_model:
                error = float((log_p.cpu() - exact_ode_log_likelihood(model, x)).abs().mean())
        return {"nll": value, "nll_per_dim": per_dim, "nll_nfe": float(stats["nfe"]), "nll_error": error}

    def result(self) -> Dict[str, float]:
        return dict(self.values)
