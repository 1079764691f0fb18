"""UniPC (Zhao et al. 2023): the unified predictor UniP-p and corrector UniC-p, multistep.

Written in the scaled space x~ = x/alpha with sigma~ = sigma/alpha = exp(-lambda), where the
exponential-integrator updates lose their alpha factors. With the step h = lambda_t - lambda_s > 0
from sigma~ = s to sigma~ = t, UniPC's data-prediction update (the paper's x_theta form) reads

    x~_t = (t/s) x~_s + (1 - t/s) m_0 - B(h) sum_m rho_m D_m,            m = D (the denoiser)

and its noise-prediction update (the paper's eps_theta form)

    x~_t = x~_s - (s - t) m_0 - t B(h) sum_m rho_m D_m,                  m = eps,

i.e. DDIM plus a weighted sum of divided differences D_m = (m_{-m} - m_0)/r_m of past model
outputs, r_m = (lambda_{-m} - lambda_s)/h. The weights solve R_p rho = g_p / B(h) with R_p the
Vandermonde matrix of the r_m (rows r_m^(k-1)) and g_p the phi-function vector (k! h phi_{k+1}),
the paper's a_p = R_p^{-1}(h) g_p(h)/B(h); B(h) is ``bh1`` (B(h) = h-hat) or ``bh2`` (B(h) = e^h-hat - 1),
with h-hat = -h for data and +h for noise prediction.

References run side by side in tests/test_parity_unipc.py: diffusers' UniPCMultistepScheduler
(to round-off). ComfyUI's ``uni_pc``/``uni_pc_bh2`` run the reference code (bh1/bh2) at order
min(3, N - 1) on its sigmas with the penultimate one discarded (our ``discard_penultimate=True``)
and a final sigma of 0.001 in place of 0; they are the aliases below with order 3.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from score_models.parameterization import DiffusionModel

from ..options import at_least, one_of
from ..registry import Alias, register
from .dpm_solver import MULTISTEP_UPDATES, step_order

__all__ = ["unipc", "VARIANTS", "unipc_coefficients"]

#: B(h) choices of Zhao et al. 2023, sec. 3.1: "bh1" B(h) = h, "bh2" B(h) = e^h - 1 (in h-hat).
VARIANTS = ("bh1", "bh2")


def unipc_coefficients(h: float, ratios: Sequence[float], variant: str, predict_x0: bool,
                       corrector: bool) -> Tuple[float, List[float]]:
    """(B(h), rho) of one UniP-p or UniC-p update with step h > 0 in lambda.

    ``ratios`` are r_1..r_{p-1} of the earlier outputs used (r_m = (lambda_{-m} - lambda_s)/h < 0).
    The predictor UniP-p (p = len(ratios) + 1) weighs D_1..D_{p-1}: rho solves the (p-1)x(p-1)
    system R rho = b; the corrector UniC-p weighs D_1..D_{p-1} and the new output's difference
    D_p = m_t - m_0 (r_p = 1): the p x p system. b_k = k! g_k / B(h) with g_1 = (e^hh - 1)/hh - 1,
    g_{k+1} = g_k/hh - 1/(k+1)!, hh = -h (data) or h (noise). As the reference code does, the
    second-order predictor and the first-order corrector use the closed form rho = 1/2.
    """
    hh = -h if predict_x0 else h
    b_of_h = hh if variant == "bh1" else math.expm1(hh)
    nodes = list(ratios) + ([1.0] if corrector else [])
    size = len(nodes)
    if size == 0:
        return b_of_h, []
    if size == 1:
        return b_of_h, [0.5]
    b, g, factorial = [], math.expm1(hh) / hh - 1.0, 1.0
    for k in range(1, size + 1):
        b.append(g * factorial / b_of_h)
        factorial *= k + 1
        g = g / hh - 1.0 / factorial
    vandermonde = np.array([[r ** (k - 1) for r in nodes] for k in range(1, size + 1)], dtype=np.float64)
    return b_of_h, np.linalg.solve(vandermonde, np.array(b, dtype=np.float64)).tolist()


def _update(x: torch.Tensor, history: List[torch.Tensor], lam: List[float], sig: List[float], i: int, order: int,
            variant: str, predict_x0: bool, new_output: Optional[torch.Tensor] = None) -> torch.Tensor:
    """UniP-p (``new_output`` None) or UniC-p (the output at the predicted point given) for the step
    i from sigma~ = sig[i] to sig[i + 1], starting at the state x~ at sig[i]. ``history`` holds the
    model outputs at ..., sig[i-1], sig[i] (newest last)."""
    s, t = sig[i], sig[i + 1]
    h = lam[i + 1] - lam[i]
    m0 = history[-1]
    # DDIM, i.e. DPM-Solver(++)-1: x~_t = (t/s) x~_s + (1 - t/s) D, or x~_s - (s - t) eps.
    base = MULTISTEP_UPDATES[("dpmsolver++" if predict_x0 else "dpmsolver", 1)](x, s, t, h, [m0], (), 1.0)
    if t == 0 or (order == 1 and new_output is None):
        return base  # first order; onto sigma = 0 it lands on D
    ratios = [(lam[i - m] - lam[i]) / h for m in range(1, order)]
    b_of_h, rho = unipc_coefficients(h, ratios, variant, predict_x0, corrector=new_output is not None)
    differences = [(history[-1 - m] - m0) / r for m, r in enumerate(ratios, start=1)]
    if new_output is not None:
        differences.append(new_output - m0)
    residual = rho[0] * differences[0]
    for weight, difference in zip(rho[1:], differences[1:]):
        residual = residual + weight * difference
    return base - (b_of_h if predict_x0 else t * b_of_h) * residual


@register("unipc",
          order="(1 if disable_corrector else 2) if order == 1 else "
                "(2 if lower_order_final or disable_corrector or corrector_from > 0 else 3)",
          order_note="with lower_order_final (diffusers' default, at every N) the last step is a first-order "
                     "step that no corrector follows: 2; without it UniPC-2 and UniPC-3 reach 3 (their "
                     "UniC-1-corrected first step caps 3); UniP alone or corrector_from > 0: uncorrected "
                     "first-order steps cap it at 2 (UniP-1 is DDIM: 1)",
          stochastic=False, nfe="N", nfe_note="the corrector reuses the next step's evaluation",
          default_grid="logsnr",
          paper="Zhao et al. 2023 (UniPC), sec. 3: UniC-p and UniP-p, multistep, B(h) = h (bh1) or e^h - 1 (bh2)",
          variants=({"order": 1}, {"order": 3}, {"variant": "bh1"}, {"predict_x0": False}, {"disable_corrector": True},
                    {"lower_order_final": False}, {"order": 3, "lower_order_final": False}),
          checks={"order": one_of(1, 2, 3), "variant": one_of(*VARIANTS), "corrector_from": at_least(0)},
          known_as={"diffusers": "UniPCMultistepScheduler"},
          aliases=(Alias("uni_pc", {"order": 3, "variant": "bh1"}, {"ComfyUI": "uni_pc"}),
                   Alias("uni_pc_bh2", {"order": 3, "variant": "bh2"}, {"ComfyUI": "uni_pc_bh2"})))
def unipc(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, order: int = 2, variant: str = "bh2",
          predict_x0: bool = True, lower_order_final: bool = True, disable_corrector: bool = False,
          corrector_from: int = 0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """UniPC: multistep UniP-p predictor and UniC-p corrector, the corrector reusing the next step's evaluation.

    Zhao et al. 2023, sec. 3 (UniC-p, sec. 3.1; UniP-p, sec. 3.2), multistep, in the data
    prediction (``predict_x0=True``, the paper's x_theta form and diffusers' default) or the noise
    prediction. At each grid time the model is evaluated once at the predicted state; that output
    corrects the step just taken (UniC-p, p the order of that step's predictor, accuracy p + 1)
    and then drives the next predictor step (UniP-p) from the corrected state. The last step is
    never corrected (no evaluation follows it), so NFE = N; onto sigma = 0 it lands on D at the
    uncorrected state, so there the correction of the step before it does not reach the output.

    - ``order``: p = 1-3, warmed up as min(p, i + 1). The default 2 with ``bh2`` is diffusers'
      default UniPCMultistepScheduler. On the exact mixtures (default grid, onto sigma = 0) it is
      2-3.5x more accurate than UniPC-3 (ComfyUI's ``uni_pc``, ``uni_pc_bh2``) at 5 steps, about
      as accurate at 8-12, and behind it at 20 on the 16-D mixture; bh1 trails bh2 at order 2.
    - ``lower_order_final``: the order is at most the number of steps left, at every N, as in
      diffusers and the reference code (DPM-Solver does so only below 15 steps). A step onto
      sigma = 0 is first order whatever the options.
    - ``variant``: B(h) of sec. 3.1, ``bh1`` (h) or ``bh2`` (e^h - 1).
    - ``disable_corrector``: True runs UniP-p alone (diffusers' ``disable_corrector`` listing
      every step). ``corrector_from``: steps 0..corrector_from-1 go uncorrected (diffusers'
      ``disable_corrector=[0, ..., corrector_from - 1]``, which its documentation suggests for
      large guidance scales).
    """
    sched = model.schedule
    sig, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    lam = [-math.log(s) if s > 0 else math.inf for s in sig]
    n = len(sig) - 1
    history: List[torch.Tensor] = []  # D (predict_x0) or eps at the last `order` grid times, newest last
    x = x_T / alphas[0]
    x_before, last_order = x, 0  # the state before the last predictor step, and that step's order
    for i in range(n):
        x0, eps = model.x0_and_eps(alphas[i] * x, times[i])
        output = x0 if predict_x0 else eps
        if i > 0 and not disable_corrector and i - 1 >= corrector_from:
            x = _update(x_before, history, lam, sig, i - 1, last_order, variant, predict_x0, new_output=output)
        history = (history + [output])[-order:]
        # diffusers' UniPC and the reference code lower the final orders at every N
        last_order = step_order(order, i, n, sig[i + 1] == 0, lower_order_final, lower_order_below=math.inf)
        x_before = x
        x = _update(x, history, lam, sig, i, last_order, variant, predict_x0)
    return alphas[-1] * x
