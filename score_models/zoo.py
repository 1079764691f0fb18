"""Named models.

- ``load("gmm:<preset>", schedule=...)``: an exact GaussianMixture on any schedule. Presets are
  fixed by their definition here (seeded), so results are comparable across runs.
- ``load("python:<module>:<function>", schedule=...)``: your own model; ``function(schedule)``
  (schedule: the Schedule built from the name given) returns a DiffusionModel with its
  ``sample_shape`` set. This is how a config points at a network of your own.

Shipped trained networks and ``diffusers:<path>`` loading are not in this release yet; asking
for them is an error naming what exists.
"""
from __future__ import annotations

import importlib
import math
from typing import Callable, Dict, Union

import torch

from .analytic import GaussianMixture
from .parameterization import DiffusionModel
from .schedules import SCHEDULES, Schedule

__all__ = ["load", "available", "GMM_PRESETS", "make_schedule"]


def _ring8(schedule: Schedule) -> GaussianMixture:
    """2-D: 8 isotropic Gaussians (std 0.3) evenly on a circle of radius 2."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(means, 0.3, schedule=schedule)


def _mix16d(schedule: Schedule) -> GaussianMixture:
    """16-D: 5 diagonal Gaussians with seeded means ~ N(0, 1) and stds in [0.2, 0.6], unequal weights."""
    g = torch.Generator().manual_seed(16)
    means = torch.randn(5, 16, generator=g, dtype=torch.float64)
    stds = 0.2 + 0.4 * torch.rand(5, 16, generator=g, dtype=torch.float64)
    return GaussianMixture(means, stds, torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1]), schedule=schedule)


def _image3x8x8(schedule: Schedule) -> GaussianMixture:
    """Image-shaped (3, 8, 8): 4 seeded smooth "images" in [-1, 1] as means, isotropic std 0.25."""
    g = torch.Generator().manual_seed(388)
    coarse = torch.rand(4, 3, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
    means = torch.nn.functional.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=True)
    return GaussianMixture(means, 0.25, schedule=schedule)


GMM_PRESETS: Dict[str, Callable[[Schedule], GaussianMixture]] = {
    "ring8": _ring8,
    "mix16d": _mix16d,
    "image3x8x8": _image3x8x8,
}


def make_schedule(schedule: Union[str, Schedule]) -> Schedule:
    """A Schedule instance from itself or a name in :data:`score_models.SCHEDULES`."""
    if isinstance(schedule, Schedule):
        return schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    return SCHEDULES[schedule]()


def available() -> list[str]:
    """Loadable model names (plus ``python:<module>:<function>`` for your own)."""
    return [f"gmm:{name}" for name in GMM_PRESETS]


def _load_python(spec: str, schedule: Schedule) -> DiffusionModel:
    module_name, _, function = spec.rpartition(":")
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot load model factory 'python:{spec}' ({e}); expected python:<module>:<function>") from None
    model = factory(schedule)
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"python:{spec} returned {type(model).__name__}, not a DiffusionModel")
    return model


def load(name: str, schedule: Union[str, Schedule] = "vp_linear") -> DiffusionModel:
    """Load a named model (see the module docstring) on ``schedule`` (a name or a Schedule)."""
    kind, _, rest = name.partition(":")
    if kind == "gmm" and rest in GMM_PRESETS:
        return GMM_PRESETS[rest](make_schedule(schedule))
    if kind == "python" and rest:
        return _load_python(rest, make_schedule(schedule))
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(available())}, python:<module>:<function>")
