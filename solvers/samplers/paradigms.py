"""ParaDiGMS: parallel-in-time sampling by Picard iterations over a sliding window of steps.

A base sampler's step from t_i to t_{i+1} is x_{i+1} = x_i + delta_i(x_i) + std_i z_i, with
delta_i from one network evaluation at (x_i, t_i) and z_i the step's noise. The whole chain is
then the fixed point of x_{i+1} = x_0 + sum_{j <= i} (delta_j(x_j) + std_j z_j), which Picard
iteration reaches by evaluating every delta_j at once: each iteration is one (stacked) network
call however many steps it covers. Only a window of steps is iterated at a time; it slides past
every step whose state has stopped moving, so a chain of N steps takes far fewer than N
sequential network calls (Shih, Belkhale, Ermon, Sadigh & Anari 2023).
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch

from score_models.fields import NFEBudgetExceeded
from score_models.parameterization import DiffusionModel

from ..grids import alpha_sigma_steps
from ..noise import randn_like
from ..options import at_least, one_of
from ..registry import register

__all__ = ["paradigms", "PARADIGMS_BASES", "base_step_coefficients"]

PARADIGMS_BASES = ("ddim", "ddpm", "euler")


def base_step_coefficients(base: str, model: DiffusionModel, times: torch.Tensor) -> List[tuple]:
    """Per step i: (c_x, c_0, std, variance) with the base sampler's step written as
    x_{i+1} = c_x x_i + c_0 x0(x_i, t_i) + std z_i, and ``variance`` the DDPM posterior variance
    of the step, the scale ParaDiGMS measures convergence against.

    - ddim (eta = 0; Song et al. 2021a, eq. 12): x_s = alpha_s x0 + sigma_s eps;
    - euler (Karras et al. 2022, eq. 4): Euler in the scaled space x~ = x/alpha; the same step as
      DDIM, written through sigma~ as nfebench's ``euler`` computes it;
    - ddpm (Ho et al. 2020, Algorithm 2, ``fixed_small`` variance): the posterior mean and std.
    """
    steps = []
    for a_t, s_t, a_s, s_s in alpha_sigma_steps(model.schedule, times):
        ratio = a_t / a_s
        beta = s_t**2 - ratio**2 * s_s**2  # the variance of x_t given x_s
        variance = beta * s_s**2 / s_t**2
        if base == "ddpm":
            steps.append((ratio * s_s**2 / s_t**2, a_s * beta / s_t**2, math.sqrt(variance), variance))
        elif base == "euler":
            shrink = (s_s / a_s) / (s_t / a_t)  # sigma~_{i+1} / sigma~_i
            steps.append((a_s / a_t * shrink, a_s * (1.0 - shrink), 0.0, variance))
        else:
            steps.append((s_s / s_t, a_s - s_s * a_t / s_t, 0.0, variance))
    return steps


@register("paradigms", order=None, stochastic=False, nfe=None, steps_option="steps", default_grid="uniform",
          order_note="converges to its base sampler's chain (to within tol; exactly at tol = 0), so the "
                     "base's order applies",
          nfe_note="counted: a window's evaluations per Picard iteration, one stacked network call each; "
                   "nfe is a cap; sequential_depth is the number of iterations",
          paper="Shih, Belkhale, Ermon, Sadigh & Anari 2023 (ParaDiGMS), Algorithm 1",
          stochastic_if="base == 'ddpm'", variants=({"base": "ddpm"}, {"base": "euler", "tol": 0.0}),
          checks={"base": one_of(*PARADIGMS_BASES), "steps": at_least(1), "window": at_least(1),
                  "tol": at_least(0.0)})
def paradigms(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, base: str = "ddim",
              steps: int = 100, window: int = 10, tol: float = 0.1, generator: Optional[torch.Generator] = None,
              max_nfe: Optional[int] = None, stats: Optional[dict] = None) -> torch.Tensor:
    """ParaDiGMS: Picard iterations over a sliding window of a base sampler's (ddim, ddpm, euler) steps.

    Shih et al. 2023, Algorithm 1. Per iteration, the states x_b .. x_{b+p-1} of the window
    [b, b+p) are evaluated in one network call (p stacked batches), and

        x_{b+k+1} <- x_b + sum_{j=b}^{b+k} (delta_j(x_j) + std_j z_j),   k = 0 .. p-1;

    the window then slides to the first state whose update moved it by more than the tolerance,
    ||x^new - x^old||^2 / D > tol^2 sigma_j^2 for any sample (sigma_j^2 the step's DDPM
    posterior variance; the step onto sigma = 0, of variance 0, is held to the previous step's),
    and the states it enters are initialised with the window's last one. The noise z_j of every
    step is drawn up front from ``generator`` in the base sampler's order, so the chain
    converges to the base sampler's own result on the same grid and generator. Defaults: window
    p = 10 and tol = 0.1, those of the authors' diffusers pipeline (StableDiffusionParadigmsPipeline);
    the step count is ``steps`` (the grid's), and the budget ``nfe`` caps the total evaluations.
    """
    coefficients = base_step_coefficients(base, model, times)
    n_steps = len(coefficients)
    noise = [randn_like(x_T, generator) if std > 0 else None for _, _, std, _ in coefficients]
    variances = [variance for *_, variance in coefficients]
    for i in range(1, n_steps):
        if variances[i] == 0:
            variances[i] = variances[i - 1]
    thresholds = [tol**2 * variance for variance in variances]
    states = [x_T] * (n_steps + 1)  # states[i]: the current iterate of x_i
    dim = x_T[0].numel()
    begin, iterations, evaluations = 0, 0, 0
    while begin < n_steps:
        end = min(begin + window, n_steps)
        width = end - begin
        if max_nfe is not None and evaluations + width > max_nfe:
            raise NFEBudgetExceeded(f"paradigms needs more than {max_nfe} network evaluations ({iterations} Picard "
                                    f"iterations, {begin} of {n_steps} steps converged); raise nfe, the window or tol")
        stacked = torch.cat(states[begin:end])
        t = times[begin:end].repeat_interleave(x_T.shape[0])
        with model.stacked(width):
            x0 = model.x0(stacked, t).split(x_T.shape[0])
        evaluations += width
        iterations += 1
        previous = states[begin:end + 1]  # the iterate the window's evaluations were made at
        x, first_moved = previous[0], width
        for k, i in enumerate(range(begin, end)):
            c_x, c_0, std, _ = coefficients[i]
            step = (c_x - 1.0) * previous[k] + c_0 * x0[k]
            if std > 0:
                step = step + std * noise[i]
            x = x + step
            moved = (x - previous[k + 1]).pow(2).flatten(1).sum(1) / dim
            if first_moved == width and bool((moved > thresholds[i]).any()):
                first_moved = k
            states[i + 1] = x
        for i in range(end + 1, min(end + window, n_steps) + 1):
            states[i] = states[end]
        begin += min(first_moved + 1, window)
    if stats is not None:
        stats.update(picard_iterations=iterations)
    return states[n_steps]
