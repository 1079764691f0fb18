"""Any denoiser D(x, sigma) (k-diffusion's and EDM's model interface) as a DiffusionModel.

k-diffusion and EDM (Karras et al. 2022, sec. 2-5) call a model as D(x, sigma) -> E[x0 | x]
with x = x0 + sigma * eps: the EDM schedule (alpha = 1, sigma(t) = t) with an x0-prediction.
:func:`from_denoiser` wraps such a callable so that every nfebench sampler can drive it, each
call counted by the DiffusionModel wrapper.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch

from .parameterization import DiffusionModel
from .schedules import EDM

__all__ = ["from_denoiser", "DenoiserNet"]


class DenoiserNet(torch.nn.Module):
    """net(x, t, **cond) = fn(x, t, **cond): on the EDM schedule t is sigma, shaped [batch] as
    k-diffusion passes it (a torch Module so that .to(device) reaches a wrapped Module)."""

    def __init__(self, fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        return self.fn(x, sigma, **cond)


def from_denoiser(fn: Callable[..., torch.Tensor], sigma_min: float, sigma_max: float, sigma_data: float = 0.5,
                  sample_shape: Optional[Tuple[int, ...]] = None) -> DiffusionModel:
    """A DiffusionModel (EDM schedule on [sigma_min, sigma_max], x0-prediction) calling
    ``fn(x, sigma, **cond)``, the denoiser E[x0 | x0 + sigma eps = x]. ``sigma_data`` (EDM's
    data standard deviation) is kept as ``model.sigma_data`` for code that preconditions with it;
    samplers do not read it. Conditioning passes through as keyword arguments."""
    if not callable(fn):
        raise ValueError(f"from_denoiser needs a callable D(x, sigma), got {type(fn).__name__}")
    if not float(sigma_data) > 0:
        raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
    model = DiffusionModel(DenoiserNet(fn), EDM(sigma_min=float(sigma_min), sigma_max=float(sigma_max)),
                           prediction="x0", sample_shape=sample_shape)
    model.sigma_data = float(sigma_data)
    return model
