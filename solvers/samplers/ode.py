"""Deterministic (and churned) solvers of the probability-flow ODE.

All work in the scaled space x~ = x/alpha, sigma~ = sigma/alpha, where the PF-ODE reads
dx~/dsigma~ = (x~ - D(x~, sigma~)) / sigma~ for every affine schedule (Karras et al. 2022,
eq. 4 with s = 1): one code path for VP, VE, EDM and rectified flow. A grid that ends at
sigma~ = 0 makes the last step an Euler step, which lands exactly on D (no NFE at sigma = 0).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torchdiffeq import odeint

from score_models.fields import ScaledProbabilityFlowODE
from score_models.parameterization import DiffusionModel

from ..noise import randn_like
from ..options import above, at_least, one_of
from ..registry import register

__all__ = ["euler", "heun", "heun_step", "churn", "rk45", "HEUN_FORMS"]

#: The ODE heun's trapezoid averages over: dx~/dsigma~ (Karras et al. 2022) or dx/dt = u (the flow).
HEUN_FORMS = ("scaled", "velocity")

Denoise = Callable[[torch.Tensor], torch.Tensor]


def heun_step(x: torch.Tensor, sigma, sigma_next, denoise_here: Denoise, denoise_next: Denoise) -> torch.Tensor:
    """One step of Heun's method on dx~/dsigma~ = (x~ - D(x~))/sigma~ from sigma to sigma_next
    (Karras et al. 2022, Algorithm 1, lines 4-8), with D at each end given as a function of x~.
    A step onto sigma_next = 0 is the Euler step alone. sigma, sigma_next may be floats or
    per-sample tensors (shaped to broadcast), as the consistency-distillation trainer uses it."""
    d = (x - denoise_here(x)) / sigma
    x_next = x + (sigma_next - sigma) * d
    if isinstance(sigma_next, float) and sigma_next == 0:
        return x_next
    d_next = (x_next - denoise_next(x_next)) / sigma_next
    return x + (sigma_next - sigma) * 0.5 * (d + d_next)


def churn(model: DiffusionModel, x: torch.Tensor, t, sigma: float, alpha: float, gamma: float,
          sigma_ceiling: float, s_noise: float, generator: Optional[torch.Generator]):
    """Karras et al. 2022, Algorithm 2, lines 4-6: raise the noise level of x~ from sigma to
    sigma_hat = sigma (1 + gamma) by adding fresh noise (scaled by s_noise), never above
    ``sigma_ceiling`` (the grid's first level, so the network is only evaluated inside the
    schedule's range). Returns (x~, t_hat, sigma_hat, alpha_hat); gamma = 0 changes nothing."""
    if gamma <= 0:
        return x, t, sigma, alpha
    sched = model.schedule
    sigma_hat = min(sigma * (1.0 + gamma), sigma_ceiling)
    t_hat = sched.t_from_sigma_tilde(sigma_hat)
    x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * randn_like(x, generator)
    return x, t_hat, sigma_hat, float(sched.alpha(t_hat))


def _denoise(model: DiffusionModel, x_tilde: torch.Tensor, t: torch.Tensor, alpha: float) -> torch.Tensor:
    """D(x~, sigma~(t)): the model's x0-prediction at the unscaled state alpha x~."""
    return model.x0(alpha * x_tilde, t)


@register("euler", order=1, stochastic=False, nfe="N", paper="Euler on the PF-ODE; Karras et al. 2022, sec. 3",
          known_as={"k-diffusion": "sample_euler", "ComfyUI": "euler",
                    "diffusers": "EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler"})
def euler(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *,
          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Euler's method on the PF-ODE in the scaled space x/alpha vs sigma/alpha (= deterministic DDIM).

    Karras et al. 2022, eq. 4 and sec. 3:

    x~_{i+1} = x~_i + (sigma~_{i+1} - sigma~_i) (x~_i - D(x~_i, sigma~_i)) / sigma~_i,

    computed multiplied out by alpha_{i+1}: x_{i+1} = (sigma_{i+1}/sigma_i) x_i +
    (alpha_{i+1} - alpha_i sigma_{i+1}/sigma_i) D, which stays finite where alpha_i = 0 (rectified
    flow at t = 1: sigma~ = inf). Equal to deterministic DDIM (Song et al. 2021a, eq. 13) on the
    same grid; on rectified flow also to Euler on dx/dt = u(x, t) (Liu et al. 2023), the
    flow-matching Euler step.
    """
    sched = model.schedule
    sigmas, alphas = sched.sigma(times).tolist(), sched.alpha(times).tolist()
    x = x_T
    for i in range(len(sigmas) - 1):
        ratio = sigmas[i + 1] / sigmas[i]
        x = ratio * x + (alphas[i + 1] - alphas[i] * ratio) * model.x0(x, times[i])
    return x


@register("heun", order=2, stochastic=False, nfe="2*N - 1 if to_zero else 2*N",
          nfe_note="the step onto sigma = 0 is an Euler step", paper="Karras et al. 2022, Algorithms 1 and 2",
          stochastic_if="s_churn > 0", variants=({"s_churn": 10.0}, {"form": "velocity"}),
          checks={"s_churn": at_least(0.0), "s_tmin": at_least(0.0), "s_tmax": at_least(0.0), "s_noise": at_least(0.0),
                  "form": one_of(*HEUN_FORMS)},
          known_as={"k-diffusion": "sample_heun", "ComfyUI": "heun",
                    "diffusers": "HeunDiscreteScheduler; FlowMatchHeunDiscreteScheduler with form='velocity'"})
def heun(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *,
         s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
         form: str = "scaled", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Heun's 2nd-order method (EDM); with s_churn > 0 the stochastic EDM sampler.

    Karras et al. 2022 Algorithm 1; with s_churn > 0 the stochastic Algorithm 2 (noise raised by gamma_i = min(s_churn/N, sqrt(2)-1) while s_tmin <= sigma~ <= s_tmax).

    Churn never lifts sigma~ above the grid's first noise level, so the network is only
    evaluated inside the schedule's time range.

    ``form`` is the ODE the trapezoid averages over: ``"scaled"`` dx~/dsigma~ (Karras et al.),
    ``"velocity"`` dx/dt = u(x, t), the model's flow (velocity) prediction, in the schedule's own
    time (Liu et al. 2023; diffusers' FlowMatchHeunDiscreteScheduler), which stays finite where
    alpha = 0. The two Euler predictors agree; the corrected steps differ at O(h^3) except where
    sigma~ is affine in t (alpha = 1: VE, EDM). A step onto sigma = 0 lands on D in both.
    """
    sched = model.schedule
    if form == "velocity":
        if s_churn > 0:
            raise ValueError(f"option s_churn={s_churn!r} of sampler 'heun' needs form='scaled'; valid with "
                             f"form='velocity': s_churn=0")
        return _heun_velocity(model, x_T, times)
    sigmas, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    n_steps = len(sigmas) - 1
    gamma_max = min(s_churn / n_steps, math.sqrt(2.0) - 1.0)
    x = x_T / alphas[0]
    for i in range(n_steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # Algorithm 2, lines 4-6: temporarily raise the noise level ("churn").
        gamma = gamma_max if s_tmin <= sigma <= s_tmax else 0.0
        x, t_hat, sigma_hat, alpha_hat = churn(model, x, times[i], sigma, alphas[i], gamma, sigmas[0], s_noise,
                                               generator)
        # Algorithm 1, lines 4-8: Euler step, then the trapezoidal correction unless at sigma = 0.
        x = heun_step(x, sigma_hat, sigma_next, lambda y: _denoise(model, y, t_hat, alpha_hat),
                      lambda y: _denoise(model, y, times[i + 1], alphas[i + 1]))
    return alphas[-1] * x


def _heun_velocity(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Heun's method on dx/dt = u(x, t) (u: the model's flow prediction) over the grid's times;
    the step onto sigma = 0 is the Euler step alpha D of :func:`euler`."""
    sigmas, alphas = model.schedule.sigma(times).tolist(), model.schedule.alpha(times).tolist()
    x = x_T
    for i in range(len(sigmas) - 1):
        if sigmas[i + 1] == 0:
            x = alphas[i + 1] * model.x0(x, times[i])
            continue
        dt = float(times[i + 1] - times[i])
        u = model.flow(x, times[i])
        x = x + dt * 0.5 * (u + model.flow(x + dt * u, times[i + 1]))
    return x


@register("rk45", order=None, stochastic=False, nfe=None,
          nfe_note="adaptive: counted (rejected steps included); nfe is a cap; +1 for the final denoising step",
          order_note="adaptive: the error follows rtol/atol, not a step count",
          paper="Dormand & Prince 1980 via torchdiffeq; Song et al. 2021, sec. 4.3",
          grid_options=("t_min", "t_max", "to_zero"), checks={"rtol": above(0.0), "atol": above(0.0)})
def rk45(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *,
         rtol: float = 1e-5, atol: float = 1e-5, generator: Optional[torch.Generator] = None,
         max_nfe: Optional[int] = None, stats: Optional[dict] = None) -> torch.Tensor:
    """Adaptive Dormand-Prince 5(4) on the scaled PF-ODE, tolerances rtol/atol; nfe is a cap.

    torchdiffeq's ``dopri5`` on the scaled PF-ODE from
    sigma~(t_max) to sigma~(t_min); if the grid ends at sigma = 0, one final denoising step
    x = D(x~, sigma~_min) (score-SDE's "noise removal", Song et al. 2021, sec. 4.3).

    Every evaluation is counted by the model, rejected steps included. ``max_nfe`` caps them:
    past it, :class:`score_models.fields.NFEBudgetExceeded` is raised, never a truncated solve.
    """
    sched = model.schedule
    ends_at_data = bool(times[-1] == sched.t_data)
    ode_times = times[:-1] if ends_at_data else times
    sigmas, alphas = sched.sigma_tilde(ode_times), sched.alpha(ode_times).tolist()
    if max_nfe is not None and max_nfe < 1 + ends_at_data:
        raise ValueError(f"rk45 needs nfe >= {1 + ends_at_data} (got {max_nfe})")
    field = ScaledProbabilityFlowODE(model, max_nfe=None if max_nfe is None else max_nfe - ends_at_data)
    x = x_T / alphas[0]
    if sigmas.numel() > 1:
        # step_t makes steps land on the grid instead of stepping past sigma~_min (into sigma~ < 0)
        # and interpolating back, which is torchdiffeq's default.
        x = odeint(field, x, sigmas, rtol=rtol, atol=atol, method="dopri5", options={"step_t": sigmas})[-1]
    if ends_at_data:
        x = _denoise(model, x, ode_times[-1], alphas[-1])
    else:
        x = alphas[-1] * x
    if stats is not None:
        stats.update(accepted_steps=field.accepted_steps, rejected_steps=field.rejected_steps)
    return x
