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

__all__ = ["DistilledModel", "ConsistencyModel", "consistency_scalings", "DISTILLATION_GRIDS"]

#: Grids a progressive-distillation chain can use: t = G(i/N) for i = 0..N from t_max to t_data,
#: nested so that the teacher's 2N-step grid refines the student's N-step grid.
DISTILLATION_GRIDS = ("uniform", "quadratic")


class DistilledModel(DiffusionModel):
    """A progressively distilled student (Salimans & Ho 2022, Algorithm 2): ``steps`` DDIM steps
    on the nested ``grid`` from t_max to t_data (see ``solvers.grids.nested_times``).

    ``teacher``: the name of the model it was distilled from (for reports)."""

    def __init__(self, net: Callable[..., torch.Tensor], schedule: Schedule, steps: int, grid: str = "uniform",
                 prediction: str = "v", sample_shape: Tuple[int, ...] | None = None, teacher: Optional[str] = None):
        if int(steps) < 1:
            raise ValueError(f"a distilled model needs steps >= 1, got {steps}")
        if grid not in DISTILLATION_GRIDS:
            raise ValueError(f"unknown distillation grid {grid!r}; valid: {', '.join(DISTILLATION_GRIDS)}")
        super().__init__(net, schedule, prediction=prediction, sample_shape=sample_shape)
        self.steps, self.grid, self.teacher = int(steps), grid, teacher

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
    As a DiffusionModel its x0-prediction is f (prediction = "x0").
    """

    def __init__(self, net: Callable[..., torch.Tensor], schedule: Schedule, sigma_min: float, sigma_data: float,
                 sample_shape: Tuple[int, ...] | None = None, teacher: Optional[str] = None,
                 training: str = "distillation"):
        if not sigma_min > 0 or not sigma_data > 0:
            raise ValueError(f"need sigma_min > 0 and sigma_data > 0, got {sigma_min}, {sigma_data}")
        super().__init__(net, schedule, prediction="x0", sample_shape=sample_shape)
        self.sigma_min, self.sigma_data = float(sigma_min), float(sigma_data)
        self.teacher, self.training = teacher, training

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
