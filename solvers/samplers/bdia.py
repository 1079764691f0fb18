"""BDIA: exact diffusion inversion via bi-directional integration approximation (Zhang, Lewis &
Kleijn 2023), its DDIM form.

With the DDIM map from the state z_i at t_i to any level j, DDIM_{i->j}(z_i) = alpha_j x0_i +
sigma_j eps_i ((x0_i, eps_i) from one evaluation at z_i), BDIA-DDIM steps

    z_{i-1} = gamma (z_{i+1} - DDIM_{i->i+1}(z_i)) + DDIM_{i->i-1}(z_i)

(the paper's z_{i-1} = gamma (z_{i+1} - z_i) - gamma Delta(t_i -> t_{i+1} | z_i) + Delta(t_i ->
t_{i-1} | z_i) + z_i): the step back to t_{i+1} taken by DDIM from z_i is replaced, with weight
gamma, by the state actually visited there. The first step is plain DDIM. Given (z_i, z_{i-1}) the
step solves for z_{i+1} with the same evaluation at z_i, so the chain inverts exactly (gamma > 0).
Written on the unscaled state with the schedule's alpha and sigma, as the paper's DDIM form.
"""
from __future__ import annotations

from typing import Optional

import torch

from score_models.parameterization import DiffusionModel

from ..inversion import ExactInversion, step_off_data
from ..options import above
from ..registry import register

__all__ = ["bdia", "bdia_decode", "bdia_encode"]


def _levels(model: DiffusionModel, times: torch.Tensor) -> tuple[list, list]:
    return model.schedule.alpha(times).tolist(), model.schedule.sigma(times).tolist()


def bdia_decode(model: DiffusionModel, x_T: torch.Tensor, z_next: Optional[torch.Tensor], times: torch.Tensor, *,
                gamma: float = 1.0) -> torch.Tensor:
    """BDIA-DDIM sampling from z_N = x_T and z_{N-1} = ``z_next`` (one DDIM step from x_T when None)."""
    alphas, sigmas = _levels(model, times)
    n = len(alphas) - 1
    before = x_T
    if z_next is None:
        x0, eps = model.x0_and_eps(x_T, times[0])
        z_next = alphas[1] * x0 + sigmas[1] * eps
    current = z_next
    for i in range(1, n):
        x0, eps = model.x0_and_eps(current, times[i])
        after = gamma * (before - (alphas[i - 1] * x0 + sigmas[i - 1] * eps)) + alphas[i + 1] * x0 + sigmas[i + 1] * eps
        before, current = current, after
    return current


def bdia_encode(model: DiffusionModel, x0: torch.Tensor, times: torch.Tensor, *,
                gamma: float = 1.0) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """BDIA-DDIM inversion: z_0 = x0, z_1 by one step up (DDIM inversion, or off sigma = 0 the
    trapezoidal step of :func:`solvers.inversion.step_off_data`), then every sampling step solved
    for its earlier state; returns (z_N, z_{N-1})."""
    alphas, sigmas = _levels(model, times)
    n = len(alphas) - 1
    sched = model.schedule
    if n == 0:
        return x0, None
    if float(times[n]) == sched.t_data:
        z_up = step_off_data(model, x0, sched.t_data, times[n - 1])
    else:
        d0, e0 = model.x0_and_eps(x0, times[n])
        z_up = alphas[n - 1] * d0 + sigmas[n - 1] * e0
    below, current = x0, z_up  # z_{i+1}, z_i
    for i in range(n - 1, 0, -1):
        x0_i, eps_i = model.x0_and_eps(current, times[i])
        earlier = ((below - alphas[i + 1] * x0_i - sigmas[i + 1] * eps_i) / gamma
                   + alphas[i - 1] * x0_i + sigmas[i - 1] * eps_i)
        below, current = current, earlier
    return current, below


@register("bdia", order="2 if gamma == 1 else 1", stochastic=False, nfe="N", default_grid="uniform",
          order_note="gamma = 1 is a symmetric two-step (leapfrog-like) scheme; any other gamma leaves a "
                     "first-order term (1 - gamma) of the DDIM step",
          paper="Zhang, Lewis & Kleijn 2023 (BDIA), BDIA-DDIM", variants=({"gamma": 0.5},),
          checks={"gamma": above(0.0, 1.0)})
def bdia(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, gamma: float = 1.0,
         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """BDIA-DDIM: each DDIM step corrected by the state two levels up, exactly invertible.

    Zhang et al. 2023: z_{i-1} = gamma (z_{i+1} - DDIM_{i->i+1}(z_i)) + DDIM_{i->i-1}(z_i), one
    evaluation per step, the first step plain DDIM; gamma in (0, 1] (gamma = 0 would be DDIM,
    which BDIA does not invert exactly).
    """
    return bdia_decode(model, x_T, None, times, gamma=gamma)


bdia.exact_inversion = ExactInversion(encode=bdia_encode, decode=bdia_decode)
