"""Few-step students of a diffusion teacher: progressively distilled models and consistency models.

Both are :class:`DiffusionModel` s on the teacher's schedule (same network input: the unscaled
state x and the time t), so NFE counting, devices and conditioning work as for any model.

- :class:`DistilledModel` (Salimans & Ho 2022): a v-prediction network trained to take, in one
  DDIM step, two DDIM steps of its teacher; it is meant to be sampled with DDIM on the fixed grid
  of ``steps`` steps it was distilled for (the ``distilled`` sampler).
- :class:`ConsistencyModel` (Song, Dhariwal, Chen & Sutskever 2023): a consistency function
  f(x~, sigma~) that maps any point of a probability-flow ODE trajectory (in the scaled space
  x~ = x/alpha, sigma~ = sigma/alpha, where the ODE is EDM's) to the trajectory's end at
  sigma~_min, parameterised with skip and output scalings that make f(x~, sigma~_min) = x~ exactly.
  Its x0-prediction *is* f, so the ``consistency`` sampler (Algorithm 1) reads it through
  :meth:`DiffusionModel.denoiser`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Tuple

import torch

from .parameterization import DiffusionModel
from .schedules import Schedule, TimeLike

__all__ = ["DistilledModel", "ConsistencyModel", "consistency_scalings", "nested_times", "DISTILLATION_GRIDS"]

#: Grids a progressive-distillation chain can use: t = G(i/N) for i = 0..N from t_max to t_data,
#: nested so that the teacher's 2N-step grid refines the student's N-step grid.
DISTILLATION_GRIDS = ("uniform", "quadratic")


def nested_times(schedule: Schedule, n_steps: int, grid: str = "uniform") -> torch.Tensor:
    """The n_steps + 1 times of a progressive-distillation chain: t = G(i / n_steps) from t_max to
    t_data (sigma = 0), ``uniform`` (Salimans & Ho 2022, sec. 4: t_i = i/N) or ``quadratic``
    (G(u) = t_data + (t_max - t_data)(1 - u)^2). The 2N-step grid contains the N-step grid, so
    two teacher steps span exactly one student step."""
    if grid not in DISTILLATION_GRIDS:
        raise ValueError(f"unknown distillation grid {grid!r}; valid: {', '.join(DISTILLATION_GRIDS)}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if not math.isfinite(schedule.t_data):
        raise ValueError(f"{schedule.name} never reaches sigma = 0 (t_data = {schedule.t_data}); "
                         f"progressive distillation needs a schedule that does")
    t_max, t_end = schedule.t_max, schedule.t_data
    u = torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64)
    times = t_max + u * (t_end - t_max) if grid == "uniform" else t_end + (t_max - t_end) * (1.0 - u) ** 2
    times[0], times[-1] = t_max, t_end  # exact ends despite round-off
    try:
        schedule.check_times(times[:-1], "grid time")
        if not bool((schedule.sigma_tilde(times)[1:] < schedule.sigma_tilde(times)[:-1]).all()):
            raise ValueError("its noise levels do not decrease strictly")
    except ValueError as e:
        raise ValueError(f"the {grid} distillation grid of {n_steps} steps is not valid on {schedule.name}: {e}") from None
    return times


class DistilledModel(DiffusionModel):
    """A progressively distilled student (Salimans & Ho 2022, Algorithm 2): ``steps`` DDIM steps
    on the nested ``grid`` from t_max to t_data (:func:`nested_times`), which it declares as its
    own grid; its native sampler is ``distilled``.

    ``teacher``: the name of the model it was distilled from (for reports)."""

    native_samplers = ("distilled",)

    def __init__(self, net: Callable[..., torch.Tensor], schedule: Schedule, steps: int, grid: str = "uniform",
                 prediction: str = "v", sample_shape: Tuple[int, ...] | None = None, teacher: Optional[str] = None):
        if int(steps) < 1:
            raise ValueError(f"a distilled model needs steps >= 1, got {steps}")
        if grid not in DISTILLATION_GRIDS:
            raise ValueError(f"unknown distillation grid {grid!r}; valid: {', '.join(DISTILLATION_GRIDS)}")
        super().__init__(net, schedule, prediction=prediction, sample_shape=sample_shape)
        self.steps, self.grid, self.teacher = int(steps), grid, teacher

    def own_grid(self, n_steps: int) -> torch.Tensor:
        if n_steps != self.steps:
            raise ValueError(f"this student was distilled for {self.steps} steps (nfe={self.steps}); got nfe={n_steps}")
        return nested_times(self.schedule, self.steps, self.grid)

    def __repr__(self) -> str:
        return f"DistilledModel(steps={self.steps}, grid={self.grid!r}, schedule={self.schedule!r})"


def consistency_scalings(sigma: float | torch.Tensor, sigma_min: float, sigma_data: float
                         ) -> Tuple[float | torch.Tensor, float | torch.Tensor]:
    """(c_skip, c_out) of Song et al. 2023, Appendix C (EDM's scalings shifted by sigma_min):

        c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2),
        c_out  = sigma_data (sigma - sigma_min) / sqrt(sigma_data^2 + sigma^2),

    so c_skip(sigma_min) = 1 and c_out(sigma_min) = 0: f(x, sigma_min) = x for any network."""
    shifted = sigma - sigma_min
    c_skip = sigma_data**2 / (shifted**2 + sigma_data**2)
    root = math.sqrt(sigma_data**2 + sigma**2) if isinstance(sigma, float) else torch.sqrt(sigma_data**2 + sigma**2)
    return c_skip, sigma_data * shifted / root


class ConsistencyModel(DiffusionModel):
    """f_theta(x~, sigma~) = c_skip(sigma~) x~ + c_out(sigma~) F_theta(alpha x~, t(sigma~))
    (Song et al. 2023, eq. 5 and Appendix C), F_theta being ``net`` called like the teacher's
    network (unscaled state, time in the schedule's units).

    ``sigma_min`` is the trajectory end sigma~_min (the teacher's sigma~ at t_min): f is only
    defined for sigma~ >= sigma_min. ``training``: "distillation" or "training" (CD or CT).
    As a DiffusionModel its x0-prediction is f (prediction = "x0"), at noise level
    ``denoised_sigma`` = sigma_min; its native sampler is ``consistency``, on grids that end at
    t_min (``grid_defaults``: f maps to sigma_min, not to 0).
    """

    native_samplers = ("consistency", "tcd")
    grid_defaults = {"to_zero": False}

    def __init__(self, net: Callable[..., torch.Tensor], schedule: Schedule, sigma_min: float, sigma_data: float,
                 sample_shape: Tuple[int, ...] | None = None, teacher: Optional[str] = None,
                 training: str = "distillation"):
        if not sigma_min > 0 or not sigma_data > 0:
            raise ValueError(f"need sigma_min > 0 and sigma_data > 0, got {sigma_min}, {sigma_data}")
        super().__init__(net, schedule, prediction="x0", sample_shape=sample_shape)
        self.sigma_min, self.sigma_data = float(sigma_min), float(sigma_data)
        self.teacher, self.training = teacher, training

    @property
    def denoised_sigma(self) -> float:
        return self.sigma_min

    def _output(self, x: torch.Tensor, t: TimeLike, **cond: Any) -> Tuple[torch.Tensor, None]:
        c = self.coefficients(t, x)
        c_skip, c_out = consistency_scalings(c.sigma / c.alpha, self.sigma_min, self.sigma_data)
        return c_skip * (x / c.alpha) + c_out * self.raw(x, t, **cond), None

    def consistency(self, x_tilde: torch.Tensor, sigma_tilde: TimeLike, **cond: Any) -> torch.Tensor:
        """f(x~, sigma~): the end (at sigma~_min) of the PF-ODE trajectory through x~; one NFE."""
        return self.denoiser(x_tilde, sigma_tilde, **cond)

    def __repr__(self) -> str:
        return (f"ConsistencyModel(sigma_min={self.sigma_min:.4g}, sigma_data={self.sigma_data:.3g}, "
                f"training={self.training!r}, schedule={self.schedule!r})")
