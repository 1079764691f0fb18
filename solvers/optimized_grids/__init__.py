"""Time grids optimised per model, sampler and NFE budget: :func:`optimize_grid`.

    times = solvers.optimize_grid(model, "ipndm", nfe=5, method="gits", stats=info)
    x0 = solvers.sample("ipndm", model, noise, grid=times)

Methods (one module each): ``gits`` (Chen et al. 2024), ``ays`` (Sabour et al. 2024), ``dp``
(Pei et al. 2025) and ``exact`` (the true endpoint error of a model whose PF-ODE solution is
known, minimised directly: the ceiling no grid method can beat). Each is seeded and
deterministic and reports what it cost: the network evaluations the model's wrapper counted and
the seconds spent."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch

from score_models.parameterization import DiffusionModel

from ..grids import check_grid
from .ays import ays_grid, loglinear_interp
from .dp import dp_grid
from .exact import exact_grid
from .gits import gits_grid
from .problem import GridProblem, Ledger, has_exact_solution, make_problem

__all__ = ["optimize_grid", "METHODS", "METHOD_DESCRIPTIONS", "METHOD_VERSIONS", "check_method", "loglinear_interp"]

#: method -> (function of the problem and the method's keyword settings, whether it follows the
#: deterministic PF-ODE and so needs a deterministic sampler)
METHODS: Dict[str, tuple[Callable[..., tuple[torch.Tensor, Dict[str, Any]]], bool]] = {
    "gits": (gits_grid, True),
    "ays": (ays_grid, False),
    "dp": (dp_grid, True),
    "exact": (exact_grid, True),
}
#: Each method's algorithm revision: part of a cached grid's identity, so a changed method never
#: reads a grid its earlier revision wrote (bumped with every change of what a method computes).
METHOD_VERSIONS = {"gits": 2, "ays": 3, "dp": 2, "exact": 2}
if set(METHOD_VERSIONS) != set(METHODS):
    raise RuntimeError(f"METHOD_VERSIONS {sorted(METHOD_VERSIONS)} must name exactly the methods {sorted(METHODS)}")
METHOD_DESCRIPTIONS = {
    "gits": "dynamic programme over discounted Euler one-step costs on teacher trajectories (Chen et al. 2024)",
    "ays": "KL-upper-bound coordinate search on a 10-step schedule, refined to 40, log-linearly interpolated (Sabour et al. 2024)",
    "dp": "optimal-stepsize dynamic programme of the sampler's own steps per sample, median of the steps (Pei et al. 2025)",
    "exact": "the exact endpoint error minimised directly (Powell; Gaussian mixtures only)",
}


def check_method(model: DiffusionModel, sampler: str, nfe: Any, method: Any,
                 options: Optional[Dict[str, Any]] = None) -> GridProblem:
    """ValueError unless ``method`` can optimise a grid for ``sampler`` on ``model`` at ``nfe``
    (nothing is computed); returns the checked problem."""
    if method not in METHODS:
        raise ValueError(f"unknown grid optimisation method {method!r}; valid: {', '.join(METHODS)}")
    _, deterministic = METHODS[method]
    problem = make_problem(model, sampler, nfe, options, deterministic=deterministic)
    if method == "exact" and not has_exact_solution(model):
        raise ValueError(f"method 'exact' needs a model whose exact PF-ODE solution is known (gmm:...); "
                         f"{model!r} has none; valid here: gits, ays, dp")
    if method == "ays" and not callable(getattr(model, "sample_data", None)):
        raise ValueError(f"method 'ays' needs the model's data samples (sample_data) for its KL bound; "
                         f"{model!r} has none; valid here: gits, dp")
    return problem


def optimize_grid(model: DiffusionModel, sampler: str, nfe: int, method: str, *, seed: int = 0,
                  settings: Optional[Dict[str, Any]] = None, stats: Optional[dict] = None,
                  **sampler_options: Any) -> torch.Tensor:
    """The float64 times (from t_max to t_data) that ``method`` finds for ``sampler`` with
    ``sampler_options`` on ``model`` at an ``nfe`` budget; pass them as ``grid=``.

    ``settings`` are the method's own knobs (e.g. ``{"fine_steps": 40, "n_samples": 32}``; see
    each method's function). ``stats``, if given, is filled with the method, the step count, the
    cost (``optimizer_nfe`` counted by the model's wrapper, ``optimizer_seconds``) and what the
    method reports. The same arguments give the same times."""
    problem = check_method(model, sampler, nfe, method, sampler_options)
    fn, _ = METHODS[method]
    settings = dict(settings or {})
    ledger = Ledger(model)
    try:
        times, info = fn(problem, seed=seed, **settings)
    except TypeError as e:
        raise ValueError(f"bad settings {sorted(settings)} for method {method!r}: {e}") from None
    times = check_grid(problem.schedule, times.to(torch.float64).cpu())
    if times.numel() - 1 != problem.n_steps:
        raise RuntimeError(f"{method} returned {times.numel() - 1} steps, not {problem.n_steps}: a bug")
    if stats is not None:
        stats.update(method=method, sampler=sampler, nfe=problem.nfe, n_steps=problem.n_steps, seed=seed,
                     **ledger.cost(), **info)
    return times
