"""DDIM and DDPM ancestral sampling on any sub-sequence of times.

Both step from t to s < t through the model's (x0, eps) at t. Written for any affine schedule
(alpha, sigma); for VP these are the papers' formulas with abar = alpha^2.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from score_models.parameterization import DiffusionModel
from score_models.schedules import TimeLike

from ..grids import LANDINGS, alpha_sigma_steps
from ..noise import randn_like
from ..options import at_least, one_of
from ..registry import register

__all__ = ["ddim", "ddim_step", "ddpm", "DDPM_VARIANCES"]

DDPM_VARIANCES = ("fixed_small", "fixed_large", "learned_range")
Coefficient = Union[float, torch.Tensor]


def ddim_step(model: DiffusionModel, x: torch.Tensor, t: TimeLike, alpha_s: Coefficient, sigma_s: Coefficient,
              noise_std: float = 0.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One DDIM step (Song et al. 2021a, eq. 12) from x at time t to the level (alpha_s, sigma_s):

        x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z,   c = ``noise_std``,

    with (x0, eps) from one evaluation at t. The deterministic step (c = 0) also takes per-sample
    times and coefficients (tensors shaped to broadcast), as the distillation trainers use it."""
    x0, eps = model.x0_and_eps(x, t)
    if noise_std == 0:
        return alpha_s * x0 + sigma_s * eps
    x = alpha_s * x0 + math.sqrt(max(0.0, sigma_s**2 - noise_std**2)) * eps
    return x + noise_std * randn_like(x, generator)


@register("ddim", order=1, stochastic=False, nfe="N", paper="Song, Meng & Ermon 2021 (DDIM), eq. 12",
          default_grid="uniform", stochastic_if="eta > 0", variants=({"eta": 1.0},),
          checks={"eta": at_least(0.0), "landing": one_of(*LANDINGS)},
          known_as={"ComfyUI": "ddim", "diffusers": "DDIMScheduler"})
def ddim(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, eta: float = 0.0,
         landing: str = "next", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DDIM on any sub-sequence of times; ``eta`` blends in DDPM's posterior noise.

    Song et al. 2021a, eq. 12, step t -> s:

        x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z,
        c = eta sigma_s sqrt(1 - alpha_t^2 sigma_s^2 / (alpha_s^2 sigma_t^2)),

    which for VP is the paper's eta sqrt((1-abar_s)/(1-abar_t)) sqrt(1-abar_t/abar_s). eta = 0 is
    deterministic (and equals Euler in the scaled space); eta = 1 has DDPM's posterior variance.

    ``landing="fixed_stride"`` (not the default) moves the state of step i to t_i - T//N instead
    of t_{i+1} and reads it as at t_{i+1} (:func:`solvers.grids.landing_times`): what diffusers'
    DDIMScheduler computes. It exists to reproduce diffusers; it is not the consistent choice.
    """
    x = x_T
    for i, (a_t, s_t, a_s, s_s) in enumerate(alpha_sigma_steps(model.schedule, times, landing)):
        c = eta * s_s * math.sqrt(max(0.0, 1.0 - (a_t * s_s) ** 2 / (a_s * s_t) ** 2))
        x = ddim_step(model, x, times[i], a_s, s_s, c, generator)
    return x


@register("ddpm", order=None, order_note="stochastic: tested on the distribution it samples",
          stochastic=True, nfe="N", paper="Ho, Jain & Abbeel 2020, Algorithm 2 and eq. 7",
          default_grid="uniform", variants=({"variance": "fixed_large"},), checks={"variance": one_of(*DDPM_VARIANCES)},
          known_as={"ComfyUI": "ddpm", "diffusers": "DDPMScheduler"})
def ddpm(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, variance: str = "fixed_small",
         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DDPM ancestral sampling over any sub-sequence of times; ``variance`` fixed or learned.

    Ho et al. 2020, Algorithm 2, step t -> s:
    the Gaussian posterior q(x_s | x_t, x0) with x0 predicted (their eq. 7 with
    abar_t/abar_s in place of alpha_t, as in Nichol & Dhariwal 2021 sec. 4):

        mean = alpha_s b / sigma_t^2 x0 + a sigma_s^2 / sigma_t^2 x_t,   a = alpha_t/alpha_s, b = sigma_t^2 - a^2 sigma_s^2

    ``variance``: ``fixed_small`` b sigma_s^2/sigma_t^2 (beta tilde), ``fixed_large`` b (beta),
    ``learned_range`` (Nichol & Dhariwal 2021, eq. 15) interpolating the two in log space with the
    network's extra output channels. No noise is added on a step that lands on sigma = 0.
    """
    x = x_T
    for i, (a_t, s_t, a_s, s_s) in enumerate(alpha_sigma_steps(model.schedule, times)):
        a = a_t / a_s
        b = s_t**2 - a**2 * s_s**2  # variance of x_t given x_s (the step's beta)
        if variance == "learned_range":
            x0, _, v = model.x0_eps_and_variance(x, times[i])
        else:
            x0, _ = model.x0_and_eps(x, times[i])
        x = (a_s * b / s_t**2) * x0 + (a * s_s**2 / s_t**2) * x
        if s_s == 0:
            continue
        small = b * s_s**2 / s_t**2
        if variance == "fixed_small":
            std = math.sqrt(small)
        elif variance == "fixed_large":
            std = math.sqrt(b)
        else:
            frac = (v + 1) / 2
            std = torch.exp(0.5 * (frac * math.log(b) + (1 - frac) * math.log(small)))
        x = x + std * randn_like(x, generator)
    return x
