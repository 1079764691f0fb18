"""Align Your Steps (Sabour, Fidler & Kreis 2024, "Align Your Steps: Optimizing Sampling
Schedules in Diffusion Models").

AYS compares the generative SDE with its linearisation by a first-order solver, which holds the
denoiser at its value at the start of each interval, and bounds their path-space KL divergence
(KLUB). In the EDM parameterisation (sigma~ = t, g^2 = 2t, score = (D - x)/t^2) the bound over an
interval [s, t] is E[ int_s^t (1/u^3) || D(x_u, u) - D(x_t, t) ||^2 du ] over data x0 and the
forward process x_u = x0 + u eps. The paper optimises a 10-step schedule by iterative
coordinate-wise minimisation of each level against its two intervals (sec. 3.3, Algorithm 1),
then reaches other step counts by log-linear interpolation of that schedule (sec. 3.4; the rule
its published schedules are used with, e.g. ComfyUI's AlignYourStepsScheduler)."""
from __future__ import annotations

import math
import weakref
from typing import Any, Dict, Sequence

import numpy as np
import torch

from score_models.parameterization import DiffusionModel

from ..grids import time_grid
from .problem import GridProblem, Ledger

__all__ = ["ays_grid", "loglinear_interp", "klub_schedule", "PUBLISHED_SCHEDULES"]

#: The 10-step noise levels the AYS authors published (sigma, EDM parameterisation), as used by
#: ComfyUI's AlignYourStepsScheduler node; read here only by the tests of the interpolation.
PUBLISHED_SCHEDULES = {
    "SD1.5": (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
              0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582),
    "SDXL": (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582),
}


def loglinear_interp(levels: Sequence[float], n_points: int) -> np.ndarray:
    """``n_points`` decreasing noise levels whose log is piecewise-linear in the index fraction
    through the given decreasing ``levels`` (AYS sec. 3.4): both ends are kept, and n_points =
    len(levels) returns them unchanged."""
    levels = np.asarray(levels, dtype=np.float64)
    if levels.ndim != 1 or levels.size < 2 or not np.all(levels > 0) or not np.all(np.diff(levels) < 0):
        raise ValueError(f"loglinear_interp needs >= 2 positive, strictly decreasing levels, got {levels.tolist()}")
    if not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}")
    known = np.linspace(0.0, 1.0, levels.size)
    wanted = np.linspace(0.0, 1.0, n_points)
    # np.interp needs increasing abscissae: work from the small end, then flip back
    return np.exp(np.interp(wanted, known, np.log(levels[::-1])))[::-1].copy()


class _KLUB:
    """Monte-Carlo KLUB of one interval with common random numbers: fixed data x0, noise eps and
    fractions u per interval slot, so the objective is a smooth function of the levels."""

    def __init__(self, problem: GridProblem, data: torch.Tensor, eps: torch.Tensor, u: torch.Tensor):
        self.problem, self.data, self.eps, self.u = problem, data, eps, u

    def denoise(self, sigma: torch.Tensor) -> torch.Tensor:
        """D(x0 + sigma eps, sigma) per sample, sigma a [B] tensor of noise levels sigma~."""
        sched, model = self.problem.schedule, self.problem.model
        t = sched.t_from_sigma_tilde(sigma)
        alpha = sched.alpha(t).reshape((-1,) + (1,) * (self.data.dim() - 1))
        x_scaled = self.data + sigma.reshape(alpha.shape) * self.eps
        x = (alpha * x_scaled).to(device=self.problem.device, dtype=self.problem.dtype)
        with torch.inference_mode():
            return model.x0(x, t.to(self.problem.device)).to(torch.float64).cpu()

    def __call__(self, slot: int, s_hi: float, s_lo: float) -> float:
        """(s_hi - s_lo) E[u^-3 || D(x_u, u) - D(x_hi, s_hi) ||^2], u uniform in [s_lo, s_hi]."""
        u = s_lo + self.u[slot] * (s_hi - s_lo)
        d_u = self.denoise(u)
        d_hi = self.denoise(torch.full_like(u, s_hi))
        sq = (d_u - d_hi).flatten(1).pow(2).sum(1)
        return float((s_hi - s_lo) * (sq / u**3).mean())


def klub_schedule(problem: GridProblem, n_steps: int = 10, *, seed: int = 0, n_data: int = 128,
                  sweeps: int = 3, iterations: int = 12) -> np.ndarray:
    """The n_steps + 1 AYS noise levels from sigma_max to sigma_min: start from the EDM rho = 7
    levels, then ``sweeps`` passes of golden-section search (``iterations`` each) on every
    interior level in log sigma between its neighbours, minimising the KLUB of its two intervals
    (the paper's iterative scheme; the expectation over ``n_data`` data samples, seeded)."""
    model: DiffusionModel = problem.model
    sample_data = getattr(model, "sample_data", None)
    if not callable(sample_data):
        raise ValueError(f"method 'ays' needs data samples (the model's sample_data) for its KL bound; {model!r} "
                         f"has none; valid here: gits, dp" + (", exact" if hasattr(model, "exact_ode_solution") else ""))
    sched = problem.schedule
    g = problem.generator(seed, 1)
    data = sample_data(n_data, generator=g, dtype=torch.float64).cpu()
    eps = torch.randn(data.shape, generator=g, dtype=torch.float64)
    u = torch.rand(n_steps, n_data, generator=g, dtype=torch.float64)
    klub = _KLUB(problem, data, eps, u)
    levels = sched.sigma_tilde(time_grid(sched, n_steps, "edm", to_zero=False)).numpy().copy()
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(sweeps):
        for i in range(1, n_steps):
            def pair(log_level: float) -> float:
                level = math.exp(log_level)
                return klub(i - 1, levels[i - 1], level) + klub(i, level, levels[i + 1])

            lo, hi = math.log(levels[i + 1]), math.log(levels[i - 1])
            a, b = lo + (1 - golden) * (hi - lo), lo + golden * (hi - lo)
            fa, fb = pair(a), pair(b)
            for _ in range(iterations):
                if fa <= fb:
                    hi, b, fb = b, a, fa
                    a = lo + (1 - golden) * (hi - lo)
                    fa = pair(a)
                else:
                    lo, a, fa = a, b, fb
                    b = lo + golden * (hi - lo)
                    fb = pair(b)
            candidate = math.exp(a if fa <= fb else b)
            if pair(math.log(candidate)) < pair(math.log(levels[i])):
                levels[i] = candidate
    return levels


#: The base schedule depends on the model alone, not on the sampler or the step count: it is
#: computed once per model and settings in a process (weakly keyed: it goes with the model).
_BASE_SCHEDULES: "weakref.WeakKeyDictionary[DiffusionModel, dict]" = weakref.WeakKeyDictionary()


def ays_grid(problem: GridProblem, *, seed: int = 0, n_data: int = 128, base_steps: int = 10, sweeps: int = 3
             ) -> tuple[torch.Tensor, Dict[str, Any]]:
    """The AYS grid of the sampler's step count: the KLUB-optimised ``base_steps`` schedule
    (:func:`klub_schedule`), log-linearly interpolated to n_steps levels (sigma_max ... the
    smallest kept), then sigma = 0: the convention of the published schedules' n-step use.
    The base is shared by every sampler and budget on the same model (``base_cost`` is what it
    cost the first time; a later call spends nothing on it)."""
    sched, model = problem.schedule, problem.model
    key = (seed, n_data, base_steps, sweeps)
    memo = _BASE_SCHEDULES.setdefault(model, {})
    if key not in memo:
        ledger = Ledger(model)
        memo[key] = (klub_schedule(problem, base_steps, seed=seed, n_data=n_data, sweeps=sweeps), ledger.cost())
    base, base_cost = memo[key]
    n = problem.n_steps
    levels = loglinear_interp(base, n) if n >= 2 else base[:1]
    times = sched.t_from_sigma_tilde(torch.tensor(levels, dtype=torch.float64)).clamp(sched.t_min, sched.t_max)
    times[0] = sched.t_max
    times = torch.cat([times, torch.tensor([sched.t_data], dtype=torch.float64)])
    return times, {"base_steps": base_steps, "n_data": n_data, "base_levels": [float(v) for v in base],
                   "base_nfe": base_cost["optimizer_nfe"], "base_seconds": base_cost["optimizer_seconds"]}
