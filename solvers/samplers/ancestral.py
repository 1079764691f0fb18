"""Ancestral samplers: a deterministic step down to sigma_down, then fresh noise of std sigma_up.

k-diffusion's ancestral family (Crowson 2022, ``sample_euler_ancestral``,
``sample_dpmpp_2s_ancestral``; ``dpm_2_ancestral`` lives in :mod:`.dpm2`), written like the
rest of the suite in the scaled space x~ = x/alpha, sigma~ = sigma/alpha, so one code path serves
every affine schedule. Each step from sigma~_i to sigma~_{i+1} is split by
:func:`ancestral_step` into a solver step onto sigma_down <= sigma~_{i+1} and Gaussian noise of
std sigma_up, with sigma_down^2 + sigma_up^2 = sigma~_{i+1}^2, so the noise level after the step
is sigma~_{i+1} again. ``eta`` scales the noise (eta = 0: the plain ODE solver, deterministic;
eta = 1: the DDPM posterior's variance), ``s_noise`` scales the drawn noise alone.

The split is made in the scaled space on every schedule, as k-diffusion does; ComfyUI uses a
different split (in the unscaled sigma, with an alpha ratio) for rectified-flow models, so on
those the samplers here are k-diffusion's, not ComfyUI's.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from score_models.parameterization import DiffusionModel

from ..noise import randn_like
from ..options import at_least
from ..registry import register

__all__ = ["ancestral_step", "scaled_denoiser", "dpmpp_2s_step", "add_noise", "euler_ancestral", "dpmpp_2s_ancestral"]

#: D(x~, sigma~): the denoiser in the scaled space at any noise level sigma~ > 0.
ScaledDenoiser = Callable[[torch.Tensor, float], torch.Tensor]

ETA_NOTE = "at eta = 0, where it is the deterministic ODE solver; stochastic for eta > 0"


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> Tuple[float, float]:
    """(sigma_down, sigma_up) for an ancestral step from sigma~ = ``sigma_from`` to ``sigma_to``.

    The step goes deterministically to sigma_down, then adds noise of std sigma_up:

        sigma_up   = min(sigma_to, eta sigma_to sqrt(1 - sigma_to^2 / sigma_from^2)),
        sigma_down = sqrt(sigma_to^2 - sigma_up^2),

    so sigma_down^2 + sigma_up^2 = sigma_to^2 (k-diffusion's ``get_ancestral_step``). With
    eta = 1, sigma_up^2 is the variance of the DDPM posterior q(x~_to | x~_from, x0) of the
    scaled process x~ = x0 + sigma~ z, i.e. DDIM's eta (Song et al. 2021a, eq. 16) in the scaled
    space; eta = 0 gives (sigma_to, 0), the ODE step. For eta > 1 the noise is capped at
    sigma_to and sigma_down can reach 0 (then the deterministic part lands on D).

    For eta <= 1 it is computed as sigma_down = sigma_to sqrt((1 - eta^2) + eta^2 r^2),
    r = sigma_to/sigma_from, which has no cancellation: sigma_down > 0 whenever sigma_to > 0 (a
    difference of squares, as k-diffusion writes it, can round sigma_down to 0 when r is tiny);
    the two agree to round-off otherwise.
    """
    if eta == 0 or sigma_to == 0:
        return sigma_to, 0.0
    r = sigma_to / sigma_from
    sigma_up = eta * sigma_to * math.sqrt((1.0 - r) * (1.0 + r))
    if eta <= 1:  # sigma_up < sigma_to: never capped, sigma_down > 0
        return sigma_to * math.sqrt((1.0 - eta**2) + (eta * r) ** 2), sigma_up
    if sigma_up >= sigma_to:
        return 0.0, sigma_to
    return math.sqrt((sigma_to - sigma_up) * (sigma_to + sigma_up)), sigma_up


def scaled_denoiser(model: DiffusionModel) -> ScaledDenoiser:
    """D(x~, sigma~) at any noise level: the model's x0-prediction at t(sigma~) from the unscaled
    state alpha(t) x~ (one counted evaluation per call), for the in-between levels of two-stage
    steps; grid levels are evaluated at the grid's own times."""
    sched = model.schedule

    def denoise(x_tilde: torch.Tensor, sigma: float) -> torch.Tensor:
        t = sched.t_from_sigma_tilde(sigma)
        return model.x0(float(sched.alpha(t)) * x_tilde, t)

    return denoise


def dpmpp_2s_step(x: torch.Tensor, sigma: float, sigma_next: float, denoised: torch.Tensor,
                  denoise: ScaledDenoiser) -> torch.Tensor:
    """One DPM-Solver++(2S) step with r = 1/2 (Lu et al. 2022b, Algorithm 1) from sigma~ to
    sigma_next > 0 in the scaled space, given D at sigma~ (``denoised``):

        h = log(sigma/sigma_next),  sigma_s = sigma e^{-h/2} (the midpoint in lambda = -log sigma~),
        u = (sigma_s/sigma) x~ - (e^{-h/2} - 1) D,
        x~_next = (sigma_next/sigma) x~ - (e^{-h} - 1) D(u, sigma_s).

    With r = 1/2 the 2S update's weights (1 - 1/(2r), 1/(2r)) put all of it on D(u, sigma_s)."""
    h = math.log(sigma / sigma_next)
    sigma_s = sigma * math.exp(-0.5 * h)
    u = (sigma_s / sigma) * x - math.expm1(-0.5 * h) * denoised
    return (sigma_next / sigma) * x - math.expm1(-h) * denoise(u, sigma_s)


def add_noise(x: torch.Tensor, sigma_up: float, s_noise: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """x~ + s_noise sigma_up z; nothing is drawn when sigma_up = 0 (eta = 0, or a step onto sigma~ = 0)."""
    if sigma_up == 0:
        return x
    return x + (s_noise * sigma_up) * randn_like(x, generator)


@register("euler_ancestral", order=1, order_note=ETA_NOTE, stochastic=False, stochastic_if="eta > 0",
          nfe="N", paper="Crowson 2022 (k-diffusion); = DDIM with eta in the scaled space (Song et al. 2021a, eq. 12)",
          variants=({"eta": 0.0}, {"eta": 0.5, "s_noise": 0.5}),
          checks={"eta": at_least(0.0), "s_noise": at_least(0.0)},
          known_as={"k-diffusion": "sample_euler_ancestral", "ComfyUI": "euler_ancestral",
                    "diffusers": "EulerAncestralDiscreteScheduler"})
def euler_ancestral(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, eta: float = 1.0,
                    s_noise: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Ancestral sampling with Euler steps: Euler onto sigma_down, then noise of std sigma_up.

    k-diffusion's ``sample_euler_ancestral`` (Crowson 2022). Per step, with
    (sigma_down, sigma_up) = ancestral_step(sigma~_i, sigma~_{i+1}, eta):

        x~ <- x~ + (sigma_down - sigma~_i) (x~ - D(x~, sigma~_i)) / sigma~_i + s_noise sigma_up z.

    This is DDIM with the same eta (Song et al. 2021a, eq. 12; ``ddim``) for 0 <= eta <= 1, and
    with eta = 1 DDPM's ancestral step with the posterior variance (``ddpm``, fixed_small), on any
    grid; eta = 0 is ``euler``. For eta > 1 the noise is capped at sigma~_{i+1}: where the cap
    binds, the step lands on D and adds noise of std sigma~_{i+1} (as k-diffusion; ComfyUI adds
    none there). No noise is drawn on the step onto sigma~ = 0.
    """
    sched = model.schedule
    sigmas, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    x = x_T / alphas[0]
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = model.x0(alphas[i] * x, times[i])
        sigma_down, sigma_up = ancestral_step(sigma, sigmas[i + 1], eta)
        x = x + (sigma_down - sigma) * ((x - denoised) / sigma)
        x = add_noise(x, sigma_up, s_noise, generator)
    return alphas[-1] * x


@register("dpmpp_2s_ancestral", order=2, order_note=ETA_NOTE, stochastic=False, stochastic_if="eta > 0",
          nfe="2*N - 1 if to_zero else 2*N", nfe_note="the step onto sigma = 0 lands on D: one evaluation",
          paper="Lu et al. 2022b (DPM-Solver++(2S), Algorithm 1) with k-diffusion's ancestral noise (Crowson 2022)",
          variants=({"eta": 0.0}, {"eta": 0.5, "s_noise": 0.5}),
          checks={"eta": at_least(0.0, 1.0), "s_noise": at_least(0.0)},
          known_as={"k-diffusion": "sample_dpmpp_2s_ancestral", "ComfyUI": "dpmpp_2s_ancestral"})
def dpmpp_2s_ancestral(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, eta: float = 1.0,
                       s_noise: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Ancestral DPM-Solver++(2S): a second-order data-prediction step onto sigma_down, then noise.

    Lu et al. 2022b, Algorithm 1 (DPM-Solver++(2S), r = 1/2; :func:`dpmpp_2s_step`) from
    sigma~_i to sigma_down, then s_noise sigma_up z, with (sigma_down, sigma_up) =
    ancestral_step(sigma~_i, sigma~_{i+1}, eta): k-diffusion's ``sample_dpmpp_2s_ancestral``.
    eta = 0 is ``dpm_solver_singlestep`` with order 2. The step onto sigma~ = 0 lands on
    D(x~, sigma~_i) (one evaluation, no noise). ``eta`` is at most 1: above it sigma_down reaches
    0 on steps that depend on the grid, and those steps would need one evaluation, not two.
    """
    sched = model.schedule
    sigmas, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    denoise = scaled_denoiser(model)
    x = x_T / alphas[0]
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = model.x0(alphas[i] * x, times[i])
        sigma_down, sigma_up = ancestral_step(sigma, sigmas[i + 1], eta)
        if sigma_down == 0:
            x = denoised
        else:
            x = dpmpp_2s_step(x, sigma, sigma_down, denoised, denoise)
        x = add_noise(x, sigma_up, s_noise, generator)
    return alphas[-1] * x
