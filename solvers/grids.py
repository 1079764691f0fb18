"""Time grids, independent of any solver: float64 times from t_max down to t_min, then
(``to_zero=True``) the schedule's t_data, where sigma = 0 and the last step denoises.

``n_steps`` intervals always: with ``to_zero`` the grid has n_steps spaced points ending at
t_min plus t_data (the EDM convention, Karras et al. 2022 eq. 5 with sigma_N = 0); without it
n_steps + 1 spaced points from t_max to t_min.
"""
from __future__ import annotations

from typing import Iterator, Tuple, Union

import torch

from score_models.distilled import nested_times  # noqa: F401  (a student's grid, declared with the student)
from score_models.schedules import Schedule, as_time

GRIDS = ("uniform", "quadratic", "edm", "logsnr")
#: Discrete timestep spacings (Lin et al. 2024, Table 2), for schedules with training timesteps.
SPACINGS = ("leading", "trailing", "linspace")
GridSpec = Union[str, torch.Tensor]

__all__ = ["GRIDS", "SPACINGS", "time_grid", "check_grid", "spaced_times", "discrete_timesteps", "nested_times",
           "alpha_sigma_steps"]


def spaced_times(schedule: Schedule, n_points: int, grid: str, t_max: float, t_min: float, rho: float = 7.0) -> torch.Tensor:
    """n_points float64 times from t_max to t_min (both included) spaced as named:

    - ``uniform``: evenly in t.
    - ``quadratic``: t_min + (t_max - t_min) (1 - u)^2, dense near the data (Song et al. 2021a,
      DDIM appendix D.2, "quadratic" timesteps).
    - ``edm``: sigma~ = sigma/alpha evenly in sigma~^(1/rho) (Karras et al. 2022, eq. 5).
    - ``logsnr``: evenly in lambda = log(alpha/sigma) (Lu et al. 2022, DPM-Solver sec. 3.3).
    """
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; valid: {', '.join(GRIDS)} or a 1-D tensor of times")
    if n_points < 1:
        raise ValueError(f"a grid needs at least 1 point, got {n_points}")
    if n_points == 1:
        return torch.tensor([t_max], dtype=torch.float64)
    u = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64)
    if grid == "uniform":
        t = t_max + u * (t_min - t_max)
    elif grid == "quadratic":
        t = t_min + (t_max - t_min) * (1.0 - u) ** 2
    elif grid == "edm":
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        s_max, s_min = float(schedule.sigma_tilde(t_max)), float(schedule.sigma_tilde(t_min))
        sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        t = schedule.t_from_sigma_tilde(sig)
    else:
        lam_max, lam_min = float(schedule.lambda_(t_max)), float(schedule.lambda_(t_min))
        t = schedule.inverse_lambda(lam_max + u * (lam_min - lam_max))
    # Pin the ends exactly; inverse maps may be off by round-off.
    t[0], t[-1] = t_max, t_min
    return t


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


def time_grid(schedule: Schedule, n_steps: int, grid: GridSpec | None = "edm", *, rho: float = 7.0,
              t_min: float | None = None, t_max: float | None = None, to_zero: bool = True,
              spacing: str | None = None, steps_offset: int = 0) -> torch.Tensor:
    """The n_steps + 1 times a fixed-step sampler visits (see module docstring).

    ``grid`` is a name from :data:`GRIDS` or a 1-D tensor of times (validated and used as is;
    then n_steps must match its length - 1). ``spacing`` (instead of ``grid``) picks n_steps
    training timesteps of a discrete schedule (:func:`discrete_timesteps`), followed by t_data
    (``to_zero``, diffusers' ``set_alpha_to_one``) or by timestep 0 unless already there.
    """
    if spacing is not None:
        if schedule.num_train_timesteps is None:
            raise ValueError(f"spacing={spacing!r} needs a discrete schedule with training timesteps "
                             f"(DiscreteVP), not {schedule.name}; use grid= instead")
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
    times = spaced_times(schedule, n_steps if to_zero else n_steps + 1, grid, t_max, t_min, rho)
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


def alpha_sigma_steps(schedule: Schedule, times: torch.Tensor) -> Iterator[Tuple[float, float, float, float]]:
    """(alpha_t, sigma_t, alpha_s, sigma_s) as Python floats for each step t -> s of a grid: the
    coefficients a sampler working on the unscaled state x_t reads per step."""
    alphas, sigmas = schedule.alpha(times).tolist(), schedule.sigma(times).tolist()
    for i in range(len(alphas) - 1):
        yield alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
