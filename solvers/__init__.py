"""nfebench samplers: time grids, one function per sampler, a registry with NFE metadata.

    x0 = solvers.sample("heun", model, noise, nfe=35, generator=g)
    solvers.available()          # registered names
    solvers.get("heun").nfe_rule # metadata
"""
from score_models.fields import NFEBudgetExceeded

from . import grids
from .grids import GRIDS, time_grid
from .registry import GRID_OPTIONS, SamplerSpec, available, get, register, sample
from .ode import euler, heun, rk45
from .sde import euler_maruyama

__all__ = [
    "sample", "available", "get", "register", "SamplerSpec", "GRID_OPTIONS", "GRIDS", "time_grid", "grids",
    "euler", "heun", "rk45", "euler_maruyama", "NFEBudgetExceeded",
]
