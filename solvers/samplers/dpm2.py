"""DPM-Solver-2 steps with the midpoint in log sigma~: k-diffusion's dpm_2 and dpm_2_ancestral.

Written in the scaled space x~ = x/alpha, sigma~ = sigma/alpha, where DPM-Solver-1 (Lu et al.
2022a) is the Euler step x~ - (sigma~_s - sigma~_t) eps and DPM-Solver-2 becomes the midpoint
method with its midpoint at the geometric mean of the two noise levels (:func:`dpm2_step`).
k-diffusion (Crowson 2022) runs this step inside Karras et al. 2022's Algorithm 2 (``dpm_2``,
with optional churn) and inside its ancestral split (``dpm_2_ancestral``, see
:mod:`.ancestral`). A step onto sigma~ = 0 is an Euler step, which lands on D.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from score_models.parameterization import DiffusionModel

from ..options import at_least
from ..registry import register
from .ancestral import ETA_NOTE, ScaledDenoiser, add_noise, ancestral_step, scaled_denoiser
from .ode import churn

__all__ = ["dpm2_step", "dpm_2", "dpm_2_ancestral"]


def dpm2_step(x: torch.Tensor, sigma: float, sigma_next: float, d: torch.Tensor,
              denoise: ScaledDenoiser) -> torch.Tensor:
    """One DPM-Solver-2 step (Lu et al. 2022a, Algorithm 1 with r1 = 1/2) from sigma~ to
    sigma_next > 0, given d = (x~ - D(x~, sigma~))/sigma~ (the noise prediction eps):

        sigma_mid = exp((log sigma + log sigma_next)/2)   (halfway in lambda = -log sigma~),
        u = x~ + (sigma_mid - sigma) d,
        x~_next = x~ + (sigma_next - sigma) (u - D(u, sigma_mid)) / sigma_mid.
    """
    sigma_mid = math.exp(0.5 * (math.log(sigma) + math.log(sigma_next)))
    u = x + (sigma_mid - sigma) * d
    d_mid = (u - denoise(u, sigma_mid)) / sigma_mid
    return x + (sigma_next - sigma) * d_mid


@register("dpm_2", order=2, stochastic=False, stochastic_if="s_churn > 0",
          nfe="2*N - 1 if to_zero else 2*N", nfe_note="the step onto sigma = 0 is an Euler step",
          paper="Lu et al. 2022a (DPM-Solver-2, Algorithm 1, r1 = 1/2) in Karras et al. 2022, Algorithm 2; "
                "k-diffusion (Crowson 2022)",
          variants=({"s_churn": 10.0},),
          checks={"s_churn": at_least(0.0), "s_tmin": at_least(0.0), "s_tmax": at_least(0.0), "s_noise": at_least(0.0)},
          known_as={"k-diffusion": "sample_dpm_2", "ComfyUI": "dpm_2", "diffusers": "KDPM2DiscreteScheduler"})
def dpm_2(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, s_churn: float = 0.0,
          s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DPM-Solver-2 with its midpoint in log sigma~ (k-diffusion's dpm_2); with s_churn > 0 churned as in EDM.

    Karras et al. 2022, Algorithm 2 with the Heun step replaced by DPM-Solver-2 (Lu et al.
    2022a, Algorithm 1, r1 = 1/2; :func:`dpm2_step`), as k-diffusion's ``sample_dpm_2``:
    while s_tmin <= sigma~_i <= s_tmax the noise is first raised to
    sigma_hat = sigma~_i (1 + gamma), gamma = min(s_churn/N, sqrt(2) - 1), by adding
    s_noise sqrt(sigma_hat^2 - sigma~_i^2) z; then

        d = (x~ - D(x~, sigma_hat))/sigma_hat,  u = x~ + (sigma_mid - sigma_hat) d,
        x~ <- x~ + (sigma~_{i+1} - sigma_hat) (u - D(u, sigma_mid))/sigma_mid,  sigma_mid = sqrt(sigma_hat sigma~_{i+1}).

    The step onto sigma~ = 0 is Euler (it lands on D). As in ``heun``, churn never lifts
    sigma~ above the grid's first level (k-diffusion's does on the first step), so the network
    is only evaluated inside the schedule's range; a churned step draws one noise tensor.
    Diffusers' KDPM2DiscreteScheduler is this sampler without churn; ComfyUI's dpm_2 runs it on
    the grid option ``discard_penultimate=True``.
    """
    sched = model.schedule
    sigmas, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    n_steps = len(sigmas) - 1
    gamma = min(s_churn / n_steps, math.sqrt(2.0) - 1.0)
    denoise = scaled_denoiser(model)
    x = x_T / alphas[0]
    for i in range(n_steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, t_hat, sigma_hat, alpha_hat = churn(model, x, times[i], sigma, alphas[i],
                                               gamma if s_tmin <= sigma <= s_tmax else 0.0, sigmas[0], s_noise,
                                               generator)
        d = (x - model.x0(alpha_hat * x, t_hat)) / sigma_hat
        if sigma_next == 0:
            x = x + (sigma_next - sigma_hat) * d
        else:
            x = dpm2_step(x, sigma_hat, sigma_next, d, denoise)
    return alphas[-1] * x


@register("dpm_2_ancestral", order=2, order_note=ETA_NOTE, stochastic=False, stochastic_if="eta > 0",
          nfe="2*N - 1 if to_zero else 2*N", nfe_note="the step onto sigma = 0 is an Euler step",
          paper="Lu et al. 2022a (DPM-Solver-2, r1 = 1/2) with k-diffusion's ancestral noise (Crowson 2022)",
          variants=({"eta": 0.0}, {"eta": 0.5, "s_noise": 0.5}),
          checks={"eta": at_least(0.0, 1.0), "s_noise": at_least(0.0)},
          known_as={"k-diffusion": "sample_dpm_2_ancestral", "ComfyUI": "dpm_2_ancestral",
                    "diffusers": "KDPM2AncestralDiscreteScheduler"})
def dpm_2_ancestral(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, eta: float = 1.0,
                    s_noise: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Ancestral sampling with DPM-Solver-2 steps onto sigma_down, then noise of std sigma_up.

    k-diffusion's ``sample_dpm_2_ancestral``: with (sigma_down, sigma_up) =
    ancestral_step(sigma~_i, sigma~_{i+1}, eta), a DPM-Solver-2 step (:func:`dpm2_step`,
    midpoint sqrt(sigma~_i sigma_down)) from sigma~_i to sigma_down, then s_noise sigma_up z. The
    step onto sigma~ = 0 is Euler, without noise. eta = 0 is ``dpm_2``. With eta = 1 the midpoint
    sqrt(sigma~_i sigma_down) is sigma~_{i+1} itself. ComfyUI's dpm_2_ancestral runs it on the
    grid option ``discard_penultimate=True``. ``eta`` is at most 1:
    above it sigma_down reaches 0 on steps that depend on the grid, and those steps would need
    one evaluation, not two (k-diffusion then also skips their noise).
    """
    sched = model.schedule
    sigmas, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    denoise = scaled_denoiser(model)
    x = x_T / alphas[0]
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        d = (x - model.x0(alphas[i] * x, times[i])) / sigma
        sigma_down, sigma_up = ancestral_step(sigma, sigmas[i + 1], eta)
        if sigma_down == 0:
            x = x + (sigma_down - sigma) * d
        else:
            x = dpm2_step(x, sigma, sigma_down, d, denoise)
        x = add_noise(x, sigma_up, s_noise, generator)
    return alphas[-1] * x
