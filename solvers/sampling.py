"""The one entry point that runs a registered sampler: :func:`sample`.

It turns an NFE budget into a grid (the sampler's NFE rule inverted), starts the chain at
x_T = prior_std * noise, calls the sampler and checks the count the model's wrapper made."""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Optional

import torch

from score_models.parameterization import DiffusionModel

from .grids import time_grid
from .registry import SamplerSpec, get

__all__ = ["sample", "MAX_NFE", "check_budget", "check_noise", "plan_times", "start_scale"]

#: The largest budget a call may ask for; a grid of this many steps is ~1 MB of float64 times.
MAX_NFE = 100_000


def check_budget(nfe: Any) -> Optional[int]:
    """``nfe`` as an int (None passes): ValueError for bools, non-integers and budgets outside
    1..MAX_NFE."""
    if nfe is None:
        return None
    if isinstance(nfe, bool) or not isinstance(nfe, numbers.Real) or not float(nfe).is_integer():
        raise ValueError(f"nfe must be a whole number, got {nfe!r}")
    if not 1 <= int(nfe) <= MAX_NFE:
        raise ValueError(f"nfe must lie in 1..{MAX_NFE}, got {nfe}")
    return int(nfe)


def check_noise(model: DiffusionModel, noise: Any) -> None:
    """ValueError unless ``noise`` is a finite floating tensor shaped [batch, *model.sample_shape]."""
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
        raise ValueError(f"noise must be a floating-point tensor, got "
                         f"{type(noise).__name__ if not isinstance(noise, torch.Tensor) else noise.dtype}")
    if model.sample_shape is not None and tuple(noise.shape[1:]) != tuple(model.sample_shape):
        raise ValueError(f"noise has shape {tuple(noise.shape)}; this model's samples are "
                         f"[batch, {', '.join(map(str, model.sample_shape))}]")
    if noise.dim() < 1 or noise.shape[0] < 1:
        raise ValueError(f"noise needs a batch dimension of at least 1, got shape {tuple(noise.shape)}")
    # While a CUDA graph is captured the values are placeholders and reading them back would
    # break the capture; the graph's runner checks each noise it replays on.
    capturing = noise.is_cuda and torch.cuda.is_current_stream_capturing()
    if not capturing and not bool(torch.isfinite(noise).all()):
        raise ValueError("noise holds NaN or Inf")


def plan_times(spec: SamplerSpec, model: DiffusionModel, nfe: Optional[int], options: Dict[str, Any]
               ) -> tuple[torch.Tensor, Optional[int]]:
    """(the float64 times the sampler visits, its step count or None for adaptive samplers) for
    a budget and options; pops the grid options out of ``options``."""
    grid_kw = {k: options.pop(k) for k in spec.grid_options if k in options}
    grid_kw.pop("start_noise", None)  # where x_T starts, not a time (read by sample())
    if "spacing" in grid_kw and "grid" in grid_kw:
        raise ValueError(f"give grid= or spacing= (discrete timesteps), not both; got grid={grid_kw['grid']!r}, "
                         f"spacing={grid_kw['spacing']!r}")
    sched = model.schedule
    grid = grid_kw.get("grid")
    if isinstance(grid, torch.Tensor) and not spec.adaptive:
        if len(grid_kw) > 1:
            raise ValueError(f"a tensor grid already fixes the times; drop {sorted(set(grid_kw) - {'grid'})}")
        times = time_grid(sched, grid.numel() - 1, grid)
        n_steps = times.numel() - 1
        need = spec.count(n_steps, bool(times[-1] == sched.t_data), options)
        if nfe is not None and need > nfe:
            raise ValueError(f"{spec.name} on the given {n_steps}-step grid needs {need} NFE, more than nfe={nfe}")
        return times, n_steps
    grid_kw = spec.grid_settings(grid_kw, model)
    grid_kw.pop("start_noise", None)
    ends_at_data = bool(grid_kw.pop("to_zero", True))
    grid = grid_kw.pop("grid", None if "spacing" in grid_kw else spec.default_grid)
    if spec.steps_option is not None:
        # The step count is an option (the budget is a cap on the evaluations the sampler counts).
        n_steps = int(options.get(spec.steps_option, spec.defaults[spec.steps_option]))
        times = time_grid(sched, n_steps, grid, to_zero=ends_at_data, **grid_kw)
        return times, times.numel() - 1
    if spec.adaptive:
        # An adaptive solver integrates from t_max to t_min (then denoises if the grid ends at 0).
        return time_grid(sched, 2 if ends_at_data else 1, "uniform", to_zero=ends_at_data, **grid_kw), None
    if nfe is None:
        raise ValueError(f"{spec.name} needs nfe= (or a tensor grid=)")
    n_steps = spec.steps_for_budget(nfe, ends_at_data, options)
    if not spec.grid_options:
        # A sampler without grid options runs on the grid the model declares (a distilled student's).
        times = model.own_grid(n_steps)
        if times is None:
            raise ValueError(f"{spec.name} runs on the grid its model declares, and {model!r} declares none "
                             f"(a progressively distilled student does)")
    else:
        times = time_grid(sched, n_steps, grid, to_zero=ends_at_data, **grid_kw)
    return times, times.numel() - 1  # a discrete spacing may merge a duplicate final timestep


def start_scale(model: DiffusionModel, t_start: float, start_noise: str = "prior") -> float:
    """The scale of x_T = scale * noise (the ``start_noise`` grid option):

    - ``"prior"``: the schedule's prior (schedule.prior_std_at): 1 on VP, sigma on VE/EDM;
    - ``"sigma"``: the noise part alone, sigma(t_start) (diffusers' init_noise_sigma = sigma_max
      of its sigma-space schedulers with linspace and trailing spacing);
    - ``"unit_data"``: sqrt(alpha^2 + sigma^2), the marginal's scale for unit-variance data
      (diffusers' init_noise_sigma = sqrt(sigma_max^2 + 1) of leading spacing and its EDM
      schedulers; 1 on VP schedules).

    On a VP schedule "sigma" differs from the other two by the factor sqrt(1 - alpha^2), 1 - 2e-5
    at DDPM's last timestep."""
    sched = model.schedule
    if start_noise == "sigma":
        return float(sched.sigma(t_start))
    if start_noise == "unit_data":
        return math.hypot(float(sched.alpha(t_start)), float(sched.sigma(t_start)))
    return sched.prior_std_at(t_start)


def sample(name: str, model: DiffusionModel, noise: torch.Tensor, nfe: Optional[int] = None,
           generator: Optional[torch.Generator] = None, stats: Optional[dict] = None,
           **options: Any) -> torch.Tensor:
    """Draw samples with a registered sampler from standard-normal ``noise``.

    Starts at x_T = schedule.prior_std_at(t_start) * noise (= prior_std at the default t_max) and
    makes at most ``nfe`` network evaluations (exactly the registered rule's count for fixed-step
    samplers; a cap for adaptive ones).
    ``grid`` may be a name or a tensor of times (then ``nfe`` may be None). ``stats``, if given,
    is filled with the counted ``nfe``, ``n_steps``, ``network_passes``, ``sequential_depth`` (the
    network calls that ran one after another: below ``nfe`` where a sampler stacks several
    evaluations into one call) and anything the sampler reports.
    """
    spec = get(name)
    if spec.exclusive and (spec.alias_of or name) not in model.native_samplers:
        raise ValueError(f"{name} runs only on models that name it as a native sampler (few-step students); "
                         f"{model!r} names {', '.join(model.native_samplers) or 'none'}")
    spec.check_options(options)
    options = spec.with_fixed(options)
    nfe = check_budget(nfe)
    check_noise(model, noise)
    start_noise = spec.grid_settings(options, model).get("start_noise", "prior")
    times, n_steps = plan_times(spec, model, nfe, options)
    x_T = start_scale(model, float(times[0]), start_noise) * noise
    extra: Dict[str, Any] = {}
    if spec.adaptive:
        extra["max_nfe"] = nfe
    if spec.reports_stats:
        extra["stats"] = stats
    start, start_passes, start_depth = model.nfe, model.network_passes, model.sequential_depth
    x = spec.fn(model, x_T, times, generator=generator, **extra, **options)
    counted = model.nfe - start
    if nfe is not None and counted > nfe:
        raise RuntimeError(f"{name} made {counted} network evaluations, over its budget of {nfe}: a sampler bug")
    if stats is not None:
        stats.update(nfe=counted, n_steps=n_steps, network_passes=model.network_passes - start_passes,
                     sequential_depth=model.sequential_depth - start_depth)
    return x
