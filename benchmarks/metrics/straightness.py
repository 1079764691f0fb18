"""``straightness``: how far a model's probability-flow trajectories are from straight lines, the
reason a rectified flow needs fewer steps (Liu, Gong & Liu 2022, sec. 2.2, "straightness"):

    S(Z) = int_0^1 E || (Z_1 - Z_0) - dZ_s/ds ||^2 ds,

zero exactly when every trajectory is a straight line travelled at constant speed (then one
Euler step is exact). Any affine schedule's trajectories are measured in the same frame: with
x~ = x/alpha and sigma~ = sigma/alpha, z = x~/(1 + sigma~) = (1 - s) x0 + s eps at
s = sigma~/(1 + sigma~) is the rectified-flow path, whose velocity is dz/ds = eps^ - x0^ (the
network's noise and data predictions). The figure is per dimension (the squared norm divided by
the dimension), so models of different sizes compare.
"""
from __future__ import annotations

import math
from typing import Dict

import torch

from score_models.parameterization import DiffusionModel

from .base import CellInfo, Metric, register_metric

__all__ = ["straightness", "Straightness"]

STEPS = 128  # Euler steps uniform in s: exact for a straight flow, a fine trajectory otherwise
MAX_SAMPLES = 1000


def straightness(model: DiffusionModel, noise: torch.Tensor, steps: int = STEPS) -> float:
    """S(Z) per dimension over the trajectories that start at ``noise`` (standard normal) at the
    schedule's t_max, averaged over s in [0, s_max] (s_max = sigma~_max / (1 + sigma~_max))."""
    sched = model.schedule
    sigma_max = float(sched.sigma_tilde(sched.t_max))
    s_max = sigma_max / (1.0 + sigma_max)
    s_grid = torch.linspace(s_max, 0.0, steps + 1, dtype=torch.float64)
    x_tilde = (sched.prior_std_at(sched.t_max) / float(sched.alpha(sched.t_max))) * noise
    z = x_tilde / (1.0 + sigma_max)
    z_start, velocities = z, []
    for s, s_next in zip(s_grid[:-1].tolist(), s_grid[1:].tolist()):
        sigma = s / (1.0 - s)
        x_tilde = z * (1.0 + sigma)
        denoised = model.denoiser(x_tilde, sigma)
        velocity = (x_tilde - denoised) / sigma - denoised  # eps^ - x0^
        velocities.append(velocity)
        z = z + (s_next - s) * velocity
    chord = (z_start - z) / s_max  # the constant velocity of the straight line between the ends
    deviation = torch.stack([(chord - v).to(torch.float64).pow(2).flatten(1).sum(1) for v in velocities])
    return float(deviation.mean()) / noise[0].numel()


@register_metric("straightness")
class Straightness(Metric):
    """S(Z) of the cell's model (a property of the model, computed once per model and seed from
    the cell's first noise batch, at most 1000 trajectories); NaN for models sampled only by
    their own few-step samplers, which follow no ODE trajectory."""

    columns = ("straightness",)

    def __init__(self, cell: CellInfo):
        super().__init__(cell)
        self.value = math.nan

    def update(self, batch_index: int, noise: torch.Tensor, samples: torch.Tensor) -> None:
        cell = self.cell
        if batch_index != 0 or cell.model.native_samplers:
            return
        key = ("straightness", cell.model_key, cell.seed)
        if key not in cell.cache:
            with torch.inference_mode():
                cell.cache[key] = straightness(cell.model, noise[:MAX_SAMPLES].to(cell.device))
        self.value = cell.cache[key]

    def result(self) -> Dict[str, float]:
        return {"straightness": self.value}
