"""Multistep sampling of latent consistency models (LCM) and trajectory consistency distillation (TCD).

- LCM's multistep sampling (Luo et al. 2023, Algorithm 1) *is* consistency sampling (Song et al.
  2023, Algorithm 1): x = f(x_T, T); then, for each later level tau, re-noise x to tau with fresh
  noise and evaluate f there; the last evaluation is the sample. The two differ only in the grid
  (LCM's skipping-step timesteps) and in the variance of the re-noising: LCM draws
  N(alpha(tau) x, sigma(tau)^2) as if f returned clean data, Algorithm 1 subtracts the trajectory
  end's epsilon^2. In nfebench that variance is the model's declaration (``denoised_sigma``), not
  the sampler's, so LCM is the ``consistency`` sampler of :mod:`solvers.samplers.students` (an
  alias, ``lcm``, known as diffusers' LCMScheduler and ComfyUI's lcm), not a second function.
- TCD's strategic stochastic sampling (Zheng et al. 2024) is a different step and lives here:
  from x_t the student's (x0, eps) take a deterministic DDIM step down to s = (1 - gamma) t',
  *below* the next level t', and the forward process re-noises from s up to t'. gamma = 0 is
  deterministic DDIM stepping with the student; gamma = 1 re-noises from x0 at every step, as LCM.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from score_models.parameterization import DiffusionModel

from ..noise import randn_like
from ..options import at_least
from ..registry import register
from .ddim import ddim_step

__all__ = ["tcd"]


@register("tcd", order=None, order_note="a student's sampler: each step jumps a fixed fraction gamma of the "
                                        "next time below it, so it does not converge to the PF-ODE as N grows",
          stochastic=False, stochastic_if="gamma > 0", nfe="N",
          nfe_note="one evaluation per step; the grid's last time is where the chain ends and is never evaluated",
          paper="Zheng et al. 2024 (TCD), strategic stochastic sampling",
          grid_options=("grid", "rho", "t_min", "t_max", "to_zero"), exclusive=True,
          variants=({"gamma": 0.0}, {"gamma": 1.0}), checks={"gamma": at_least(0.0, 1.0)},
          known_as={"diffusers": "TCDScheduler"})
def tcd(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, gamma: float = 0.3,
        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """TCD's strategic stochastic sampling: a DDIM step below the next level, then forward noise up to it.

    Zheng et al. 2024, strategic stochastic sampling, step t -> t' with s = (1 - gamma) t' (on the
    schedule's own time axis, as the paper's timesteps; diffusers' ``eta`` is gamma):

        (x0, eps) = the student at (x_t, t)
        x_s  = alpha_s x0 + sigma_s eps                                     (DDIM from t to s)
        x_t' = (alpha_t'/alpha_s) x_s + sqrt(sigma_t'^2 - alpha_t'^2 sigma_s^2/alpha_s^2) z

    (for VP: sqrt(abar_t'/abar_s) x_s + sqrt(1 - abar_t'/abar_s) z, the paper's form). The last
    step goes deterministically onto the grid's last time (the paper's s = (1 - gamma) tau_0 =
    tau_0 = 0), which is never evaluated. gamma = 0 is deterministic DDIM with the student's x0
    and eps; gamma = 1 re-noises from x0 at every step, which is LCM's multistep sampling (the
    ``consistency`` sampler on a student whose f returns clean data). Needs the student's eps as
    well as x0: a consistency model's eps is the one its f implies, (x - alpha f)/sigma.
    """
    sched = model.schedule
    n_steps = times.numel() - 1
    # s for every step: (1 - gamma) t' before the last step, the grid's end on it.
    s_times = torch.cat([(1.0 - gamma) * times[1:-1], times[-1:]])
    alpha_next, sigma_next = sched.alpha(times[1:]).tolist(), sched.sigma(times[1:]).tolist()
    alpha_s, sigma_s = sched.alpha(s_times).tolist(), sched.sigma(s_times).tolist()
    x = x_T
    for i in range(n_steps):
        x = ddim_step(model, x, times[i], alpha_s[i], sigma_s[i])  # one evaluation, lands on s
        if i < n_steps - 1 and gamma > 0:
            ratio = alpha_next[i] / alpha_s[i]
            std = math.sqrt(max(0.0, sigma_next[i] ** 2 - (ratio * sigma_s[i]) ** 2))
            x = ratio * x + std * randn_like(x, generator)
    return x
