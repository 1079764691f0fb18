"""Samplers of few-step students: ``distilled`` (a progressively distilled model at its own step
count) and ``consistency`` (one-step and multistep consistency sampling)."""
from __future__ import annotations

import math
from typing import Optional

import torch

from score_models.distilled import ConsistencyModel, DistilledModel
from score_models.parameterization import DiffusionModel

from .ddim import ddim
from .grids import nested_times
from .noise import randn_like
from .registry import register

__all__ = ["distilled", "consistency"]


def _student_times(model: DiffusionModel, n_steps: int) -> torch.Tensor:
    if not isinstance(model, DistilledModel):
        raise ValueError(f"the distilled sampler needs a progressively distilled model (e.g. digits-unet-pd4), "
                         f"got {model!r}")
    if n_steps != model.steps:
        raise ValueError(f"this student was distilled for {model.steps} steps (nfe={model.steps}); got nfe={n_steps}")
    return nested_times(model.schedule, model.steps, model.grid)


@register("distilled", order=1, stochastic=False, nfe_rule="N = the student's step count (one per step)",
          nfe_for_steps=lambda n, ends_at_data, o: n, paper="Salimans & Ho 2022, Algorithm 2 (sampling: DDIM)",
          grid_options=(), times_from_model=_student_times, student="distilled")
def distilled(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A progressively distilled student sampled as it was trained (Salimans & Ho 2022, sec. 3):
    deterministic DDIM over the nested grid of its own ``steps`` from t_max to sigma = 0."""
    return ddim(model, x_T, times, eta=0.0, generator=generator)


@register("consistency", order=0, stochastic=True,  # not a discretisation: no convergence order
          nfe_rule="N (one evaluation per noise level; the grid's last time is where the chain ends)",
          nfe_for_steps=lambda n, ends_at_data, o: n, paper="Song, Dhariwal, Chen & Sutskever 2023, Algorithm 1",
          grid_options=("grid", "rho", "t_min", "t_max", "to_zero"), default_to_zero=False, student="consistency")
def consistency(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1) in the scaled space:

        x = f(x~_T, sigma~_T);  for tau in sigma~(times[1:-1]):  x = f(x + sqrt(tau^2 - sigma_min^2) z, tau)

    One step (nfe = 1) is a single evaluation at t_max. The grid (EDM rho-spacing by default)
    gives the re-noising levels; its last time (t_min unless to_zero) is the trajectory end the
    model maps to and is never evaluated. Returns f's output, the sample at sigma~_min.
    """
    if not isinstance(model, ConsistencyModel):
        raise ValueError(f"the consistency sampler needs a consistency model (e.g. digits-unet-cd), got {model!r}")
    sched = model.schedule
    sigmas, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    x = model.x0(x_T, times[0])  # f(x_T / alpha_T, sigma~_T): the network sees alpha x~ = x_T
    for i in range(1, len(sigmas) - 1):
        x_tilde = x + math.sqrt(max(0.0, sigmas[i] ** 2 - model.sigma_min ** 2)) * randn_like(x, generator)
        x = model.x0(alphas[i] * x_tilde, times[i])
    return x
