"""DEIS (Zhang & Chen 2023): the exponential integrator with a polynomially extrapolated noise
prediction, multistep (Adams-Bashforth) form.

With x~ = x/alpha and rho = sigma~ = sigma/alpha (the paper's rho, its eq. 16), the PF-ODE of any
affine schedule is dx~/drho = eps(x~, rho): the linear part of the ODE is solved exactly by the
change of variables, and what is left is an integral of the noise prediction. DEIS replaces eps
on [rho_i, rho_{i+1}] by the Lagrange polynomial through the last k predictions, in a chosen time
variable v (the paper's tAB-DEIS uses the schedule's t, its rhoAB-DEIS rho; diffusers'
DEISMultistepScheduler, ``solver_type="logrho"``, uses log rho), and integrates it:

    x~_{i+1} = x~_i + sum_{j<k} C_ij eps_{i-j},   C_ij = int_{rho_i}^{rho_{i+1}} L_j(v(rho)) drho,

L_j the Lagrange basis polynomial of node v(rho_{i-j}) on v(rho_i), ..., v(rho_{i-k+1}) (the paper's
eq. 14 with Psi and the scaling absorbed by working on x~). The coefficients are computed as the
paper says, by numerical integration (Gauss-Legendre in u = log rho, where every step is a finite
interval); for v = log rho they equal diffusers' closed form to round-off.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from score_models.parameterization import DiffusionModel

from ..options import one_of
from ..registry import register
from .dpm_solver import step_order

__all__ = ["deis", "POLY_VARIABLES", "deis_coefficients"]

#: The time variable the noise prediction is a polynomial in: log rho (diffusers' "logrho",
#: the default), rho = sigma~ (the paper's rhoAB-DEIS) or the schedule's own time t (tAB-DEIS).
POLY_VARIABLES = ("log_rho", "rho", "t")
#: Gauss-Legendre nodes per step: the integrand is a polynomial in v times e^u (u = log rho),
#: integrated to round-off over any step shorter than ~e^10 in rho.
_QUADRATURE_NODES = 32


@lru_cache(maxsize=None)
def _gauss_legendre(n: int):
    return np.polynomial.legendre.leggauss(n)


def deis_coefficients(nodes: Sequence[float], rho_start: float, rho_end: float,
                      v_of_log_rho: Callable[[np.ndarray], np.ndarray]) -> List[float]:
    """C_j = int_{rho_start}^{rho_end} L_j(v(rho)) drho for the Lagrange basis on ``nodes`` (values of
    v at the past noise levels, newest first), by Gauss-Legendre quadrature in u = log rho:
    drho = e^u du. ``v_of_log_rho`` maps u to v. The C_j sum to rho_end - rho_start."""
    x, w = _gauss_legendre(_QUADRATURE_NODES)
    u0, u1 = math.log(rho_start), math.log(rho_end)
    u = u0 + 0.5 * (u1 - u0) * (x + 1.0)
    weights = 0.5 * (u1 - u0) * w * np.exp(u)
    v = v_of_log_rho(u)
    coefficients = []
    for j, v_j in enumerate(nodes):
        basis = np.ones_like(u)
        for m, v_m in enumerate(nodes):
            if m != j:
                basis = basis * (v - v_m) / (v_j - v_m)
        coefficients.append(float(np.dot(weights, basis)))
    return coefficients


def _time_variable(sched, poly_in: str) -> Callable[[np.ndarray], np.ndarray]:
    """v as a function of u = log rho."""
    if poly_in == "log_rho":
        return lambda u: u
    if poly_in == "rho":
        return np.exp
    return lambda u: sched.t_from_sigma_tilde(torch.from_numpy(np.exp(u))).numpy()


@register("deis", order="1 if order == 1 else 2",
          order_note="its first-order first step caps the order at 2 on sigma 2 -> 0.1; on the full EDM span "
                     "(sigma 80 -> 0.002, where that step falls where the ODE is nearly linear) order=3 fits 2.87 at "
                     "128-1024 steps, rising toward 3",
          stochastic=False, nfe="N", default_grid="logsnr",
          nfe_note="one evaluation per step; a step onto sigma = 0 is first order (DDIM) and lands on D",
          paper="Zhang & Chen 2023 (DEIS), tAB/rhoAB-DEIS: eqs. 14-17; log-rho form as in diffusers",
          variants=({"order": 1}, {"order": 2}, {"poly_in": "rho"}, {"poly_in": "t"},
                    {"lower_order_final": False}),
          checks={"order": one_of(1, 2, 3), "poly_in": one_of(*POLY_VARIABLES)},
          known_as={"diffusers": "DEISMultistepScheduler",
                    "ComfyUI": "deis (the same family: deis_mode='rhoab' extrapolates in rho, with one node more "
                               "than its order; 'tab' in a VP time fitted to sigma 0.002-80)"})
def deis(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, order: int = 3,
         poly_in: str = "log_rho", lower_order_final: bool = True,
         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DEIS: multistep exponential integrator with the noise prediction extrapolated by a Lagrange polynomial.

    Zhang & Chen 2023, eq. 14 (tAB-DEIS) and eq. 17 (rhoAB-DEIS), in the scaled space where the
    exponential integrator reads dx~/drho = eps with rho = sigma~: step i integrates the Lagrange
    polynomial through the last k = min(order, i + 1) noise predictions, a polynomial in
    ``poly_in`` (log rho as diffusers' DEISMultistepScheduler, rho, or the schedule's time t),
    exactly over [rho_i, rho_{i+1}]. Order 1 is DDIM. ``lower_order_final`` lowers the order of
    the last steps of a grid shorter than 15 steps to the number of steps left (diffusers); a
    step onto sigma = 0 is first order and lands on D (the network is never called there)."""
    sched = model.schedule
    rho, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    v_of_u = _time_variable(sched, poly_in)
    v = [float(v_of_u(np.array([math.log(r)]))[0]) if r > 0 else None for r in rho]
    n = len(rho) - 1
    history: List[torch.Tensor] = []  # eps at rho_0, rho_1, ..., newest last
    x = x_T / alphas[0]
    for i in range(n):
        history = (history + [model.eps(alphas[i] * x, times[i])])[-order:]
        k = step_order(order, i, n, rho[i + 1] == 0, lower_order_final)
        if k == 1:
            x = x + (rho[i + 1] - rho[i]) * history[-1]
            continue
        coefficients = deis_coefficients([v[i - j] for j in range(k)], rho[i], rho[i + 1], v_of_u)
        x = x + sum(c * history[-1 - j] for j, c in enumerate(coefficients))
    return alphas[-1] * x
