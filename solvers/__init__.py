"""nfebench samplers: time grids, one function per sampler, a registry with NFE metadata.

    x0 = solvers.sample("heun", model, noise, nfe=35, generator=g)
    noise = solvers.invert("heun", model, x0, nfe=35)   # data -> noise on the reversed grid
    solvers.available()          # registered names
    solvers.get("heun").nfe      # metadata: the NFE rule, order, options, paper

Samplers live in :mod:`solvers.samplers`, one family per module, each registered where it is
defined; every module there is discovered on first use.
"""
from score_models.fields import NFEBudgetExceeded

from . import grids
from .grids import GRIDS, time_grid
from .registry import GRID_OPTIONS, Alias, SamplerSpec, aliases, available, get, register
from .sampling import MAX_NFE, sample
from .inversion import decode, encode, invert, invertible_samplers, round_trip
from .optimized_grids import optimize_grid
from .diffusers_mapping import exact_in_diffusers, from_diffusers
from .kdiffusion_interface import as_kdiffusion
from .cuda_graph import GraphedSampler

__all__ = [
    "sample", "invert", "encode", "decode", "round_trip", "invertible_samplers", "available", "aliases", "get", "register", "Alias", "SamplerSpec", "GRID_OPTIONS", "GRIDS", "time_grid", "grids",
    "MAX_NFE", "NFEBudgetExceeded", "optimize_grid", "from_diffusers", "exact_in_diffusers", "as_kdiffusion", "GraphedSampler",
]
