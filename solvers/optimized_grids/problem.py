"""What every grid optimiser shares: the checked problem (model, sampler, budget), the seeded
noise, the fine candidate grid, the teacher trajectory on it, running the sampler on a grid, and
the cost ledger (network evaluations the model's wrapper counted, seconds)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from score_models.parameterization import DiffusionModel

from ..grids import time_grid
from ..registry import GRID_OPTIONS, SamplerSpec, get
from ..sampling import check_budget

__all__ = ["GridProblem", "Ledger", "make_problem", "fine_grid", "teacher_trajectory", "run_sampler",
           "endpoint_rmse", "has_exact_solution"]


def has_exact_solution(model: DiffusionModel) -> bool:
    """Whether the model knows its exact PF-ODE solution (the exact Gaussian mixtures do)."""
    return callable(getattr(model, "exact_ode_solution", None))


@dataclass
class Ledger:
    """Network evaluations (counted by the model's wrapper) and seconds an optimiser spent."""

    model: DiffusionModel
    nfe_start: int = 0
    t_start: float = 0.0

    def __post_init__(self) -> None:
        self.nfe_start, self.t_start = self.model.nfe, time.perf_counter()

    def cost(self) -> Dict[str, float]:
        return {"optimizer_nfe": int(self.model.nfe - self.nfe_start),
                "optimizer_seconds": round(time.perf_counter() - self.t_start, 3)}


@dataclass
class GridProblem:
    """One (model, sampler, budget): the step count the sampler gets from the budget and the
    options it runs with (an alias's fixed ones included)."""

    model: DiffusionModel
    sampler: str
    spec: SamplerSpec
    nfe: int
    n_steps: int
    options: Dict[str, Any] = field(default_factory=dict)

    @property
    def schedule(self):
        return self.model.schedule

    def generator(self, seed: int, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(seed) * 7919 + stream)

    def noise(self, n: int, seed: int) -> torch.Tensor:
        """n standard-normal draws of the model's sample shape, in float64, from ``seed``."""
        shape = (n,) + tuple(self.model.sample_shape)
        return torch.randn(shape, generator=self.generator(seed, 0), dtype=torch.float64)

    @property
    def dtype(self) -> torch.dtype:
        """float64 for the exact mixtures; a network's own parameter dtype otherwise."""
        owner = getattr(self.model, "base", self.model)
        net = getattr(owner, "net", None)
        if isinstance(net, torch.nn.Module) and not has_exact_solution(owner):
            for parameter in net.parameters():
                return parameter.dtype
        return torch.float64

    @property
    def device(self) -> torch.device:
        owner = getattr(self.model, "base", self.model)
        net = getattr(owner, "net", None)
        if isinstance(net, torch.nn.Module):
            for parameter in net.parameters():
                return parameter.device
        return torch.device("cpu")

    def x_T(self, noise: torch.Tensor) -> torch.Tensor:
        """The chain's start x_T = prior_std * noise, in the model's dtype and on its device."""
        x = self.schedule.prior_std_at(self.schedule.t_max) * noise
        return x.to(device=self.device, dtype=self.dtype)


def make_problem(model: DiffusionModel, sampler: str, nfe: Any, options: Optional[Dict[str, Any]] = None,
                 deterministic: bool = True) -> GridProblem:
    """Check that a grid can be optimised for ``sampler`` on ``model`` at ``nfe`` (ValueError
    naming the bad value otherwise) and return the problem."""
    options = dict(options or {})
    spec = get(sampler)
    if model.sample_shape is None:
        raise ValueError(f"{model!r} does not declare its sample_shape; a grid optimiser draws noise of that shape")
    if spec.exclusive or model.native_samplers:
        raise ValueError(f"an optimised grid needs a sampler that takes any grid on a model that accepts any; "
                         f"{sampler} on {model!r} runs on the model's own grid")
    if spec.adaptive or "grid" not in spec.grid_options:
        raise ValueError(f"{sampler} chooses its own steps; an optimised grid needs a fixed-step sampler that takes grid=")
    grid_keys = sorted(set(options) & set(GRID_OPTIONS))  # an optimised grid replaces them all
    if grid_keys:
        raise ValueError(f"an optimised grid fixes the times; drop the grid option(s) {grid_keys} "
                         f"(valid sampler options: {', '.join(spec.defaults) or 'none'})")
    spec.check_options(options)
    options = spec.with_fixed(options)
    if deterministic and spec.is_stochastic(options):
        raise ValueError(f"{sampler} with options {options} is stochastic; this grid optimiser follows the "
                         f"deterministic PF-ODE (use method='ays', which needs no trajectories)")
    nfe = check_budget(nfe)
    if nfe is None:
        raise ValueError("nfe is required")
    n_steps = spec.steps_for_budget(nfe, True, options)  # ValueError below the sampler's minimum
    return GridProblem(model, sampler, spec, nfe, n_steps, options)


def fine_grid(problem: GridProblem, fine_steps: int) -> torch.Tensor:
    """The candidate times: ``fine_steps`` intervals of the EDM rho = 7 grid from t_max to t_min,
    then t_data (Karras et al. 2022, eq. 5; the teacher grid of GITS and of optimal-stepsize DP)."""
    if not isinstance(fine_steps, int) or isinstance(fine_steps, bool) or fine_steps < problem.n_steps:
        raise ValueError(f"fine_steps must be an integer >= the {problem.n_steps} steps to choose, got {fine_steps!r}")
    return time_grid(problem.schedule, fine_steps, "edm")


def run_sampler(problem: GridProblem, x_start: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """The sampler's own function run on ``times`` from the state ``x_start`` at times[0]."""
    extra = {"stats": None} if problem.spec.reports_stats else {}
    with torch.inference_mode():
        return problem.spec.fn(problem.model, x_start, times, generator=None, **extra, **problem.options)


def teacher_trajectory(problem: GridProblem, x_T: torch.Tensor, times: torch.Tensor, substeps: int = 4
                       ) -> List[torch.Tensor]:
    """The PF-ODE solution from x_T at times[0] through every time of ``times``: exact for a
    model that knows it, otherwise Heun with ``substeps`` EDM-spaced steps per interval."""
    model = problem.model
    states = [x_T]
    heun = get("heun")
    x = x_T
    for t_hi, t_lo in zip(times[:-1].tolist(), times[1:].tolist()):
        if has_exact_solution(model):
            x = model.exact_ode_solution(x, t_start=t_hi, t_end=t_lo, rtol=1e-8, atol=1e-8)
        else:
            if t_lo == problem.schedule.t_data:
                segment = torch.tensor([t_hi, t_lo], dtype=torch.float64)  # a step onto sigma = 0 lands on D
            else:
                segment = time_grid(problem.schedule, substeps, "edm", t_max=t_hi, t_min=t_lo, to_zero=False)
            with torch.inference_mode():
                x = heun.fn(model, x, segment, generator=None)
        states.append(x)
    return states


def endpoint_rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference of two batches of samples (the sweep's solver_error)."""
    return float((a.to(torch.float64) - b.to(torch.float64)).pow(2).mean().sqrt())
