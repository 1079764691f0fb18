"""Samplers of few-step students: ``distilled`` (a progressively distilled model on its own grid)
and ``consistency`` (one-step and multistep consistency sampling). Both are exclusive: a sweep
runs them only on the models that name them as native samplers, and runs nothing else there."""
from __future__ import annotations

import math
from typing import Optional

import torch

from score_models.parameterization import DiffusionModel

from ..noise import randn_like
from ..registry import Alias, register
from .ddim import ddim

__all__ = ["distilled", "consistency"]


@register("distilled", order=None, order_note="a student is not a discretisation of an ODE", stochastic=False,
          nfe="N", nfe_note="N is the student's own step count (any other budget is an error)",
          paper="Salimans & Ho 2022, Algorithm 2 (sampling: DDIM)", grid_options=(), exclusive=True)
def distilled(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A progressively distilled student sampled as it was trained: DDIM on its own nested grid.

    Salimans & Ho 2022, sec. 3: deterministic DDIM over the ``steps`` intervals of the grid the
    model declares (``DiffusionModel.own_grid``), from t_max to sigma = 0."""
    return ddim(model, x_T, times, eta=0.0, generator=generator)


@register("consistency", order=None, order_note="not a discretisation: each step jumps to the trajectory's end",
          stochastic=True, nfe="N", nfe_note="one evaluation per noise level; the grid's last time is where the "
                                             "chain ends and is never evaluated",
          paper="Song, Dhariwal, Chen & Sutskever 2023, Algorithm 1",
          grid_options=("grid", "rho", "t_min", "t_max", "to_zero"), exclusive=True,
          aliases=(Alias("lcm", {}, {"ComfyUI": "lcm", "diffusers": "LCMScheduler"}),))
def consistency(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Consistency sampling: one evaluation, or re-noising at the grid's levels (EDM rho grid).

    Song et al. 2023, Algorithm 1, in the scaled space:

        x = f(x~_T, sigma~_T);  for tau in sigma~(times[1:-1]):  x = f(x + sqrt(tau^2 - sigma_end^2) z, tau)

    where f is the model's x0-prediction and sigma_end its noise level (``denoised_sigma``: the
    trajectory end sigma~_min of a consistency model). One step (nfe = 1) is a single evaluation
    at t_max. A consistency model's grid ends at t_min by default (its ``grid_defaults``); the
    last time is never evaluated. Returns f's output, the sample at sigma_end.
    """
    sched = model.schedule
    sigmas, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    x = model.x0(x_T, times[0])  # f(x_T / alpha_T, sigma~_T): the network sees alpha x~ = x_T
    for i in range(1, len(sigmas) - 1):
        x_tilde = x + math.sqrt(max(0.0, sigmas[i] ** 2 - model.denoised_sigma ** 2)) * randn_like(x, generator)
        x = model.x0(alphas[i] * x_tilde, times[i])
    return x
