"""DPM-Solver-fast and adaptive DPM-Solver-12/23 (Lu et al. 2022a): singlestep DPM-Solver-1/2/3
in the noise prediction, on steps uniform in log-SNR or chosen by an embedded error estimate.

Written in the scaled space x~ = x/alpha, sigma~ = e^{-lambda}: the paper's updates lose their
alpha ratios, e.g. DPM-Solver-1 is x~_t = x~_s - sigma~_t (e^h - 1) eps_s with h = lambda_t -
lambda_s. Both samplers integrate from the grid's first level t_max to its last positive level
t_min (k-diffusion's sigma_max and sigma_min); a grid ending at sigma = 0 adds one final
denoising step x = D(x~, sigma~_min), which an ODE step cannot take (lambda = inf).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple

import torch

from score_models.fields import NFEBudgetExceeded
from score_models.parameterization import DiffusionModel

from ..noise import randn_like
from ..options import above, at_least, one_of
from ..registry import register
from .ancestral import ancestral_step

__all__ = ["dpm_fast", "dpm_adaptive", "fast_orders", "dpm_solver_step", "ancestral_levels", "PIDController"]

#: One evaluation of the noise prediction at scaled state x~ and log-SNR lambda.
Eps = Callable[[torch.Tensor, float], torch.Tensor]
#: Noise predictions of one step already made, by the fraction r of the step where they were made.
Stages = Dict[float, torch.Tensor]


def _sigma(lam: float) -> float:
    return math.exp(-lam)


def dpm_solver_step(eps: Eps, x: torch.Tensor, lam_s: float, lam_t: float, order: int, stages: Stages,
                    r1: Optional[float] = None) -> torch.Tensor:
    """One singlestep DPM-Solver-``order`` step of Lu et al. 2022a in eps, x~ at lambda_s to lambda_t.

    With h = lambda_t - lambda_s and sigma~(lambda) = e^{-lambda} (their eqs. 3.7 and Algorithms 1, 2
    with alpha = 1):

    - 1: x~_t = x~_s - sigma~_t (e^h - 1) eps_s  (= DDIM);
    - 2: u = x~_s - sigma~_{s1} (e^{r1 h} - 1) eps_s at lambda_{s1} = lambda_s + r1 h (r1 = 1/2), then
      x~_t = x~_s - sigma~_t (e^h - 1) eps_s - sigma~_t/(2 r1) (e^h - 1) (eps_{s1} - eps_s);
    - 3: r1 = 1/3, r2 = 2/3; u1 as above; u2 = x~_s - sigma~_{s2} (e^{r2 h} - 1) eps_s
      - sigma~_{s2} (r2/r1) ((e^{r2 h} - 1)/(r2 h) - 1) (eps_{s1} - eps_s); then
      x~_t = x~_s - sigma~_t (e^h - 1) eps_s - sigma~_t/r2 ((e^h - 1)/h - 1) (eps_{s2} - eps_s).

    ``stages`` holds the evaluations of this step (by fraction r, 0 = eps_s) and gains the new
    ones, so an embedded pair on the same step (adaptive DPM-Solver-23: 2 with r1 = 1/3, then 3)
    shares them instead of re-evaluating."""
    h = lam_t - lam_s
    sigma_t = _sigma(lam_t)

    def eps_at(r: float, u: Callable[[], torch.Tensor]) -> torch.Tensor:
        if r not in stages:
            stages[r] = eps(u(), lam_s + r * h)
        return stages[r]

    e0 = eps_at(0.0, lambda: x)
    x_1 = x - sigma_t * math.expm1(h) * e0
    if order == 1:
        return x_1
    if order == 2:
        r1 = 0.5 if r1 is None else r1
        e1 = eps_at(r1, lambda: x - _sigma(lam_s + r1 * h) * math.expm1(r1 * h) * e0)
        return x_1 - sigma_t / (2 * r1) * math.expm1(h) * (e1 - e0)
    r1, r2 = 1 / 3, 2 / 3
    e1 = eps_at(r1, lambda: x - _sigma(lam_s + r1 * h) * math.expm1(r1 * h) * e0)
    sigma_s2 = _sigma(lam_s + r2 * h)
    e2 = eps_at(r2, lambda: (x - sigma_s2 * math.expm1(r2 * h) * e0
                             - sigma_s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (e1 - e0)))
    return x_1 - sigma_t / r2 * (math.expm1(h) / h - 1) * (e2 - e0)


def fast_orders(k: int) -> List[int]:
    """DPM-Solver-fast's step orders for K evaluations (Lu et al. 2022a, sec. 3.3):
    M = floor(K/3) + 1 steps, [3, ..., 3, 2, 1] if K = 0 mod 3, else [3, ..., 3, K mod 3]; they sum to K."""
    if k < 1:
        raise ValueError(f"DPM-Solver-fast needs at least 1 evaluation, got {k}")
    m = k // 3 + 1
    return [3] * (m - 2) + [2, 1] if k % 3 == 0 else [3] * (m - 1) + [k % 3]


def ancestral_levels(lam_s: float, lam_t: float, lam_end: float, eta: float) -> Tuple[float, float]:
    """(lambda the ODE step lands on, std of the noise then added) for an ancestral step from
    lambda_s to lambda_t (Karras et al. 2022's ancestral split: sigma_up = min(sigma_t, eta sigma_t
    sqrt(1 - sigma_t^2/sigma_s^2)), sigma_down = sqrt(sigma_t^2 - sigma_up^2)), with the landing
    level capped at lambda_end and the noise topping sigma~ back up to sigma~_t, as k-diffusion's
    DPMSolver does."""
    if eta == 0:
        return lam_t, 0.0
    sigma_t = _sigma(lam_t)
    sigma_down, _ = ancestral_step(_sigma(lam_s), sigma_t, eta)
    lam_down = min(lam_end, -math.log(sigma_down) if sigma_down > 0 else math.inf)
    return lam_down, math.sqrt(sigma_t**2 - _sigma(lam_down) ** 2)


class PIDController:
    """Step-size control from the last three error ratios (Söderlind 2003 PID, as in k-diffusion).

    With eps_n = 1/(error_n + 1e-8) and k the error order, the step is multiplied by
    1 + atan(f - 1), f = eps_n^{(p+i+d)/k} eps_{n-1}^{-(p+2d)/k} eps_{n-2}^{d/k}; the step is
    accepted when that factor is >= accept_safety. Defaults (p, i, d) = (0, 1, 0) give the plain
    integral (elementary) controller h *= 1 + atan(error^{-1/k} - 1)."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float, accept_safety: float):
        self.h = h
        self.exponents = ((pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order)
        self.accept_safety = accept_safety
        self.inverse_errors: List[float] = []

    def propose(self, error: float) -> bool:
        """Rescale h from this step's error (a weighted RMS, 1 = at tolerance); whether to accept it."""
        inverse = 1.0 / (error + 1e-8)
        if not self.inverse_errors:
            self.inverse_errors = [inverse] * 3
        self.inverse_errors[0] = inverse
        raw = math.prod(e ** b for e, b in zip(self.inverse_errors, self.exponents))
        factor = 1.0 + math.atan(raw - 1.0)
        accept = factor >= self.accept_safety
        if accept:
            self.inverse_errors[1:] = self.inverse_errors[:2]
        self.h *= factor
        return accept


class _EpsField:
    """eps(x~, lambda) = (x~ - D(x~, sigma~))/sigma~ from the model, one counted evaluation each (at
    the time t given, else at the time whose log-SNR is lambda)."""

    def __init__(self, model: DiffusionModel):
        self.model, self.start = model, model.nfe

    @property
    def used(self) -> int:
        return self.model.nfe - self.start

    def __call__(self, x_tilde: torch.Tensor, lam: float, t: Optional[torch.Tensor] = None) -> torch.Tensor:
        sched = self.model.schedule
        t = sched.inverse_lambda(lam) if t is None else t
        return self.model.x0_and_eps(float(sched.alpha(t)) * x_tilde, t)[1]


def _span(model: DiffusionModel, times: torch.Tensor) -> Tuple[bool, torch.Tensor, torch.Tensor]:
    """(whether the grid ends at sigma = 0, t_max, the last positive level t_min)."""
    ends_at_data = bool(times[-1] == model.schedule.t_data)
    return ends_at_data, times[0], times[-2] if ends_at_data else times[-1]


def _finish(model: DiffusionModel, x: torch.Tensor, t_last: torch.Tensor, ends_at_data: bool) -> torch.Tensor:
    """The sample: x = D(x~, sigma~_min) after a final denoising step, else alpha(t_min) x~."""
    alpha = float(model.schedule.alpha(t_last))
    return model.x0(alpha * x, t_last) if ends_at_data else alpha * x


@register("dpm_fast", order=2,
          order_note="the last step is DPM-Solver-1 (K = 0, 1 mod 3; local error O(h^2)) or -2 (K = 2 mod 3; "
                     "O(h^3)): fitted 2.1 at K = 0 or 1 mod 3, 2.7 at K = 2 mod 3 (64-512 NFE)",
          stochastic=False, stochastic_if="eta > 0", nfe="N",
          nfe_note="N is the NFE, not a step count: DPM-Solver-fast takes floor(K/3) + 1 steps uniform in log-SNR "
                   "for K = N (to_zero: N - 1, then a final denoise) evaluations; only t_max and t_min are used",
          paper="Lu et al. 2022a (DPM-Solver), sec. 3.3 (step size schedule: DPM-Solver-fast)", default_grid="logsnr",
          grid_options=("t_min", "t_max", "to_zero"), variants=({"eta": 1.0},),
          checks={"eta": at_least(0.0), "s_noise": at_least(0.0)},
          known_as={"k-diffusion": "sample_dpm_fast", "ComfyUI": "dpm_fast"})
def dpm_fast(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, eta: float = 0.0,
             s_noise: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DPM-Solver-fast: floor(K/3) + 1 singlestep DPM-Solver-3 steps, ending on 2 and/or 1, uniform in log-SNR.

    Lu et al. 2022a, sec. 3.3 (k-diffusion's ``sample_dpm_fast``): K evaluations buy
    M = floor(K/3) + 1 steps on a grid uniform in lambda from lambda(t_max) to lambda(t_min), with
    orders [3, ..., 3, 2, 1] if K = 0 mod 3, else [3, ..., 3, K mod 3] (:func:`fast_orders`,
    :func:`dpm_solver_step`). Here K is the budget N, less one when the grid ends at sigma = 0: that
    evaluation is the final denoising step at t_min (ComfyUI's ``dpm_fast`` instead stops at
    sigma_min without denoising).

    ``eta`` > 0: each step lands at sigma_down and adds noise back up to the step's level
    (:func:`ancestral_levels`), k-diffusion's ancestral variant, with noise scaled by ``s_noise``.
    """
    ends_at_data, t_first, t_last = _span(model, times)
    sched = model.schedule
    n_evals = times.numel() - 1 - ends_at_data
    x = x_T / float(sched.alpha(t_first))
    if n_evals > 0:
        eps = _EpsField(model)
        lam_start, lam_end = -math.log(float(sched.sigma_tilde(t_first))), -math.log(float(sched.sigma_tilde(t_last)))
        orders = fast_orders(n_evals)
        lams = torch.linspace(lam_start, lam_end, len(orders) + 1, dtype=torch.float64).tolist()
        for i, order in enumerate(orders):
            lam_s, lam_t = lams[i], lams[i + 1]
            lam_down, noise_std = ancestral_levels(lam_s, lam_t, lam_end, eta)
            stages: Stages = {0.0: eps(x, lam_s, t_first if i == 0 else None)}
            x = dpm_solver_step(eps, x, lam_s, lam_down, order, stages)
            if noise_std > 0:
                x = x + noise_std * s_noise * randn_like(x, generator)
    return _finish(model, x, t_last, ends_at_data)


@register("dpm_adaptive", order=None, stochastic=False, stochastic_if="eta > 0", nfe=None,
          order_note="adaptive: the error follows rtol/atol, not a step count",
          nfe_note="adaptive: `order` evaluations per attempted step (rejected ones included); nfe is a cap; "
                   "+1 for the final denoising step",
          paper="Lu et al. 2022a (DPM-Solver), sec. 3.3 and appendix C (adaptive step size: DPM-Solver-12 and -23)",
          grid_options=("t_min", "t_max", "to_zero"), variants=({"order": 2}, {"eta": 1.0}),
          checks={"order": one_of(2, 3), "rtol": above(0.0), "atol": above(0.0), "h_init": above(0.0),
                  "accept_safety": above(0.0), "eta": at_least(0.0), "s_noise": at_least(0.0)},
          known_as={"k-diffusion": "sample_dpm_adaptive", "ComfyUI": "dpm_adaptive"})
def dpm_adaptive(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, order: int = 3,
                 rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05, pcoeff: float = 0.0,
                 icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81, eta: float = 0.0,
                 s_noise: float = 1.0, generator: Optional[torch.Generator] = None,
                 max_nfe: Optional[int] = None, stats: Optional[dict] = None) -> torch.Tensor:
    """Adaptive DPM-Solver-12/23: an embedded lower-order step estimates the error, a PID controller sets h.

    Lu et al. 2022a, sec. 3.3 and appendix C (k-diffusion's ``sample_dpm_adaptive``), in lambda from
    lambda(t_max) to lambda(t_min), first step h_init. Each attempt from lambda_s to
    lambda_t = min(lambda_s + h, lambda_min) makes a low- and a high-order step sharing their
    evaluations: order 3 pairs DPM-Solver-2 (r1 = 1/3) with DPM-Solver-3, order 2 DPM-Solver-1
    with DPM-Solver-2, ``order`` evaluations in all. With
    delta = max(atol, rtol max(|x~_low|, |x~_prev|)) elementwise (x~_prev the last accepted low-order
    state), error = ||(x~_low - x~_high)/delta||_2 / sqrt(numel) over the whole batch (one step
    size for the batch), :class:`PIDController` (error order ``order``, 1.5 with eta > 0) rescales h
    and accepts or rejects; an accepted step continues from x~_high. Stops within 1e-5 of lambda_min.
    (The controller is k-diffusion's; the paper's algorithm rescales h by a plain safety-factor rule.)

    ``eta`` > 0: the step lands at sigma_down and noise tops it up (:func:`ancestral_levels`).
    ``max_nfe`` caps the evaluations (final denoise included): an attempt that would pass it
    raises :class:`score_models.fields.NFEBudgetExceeded` before it runs. ``stats`` gets
    accepted_steps and rejected_steps.
    """
    ends_at_data, t_first, t_last = _span(model, times)
    sched = model.schedule
    if max_nfe is not None and max_nfe < order + ends_at_data:
        raise ValueError(f"dpm_adaptive with order={order} needs nfe >= {order + ends_at_data} (got {max_nfe})")
    eps = _EpsField(model)
    cap = None if max_nfe is None else max_nfe - ends_at_data
    lam, lam_end = -math.log(float(sched.sigma_tilde(t_first))), -math.log(float(sched.sigma_tilde(t_last)))
    pid = PIDController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta > 0 else order, accept_safety)
    x = x_T / float(sched.alpha(t_first))
    x_prev = x
    accepted = rejected = 0
    while lam < lam_end - 1e-5:
        if cap is not None and eps.used + order > cap:
            raise NFEBudgetExceeded(
                f"dpm_adaptive needs more than {max_nfe} network evaluations ({accepted} steps accepted, "
                f"{rejected} rejected, stopped at sigma~={_sigma(lam):.4g}); raise nfe or loosen rtol/atol")
        lam_t = min(lam_end, lam + pid.h)
        lam_down, noise_std = ancestral_levels(lam, lam_t, lam_end, eta)
        stages: Stages = {0.0: eps(x, lam, t_first if accepted == 0 else None)}
        if order == 2:
            x_low = dpm_solver_step(eps, x, lam, lam_down, 1, stages)
            x_high = dpm_solver_step(eps, x, lam, lam_down, 2, stages)
        else:
            x_low = dpm_solver_step(eps, x, lam, lam_down, 2, stages, r1=1 / 3)
            x_high = dpm_solver_step(eps, x, lam, lam_down, 3, stages)
        delta = torch.clamp(rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=atol)
        error = float(torch.linalg.norm((x_low - x_high) / delta)) / math.sqrt(x.numel())
        if pid.propose(error):
            x_prev = x_low
            x = x_high
            if noise_std > 0:
                x = x + noise_std * s_noise * randn_like(x, generator)
            lam = lam_t
            accepted += 1
        else:
            rejected += 1
    if stats is not None:
        stats.update(accepted_steps=accepted, rejected_steps=rejected)
    return _finish(model, x, t_last, ends_at_data)
