"""RES multistep (Zhang, Song & Chen 2023): ComfyUI's ``res_multistep`` and its ancestral variant.

Written in the scaled space x~ = x/alpha, sigma~ = sigma/alpha = e^{-lambda}, where the PF-ODE in
lambda is the semilinear dx~/dlambda = -x~ + D(x~, lambda) and its exact solution over a step of
length h = lambda_t - lambda_s is the variation-of-constants formula

    x~_t = e^{-h} x~_s + int_0^h e^{-(h - u)} D(lambda_s + u) du.

An exponential integrator replaces D by a polynomial in u; with the phi functions
phi_1(z) = (e^z - 1)/z and phi_2(z) = (phi_1(z) - 1)/z, the weights of D at the nodes satisfy the
order conditions b_1 + b_2 = phi_1(-h) and b_2 c_2 = phi_2(-h) (the second-order conditions of
exponential integrators, Hochbruck & Ostermann 2010, that RES imposes), where the second node sits
at lambda_s + c_2 h. The multistep RES takes that node
from the previous step (c_2 = -(lambda_s - lambda_prev)/h < 0), one network evaluation per step.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from score_models.parameterization import DiffusionModel

from ..noise import randn_like
from ..options import at_least
from ..registry import Alias, register
from .ancestral import ancestral_step

__all__ = ["res_multistep", "phi_1", "phi_2", "res_weights"]


def phi_1(z: float) -> float:
    """phi_1(z) = (e^z - 1)/z, phi_1(0) = 1."""
    return math.expm1(z) / z if z != 0 else 1.0


def phi_2(z: float) -> float:
    """phi_2(z) = (phi_1(z) - 1)/z = (e^z - 1 - z)/z^2, phi_2(0) = 1/2 (a series below |z| = 1e-3,
    where the closed form loses digits to cancellation)."""
    if abs(z) < 1e-3:
        return 0.5 + z / 6 + z * z / 24 + z**3 / 120
    return (math.expm1(z) - z) / (z * z)


def res_weights(h: float, c2: float) -> Tuple[float, float]:
    """(b_1, b_2) of the two-node RES update x~_t = e^{-h} x~_s + h (b_1 D_s + b_2 D_2), the
    solution of b_1 + b_2 = phi_1(-h), b_2 c_2 = phi_2(-h); c_2 = +-inf (no usable second node)
    gives the exponential Euler weights (phi_1(-h), 0)."""
    b2 = 0.0 if math.isinf(c2) else phi_2(-h) / c2
    return phi_1(-h) - b2, b2


def _lam(sigma: float) -> float:
    return -math.log(sigma) if sigma > 0 else math.inf


@register("res_multistep", order="2 if eta == 0 else None",
          order_note="with eta = 0 (its first-order first step caps it at 2); with eta > 0 ancestral, "
                     "tested against distributions",
          stochastic=False, stochastic_if="eta > 0 and s_noise > 0", nfe="N",
          nfe_note="one evaluation per step; the step onto sigma = 0 lands on D",
          paper="Zhang, Song & Chen 2023 (RES, arXiv 2308.02157), multistep exponential integrator with "
                "order conditions b1 + b2 = phi_1, b2 c2 = phi_2",
          default_grid="karras", variants=({"eta": 1.0}, {"eta": 0.5, "s_noise": 0.5}),
          checks={"eta": at_least(0.0), "s_noise": at_least(0.0)},
          known_as={"ComfyUI": "res_multistep"},
          aliases=(Alias("res_multistep_ancestral", {"eta": 1.0}, {"ComfyUI": "res_multistep_ancestral"}),))
def res_multistep(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, eta: float = 0.0,
                  s_noise: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Refined Exponential Solver, second-order multistep in the data prediction, 1 NFE per step.

    Zhang, Song & Chen 2023 ("Improved order analysis and design of exponential integrator for
    diffusion models sampling"), the multistep RES. With h = lambda_t - lambda_s and the previous
    evaluation D_prev at lambda_prev, c_2 = (lambda_prev - lambda_s)/h and

        x~_t = e^{-h} x~_s + h (b_1 D_s + b_2 D_prev),  b_2 = phi_2(-h)/c_2,  b_1 = phi_1(-h) - b_2,

    i.e. the variation-of-constants integral with D interpolated linearly in lambda through the two
    evaluations. The first step (no history) and a step onto sigma = 0 are exponential Euler
    (= DDIM; onto sigma = 0 it lands on D). With eta = 0 this is algebraically DPM-Solver++(2M)
    with the "heun" (phi_2) weight of its first difference: k-diffusion's
    ``sample_dpmpp_2m_sde(eta=0, solver_type="heun")`` and diffusers'
    ``DPMSolverMultistepScheduler(solver_type="heun", lower_order_final=False)``; the midpoint
    2M uses phi_1(-h)/2 in place of phi_2(-h) (they differ by O(h^3) per step).

    ``eta > 0`` (ComfyUI's res_multistep_ancestral): each step is the update above from sigma~_s
    down to sigma_down, then ``s_noise`` sigma_up z with Karras et al.'s ancestral split
    (sigma_up = min(sigma~_t, eta sigma~_t sqrt(1 - sigma~_t^2/sigma~_s^2)),
    sigma_down = sqrt(sigma~_t^2 - sigma_up^2)); one z per step from ``generator``, none onto
    sigma = 0. As ComfyUI does, c_2 h is then lambda_prev - lambda(previous sigma_down): the span
    of the previous step's deterministic part, not the distance lambda_prev - lambda_s between
    the two evaluations (the two coincide at eta = 0).
    """
    sched = model.schedule
    sig, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    x = x_T / alphas[0]
    prev: Optional[Tuple[torch.Tensor, float, float]] = None  # (D, its lambda, lambda of that step's sigma_down)
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        denoised = model.x0(alphas[i] * x, times[i])
        sigma_down, sigma_up = ancestral_step(s, t, eta)
        if sigma_down == 0 or prev is None:
            x = (sigma_down / s) * x + (1 - sigma_down / s) * denoised  # exponential Euler (DDIM)
        else:
            d_prev, lam_prev, lam_prev_down = prev
            h = math.log(s / sigma_down)
            b1, b2 = res_weights(h, (lam_prev - lam_prev_down) / h)
            x = math.exp(-h) * x + h * (b1 * denoised + b2 * d_prev)
        if eta > 0 and t > 0:
            x = x + (s_noise * sigma_up) * randn_like(x, generator)
        prev = (denoised, _lam(s), _lam(sigma_down))
    return alphas[-1] * x
