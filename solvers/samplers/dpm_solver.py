"""DPM-Solver (Lu et al. 2022a) and DPM-Solver++ (Lu et al. 2022b), multistep and singlestep.

Written in the scaled space x~ = x/alpha with sigma~ = sigma/alpha = exp(-lambda): the
exponential-integrator updates lose their alpha factors, e.g. DPM-Solver++(1) is
x~_t = (sigma~_t/sigma~_s) x~_s + (1 - sigma~_t/sigma~_s) D, i.e. DDIM. A step onto sigma = 0
(lambda = inf) is always first order and lands on D.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from score_models.parameterization import DiffusionModel

from .registry import register

__all__ = ["dpm_solver", "dpm_solver_singlestep", "ALGORITHMS", "THIRD_ORDER_TERMS"]

ALGORITHMS = ("dpmsolver++", "dpmsolver")
#: How the 3M update weighs its second-difference term D2 = (D1_0 - D1_1)/(r0 + r1) ~ h^2 D''/2.
#: "exact": the Taylor-consistent weight 2 (h phi_3); "diffusers": half of it, as in the DPM-Solver
#: reference code and diffusers' DPMSolverMultistepScheduler, which makes 3M second order asymptotically.
THIRD_ORDER_TERMS = ("exact", "diffusers")


def _check(order: int, allowed: Tuple[int, ...], algorithm: Optional[str] = None) -> None:
    if order not in allowed:
        raise ValueError(f"order must be one of {list(allowed)}, got {order}")
    if algorithm is not None and algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}")


@register("dpm_solver", order=lambda o: o["order"], stochastic=False, nfe_rule="N (one per step)",
          nfe_for_steps=lambda n, e, o: n, default_grid="logsnr",
          paper="Lu et al. 2022a (DPM-Solver) and 2022b (DPM-Solver++), multistep: Algorithm 2 and appendix")
def dpm_solver(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, order: int = 2,
               algorithm: str = "dpmsolver++", lower_order_final: bool = True, third_order_term: str = "exact",
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Multistep DPM-Solver of order 1-3. ``algorithm="dpmsolver++"`` extrapolates the data
    prediction D (Lu et al. 2022b, Algorithm 2 for 2M; 3M from their appendix),
    ``"dpmsolver"`` the noise prediction (Lu et al. 2022a, multistep variant).

    Step i uses order min(order, i + 1) (warm-up). The step onto sigma = 0 is first order; with
    ``lower_order_final`` and fewer than 15 steps the last steps use orders min(order, steps
    left), as diffusers' DPMSolverMultistepScheduler (the original code used 10 steps).

    3M: with D2 = (D1_0 - D1_1)/(r0 + r1) ~ h^2 D''/2, a Taylor expansion of the exact
    x~_t = e^{-h} x~_s + int_0^h e^{-(h-u)} D(lambda_s + u) du asks for the weight
    2 (h + phi_1)/h^2 - 1 on D2 (``third_order_term="exact"``, fitted order 3). The DPM-Solver
    reference code and diffusers use half of it (``"diffusers"``), which we measure to converge at
    order 2 (see tests/test_sampler_family.py); kept as an option for side-by-side equivalence.
    """
    _check(order, (1, 2, 3), algorithm)
    if third_order_term not in THIRD_ORDER_TERMS:
        raise ValueError(f"unknown third_order_term {third_order_term!r}; valid: {', '.join(THIRD_ORDER_TERMS)}")
    d2_weight = 2.0 if third_order_term == "exact" else 1.0
    sched = model.schedule
    sig, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    lam = [-math.log(s) if s > 0 else math.inf for s in sig]
    n = len(sig) - 1
    data = algorithm == "dpmsolver++"
    outputs: List[torch.Tensor] = []  # D (++) or eps, newest last
    x = x_T / alphas[0]
    for i in range(n):
        s, t = sig[i], sig[i + 1]
        x0, eps = model.x0_and_eps(alphas[i] * x, times[i])
        outputs = (outputs + [x0 if data else eps])[-3:]
        k = min(order, i + 1)
        if t == 0:
            k = 1
        elif lower_order_final and n < 15:
            k = min(k, n - i)
        m0 = outputs[-1]
        if k == 1:
            x = (t / s) * x + (1 - t / s) * m0 if data else x - (s - t) * m0
        else:
            h = lam[i + 1] - lam[i]
            r0 = (lam[i] - lam[i - 1]) / h
            d1_0 = (m0 - outputs[-2]) / r0
            if k == 2:
                d1, d2 = d1_0, None
            else:
                r1 = (lam[i - 1] - lam[i - 2]) / h
                d1_1 = (outputs[-2] - outputs[-3]) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
            if data:
                phi_1 = math.expm1(-h)  # e^{-h} - 1 = t/s - 1
                if k == 2:  # Lu et al. 2022b, Algorithm 2: D' = D0 + D1/2
                    x = (t / s) * x - phi_1 * (m0 + 0.5 * d1)
                else:
                    x = (t / s) * x - phi_1 * m0 + (phi_1 / h + 1) * d1 - d2_weight * ((phi_1 + h) / h**2 - 0.5) * d2
            else:
                psi_1 = math.expm1(h)  # e^{h} - 1; sigma~_t (e^h - 1) = s - t
                if k == 2:
                    x = x - (s - t) * (m0 + 0.5 * d1)
                else:
                    x = x - (s - t) * m0 - t * (psi_1 / h - 1) * d1 - d2_weight * t * ((psi_1 - h) / h**2 - 0.5) * d2
    return alphas[-1] * x


@register("dpm_solver_singlestep", order=lambda o: o["order"], stochastic=False,
          nfe_rule="order x N, less (order-1) when the last step lands on sigma=0 (first order there)",
          nfe_for_steps=lambda n, e, o: o["order"] * n - (o["order"] - 1 if e else 0), default_grid="logsnr",
          paper="Lu et al. 2022b, Algorithm 1 (DPM-Solver++(2S)); Lu et al. 2022a, Algorithm 2 (DPM-Solver-3)")
def dpm_solver_singlestep(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, order: int = 2,
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Singlestep DPM-Solver++ in the data prediction: 2S (intermediate point at r1 = 1/2 of the
    step in lambda) and 3S (points at r1 = 1/3, r2 = 2/3; the "dpmsolver" third-order update
    of Lu et al. 2022a written for D). ``order`` evaluations per step."""
    _check(order, (2, 3))
    sched = model.schedule
    sig, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()

    def denoise(x_tilde: torch.Tensor, lam: float) -> torch.Tensor:
        t_inner = sched.inverse_lambda(lam)
        return model.x0(float(sched.alpha(t_inner)) * x_tilde, t_inner)

    x = x_T / alphas[0]
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        d0 = model.x0(alphas[i] * x, times[i])
        if t == 0:
            x = d0
            continue
        lam_s = -math.log(s)
        h = math.log(s / t)
        phi_1 = math.expm1(-h)
        if order == 2:
            r1 = 0.5
            u = math.exp(-r1 * h) * x - math.expm1(-r1 * h) * d0
            d1 = denoise(u, lam_s + r1 * h)
            x = (t / s) * x - phi_1 * d0 - (0.5 / r1) * phi_1 * (d1 - d0)
        else:
            r1, r2 = 1 / 3, 2 / 3
            u1 = math.exp(-r1 * h) * x - math.expm1(-r1 * h) * d0
            d1 = denoise(u1, lam_s + r1 * h)
            phi_22 = math.expm1(-r2 * h) / (r2 * h) + 1
            u2 = math.exp(-r2 * h) * x - math.expm1(-r2 * h) * d0 + (r2 / r1) * phi_22 * (d1 - d0)
            d2 = denoise(u2, lam_s + r2 * h)
            phi_2 = phi_1 / h + 1
            x = (t / s) * x - phi_1 * d0 + (1 / r2) * phi_2 * (d2 - d0)
    return alphas[-1] * x
