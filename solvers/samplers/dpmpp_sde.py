"""Stochastic DPM-Solver++ (Lu et al. 2022b): the singlestep SDE sampler and the 2M / 3M SDE
multistep samplers of k-diffusion, ComfyUI and diffusers.

Written in the scaled space x~ = x/alpha, sigma~ = sigma/alpha = e^{-lambda}. Over a step
sigma~_s -> sigma~_t with h = lambda_t - lambda_s, the SDE-DPM-Solver++ update with noise share
``eta`` (Lu et al. 2022b, sec. 5 and appendix; eta = 1 is their SDE, eta = 0 the PF-ODE) is

    x~_t = e^{-H} x~_s + (1 - e^{-H}) D + (higher-order terms) + s_noise sigma~_t sqrt(1 - e^{-2 eta h}) z,

with H = (1 + eta) h: the deterministic part is the DPM-Solver++ update over the exponential
step H (``dpm_solver.MULTISTEP_UPDATES`` with e^{-H} for sigma~_t/sigma~_s), so eta = 0 gives back
DPM-Solver++(2M)/(3M) exactly. A step onto sigma = 0 lands on D (no noise, no NFE there).

The standard normal ``z`` of a step sigma~ -> sigma~' is z = (W(sigma~') - W(sigma~)) / sqrt|sigma~' - sigma~|
for a Brownian path W (:class:`StepNoise`): drawn from ``generator`` increment by increment
(``noise_sampler="gaussian"``: a fresh draw per step), or one ``torchsde.BrownianTree`` over
[sigma~_min, sigma~_max] whose entropy is drawn from ``generator`` (``noise_sampler="brownian"``,
k-diffusion's BrownianTreeNoiseSampler and default), so that runs with different step counts
share one noise path.
"""
from __future__ import annotations

import math
import warnings
from typing import List, Optional, Sequence

import torch

from score_models.parameterization import DiffusionModel

from ..noise import randn_like
from ..options import above, at_least, one_of
from ..registry import Alias, register
from .ancestral import ancestral_step
from .dpm_solver import MULTISTEP_UPDATES, step_order

__all__ = ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "StepNoise", "brownian_entropy", "NOISE_KINDS",
           "SOLVER_TYPES", "SDE_THIRD_ORDER_TERMS"]

NOISE_KINDS = ("gaussian", "brownian")
#: The second-order multistep term: "midpoint" D1/2 (1 - e^{-H}) (Lu et al. 2022b, Algorithm 2), "heun"
#: (e^{-H} - 1 + H)/H D1, the exponential integrator's exact weight for a linear D (phi_2).
SOLVER_TYPES = ("midpoint", "heun")
#: The weight of the 3M second difference D2 ~ h^2 D''/2: "k-diffusion" -phi_3 (k-diffusion, ComfyUI,
#: and the DPM-Solver reference code's ODE 3M), "exact" -2 phi_3 (the Taylor-consistent weight),
#: "diffusers" -phi_3 - 1 (diffusers' sde-dpmsolver++ third-order update), with
#: phi_3 = (e^{-H} - 1 + H)/H^2 - 1/2.
SDE_THIRD_ORDER_TERMS = ("k-diffusion", "exact", "diffusers")

_COMMON_CHECKS = {"eta": at_least(0.0), "s_noise": at_least(0.0), "noise_sampler": one_of(*NOISE_KINDS)}
_STOCHASTIC_NOTE = ("the order of eta = 0, where the sampler is DPM-Solver++(2S); with eta > 0 it is stochastic and "
                    "tested side by side with k-diffusion and diffusers and on the distribution it samples")


def brownian_entropy(generator: Optional[torch.Generator]) -> int:
    """The Brownian tree's seed: one draw from ``generator`` (the global generator if None), so
    equal generators give equal paths and a reused generator gives a fresh one."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=device))


class StepNoise:
    """The standard normal z = (W(sigma~') - W(sigma~)) / sqrt|sigma~' - sigma~| of each step, for one
    Brownian path W (called in the samplers' order).

    ``kind="gaussian"``: W drawn from ``generator`` as it is asked for: a query from a new start
    is a fresh draw ``randn_like(x, generator)``; a query from the previous start that reaches
    further down extends the previous increment by an independent one over the rest,
    W(t) - W(s) = [W(u) - W(s)] + [W(t) - W(u)] (dpmpp_sde's two stages, s -> u then s -> t,
    so their noises are correlated as on one path; independent draws there leave an O(h) bias).
    ``kind="brownian"``: increments of one ``torchsde.BrownianTree`` on [min positive sigma~,
    max sigma~] (shaped and typed like x, on the generator's device, seeded by
    :func:`brownian_entropy`), the same path for any grid over that range.
    """

    def __init__(self, kind: str, x: torch.Tensor, sigmas: Sequence[float], generator: Optional[torch.Generator]):
        self.kind, self.x, self.generator = kind, x, generator
        self.tree = None
        self._last = None  # gaussian: (start, end, W(end) - W(start)) of the last query
        if kind == "brownian":
            try:
                import torchsde
            except ImportError:
                raise ImportError("noise_sampler='brownian' needs torchsde: pip install torchsde "
                                  "(or nfebench[sde])") from None
            positive = [s for s in sigmas if s > 0]
            self.low, self.high = min(positive), max(positive)
            self.entropy = brownian_entropy(generator)
            self._torchsde = torchsde

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        if self.kind == "gaussian":
            return self._gaussian(sigma, sigma_next)
        if self.tree is None:  # built on first use: a one-step grid onto sigma = 0 queries nothing
            device = self.generator.device if self.generator is not None else self.x.device
            w0 = torch.zeros(self.x.shape, dtype=self.x.dtype, device=device)
            self.tree = self._torchsde.BrownianTree(self.low, w0, self.high, entropy=self.entropy)
        low, high = min(sigma, sigma_next), max(sigma, sigma_next)
        with warnings.catch_warnings():
            # torchsde rounds its times to 6 decimals and warns when an endpoint lies past the
            # rounded end (e.g. sigma~_max itself); the query is clamped to it, as intended.
            warnings.filterwarnings("ignore", message="Should have t[ab]", category=UserWarning)
            increment = self.tree(low, high)  # W(high) - W(low)
        if sigma_next < sigma:
            increment = -increment
        return (increment / math.sqrt(high - low)).to(self.x.device)

    def _gaussian(self, sigma: float, sigma_next: float) -> torch.Tensor:
        last = self._last
        if last is not None and last[0] == sigma and sigma_next <= last[1] * (1 + 1e-12) and last[1] < sigma:
            start, end, increment = last  # extend W(end) - W(sigma) down to sigma_next
            if sigma_next < end:
                increment = increment + math.sqrt(end - sigma_next) * randn_like(self.x, self.generator)
        else:
            increment = math.sqrt(abs(sigma - sigma_next)) * randn_like(self.x, self.generator)
        self._last = (sigma, sigma_next, increment)
        return increment / math.sqrt(abs(sigma - sigma_next))


def _ancestral_dpmpp_1(x: torch.Tensor, s: float, t: float, denoised: torch.Tensor, eta: float, s_noise: float,
                       noise: StepNoise) -> torch.Tensor:
    """DPM-Solver++(1) (= DDIM) from sigma~ s down to sigma_down, then noise sigma_up z, with
    sigma_up = min(t, eta t sqrt(1 - t^2/s^2)) and sigma_down = sqrt(t^2 - sigma_up^2) (the
    ancestral split of Karras et al. 2022 / k-diffusion's get_ancestral_step)."""
    if eta == 0:
        return (t / s) * x + (1 - t / s) * denoised
    sigma_down, sigma_up = ancestral_step(s, t, eta)
    x = (sigma_down / s) * x + (1 - sigma_down / s) * denoised
    return x + (s_noise * sigma_up) * noise(s, t)


@register("dpmpp_sde", order=2, order_note=_STOCHASTIC_NOTE, stochastic=False, stochastic_if="eta > 0",
          nfe="2*N - 1 if to_zero else 2*N", nfe_note="the step onto sigma = 0 is one denoising evaluation",
          paper="Lu et al. 2022b (DPM-Solver++(2S), Algorithm 1) with ancestral noise; k-diffusion's sample_dpmpp_sde",
          default_grid="karras", variants=({"eta": 0.0}, {"noise_sampler": "brownian"}, {"eta": 0.5, "r": 0.25}),
          checks={**_COMMON_CHECKS, "r": above(0.0, 1.0)},
          known_as={"k-diffusion": "sample_dpmpp_sde", "ComfyUI": "dpmpp_sde", "diffusers": "DPMSolverSDEScheduler"})
def dpmpp_sde(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, eta: float = 1.0,
              s_noise: float = 1.0, r: float = 0.5, noise_sampler: str = "gaussian",
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Singlestep stochastic DPM-Solver++: two ancestral DPM-Solver++(1) stages per step, 2 NFE.

    Lu et al. 2022b, Algorithm 1 (DPM-Solver++(2S)) with each stage made ancestral (Karras et al.
    2022, k-diffusion's sample_dpmpp_sde). Step sigma~_s -> sigma~_t, h = lambda_t - lambda_s,
    intermediate u = e^{-(lambda_s + r h)}:

        x~_u = ancestral DPM-Solver++(1)(x~_s; s -> u; D_s) + noise,
        x~_t = ancestral DPM-Solver++(1)(x~_s; s -> t; (1 - 1/(2r)) D_s + 1/(2r) D(x~_u, u)) + noise,

    each stage stepping down to sigma_down and adding sigma_up z (``_ancestral_dpmpp_1``); the two
    z are the increments of one Brownian path over [s, u] and [s, t] (:class:`StepNoise`), so they
    are correlated as in k-diffusion with its Brownian tree. eta = 0 is DPM-Solver++(2S) (order 2); a step
    onto sigma = 0 lands on D_s.
    """
    sched = model.schedule
    sig, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    x = x_T / alphas[0]
    step_noise = StepNoise(noise_sampler, x, sig, generator)
    fac = 1 / (2 * r)
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        denoised = model.x0(alphas[i] * x, times[i])
        if t == 0:
            x = denoised
            continue
        lam_s = -math.log(s)
        lam_u = lam_s + r * math.log(s / t)
        u = math.exp(-lam_u)
        x_u = _ancestral_dpmpp_1(x, s, u, denoised, eta, s_noise, step_noise)
        t_u = sched.inverse_lambda(lam_u)
        denoised_u = model.x0(float(sched.alpha(t_u)) * x_u, t_u)
        x = _ancestral_dpmpp_1(x, s, t, (1 - fac) * denoised + fac * denoised_u, eta, s_noise, step_noise)
    return alphas[-1] * x


def _sde_multistep(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, order: int, eta: float,
                   s_noise: float, solver_type: str, third_order_term: str, lower_order_final: bool, noise_sampler: str,
                   generator: Optional[torch.Generator]) -> torch.Tensor:
    """The 2M/3M SDE loop: one D per step, the DPM-Solver++ multistep update over H = (1 + eta) h,
    then s_noise sigma~_t sqrt(1 - e^{-2 eta h}) z."""
    sched = model.schedule
    sig, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    lam = [-math.log(s) if s > 0 else math.inf for s in sig]
    n = len(sig) - 1
    x = x_T / alphas[0]
    step_noise = StepNoise(noise_sampler, x, sig, generator)
    history: List[torch.Tensor] = []  # D, newest last
    for i in range(n):
        history = (history + [model.x0(alphas[i] * x, times[i])])[-3:]
        if sig[i + 1] == 0:
            x = history[-1]
            continue
        h = lam[i + 1] - lam[i]
        big_h = (1 + eta) * h
        k = step_order(order, i, n, False, lower_order_final)
        ratios = tuple((lam[i - j] - lam[i - j - 1]) / h for j in range(k - 1))
        if k == 2 and solver_type == "heun":
            phi_1 = math.expm1(-big_h)
            d1 = (history[-1] - history[-2]) / ratios[0]
            x = math.exp(-big_h) * x - phi_1 * history[-1] + (phi_1 / big_h + 1) * d1
        else:
            weight = 2.0 if third_order_term == "exact" else 1.0
            x = MULTISTEP_UPDATES[("dpmsolver++", k)](x, 1.0, math.exp(-big_h), big_h, history, ratios, weight)
            if k == 3 and third_order_term == "diffusers":
                r0, r1 = ratios
                d2 = ((history[-1] - history[-2]) / r0 - (history[-2] - history[-3]) / r1) / (r0 + r1)
                x = x - d2
        if eta > 0:
            x = x + (s_noise * sig[i + 1] * math.sqrt(-math.expm1(-2 * eta * h))) * step_noise(sig[i], sig[i + 1])
    return alphas[-1] * x


_MULTISTEP_NOTE = ("the order of eta = 0, where the sampler is DPM-Solver++(2M)/(3M), whose first-order first "
                   "step caps it at 2; with eta > 0 it is stochastic and tested side by side with k-diffusion and "
                   "diffusers and on the distribution it samples")


@register("dpmpp_2m_sde", order=2, order_note=_MULTISTEP_NOTE, stochastic=False, stochastic_if="eta > 0",
          nfe="N", nfe_note="one evaluation per step; the step onto sigma = 0 is a denoising step",
          paper="Lu et al. 2022b, SDE-DPM-Solver++(2M) (sec. 5 and appendix); k-diffusion's sample_dpmpp_2m_sde",
          default_grid="karras",
          variants=({"eta": 0.0}, {"eta": 0.0, "solver_type": "heun"}, {"noise_sampler": "brownian"},
                    {"eta": 0.5, "lower_order_final": True}),
          checks={**_COMMON_CHECKS, "solver_type": one_of(*SOLVER_TYPES)},
          known_as={"k-diffusion": "sample_dpmpp_2m_sde", "ComfyUI": "dpmpp_2m_sde",
                    "diffusers": "DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', solver_order=2)"},
          aliases=(Alias("dpmpp_2m_sde_heun", {"solver_type": "heun"},
                         {"k-diffusion": "sample_dpmpp_2m_sde(solver_type='heun')", "ComfyUI": "dpmpp_2m_sde_heun"}),))
def dpmpp_2m_sde(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, eta: float = 1.0,
                 s_noise: float = 1.0, solver_type: str = "midpoint", lower_order_final: bool = False,
                 noise_sampler: str = "gaussian", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """SDE-DPM-Solver++(2M): multistep second order in the data prediction plus fresh noise, 1 NFE per step.

    Lu et al. 2022b, sec. 5 and appendix (eta = 1), generalised by ``eta`` as in k-diffusion's
    sample_dpmpp_2m_sde. With H = (1 + eta) h, D1 = (D_i - D_{i-1}) h/h_{i-1}:

        x~_t = e^{-H} x~_s + (1 - e^{-H}) D_i + c D1 + s_noise sigma~_t sqrt(1 - e^{-2 eta h}) z,

    c = (1 - e^{-H})/2 (``solver_type="midpoint"``) or (e^{-H} - 1 + H)/H (``"heun"``); the first
    step is first order. ``lower_order_final`` makes the last step first order below 15 steps
    (diffusers). eta = 0 is DPM-Solver++(2M).
    """
    return _sde_multistep(model, x_T, times, 2, eta, s_noise, solver_type, "k-diffusion", lower_order_final,
                          noise_sampler, generator)


@register("dpmpp_3m_sde", order=2, order_note=_MULTISTEP_NOTE, stochastic=False,
          stochastic_if="eta > 0", nfe="N",
          nfe_note="one evaluation per step; the step onto sigma = 0 is a denoising step",
          paper="Lu et al. 2022b, DPM-Solver++(3M) (appendix) with SDE noise; k-diffusion's sample_dpmpp_3m_sde",
          default_grid="karras",
          variants=({"eta": 0.0}, {"eta": 0.0, "third_order_term": "exact"}, {"noise_sampler": "brownian"},
                    {"lower_order_final": True, "solver_type": "midpoint", "third_order_term": "diffusers"}),
          checks={**_COMMON_CHECKS, "solver_type": one_of(*SOLVER_TYPES),
                  "third_order_term": one_of(*SDE_THIRD_ORDER_TERMS)},
          requires={"third_order_term != 'diffusers' or eta == 1":
                    "third_order_term='diffusers' reproduces diffusers' eta = 1 SDE only (its D2 weight, about -1, "
                    "makes the multistep recursion marginally unstable)"},
          known_as={"k-diffusion": "sample_dpmpp_3m_sde", "ComfyUI": "dpmpp_3m_sde",
                    "diffusers": "DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', solver_order=3)"})
def dpmpp_3m_sde(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, eta: float = 1.0,
                 s_noise: float = 1.0, solver_type: str = "heun", third_order_term: str = "k-diffusion",
                 lower_order_final: bool = False, noise_sampler: str = "gaussian",
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """SDE-DPM-Solver++(3M): multistep third order in the data prediction plus fresh noise, 1 NFE per step.

    Lu et al. 2022b, appendix (3M) over the exponential step H = (1 + eta) h, as k-diffusion's
    sample_dpmpp_3m_sde: with D1, D2 the divided differences of the last three D,

        x~_t = e^{-H} x~_s + (1 - e^{-H}) D_i + phi_2 D1 + c_2 D2 + s_noise sigma~_t sqrt(1 - e^{-2 eta h}) z,

    phi_2 = (e^{-H} - 1 + H)/H, phi_3 = phi_2/H - 1/2, c_2 from ``third_order_term``
    (:data:`SDE_THIRD_ORDER_TERMS`: -phi_3 as k-diffusion, -2 phi_3 Taylor-exact, -phi_3 - 1 as
    diffusers, whose weight ~ -1 gives the recursion a parasitic root at -1: its samples drift
    away as the step count grows, so it is kept only to reproduce diffusers at eta = 1).
    Warm-up: a first-order step, then one second-order step of ``solver_type`` ("heun" as
    k-diffusion, "midpoint" as diffusers). ``lower_order_final``: diffusers' lower orders on the
    last two steps below 15 steps.
    """
    return _sde_multistep(model, x_T, times, 3, eta, s_noise, solver_type, third_order_term, lower_order_final,
                          noise_sampler, generator)
