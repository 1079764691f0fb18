"""DPM-Solver (Lu et al. 2022a) and DPM-Solver++ (Lu et al. 2022b), multistep and singlestep.

Written in the scaled space x~ = x/alpha with sigma~ = sigma/alpha = exp(-lambda): the
exponential-integrator updates lose their alpha factors, e.g. DPM-Solver++(1) is
x~_t = (sigma~_t/sigma~_s) x~_s + (1 - sigma~_t/sigma~_s) D, i.e. DDIM. A step onto sigma = 0
(lambda = inf) is always first order and lands on D.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple

import torch

from score_models.parameterization import DiffusionModel

from ..options import one_of
from ..registry import Alias, register

__all__ = ["dpm_solver", "dpm_solver_singlestep", "ALGORITHMS", "THIRD_ORDER_TERMS", "INTERMEDIATE_POINTS",
           "SOLVER_TYPES", "singlestep_positions"]

ALGORITHMS = ("dpmsolver++", "dpmsolver")
#: How the 3M update weighs its second-difference term D2 = (D1_0 - D1_1)/(r0 + r1) ~ h^2 D''/2.
#: "exact": the Taylor-consistent weight 2 (h phi_3); "diffusers": half of it, as in the DPM-Solver
#: reference code and diffusers' DPMSolverMultistepScheduler, which makes 3M second order asymptotically.
THIRD_ORDER_TERMS = ("exact", "diffusers")


# --- multistep updates, one per (algorithm, order) ------------------------------------------------
# Each takes the scaled state x~ at sigma~ = s, the target sigma~ = t, the step h = lambda_t -
# lambda_s, the model outputs (D for ++, eps otherwise; newest last), the previous steps' lengths
# as fractions of h (r0 = h_{i-1}/h, r1 = h_{i-2}/h) and the 3M second-difference weight.
History = List[torch.Tensor]


def _second_order_difference(history: History, ratios: Tuple[float, ...]) -> torch.Tensor:
    """D1 = (m_0 - m_1)/r0 ~ h m'."""
    return (history[-1] - history[-2]) / ratios[0]


def _third_order_differences(history: History, ratios: Tuple[float, ...]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(D1, D2) of Lu et al. 2022b, appendix (3M): D1 ~ h m', D2 = (D1_0 - D1_1)/(r0 + r1) ~ h^2 m''/2."""
    r0, r1 = ratios
    d1_0 = (history[-1] - history[-2]) / r0
    d1_1 = (history[-2] - history[-3]) / r1
    return d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)


def _dpmsolverpp_1(x, s, t, h, history, ratios, d2_weight):
    """DPM-Solver++(1) = DDIM: x~_t = (sigma~_t/sigma~_s) x~_s + (1 - sigma~_t/sigma~_s) D."""
    return (t / s) * x + (1 - t / s) * history[-1]


def _dpmsolverpp_2m(x, s, t, h, history, ratios, d2_weight):
    """Lu et al. 2022b, Algorithm 2: D' = D_0 + D1/2, with phi_1 = e^{-h} - 1 = t/s - 1."""
    phi_1 = math.expm1(-h)
    return (t / s) * x - phi_1 * (history[-1] + 0.5 * _second_order_difference(history, ratios))


def _dpmsolverpp_3m(x, s, t, h, history, ratios, d2_weight):
    """Lu et al. 2022b, appendix: 3M in the data prediction."""
    d1, d2 = _third_order_differences(history, ratios)
    phi_1 = math.expm1(-h)
    return (t / s) * x - phi_1 * history[-1] + (phi_1 / h + 1) * d1 - d2_weight * ((phi_1 + h) / h**2 - 0.5) * d2


def _dpmsolver_1(x, s, t, h, history, ratios, d2_weight):
    """DPM-Solver-1 = DDIM in the noise prediction: x~_t = x~_s - (sigma~_s - sigma~_t) eps."""
    return x - (s - t) * history[-1]


def _dpmsolver_2m(x, s, t, h, history, ratios, d2_weight):
    """Lu et al. 2022a, multistep 2nd order in eps: sigma~_t (e^h - 1) = s - t."""
    return x - (s - t) * (history[-1] + 0.5 * _second_order_difference(history, ratios))


def _dpmsolver_3m(x, s, t, h, history, ratios, d2_weight):
    """Lu et al. 2022a, multistep 3rd order in eps, with psi_1 = e^h - 1."""
    d1, d2 = _third_order_differences(history, ratios)
    psi_1 = math.expm1(h)
    return x - (s - t) * history[-1] - t * (psi_1 / h - 1) * d1 - d2_weight * t * ((psi_1 - h) / h**2 - 0.5) * d2


MULTISTEP_UPDATES: Dict[Tuple[str, int], Callable[..., torch.Tensor]] = {
    ("dpmsolver++", 1): _dpmsolverpp_1, ("dpmsolver++", 2): _dpmsolverpp_2m, ("dpmsolver++", 3): _dpmsolverpp_3m,
    ("dpmsolver", 1): _dpmsolver_1, ("dpmsolver", 2): _dpmsolver_2m, ("dpmsolver", 3): _dpmsolver_3m,
}


def step_order(order: int, i: int, n_steps: int, lands_on_data: bool, lower_order_final: bool,
               lower_order_below: float = 15) -> int:
    """The order of step i of a multistep method: warm-up min(order, i + 1); first order onto
    sigma = 0; with lower_order_final and fewer than ``lower_order_below`` steps, at most the
    number of steps left (diffusers' DPMSolverMultistepScheduler uses 15, the original DPM-Solver
    code 10; UniPC lowers the final orders at every N: ``math.inf``)."""
    k = min(order, i + 1)
    if lands_on_data:
        return 1
    if lower_order_final and n_steps < lower_order_below:
        return min(k, n_steps - i)
    return k


@register("dpm_solver", order="1 if order == 1 else 2",
          order_note="its first-order first step caps the order at 2 (3M reaches 3 when that step is at "
                     "sigma_max, where the ODE is nearly linear)",
          stochastic=False, nfe="N", default_grid="logsnr",
          paper="Lu et al. 2022a (DPM-Solver) and 2022b (DPM-Solver++), multistep: Algorithm 2 and appendix",
          variants=({"order": 1}, {"order": 3}, {"algorithm": "dpmsolver"},
                    {"algorithm": "dpmsolver", "order": 3}, {"order": 3, "third_order_term": "diffusers"}),
          checks={"order": one_of(1, 2, 3), "algorithm": one_of(*ALGORITHMS),
                  "third_order_term": one_of(*THIRD_ORDER_TERMS)},
          known_as={"diffusers": "DPMSolverMultistepScheduler"},
          aliases=(Alias("dpmpp_2m", {"order": 2, "algorithm": "dpmsolver++"},
                         {"k-diffusion": "sample_dpmpp_2m", "ComfyUI": "dpmpp_2m",
                          "diffusers": "DPMSolverMultistepScheduler(solver_order=2)"}),))
def dpm_solver(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, order: int = 2,
               algorithm: str = "dpmsolver++", lower_order_final: bool = True, third_order_term: str = "exact",
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Multistep DPM-Solver(++) of order 1-3 in the data (++) or noise prediction.

    ``algorithm="dpmsolver++"`` extrapolates the data prediction D (Lu et al. 2022b, Algorithm 2
    for 2M; 3M from their appendix), ``"dpmsolver"`` the noise prediction (Lu et al. 2022a,
    multistep variant); each (algorithm, order) is one update function above.

    3M: with D2 = (D1_0 - D1_1)/(r0 + r1) ~ h^2 D''/2, a Taylor expansion of the exact
    x~_t = e^{-h} x~_s + int_0^h e^{-(h-u)} D(lambda_s + u) du asks for the weight
    2 (h + phi_1)/h^2 - 1 on D2 (``third_order_term="exact"``, fitted order 3). The DPM-Solver
    reference code and diffusers use half of it (``"diffusers"``), which we measure to converge at
    order 2 (see tests/test_sampler_family.py); kept as an option for side-by-side equivalence.
    """
    d2_weight = 2.0 if third_order_term == "exact" else 1.0
    sched = model.schedule
    sig, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    lam = [-math.log(s) if s > 0 else math.inf for s in sig]
    n = len(sig) - 1
    history: History = []  # D (++) or eps, newest last
    x = x_T / alphas[0]
    for i in range(n):
        x0, eps = model.x0_and_eps(alphas[i] * x, times[i])
        history = (history + [x0 if algorithm == "dpmsolver++" else eps])[-3:]
        k = step_order(order, i, n, sig[i + 1] == 0, lower_order_final)
        h = lam[i + 1] - lam[i]
        ratios = tuple((lam[i - j] - lam[i - j - 1]) / h for j in range(k - 1))
        x = MULTISTEP_UPDATES[(algorithm, k)](x, sig[i], sig[i + 1], h, history, ratios, d2_weight)
    return alphas[-1] * x


#: Where singlestep DPM-Solver puts a step's intermediate points: inside each grid interval at
#: fixed fractions of it in lambda, or on the grid's own inner points.
INTERMEDIATE_POINTS = ("lambda", "grid")
#: How a singlestep update weighs the first difference D1 (Lu et al. 2022a's DPM-Solver-2 "midpoint"
#: -phi_1/2; "heun" phi_1/h + 1, which with D2 also makes the third-order update a full Taylor one).
SOLVER_TYPES = ("midpoint", "heun")


def singlestep_positions(order: int, n_steps: int, lower_order_final: bool, lands_on_data: bool) -> List[int]:
    """For each grid interval, the order of the update that lands at its end when a step of order
    k spans k intervals (``intermediate="grid"``): 1, 2, ..., k within each step, so a 1 starts a
    step. Steps of ``order`` intervals; the remainder is a last shorter step, and with
    ``lower_order_final`` a last full step of order 3 splits into 2 + 1 (2 into 1 + 1); a step
    onto sigma = 0 is first order. This is diffusers' DPMSolverSinglestepScheduler.get_order_list,
    which also turns lower_order_final on where the steps do not divide evenly or the grid ends
    at sigma = 0."""
    lower = lower_order_final or n_steps % order != 0 or lands_on_data
    full, rest = divmod(n_steps, order)
    positions = list(range(1, order + 1)) * full + list(range(1, rest + 1))
    if lower and rest == 0 and order > 1 and full > 0:
        positions[-order:] = list(range(1, order)) + [1]
    if lands_on_data:
        positions[-1] = 1
    return positions


def _singlestep_update(x: torch.Tensor, lam: List[float], sig: List[float], start: int, end: int,
                       outputs: History, solver_type: str) -> torch.Tensor:
    """The order-len(outputs) update of the scaled state x~ from grid point ``start`` to ``end``
    with D at the step's first len(outputs) grid points (Lu et al. 2022a, DPM-Solver-2/3 with
    general r, written for D as in Lu et al. 2022b; diffusers' singlestep updates)."""
    s, t = sig[start], sig[end]
    if t == 0:
        return outputs[-1]
    h = lam[end] - lam[start]
    phi_1 = math.expm1(-h)
    phi_2 = phi_1 / h + 1
    x = (t / s) * x - phi_1 * outputs[0]
    if len(outputs) == 2:
        d1 = (outputs[1] - outputs[0]) / ((lam[start + 1] - lam[start]) / h)
        return x + (-0.5 * phi_1 if solver_type == "midpoint" else phi_2) * d1
    if len(outputs) == 3:
        r1, r2 = (lam[start + 1] - lam[start]) / h, (lam[start + 2] - lam[start]) / h
        d1_1, d1_2 = (outputs[1] - outputs[0]) / r1, (outputs[2] - outputs[0]) / r2
        if solver_type == "midpoint":
            return x + phi_2 * d1_2
        d1 = (r2 * d1_1 - r1 * d1_2) / (r2 - r1)
        d2 = 2.0 * (d1_2 - d1_1) / (r2 - r1)
        return x + phi_2 * d1 - ((phi_1 + h) / h**2 - 0.5) * d2
    return x


@register("dpm_solver_singlestep", order="order if intermediate == 'lambda' else min(order, 2)",
          order_note="with intermediate='grid' the last steps are shorter (the N mod order intervals left, and "
                     "lower_order_final's split): one first-order step caps the global order at 2 (order 3 fits "
                     "2.7 on the order test's span)",
          stochastic=False,
          nfe="N if intermediate == 'grid' else order*N - (order - 1 if to_zero else 0)",
          nfe_note="the step onto sigma = 0 is first order; with intermediate='grid' one evaluation per grid "
                   "point, as a step of order k spans k intervals",
          default_grid="logsnr",
          variants=({"order": 3}, {"intermediate": "grid"}, {"intermediate": "grid", "order": 3},
                    {"intermediate": "grid", "order": 3, "solver_type": "heun"}),
          checks={"order": one_of(1, 2, 3), "intermediate": one_of(*INTERMEDIATE_POINTS),
                  "solver_type": one_of(*SOLVER_TYPES)},
          known_as={"diffusers": "DPMSolverSinglestepScheduler"},
          paper="Lu et al. 2022b, Algorithm 1 (DPM-Solver++(2S)); Lu et al. 2022a, Algorithm 2 (DPM-Solver-3)")
def dpm_solver_singlestep(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, order: int = 2,
                          intermediate: str = "lambda", solver_type: str = "midpoint", lower_order_final: bool = True,
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Singlestep DPM-Solver++(2S) and DPM-Solver-3 in the data prediction.

    ``intermediate="lambda"`` (``order`` NFE per grid interval): 2S has an intermediate point at
    r1 = 1/2 of the interval in lambda; 3S points at r1 = 1/3 and r2 = 2/3 (the "dpmsolver"
    third-order update of Lu et al. 2022a written for D); order 1 is not offered here.

    ``intermediate="grid"`` (one NFE per grid point): a step of order k spans k grid intervals
    and its intermediate points are the grid's inner points, at the r_j their lambdas give; the
    state there is the order-j update from the step's start (:func:`_singlestep_update`, whose
    ``solver_type`` weighs D1 as DPM-Solver-2's midpoint or with phi_2, and whose "heun"
    third-order update uses D1 and D2). The order of each step follows
    :func:`singlestep_positions` (``lower_order_final``). This is the time-stepping of Lu et al.
    2022a's singlestep solver with a per-step order list, as diffusers' DPMSolverSinglestepScheduler
    runs it; midpoint's third-order update is third order where r2 = 2/3 (a logsnr grid).
    ``solver_type`` and ``lower_order_final`` apply to ``intermediate="grid"`` only."""
    sched = model.schedule
    sig, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    if intermediate == "grid":
        lam = [-math.log(v) if v > 0 else math.inf for v in sig]
        positions = singlestep_positions(order, len(sig) - 1, lower_order_final, sig[-1] == 0)
        x = x_T / alphas[0]
        for i, k in enumerate(positions):
            if k == 1:
                start, x_start, outputs = i, x, []
            outputs.append(model.x0(alphas[i] * x, times[i]))
            x = _singlestep_update(x_start, lam, sig, start, i + 1, outputs, solver_type)
        return alphas[-1] * x
    if order == 1:
        raise ValueError("option order=1 of sampler 'dpm_solver_singlestep' needs intermediate='grid' (where it is "
                         "DDIM); valid with intermediate='lambda': order 2, 3")

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
