"""Align Your Steps (Sabour, Fidler & Kreis 2024, "Align Your Steps: Optimizing Sampling
Schedules in Diffusion Models", sec. 3.2-3.3 and App. B.1, Algorithms 1 and 2).

AYS compares the generative SDE with its linearisation by a first-order solver, which holds the
denoiser at its value at the start (the noisier end) of each interval, and bounds their
path-space KL divergence (KLUB). In the EDM parameterisation (sigma~ = t, s = 1) the bound of an
interval [t_lo, t_hi] is, up to a constant factor, int_{t_lo}^{t_hi} t^-3 E|| D(x_t, t) -
D(x_hi, t_hi) ||^2 dt, with x_t = x0 + t eps from the data and x_hi = x_t + sqrt(t_hi^2 - t^2)
eps' (eq. 10), and the schedule's KLUB is the sum over its intervals (eq. 11).

The procedure, as in the paper:

* Monte Carlo with importance sampling in t (Algorithm 2): t is drawn from
  pi(t) ~ t^-3 (1/(t^2 + c^2) - 1/(t_hi^2 + c^2)), the integrand a Gaussian N(0, c^2) would give
  (Lemma 3.3), with c = 0.5, and each draw is weighed by 1/pi(t).
* Coordinate search (Algorithm 1): for i = 1..n-1 in turn, the KLUB of the two intervals
  around t_i is estimated for 11 candidates in a neighbourhood of t_i (t_i itself among them, so
  the estimate never increases) and t_i moves to the best; passes repeat until none changes, or
  ``sweeps`` passes have run (the early stopping the paper needs, since a KLUB-optimal schedule
  is not the KL-optimal one: App. A.3).
* Hierarchy (sec. 3.3): a 10-step schedule initialised with EDM rho = 7 is optimised first;
  then ``subdivisions`` rounds each insert the log-midpoint of every interval and optimise only
  the inserted points, their neighbours frozen (10 -> 20 -> 40 steps).
* Other step counts: the final schedule, as a piecewise log-linear function of the index
  fraction, interpolated to the wanted number of levels (sec. 3.3; the rule its published
  schedules are used with, e.g. ComfyUI's AlignYourStepsScheduler).

The random numbers (data, noises, importance-sampled times) are drawn once per interval slot from
the seed, so every estimate is a fixed function of the levels and the search is deterministic.
What the paper leaves open and is chosen here: the neighbourhood (t_i and 5 points on each side at
1/6 .. 5/6 of the log-distance to the neighbouring level) and the number of data samples
(``n_data``; the paper used 8192 on GPUs)."""
from __future__ import annotations

import math
import weakref
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from score_models.parameterization import DiffusionModel

from ..grids import time_grid
from .problem import GridProblem, Ledger

__all__ = ["ays_grid", "loglinear_interp", "klub_schedule", "klub_estimator", "interval_weight_mass",
           "IMPORTANCE_C", "PUBLISHED_SCHEDULES"]

#: The data scale c of the Gaussian that shapes the importance-sampling density of t (the paper's c = 0.5).
IMPORTANCE_C = 0.5
#: Candidates per coordinate update, the current value included (App. B.1: "we select 11 candidates").
CANDIDATES = 11

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




def _inner_mass(t: np.ndarray, c: float) -> np.ndarray:
    """An antiderivative of t^-3 / (t^2 + c^2): (log1p(c^2/t^2) - c^2/t^2) / (2 c^4), with the
    series of log1p(x) - x for small x (large t) to avoid cancelling digits."""
    x = (c / np.asarray(t, dtype=np.float64)) ** 2
    small = x < 1e-3
    series = -x**2 / 2 + x**3 / 3 - x**4 / 4 + x**5 / 5
    exact = np.log1p(np.where(small, 0.0, x)) - np.where(small, 0.0, x)
    return np.where(small, series, exact) / (2 * c**4)


def _antiderivative(t: np.ndarray, t_hi: float, c: float) -> np.ndarray:
    """G(t) with G' = t^-3 (1/(t^2 + c^2) - 1/(t_hi^2 + c^2)), increasing on (0, t_hi]."""
    t = np.asarray(t, dtype=np.float64)
    return _inner_mass(t, c) + 1.0 / (2 * t**2 * (t_hi**2 + c**2))


def interval_weight_mass(t_lo: float, t_hi: float, c: float = IMPORTANCE_C) -> float:
    """Z = int_{t_lo}^{t_hi} t^-3 (1/(t^2 + c^2) - 1/(t_hi^2 + c^2)) dt, in closed form: the
    normaliser of the importance density of the interval, and (times c^4 d) the exact KLUB of
    the interval for data N(0, c^2 I_d) (Lemma 3.3)."""
    return float(_antiderivative(np.array(t_hi), t_hi, c) - _antiderivative(np.array(t_lo), t_hi, c))


def _importance_times(u: np.ndarray, t_lo: float, t_hi: float, c: float) -> np.ndarray:
    """Inverse-CDF draws of pi(t) on [t_lo, t_hi] for uniforms u (bisection in log t)."""
    g_lo = _antiderivative(np.array(t_lo), t_hi, c)
    target = g_lo + u * (_antiderivative(np.array(t_hi), t_hi, c) - g_lo)
    lo, hi = np.full_like(u, math.log(t_lo)), np.full_like(u, math.log(t_hi))
    for _ in range(64):
        mid = (lo + hi) / 2
        below = _antiderivative(np.exp(mid), t_hi, c) < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.exp((lo + hi) / 2)


class _SlotDraws:
    """The fixed random numbers of one interval slot: data, two noises, uniforms for t."""

    def __init__(self, data: torch.Tensor, generator: torch.Generator):
        self.data = data
        self.eps = torch.randn(data.shape, generator=generator, dtype=torch.float64)
        self.eps_hi = torch.randn(data.shape, generator=generator, dtype=torch.float64)
        self.u = torch.rand(data.shape[0], generator=generator, dtype=torch.float64).numpy()


class klub_estimator:
    """Monte Carlo KLUB of intervals in sigma~ (Algorithm 2, per interval), each slot with its own
    fixed draws, memoised: ``estimator(slot, t_lo, t_hi)``."""

    def __init__(self, problem: GridProblem, n_data: int, seed: int, c: float = IMPORTANCE_C):
        model = problem.model
        sample_data = getattr(model, "sample_data", None)
        if not callable(sample_data):
            raise ValueError(f"method 'ays' needs data samples (the model's sample_data) for its KL bound; {model!r} "
                             f"has none; valid here: gits, dp" + (", exact" if hasattr(model, "exact_ode_solution") else ""))
        self.problem, self.c = problem, c
        self.generator = problem.generator(seed, 1)
        self.data = sample_data(n_data, generator=self.generator, dtype=torch.float64).cpu().to(torch.float64)
        self.slots: Dict[Any, _SlotDraws] = {}
        self.memo: Dict[Tuple[Any, float, float], float] = {}

    def _draws(self, slot: Any) -> _SlotDraws:
        if slot not in self.slots:  # drawn in the order slots are first used: deterministic
            self.slots[slot] = _SlotDraws(self.data, self.generator)
        return self.slots[slot]

    def denoise(self, x_scaled: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x~, sigma~) per sample: the model's x0 prediction at the time of noise level sigma~."""
        sched, model = self.problem.schedule, self.problem.model
        t = sched.t_from_sigma_tilde(sigma)
        alpha = sched.alpha(t).reshape((-1,) + (1,) * (x_scaled.dim() - 1))
        x = (alpha * x_scaled).to(device=self.problem.device, dtype=self.problem.dtype)
        with torch.inference_mode():
            return model.x0(x, t.to(self.problem.device)).to(torch.float64).cpu()

    def __call__(self, slot: Any, t_lo: float, t_hi: float) -> float:
        key = (slot, float(t_lo), float(t_hi))
        if key not in self.memo:
            draws, c = self._draws(slot), self.c
            t = torch.from_numpy(_importance_times(draws.u, t_lo, t_hi, c))
            shape = (-1,) + (1,) * (self.data.dim() - 1)
            x_t = draws.data + t.reshape(shape) * draws.eps
            x_hi = x_t + (t_hi**2 - t**2).clamp_min(0).sqrt().reshape(shape) * draws.eps_hi
            both = self.denoise(torch.cat([x_t, x_hi]), torch.cat([t, torch.full_like(t, t_hi)]))
            sq = (both[: t.numel()] - both[t.numel():]).flatten(1).pow(2).sum(1)
            weight = 1.0 / (t**2 + c**2) - 1.0 / (t_hi**2 + c**2)
            ratio = torch.where(weight > 0, sq / weight.clamp_min(1e-300), torch.zeros_like(sq))
            self.memo[key] = interval_weight_mass(t_lo, t_hi, c) * float(ratio.mean())
        return self.memo[key]

    def total(self, levels: Sequence[float], stage: int = 0) -> float:
        """The KLUB of a whole schedule (decreasing levels), slot k its k-th interval of ``stage``."""
        return sum(self((stage, k), levels[k + 1], levels[k]) for k in range(len(levels) - 1))


def _candidates(levels: np.ndarray, i: int) -> List[float]:
    """t_i and 5 points on each side at 1/6 .. 5/6 of the log-distance to the neighbouring level."""
    here, up, down = math.log(levels[i]), math.log(levels[i - 1]), math.log(levels[i + 1])
    side = (CANDIDATES - 1) // 2
    fractions = [k / (side + 1) for k in range(1, side + 1)]
    return [levels[i]] + [math.exp(here + f * (up - here)) for f in fractions] + \
        [math.exp(here + f * (down - here)) for f in fractions]


def _coordinate_search(klub: klub_estimator, levels: np.ndarray, free: Sequence[int], stage: int,
                       max_passes: int) -> Tuple[np.ndarray, int]:
    """Algorithm 1 on the ``free`` indices: each moves to the best of its candidates for the KLUB
    of its two intervals; passes repeat until none moves or ``max_passes`` have run."""
    levels = levels.copy()
    passes = 0
    while passes < max_passes:
        passes += 1
        changed = False
        for i in free:
            candidates = _candidates(levels, i)
            scores = [klub((stage, i - 1), cand, levels[i - 1]) + klub((stage, i), levels[i + 1], cand)
                      for cand in candidates]
            best = int(np.argmin(scores))
            if best != 0 and scores[best] < scores[0]:
                levels[i] = candidates[best]
                changed = True
        if not changed:
            break
    return levels, passes


def klub_schedule(problem: GridProblem, n_steps: int = 10, *, seed: int = 0, n_data: int = 128, sweeps: int = 3,
                  subdivisions: int = 2, refine_sweeps: int = 2) -> Tuple[np.ndarray, Dict[str, Any]]:
    """The AYS noise levels from sigma_max to sigma_min: the EDM rho = 7 schedule of ``n_steps``
    steps optimised by Algorithm 1 (at most ``sweeps`` passes), then ``subdivisions`` rounds of
    doubling by log-midpoints and optimising only the new points (at most ``refine_sweeps``
    passes each). Returns the levels and what the search did (KLUB estimates, passes)."""
    for name, value in (("n_steps", n_steps), ("n_data", n_data), ("sweeps", sweeps)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name, value in (("subdivisions", subdivisions), ("refine_sweeps", refine_sweeps)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    sched = problem.schedule
    klub = klub_estimator(problem, n_data, seed)
    levels = sched.sigma_tilde(time_grid(sched, n_steps, "edm", to_zero=False)).numpy().copy()
    info: Dict[str, Any] = {"klub_initial": klub.total(levels, 0)}
    levels, passes = _coordinate_search(klub, levels, range(1, n_steps), 0, sweeps)
    info.update(klub_optimized=klub.total(levels, 0), passes=passes)
    for stage in range(1, subdivisions + 1):
        doubled = np.empty(2 * levels.size - 1)
        doubled[::2] = levels
        doubled[1::2] = np.sqrt(levels[:-1] * levels[1:])  # log t'_{2i+1} = (log t_i + log t_{i+1}) / 2
        levels, stage_passes = _coordinate_search(klub, doubled, range(1, doubled.size, 2), stage, refine_sweeps)
        info[f"passes_stage{stage}"] = stage_passes
    return levels, info


#: The base schedule depends on the model alone, not on the sampler or the step count: it is
#: computed once per model and settings in a process (weakly keyed: it goes with the model).
_BASE_SCHEDULES: "weakref.WeakKeyDictionary[DiffusionModel, dict]" = weakref.WeakKeyDictionary()


def ays_grid(problem: GridProblem, *, seed: int = 0, n_data: int = 128, base_steps: int = 10, sweeps: int = 3,
             subdivisions: int = 2, refine_sweeps: int = 2) -> tuple[torch.Tensor, Dict[str, Any]]:
    """The AYS grid of the sampler's step count: the KLUB-optimised schedule of :func:`klub_schedule`
    (``base_steps`` steps, refined to base_steps * 2^subdivisions), log-linearly interpolated to
    n_steps + 1 levels (sigma_max ... sigma_min) whose last is replaced by sigma = 0: how the
    published schedules are used for n steps (ComfyUI's AlignYourStepsScheduler sets the last
    interpolated level to 0; diffusers' AYS timesteps list the n noisy levels and step to 0). The schedule depends on the model alone, so it is shared by every
    sampler and budget on the same model (``base_nfe``/``base_seconds``: what it cost the first
    time; a later call spends nothing on it)."""
    sched, model = problem.schedule, problem.model
    key = (seed, n_data, base_steps, sweeps, subdivisions, refine_sweeps)
    memo = _BASE_SCHEDULES.setdefault(model, {})
    if key not in memo:
        ledger = Ledger(model)
        levels, search = klub_schedule(problem, base_steps, seed=seed, n_data=n_data, sweeps=sweeps,
                                       subdivisions=subdivisions, refine_sweeps=refine_sweeps)
        memo[key] = (levels, search, ledger.cost())
    base, search, base_cost = memo[key]
    n = problem.n_steps
    levels = loglinear_interp(base, n + 1)[:-1]  # n + 1 levels, the last (sigma_min) replaced by sigma = 0
    times = sched.t_from_sigma_tilde(torch.tensor(levels, dtype=torch.float64)).clamp(sched.t_min, sched.t_max)
    times[0] = sched.t_max
    times = torch.cat([times, torch.tensor([sched.t_data], dtype=torch.float64)])
    return times, {"base_steps": base_steps, "n_data": n_data, "base_levels": [float(v) for v in base], **search,
                   "base_nfe": base_cost["optimizer_nfe"], "base_seconds": base_cost["optimizer_seconds"]}
