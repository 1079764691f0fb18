"""Inversion: run a deterministic sampler from data to noise, :func:`invert` (and :func:`encode`,
:func:`decode`, :func:`round_trip` for the exact-inversion samplers' coupled states).

A sampler is inverted by running it, unchanged, on its own sampling grid reversed: the samplers
are written on sigma~ and D (or on alpha, sigma and the model's (x0, eps)), and their updates
hold for a step to a larger noise level as well as to a smaller one (DDIM inversion is DDIM on the
reversed grid; Song et al. 2021a, sec. 4.3). The multistep (dpm_solver, ipndm, plms, deis, lms,
res_multistep) and predictor-corrector (unipc) samplers run unchanged as well: their
extrapolations are written in differences of log-SNR or sigma~, which change sign, not form, on an
increasing grid, and their inversion error keeps the sampling order (tests/test_inversion.py).
Only dpm_adaptive is refused (:data:`ONE_WAY`). The NFE budget is honoured as in
:func:`solvers.sample`: the same budget gives the same grid, and the counted evaluations never
exceed it.

The step off sigma = 0. A sampling grid ends at t_data (sigma~ = 0), where the network is not
evaluated (an eps-type step divides by sigma~). Reversed, the first step leaves sigma~ = 0 for
sigma~_1. There the drift dx~/dsigma~ = (x~ - D)/sigma~ = -sigma~ grad log p(x~; sigma~) vanishes
at sigma~ = 0 and grows linearly in sigma~, so the trapezoidal rule with the drift 0 at the
start, x~_1 = x~_0 + (sigma~_1 / 2) f(x~_0, sigma~_1), is exact to O(sigma~_1^3) and costs one
evaluation (at sigma~_1), the one the sampler's own last step makes in the other direction:
the inversion's NFE equals the sampling rule's.

Exact-inversion samplers (EDICT, BDIA) carry a second state (EDICT's y chain, BDIA's previous
state). Their module attaches an :class:`ExactInversion` to the registered function;
:func:`encode` returns both states and :func:`decode` runs the sampler from both, which is the
exact round trip. ``sample(name, model, invert(...))`` starts their second state from the noise
alone (as sampling from fresh noise does), so for them it is a near, not an exact, round trip.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch

from score_models.parameterization import DiffusionModel

from .registry import SamplerSpec, available, get
from .sampling import check_budget, plan_times, sample

__all__ = ["invert", "encode", "decode", "round_trip", "Encoding", "ExactInversion", "step_off_data",
           "invertible_samplers", "check_data", "ONE_WAY"]


@dataclass(frozen=True)
class ExactInversion:
    """How a sampler with a coupled second state is inverted exactly.

    ``encode(model, x0, times, **options) -> (x_T, companion)`` runs data to noise over the
    sampling grid ``times`` (from t_max down); ``decode(model, x_T, companion, times, **options)``
    is the sampler run from both states, its exact inverse."""

    encode: Callable[..., tuple]
    decode: Callable[..., torch.Tensor]


@dataclass
class Encoding:
    """A data point run to noise: ``noise`` in standard-normal units (x_T / prior_std, what
    :func:`solvers.sample` starts from), the coupled ``companion`` state of an exact-inversion
    sampler (else None), the sampling grid ``times`` and the counted ``nfe``."""

    noise: torch.Tensor
    companion: Optional[torch.Tensor]
    times: torch.Tensor
    nfe: int


#: Deterministic samplers that cannot run on an increasing grid, and why.
ONE_WAY = {"dpm_adaptive": "its step-size controller only advances log-SNR upwards, towards the data"}


def invertible_samplers() -> list[str]:
    """Registered samplers that :func:`invert` accepts with their default options: the
    deterministic ones that are not a few-step student's own sampler nor in :data:`ONE_WAY`."""
    return [n for n in available()
            if not get(n).is_stochastic({}) and not get(n).exclusive and (get(n).alias_of or n) not in ONE_WAY]


def check_data(model: DiffusionModel, x0: Any) -> None:
    """ValueError unless ``x0`` is a finite floating tensor shaped [batch, *model.sample_shape]."""
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        kind = x0.dtype if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise ValueError(f"x0 must be a floating-point tensor, got {kind}")
    if model.sample_shape is not None and tuple(x0.shape[1:]) != tuple(model.sample_shape):
        raise ValueError(f"x0 has shape {tuple(x0.shape)}; this model's data points are "
                         f"[batch, {', '.join(map(str, model.sample_shape))}]")
    if x0.dim() < 1 or x0.shape[0] < 1:
        raise ValueError(f"x0 needs a batch dimension of at least 1, got shape {tuple(x0.shape)}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 holds NaN or Inf")


def step_off_data(model: DiffusionModel, x0: torch.Tensor, t_data: float, t_next: torch.Tensor) -> torch.Tensor:
    """The step from sigma~ = 0 up to sigma~(t_next): trapezoidal with zero drift at sigma~ = 0,
    x~_1 = x~_0 + (x~_0 - D(x~_0, sigma~_1)) / 2, one evaluation (see the module docstring)."""
    sched = model.schedule
    x_tilde = x0 / float(sched.alpha(t_data))
    alpha_next = float(sched.alpha(t_next))
    x_tilde = x_tilde + 0.5 * (x_tilde - model.x0(alpha_next * x_tilde, t_next))
    return alpha_next * x_tilde


def _spec_for_inversion(name: str, model: DiffusionModel, options: Dict[str, Any]) -> SamplerSpec:
    spec = get(name)
    if spec.exclusive:
        raise ValueError(f"{name} is a few-step student's sampler and runs one way only; invertible samplers: "
                         f"{', '.join(invertible_samplers())}")
    if (spec.alias_of or name) in ONE_WAY:
        raise ValueError(f"{name} cannot be inverted: {ONE_WAY[spec.alias_of or name]}; invertible samplers: "
                         f"{', '.join(invertible_samplers())}")
    spec.check_options(options)
    if spec.is_stochastic(options):
        raise ValueError(f"{name} is stochastic with these options and cannot be inverted; deterministic samplers: "
                         f"{', '.join(invertible_samplers())}")
    return spec


def encode(name: str, model: DiffusionModel, x0: torch.Tensor, nfe: Optional[int] = None,
           stats: Optional[dict] = None, **options: Any) -> Encoding:
    """Run data ``x0`` to noise with a registered deterministic sampler on its sampling grid
    reversed; the grid, budget and options mean what they mean for :func:`solvers.sample`."""
    spec = _spec_for_inversion(name, model, options)
    options = spec.with_fixed(options)
    nfe = check_budget(nfe)
    check_data(model, x0)
    times, n_steps = plan_times(spec, model, nfe, options)
    sched = model.schedule
    start, start_passes = model.nfe, model.network_passes
    exact: Optional[ExactInversion] = getattr(spec.fn, "exact_inversion", None)
    companion = None
    if exact is not None:
        x_T, companion = exact.encode(model, x0, times, **options)
    else:
        reverse = times.flip(0)
        x = x0
        if float(reverse[0]) == sched.t_data:
            x = step_off_data(model, x, sched.t_data, reverse[1])
            reverse = reverse[1:]
        extra: Dict[str, Any] = {}
        if spec.adaptive:
            extra["max_nfe"] = None if nfe is None else nfe - (model.nfe - start)
        if spec.reports_stats:
            extra["stats"] = stats
        x_T = spec.fn(model, x, reverse, generator=None, **extra, **options) if reverse.numel() > 1 else x
    counted = model.nfe - start
    if nfe is not None and counted > nfe:
        raise RuntimeError(f"inverting {name} made {counted} network evaluations, over its budget of {nfe}")
    if stats is not None:
        stats.update(nfe=counted, n_steps=n_steps, network_passes=model.network_passes - start_passes)
    noise = x_T / sched.prior_std_at(float(times[0]))
    return Encoding(noise=noise, companion=companion, times=times, nfe=counted)


def invert(name: str, model: DiffusionModel, x0: torch.Tensor, nfe: Optional[int] = None,
           stats: Optional[dict] = None, **options: Any) -> torch.Tensor:
    """The noise a deterministic sampler maps to ``x0``: ``sample(name, model, invert(name, model,
    x0, nfe, **options), nfe, **options)`` is the round trip (exact for EDICT/BDIA only through
    :func:`round_trip`, which keeps their coupled state)."""
    return encode(name, model, x0, nfe, stats=stats, **options).noise


def decode(name: str, model: DiffusionModel, encoding: Encoding, nfe: Optional[int] = None,
           stats: Optional[dict] = None, **options: Any) -> torch.Tensor:
    """Run an :class:`Encoding` back to data with the budget and options it was made with (and
    the coupled state of an exact-inversion sampler)."""
    spec = _spec_for_inversion(name, model, options)
    exact: Optional[ExactInversion] = getattr(spec.fn, "exact_inversion", None)
    if exact is None:
        return sample(name, model, encoding.noise, nfe=nfe, stats=stats, **options)
    options = spec.with_fixed(options)
    start, start_passes = model.nfe, model.network_passes
    x_T = model.schedule.prior_std_at(float(encoding.times[0])) * encoding.noise
    grid_free = {k: v for k, v in options.items() if k not in spec.grid_options}
    x = exact.decode(model, x_T, encoding.companion, encoding.times, **grid_free)
    if stats is not None:
        stats.update(nfe=model.nfe - start, n_steps=encoding.times.numel() - 1,
                     network_passes=model.network_passes - start_passes)
    return x


def round_trip(name: str, model: DiffusionModel, x0: torch.Tensor, nfe: Optional[int] = None,
               **options: Any) -> tuple[torch.Tensor, Encoding, int]:
    """(x0 reconstructed, its encoding, total counted NFE of both directions): data to noise and
    back on the same grid."""
    start = model.nfe
    encoding = encode(name, model, x0, nfe, **options)
    return decode(name, model, encoding, nfe, **options), encoding, model.nfe - start
