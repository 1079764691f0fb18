"""Time grids, independent of any solver: float64 times from t_max down to t_min, then
(``to_zero=True``) the schedule's t_data, where sigma = 0 and the last step denoises.

``n_steps`` intervals always: with ``to_zero`` the grid has n_steps spaced points ending at
t_min plus t_data (the EDM convention, Karras et al. 2022 eq. 5 with sigma_N = 0); without it
n_steps + 1 spaced points from t_max to t_min.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

import torch

from score_models.distilled import nested_times  # noqa: F401  (a student's grid, declared with the student)
from score_models.schedules import Schedule, as_time

#: Discrete timestep spacings (Lin et al. 2024, Table 2), for schedules with training timesteps.
SPACINGS = ("leading", "trailing", "linspace")
GridSpec = Union[str, torch.Tensor]


@dataclass(frozen=True)
class GridParams:
    """The parameters some named grids take (each grid reads only its own)."""

    rho: Optional[float] = None  # karras/edm: 7; polyexponential: 1 (k-diffusion's defaults)
    beta_a: float = 0.6  # beta: the Beta(a, b) distribution's parameters (Lee et al. 2024)
    beta_b: float = 0.6
    vp_beta_d: float = 19.9  # vp: the VP-SDE's beta_d and beta_min (k-diffusion's get_sigmas_vp)
    vp_beta_min: float = 0.1
    lq_threshold: float = 0.025  # linear_quadratic: the noise fraction where linear turns quadratic
    shift: float = 1.0  # shifted: SD3's time shift (1: uniform)


def _sigma_range(schedule: Schedule, t_max: float, t_min: float) -> Tuple[float, float]:
    return float(schedule.sigma_tilde(t_max)), float(schedule.sigma_tilde(t_min))


def _in_sigma(schedule: Schedule, sigmas: torch.Tensor) -> torch.Tensor:
    return schedule.t_from_sigma_tilde(sigmas)


def _uniform(schedule, u, t_max, t_min, p):
    return t_max + u * (t_min - t_max)


def _quadratic(schedule, u, t_max, t_min, p):
    return t_min + (t_max - t_min) * (1.0 - u) ** 2


def _karras(schedule, u, t_max, t_min, p):
    rho = 7.0 if p.rho is None else p.rho
    s_max, s_min = _sigma_range(schedule, t_max, t_min)
    return _in_sigma(schedule, (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho)


def _logsnr(schedule, u, t_max, t_min, p):
    lam_max, lam_min = float(schedule.lambda_(t_max)), float(schedule.lambda_(t_min))
    return schedule.inverse_lambda(lam_max + u * (lam_min - lam_max))


def _polyexponential(schedule, u, t_max, t_min, p):
    rho = 1.0 if p.rho is None else p.rho
    s_max, s_min = _sigma_range(schedule, t_max, t_min)
    ramp = (1.0 - u) ** rho
    return _in_sigma(schedule, torch.exp(math.log(s_min) + ramp * (math.log(s_max) - math.log(s_min))))


def _vp(schedule, u, t_max, t_min, p):
    # The VP-SDE time tau with sigma~(tau)^2 = exp(beta_d tau^2/2 + beta_min tau) - 1, inverted at
    # both ends, then stepped evenly in tau: k-diffusion's get_sigmas_vp when the ends agree.
    def tau(sigma: float) -> float:
        return (math.sqrt(p.vp_beta_min ** 2 + 2 * p.vp_beta_d * math.log1p(sigma ** 2)) - p.vp_beta_min) / p.vp_beta_d

    s_max, s_min = _sigma_range(schedule, t_max, t_min)
    taus = tau(s_max) + u * (tau(s_min) - tau(s_max))
    return _in_sigma(schedule, torch.sqrt(torch.expm1(p.vp_beta_d * taus ** 2 / 2 + p.vp_beta_min * taus)))


def _kl_optimal(schedule, u, t_max, t_min, p):
    s_max, s_min = _sigma_range(schedule, t_max, t_min)
    return _in_sigma(schedule, torch.tan((1.0 - u) * math.atan(s_max) + u * math.atan(s_min)))


def _beta(schedule, u, t_max, t_min, p):
    from scipy.stats import beta as beta_distribution

    quantiles = torch.from_numpy(beta_distribution.ppf((1.0 - u).numpy(), p.beta_a, p.beta_b))
    return t_min + (t_max - t_min) * quantiles


def _linear_quadratic(schedule, u, t_max, t_min, p):
    # Mochi's schedule (ComfyUI's linear_quadratic) as a noise fraction 1 -> 0 over the points,
    # read as a fraction of [t_min, t_max]: linear up to lq_threshold over the first half of the
    # steps, then quadratic, continuous in value and slope.
    steps = u.numel() - 1
    if steps < 2:
        return _uniform(schedule, u, t_max, t_min, p)
    linear_steps, threshold = steps // 2, p.lq_threshold
    gap = linear_steps - threshold * steps
    quadratic_steps = steps - linear_steps
    quadratic_coef = gap / (linear_steps * quadratic_steps ** 2)
    linear_coef = threshold / linear_steps - 2 * gap / quadratic_steps ** 2
    const = quadratic_coef * linear_steps ** 2
    i = torch.arange(steps + 1, dtype=torch.float64)
    done = torch.where(i < linear_steps, i * threshold / linear_steps, quadratic_coef * i ** 2 + linear_coef * i + const)
    done[-1] = 1.0
    return t_min + (t_max - t_min) * (1.0 - done)


def time_shift(t, shift: float):
    """SD3's resolution-dependent time shift t' = shift t / (1 + (shift - 1) t) of times in
    [0, 1] (Esser et al. 2024, sec. 5.3.2; diffusers' FlowMatch schedulers' ``shift``): it keeps
    0 and 1 and moves the times in between towards 1 (more noise) for shift > 1."""
    return shift * t / (1 + (shift - 1) * t)


def _shifted(schedule, u, t_max, t_min, p):
    # Evenly spaced before the shift: between the unshifted ends t / (shift - (shift - 1) t).
    if not 0 <= t_min < t_max <= 1:
        raise ValueError(f"grid 'shifted' shifts times in [0, 1] (rectified flow's t = sigma); got t_max={t_max}, "
                         f"t_min={t_min} on {schedule.name}")
    shift = p.shift

    def unshift(t: float) -> float:
        return t / (shift - (shift - 1) * t)

    return time_shift(unshift(t_max) + u * (unshift(t_min) - unshift(t_max)), shift)


#: Named grids: fraction u in [0, 1] of the way from t_max to t_min -> time.
_GRID_FUNCTIONS: Dict[str, Callable[..., torch.Tensor]] = {
    "uniform": _uniform, "quadratic": _quadratic, "edm": _karras, "karras": _karras, "logsnr": _logsnr,
    "exponential": _logsnr, "polyexponential": _polyexponential, "vp": _vp, "kl_optimal": _kl_optimal,
    "beta": _beta, "linear_quadratic": _linear_quadratic, "normal": _uniform, "sgm_uniform": _uniform,
    "shifted": _shifted,
}
#: Grids whose N levels are the first N of N + 1 (the last, t_min, is dropped before sigma = 0).
_DROP_LAST_LEVEL = ("sgm_uniform", "beta", "linear_quadratic")
#: Grids that index a discrete schedule's training timesteps (ComfyUI's simple and ddim_uniform).
DISCRETE_GRIDS = ("simple", "ddim_uniform")
GRIDS = tuple(_GRID_FUNCTIONS) + DISCRETE_GRIDS
#: What each named grid is, for ``nfebench list`` and the README.
GRID_DESCRIPTIONS = {
    "uniform": "evenly in t",
    "quadratic": "t_min + (t_max - t_min)(1 - u)^2, dense near the data (Song et al. 2021a, DDIM appendix D.2)",
    "edm": "evenly in sigma~^(1/rho), rho = 7 (Karras et al. 2022, eq. 5)",
    "karras": "the same as edm (k-diffusion's get_sigmas_karras)",
    "logsnr": "evenly in lambda = log(alpha/sigma) (Lu et al. 2022, sec. 3.3)",
    "exponential": "evenly in log sigma~ (k-diffusion's get_sigmas_exponential); the same times as logsnr",
    "polyexponential": "log sigma~ interpolated along (1 - u)^rho, rho = 1 (k-diffusion's get_sigmas_polyexponential)",
    "vp": "evenly in the time of a VP-SDE with vp_beta_d, vp_beta_min (k-diffusion's get_sigmas_vp)",
    "kl_optimal": "sigma~ = tan((1 - u) atan(sigma_max) + u atan(sigma_min)) (Sabour et al. 2024, eq. 16; ComfyUI)",
    "beta": "t at the Beta(beta_a, beta_b) quantiles 1 - i/N (Lee et al. 2024; ComfyUI's beta, unrounded)",
    "linear_quadratic": "linear then quadratic in t (Mochi; ComfyUI's linear_quadratic, threshold lq_threshold)",
    "normal": "evenly in t from t_max to t_min (ComfyUI's normal; the same as uniform)",
    "sgm_uniform": "evenly in t over N + 1 points, the last dropped (ComfyUI's sgm_uniform)",
    "shifted": "t in [0, 1] evenly spaced, then time-shifted: shift t / (1 + (shift - 1) t) (Esser et al. 2024, "
               "sec. 5.3.2; diffusers' FlowMatch schedulers; shift = 1: uniform)",
    "simple": "every (T/N)-th training timestep from T-1 down (ComfyUI's simple; discrete schedules)",
    "ddim_uniform": "training timesteps 1 + k (T//N) (ComfyUI's ddim_uniform; discrete schedules)",
}

__all__ = ["GRIDS", "SPACINGS", "DISCRETE_GRIDS", "GRID_DESCRIPTIONS", "GridParams", "time_grid", "check_grid",
           "spaced_times", "discrete_timesteps", "nested_times", "alpha_sigma_steps", "time_shift",
           "LANDINGS", "landing_times", "fixed_stride"]


def spaced_times(schedule: Schedule, n_points: int, grid: str, t_max: float, t_min: float,
                 rho: Optional[float] = None, params: Optional[GridParams] = None) -> torch.Tensor:
    """n_points float64 times from t_max to t_min (both included) spaced as the named grid says
    (:data:`GRID_DESCRIPTIONS`), with u = i/(n_points - 1) the fraction of the way."""
    if grid not in _GRID_FUNCTIONS:
        raise ValueError(f"unknown grid {grid!r}; valid: {', '.join(_GRID_FUNCTIONS)} or a 1-D tensor of times")
    if n_points < 1:
        raise ValueError(f"a grid needs at least 1 point, got {n_points}")
    params = params or GridParams()
    if rho is not None:
        params = replace(params, rho=rho)
    if params.rho is not None and params.rho <= 0:
        raise ValueError(f"rho must be > 0, got {params.rho}")
    if n_points == 1:
        return torch.tensor([t_max], dtype=torch.float64)
    u = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64)
    t = _GRID_FUNCTIONS[grid](schedule, u, t_max, t_min, params)
    # Pin the ends exactly; inverse maps may be off by round-off.
    t[0], t[-1] = t_max, t_min
    return t


def _training_timestep_grid(schedule: Schedule, n_steps: int, grid: str) -> torch.Tensor:
    """N descending training timesteps, as ComfyUI picks them from the model's sigma table."""
    t_train = schedule.num_train_timesteps
    if t_train is None:
        raise ValueError(f"grid {grid!r} picks training timesteps, and {schedule.name} has none (it is continuous); "
                         f"valid here: {', '.join(_GRID_FUNCTIONS)}")
    if not 1 <= n_steps <= t_train - 1:
        raise ValueError(f"grid {grid!r} needs 1 <= steps <= {t_train - 1}, got {n_steps}")
    if grid == "simple":
        index = [t_train - 1 - int(i * t_train / n_steps) for i in range(n_steps)]
    else:
        stride = max(t_train // n_steps, 1)
        index = [1 + k * stride for k in reversed(range(n_steps))]
    return torch.tensor(index, dtype=torch.float64)


def discrete_timesteps(num_train_timesteps: int, n: int, spacing: str, steps_offset: int = 0) -> torch.Tensor:
    """n training timesteps, descending, spaced as in Lin et al. 2024, Table 2 (and diffusers):

    - ``linspace``: round(linspace(0, T-1, n)), which includes T-1 and 0;
    - ``leading``: arange(n) * (T // n) + steps_offset, which never visits T-1;
    - ``trailing``: round(arange(T, 0, -T/n)) - 1, which includes T-1.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
    t_train = num_train_timesteps
    if not 1 <= n <= t_train:
        raise ValueError(f"a {spacing} spacing needs 1 <= steps <= {t_train}, got {n}")
    if spacing == "linspace":
        ts = torch.linspace(0, t_train - 1, n, dtype=torch.float64).round()
    elif spacing == "leading":
        ts = torch.arange(n, dtype=torch.float64) * (t_train // n) + steps_offset
    else:
        ts = (torch.arange(t_train, 0, -t_train / n, dtype=torch.float64).round() - 1).flip(0)
    if int(ts.max()) > t_train - 1:
        raise ValueError(f"steps_offset={steps_offset} pushes timestep {int(ts.max())} past {t_train - 1}")
    return ts.flip(0)


def time_grid(schedule: Schedule, n_steps: int, grid: GridSpec | None = "edm", *, rho: float | None = None,
              t_min: float | None = None, t_max: float | None = None, to_zero: bool = True,
              spacing: str | None = None, steps_offset: int = 0, discard_penultimate: bool = False,
              drop_last_timestep: bool = False, **grid_params: float) -> torch.Tensor:
    """The n_steps + 1 times a fixed-step sampler visits (see module docstring).

    ``grid`` is a name from :data:`GRIDS` or a 1-D tensor of times (validated and used as is;
    then n_steps must match its length - 1). ``spacing`` (instead of ``grid``) picks n_steps
    training timesteps of a discrete schedule (:func:`discrete_timesteps`), followed by t_data
    (``to_zero``, diffusers' ``set_alpha_to_one``) or by timestep 0 unless already there.
    ``grid_params`` are the :class:`GridParams` of the named grid (e.g. ``beta_a=0.5``).

    ``discard_penultimate`` builds the grid for n_steps + 1 steps and drops its second-to-last
    time (ComfyUI does this for dpm_2 and uni_pc, so that the last step is a long one onto the
    final level); it is an explicit option here and never implied by a sampler.

    ``drop_last_timestep`` (with ``spacing``) spaces n_steps + 1 training timesteps and drops the
    last before appending the end (t_data, or timestep 0 without ``to_zero``): the timesteps of
    diffusers' multistep schedulers (DPMSolverMultistep, UniPC, DEIS, ...) for linspace and
    leading spacing.
    """
    if drop_last_timestep and spacing is None:
        raise ValueError("drop_last_timestep=True applies to a spacing= of training timesteps; give spacing= too")
    if discard_penultimate:
        longer = time_grid(schedule, n_steps + 1, grid, rho=rho, t_min=t_min, t_max=t_max, to_zero=to_zero,
                           spacing=spacing, steps_offset=steps_offset, drop_last_timestep=drop_last_timestep,
                           **grid_params)
        return torch.cat([longer[:-2], longer[-1:]])
    if spacing is not None:
        if schedule.num_train_timesteps is None:
            raise ValueError(f"spacing={spacing!r} needs a discrete schedule with training timesteps "
                             f"(DiscreteVP), not {schedule.name}; use grid= instead")
        if drop_last_timestep:
            ts = discrete_timesteps(schedule.num_train_timesteps, n_steps + 1, spacing, steps_offset)[:-1]
        else:
            ts = discrete_timesteps(schedule.num_train_timesteps, n_steps, spacing, steps_offset)
        end = schedule.t_data if to_zero else schedule.t_min
        if float(ts[-1]) != end:
            ts = torch.cat([ts, torch.tensor([end], dtype=torch.float64)])
        return check_grid(schedule, ts) if ts.numel() > 1 else ts
    if isinstance(grid, torch.Tensor):
        times = check_grid(schedule, grid)
        if times.numel() - 1 != n_steps:
            raise ValueError(f"the given grid has {times.numel() - 1} steps, not {n_steps}")
        return times
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    t_max = schedule.t_max if t_max is None else float(t_max)
    t_min = schedule.t_min if t_min is None else float(t_min)
    schedule.check_times(torch.tensor([t_max, t_min], dtype=torch.float64), "t_max/t_min")
    if not t_max > t_min:
        raise ValueError(f"need t_max > t_min, got t_max={t_max}, t_min={t_min}")
    params = GridParams(rho=rho, **grid_params)
    if grid in DISCRETE_GRIDS:
        if not to_zero:
            raise ValueError(f"grid {grid!r} ends at sigma = 0 (ComfyUI's convention); it needs to_zero=True")
        times = _training_timestep_grid(schedule, n_steps, grid)
    elif grid in _DROP_LAST_LEVEL and to_zero:
        times = spaced_times(schedule, n_steps + 1, grid, t_max, t_min, params=params)[:-1]
    else:
        times = spaced_times(schedule, n_steps if to_zero else n_steps + 1, grid, t_max, t_min, params=params)
    if to_zero:
        times = torch.cat([times, torch.tensor([schedule.t_data], dtype=torch.float64)])
    return times


def check_grid(schedule: Schedule, times: torch.Tensor) -> torch.Tensor:
    """Validate a user-given grid: 1-D, >= 2 times, noise level strictly decreasing, inside the
    schedule's range (t_data allowed last only). Returns it as float64 on the CPU."""
    times = as_time(times)
    if times.dim() != 1 or times.numel() < 2:
        raise ValueError(f"a grid must be a 1-D tensor of at least 2 times, got shape {tuple(times.shape)}")
    schedule.check_times(times[:-1][times[:-1] != schedule.t_data], "grid time")
    if bool((times[:-1] == schedule.t_data).any()):
        raise ValueError(f"t_data={schedule.t_data} may only be the last time of a grid")
    schedule.check_times(times[-1:], "grid time")
    sig = schedule.sigma_tilde(times)
    if not bool((sig[1:] < sig[:-1]).all()):
        raise ValueError("grid times must go from high noise to low noise, strictly")
    return times


#: Where a step of a grid moves the state (the ``landing`` option of ddim, plms and pndm):
#: ``"next"`` onto the next grid time, ``"fixed_stride"`` as diffusers' DDIM/PNDM schedulers do
#: (:func:`landing_times`).
LANDINGS = ("next", "fixed_stride")


def fixed_stride(schedule: Schedule, n_steps: int) -> float:
    """floor((t_max - t_data) / n_steps): diffusers' ``num_train_timesteps // num_inference_steps``
    on a discrete schedule (t_max = T - 1, t_data = -1)."""
    if not math.isfinite(schedule.t_data):
        raise ValueError(f"landing='fixed_stride' needs a finite t_data; {schedule.name} has t_data={schedule.t_data}")
    stride = math.floor((schedule.t_max - schedule.t_data) / n_steps)
    if stride < 1:
        # a continuous-time schedule (t in [0, 1]) would make every step zero-length
        raise ValueError(f"landing='fixed_stride' needs a schedule counted in training timesteps (a stride of at "
                         f"least 1); {schedule.name} spans {schedule.t_max - schedule.t_data:g} over {n_steps} steps; "
                         f"valid: landing='next'")
    return float(stride)


def landing_times(schedule: Schedule, times: torch.Tensor, landing: str = "next") -> torch.Tensor:
    """The time each step of a grid moves the state to; the next step reads it as at the next grid time.

    - ``"next"``: the next grid time, times[1:] (the consistent choice);
    - ``"fixed_stride"``: t_i - :func:`fixed_stride` for the grid's N steps, clamped at the grid's
      end. This reproduces diffusers' DDIMScheduler and PNDMScheduler, which step from timestep t
      to t - T//N whatever their ``timestep_spacing`` and then evaluate the network at the next
      timestep of the spacing. Where that timestep is not t - T//N (linspace spacing; trailing
      when N does not divide T), the state is moved to one time and read as at another, so
      this is not a discretisation of the ODE on the grid; it exists to reproduce diffusers.
    """
    if landing not in LANDINGS:
        raise ValueError(f"unknown landing {landing!r}; valid: {', '.join(LANDINGS)}")
    if landing == "next":
        return times[1:]
    stride = fixed_stride(schedule, times.numel() - 1)
    return torch.clamp(times[:-1] - stride, min=float(times[-1]))


def alpha_sigma_steps(schedule: Schedule, times: torch.Tensor, landing: str = "next"
                      ) -> Iterator[Tuple[float, float, float, float]]:
    """(alpha_t, sigma_t, alpha_s, sigma_s) as Python floats for each step t -> s of a grid: the
    coefficients a sampler working on the unscaled state x_t reads per step. s is the next grid
    time, or where ``landing`` (:func:`landing_times`) moves the state."""
    alphas, sigmas = schedule.alpha(times).tolist(), schedule.sigma(times).tolist()
    lands = landing_times(schedule, times, landing)
    alpha_s, sigma_s = schedule.alpha(lands).tolist(), schedule.sigma(lands).tolist()
    for i in range(len(alphas) - 1):
        yield alphas[i], sigmas[i], alpha_s[i], sigma_s[i]
