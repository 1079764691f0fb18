"""Linear multistep samplers: F-PNDM, PLMS (Liu et al. 2022) and iPNDM (Zhang & Chen 2023).

All three combine past noise predictions with Adams-Bashforth weights (fixed, uniform-step
weights, as the papers use them on any grid) and move with the DDIM "transfer"
phi(x_t, e, t -> s) = alpha_s (x_t - sigma_t e)/alpha_t + sigma_s e (Liu et al. 2022, eq. 11).
In the scaled space x~ = x/alpha that transfer is x~_s = x~_t + (sigma~_s - sigma~_t) e, so the
three are Adams-Bashforth on dx~/dsigma~ = eps; they differ in warm-up and defaults.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from score_models.parameterization import DiffusionModel

from ..grids import LANDINGS, alpha_sigma_steps, fixed_stride
from ..options import one_of
from ..registry import Alias, register

__all__ = ["pndm", "plms", "ipndm", "ADAMS_BASHFORTH", "variable_step_weights"]


def _validated_adams_bashforth() -> dict:
    """Adams-Bashforth weights for uniform steps, newest first; each row sums to 1 (consistency)."""
    table = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}
    for k, row in table.items():
        if len(row) != k or abs(sum(row) - 1.0) > 1e-12:
            raise ValueError(f"Adams-Bashforth row {k} is invalid: {row}")
    return table


ADAMS_BASHFORTH = _validated_adams_bashforth()


def _combine(history: List[torch.Tensor], order: int) -> torch.Tensor:
    """sum_j w_j e_{i-j} over the newest ``order`` entries of ``history`` (oldest first)."""
    weights = ADAMS_BASHFORTH[order]
    out = weights[0] * history[-1]
    for j in range(1, order):
        out = out + weights[j] * history[-1 - j]
    return out


def variable_step_weights(nodes: List[float], target: float) -> List[float]:
    """Adams-Bashforth weights for past nodes s_i, s_{i-1}, ... (newest first) and a step to
    ``target``: the w_j with sum_j w_j p(s_j) = (1/h) int_{s_i}^{target} p for every polynomial p of
    degree < len(nodes), h = target - s_i. Uniform nodes give :data:`ADAMS_BASHFORTH`."""
    import numpy as np

    base = nodes[0]
    h = target - base
    k = len(nodes)
    # Work in units of h so the Vandermonde system stays well conditioned.
    u = np.array([(n - base) / h for n in nodes], dtype=np.float64)
    vander = np.vander(u, k, increasing=True).T  # row m: u_j^m
    moments = np.array([1.0 / (m + 1) for m in range(k)])  # int_0^1 v^m dv
    return np.linalg.solve(vander, moments).tolist()


def _transfer(x: torch.Tensor, eps: torch.Tensor, a_t: float, s_t: float, a_s: float, s_s: float) -> torch.Tensor:
    """Liu et al. 2022, eq. 11 (the DDIM step driven by a given noise estimate)."""
    return a_s * (x - s_t * eps) / a_t + s_s * eps


#: Why fixed-weight multistep samplers lose order on other grids (shared by their notes).
_UNIFORM_GRID_NOTE = ("on a grid uniform in sigma~ (the default uniform grid on EDM); fixed Adams-Bashforth "
                      "weights on other grids give 2")


@register("pndm", order=4, order_note=_UNIFORM_GRID_NOTE, stochastic=False,
          nfe="4*min(N, 3) + max(N - 3, 0) - (3 if to_zero and N <= 3 else 0)",
          nfe_note="3 pseudo-RK4 warm-up steps of 4 NFE, then 1 per step (S + 9); a warm-up step onto "
                   "sigma = 0 is a 1-NFE DDIM step",
          paper="Liu et al. 2022 (PNDM), F-PNDM: eqs. 11-13 and Algorithm 2", default_grid="uniform",
          checks={"landing": one_of(*LANDINGS)}, known_as={"diffusers": "PNDMScheduler(skip_prk_steps=False)"})
def pndm(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, landing: str = "next",
         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """F-PNDM: 3 pseudo Runge-Kutta warm-up steps, then 4th-order pseudo linear multistep.

    Liu et al. 2022: three pseudo Runge-Kutta steps (eq. 13, four evaluations each,
    half steps at the midpoint), then the pseudo linear multistep of eq. 12,
    e' = (55 e_t - 59 e_{t-1} + 37 e_{t-2} - 9 e_{t-3}) / 24, through the transfer phi.
    A warm-up step that lands on sigma = 0 is a plain DDIM step: the network is never called there.

    ``landing="fixed_stride"`` (not the default) moves the state of each multistep step i to
    t_i - T//N instead of t_{i+1} and reads it as at t_{i+1} (:func:`solvers.grids.landing_times`);
    a warm-up step still ends on t_{i+1}, but its first half step lands at t_i - h and is read at
    the midpoint t_{i+1} + h, h = floor(T//N / 2). That is what diffusers' PNDMScheduler computes;
    it exists to reproduce diffusers and is not the consistent choice."""
    sched = model.schedule
    # diffusers' warm-up half step with landing="fixed_stride": half of T//N, the same for every step
    half = fixed_stride(sched, times.numel() - 1) // 2 if landing == "fixed_stride" else None
    history: List[torch.Tensor] = []
    x = x_T
    for i, (a_t, s_t, a_s, s_s) in enumerate(alpha_sigma_steps(sched, times, landing)):
        e1 = model.eps(x, times[i])
        history.append(e1)
        if s_s == 0:
            e_prime = e1 if i < 3 else _combine(history, 4)
        elif i < 3:
            # Pseudo Runge-Kutta (eq. 13): e1..e4 at t, mid, mid, s; e' = (e1 + 2 e2 + 2 e3 + e4)/6.
            a_s, s_s = float(sched.alpha(times[i + 1])), float(sched.sigma(times[i + 1]))
            if half is not None:
                t_mid, t_half = times[i + 1] + half, times[i] - half
            else:
                t_mid = t_half = sched.midpoint_time(times[i], times[i + 1])
            a_m, s_m = float(sched.alpha(t_mid)), float(sched.sigma(t_mid))
            a_h, s_h = float(sched.alpha(t_half)), float(sched.sigma(t_half))
            e2 = model.eps(_transfer(x, e1, a_t, s_t, a_h, s_h), t_mid)
            e3 = model.eps(_transfer(x, e2, a_t, s_t, a_m, s_m), t_mid)
            e4 = model.eps(_transfer(x, e3, a_t, s_t, a_s, s_s), times[i + 1])
            e_prime = (e1 + 2 * e2 + 2 * e3 + e4) / 6
        else:
            e_prime = _combine(history, 4)
        history = history[-3:]
        x = _transfer(x, e_prime, a_t, s_t, a_s, s_s)
    return x


PLMS_WARMUPS = ("lower_order", "improved_euler")


@register("plms", order="3 if warmup == 'improved_euler' else 2",
          order_note="the warm-up steps (Euler, or improved Euler then AB2) cap the order below 4; "
                     + _UNIFORM_GRID_NOTE,
          stochastic=False, nfe="N + 1 if warmup == 'improved_euler' and not (to_zero and N == 1) else N",
          nfe_note="improved_euler's first step costs one more evaluation unless it lands on sigma = 0",
          paper="Liu et al. 2022 (PNDM), PLMS eq. 12", default_grid="uniform",
          variants=({"warmup": "improved_euler"},),
          checks={"warmup": one_of(*PLMS_WARMUPS), "landing": one_of(*LANDINGS)},
          known_as={"diffusers": "PNDMScheduler(skip_prk_steps=True) with warmup='improved_euler'"})
def plms(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, warmup: str = "lower_order",
         landing: str = "next", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """PLMS: pseudo linear multistep (4th-order Adams-Bashforth) with a lower-order warm-up.

    Liu et al. 2022, eq. 12, through the transfer phi, warmed up with
    Adams-Bashforth of orders 1, 2, 3 (``lower_order``, one evaluation per step) or with a first
    pseudo improved-Euler step, e' = (e(x_t, t) + e(x'_s, s))/2 (``improved_euler``, one extra
    evaluation; what diffusers' PNDMScheduler does with skip_prk_steps=True).

    ``landing="fixed_stride"`` (not the default) moves the state of step i to t_i - T//N instead
    of t_{i+1} and reads it as at t_{i+1} (:func:`solvers.grids.landing_times`); the improved-Euler
    corrector, which ends on t_1, is then taken from t_1 + T//N. That is what diffusers'
    PNDMScheduler(skip_prk_steps=True) computes; it exists to reproduce diffusers and is not the
    consistent choice."""
    sched = model.schedule
    history: List[torch.Tensor] = []
    x = x_T
    for i, (a_t, s_t, a_s, s_s) in enumerate(alpha_sigma_steps(sched, times, landing)):
        history.append(model.eps(x, times[i]))
        if i == 0 and warmup == "improved_euler" and s_s > 0:
            x_euler = _transfer(x, history[0], a_t, s_t, a_s, s_s)
            e_prime = 0.5 * (history[0] + model.eps(x_euler, times[i + 1]))
            if landing == "fixed_stride":
                # every step spans one stride: the corrector's step onto t_1 starts at t_1 + stride
                t_from = times[1] + fixed_stride(sched, times.numel() - 1)
                a_t, s_t = float(sched.alpha(t_from)), float(sched.sigma(t_from))
                a_s, s_s = float(sched.alpha(times[1])), float(sched.sigma(times[1]))
        else:
            e_prime = _combine(history, min(len(history), 4))
        history = history[-3:]
        x = _transfer(x, e_prime, a_t, s_t, a_s, s_s)
    return x


@register("ipndm", order="min(max_order, 2)",
          order_note="its first-order first step caps the order at 2, and so do fixed Adams-Bashforth weights on "
                     "the EDM grid; with variable_step, starting at sigma_max where the ODE is nearly linear, "
                     "it reaches ~4 in practice",
          stochastic=False, nfe="N", paper="Zhang & Chen 2023 (DEIS), iPNDM; as in Karras et al. 2022 space",
          default_grid="edm", variants=({"variable_step": True}, {"max_order": 1}, {"max_order": 3}),
          checks={"max_order": one_of(1, 2, 3, 4)},
          known_as={"ComfyUI": "ipndm"},
          aliases=(Alias("ipndm_v", {"variable_step": True}, {"ComfyUI": "ipndm_v"}),))
def ipndm(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, max_order: int = 4,
          variable_step: bool = False, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """iPNDM: Adams-Bashforth on the scaled PF-ODE with a lower-order warm-up, one NFE per step.

    Zhang & Chen 2023: Adams-Bashforth on the scaled PF-ODE
    dx~/dsigma~ = (x~ - D)/sigma~ with lower-order warm-up (orders 1, 2, 3, then ``max_order``),
    one evaluation per step; by default on the EDM grid.

    With fixed (uniform-step) weights, as in the literature's iPNDM numbers, it equals
    plms(warmup="lower_order") on the same grid, and on a grid that is not uniform in sigma~ it
    converges at order 2 only. ``variable_step=True`` uses the Adams-Bashforth weights of the
    actual sigma~ steps (:func:`variable_step_weights`; k-diffusion's "ipndm_v"), which keep the
    order on any smooth grid."""
    sched = model.schedule
    sigmas, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    history: List[torch.Tensor] = []
    x = x_T / alphas[0]
    for i in range(len(sigmas) - 1):
        denoised = model.x0(alphas[i] * x, times[i])
        history.append((x - denoised) / sigmas[i])
        order = min(len(history), max_order)
        if variable_step and order > 1:
            weights = variable_step_weights([sigmas[i - j] for j in range(order)], sigmas[i + 1])
            slope = sum(w * d for w, d in zip(weights, reversed(history[-order:])))
        else:
            slope = _combine(history, order)
        x = x + (sigmas[i + 1] - sigmas[i]) * slope
        history = history[-(max_order - 1):] if max_order > 1 else []
    return alphas[-1] * x
