"""The sampler registry: every sampler declared once with its order, stochasticity, NFE rule
and options, validated when registered, and the one entry point :func:`sample`."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from score_models.parameterization import DiffusionModel

from .grids import time_grid

#: Options that build the time grid (see :func:`solvers.grids.time_grid`).
GRID_OPTIONS = ("grid", "rho", "t_min", "t_max", "to_zero", "spacing", "steps_offset")
#: Arguments every sampler function takes and that are not user options.
_POSITIONAL = ("model", "x_T", "times")
_PLUMBING = ("generator", "max_nfe", "stats")

__all__ = ["SamplerSpec", "register", "get", "available", "sample", "GRID_OPTIONS"]


@dataclass(frozen=True)
class SamplerSpec:
    """What the suite knows about a sampler.

    ``nfe_for_steps(n_steps, ends_at_data, options)`` is the exact network-evaluation count of
    a fixed-step sampler over a grid of n_steps intervals (ends_at_data: the last time is
    sigma = 0; options: the sampler's options with defaults filled in); None marks an adaptive
    sampler, for which ``nfe`` is a cap. ``order`` is a number or a function of the options.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    order: Any
    stochastic: bool
    nfe_rule: str
    nfe_for_steps: Optional[Callable[[int, bool, Dict[str, Any]], int]]
    paper: str
    default_grid: str = "edm"
    grid_options: Tuple[str, ...] = GRID_OPTIONS
    defaults: Dict[str, Any] = field(default_factory=dict)
    stochastic_if: Optional[Callable[[Dict[str, Any]], bool]] = None
    reports_stats: bool = False  # the function takes stats= and fills it
    default_to_zero: bool = True  # the grid's to_zero when the user gives none
    #: samplers bound to a model's own grid (a distilled student): (model, n_steps) -> times
    times_from_model: Optional[Callable[[Any, int], torch.Tensor]] = None
    #: the kind of few-step student this sampler runs ("distilled", "consistency"), None for
    #: samplers of diffusion models; the benchmark pairs each with its own models only
    student: Optional[str] = None

    @property
    def adaptive(self) -> bool:
        return self.nfe_for_steps is None

    @property
    def options(self) -> Tuple[str, ...]:
        return tuple(self.grid_options) + tuple(self.defaults)

    def with_defaults(self, options: Dict[str, Any]) -> Dict[str, Any]:
        return {**self.defaults, **{k: v for k, v in options.items() if k in self.defaults}}

    def is_stochastic(self, options: Dict[str, Any]) -> bool:
        return self.stochastic or bool(self.stochastic_if and self.stochastic_if(self.with_defaults(options)))

    def order_of(self, options: Dict[str, Any]) -> Optional[float]:
        return self.order(self.with_defaults(options)) if callable(self.order) else self.order

    def ends_at_data(self, options: Dict[str, Any]) -> bool:
        """Whether the grid this sampler gets with these options ends at sigma = 0."""
        return bool(options.get("to_zero", self.default_to_zero))

    def count(self, n_steps: int, ends_at_data: bool, options: Dict[str, Any]) -> int:
        """Exact NFE over a grid of n_steps intervals."""
        assert self.nfe_for_steps is not None
        return self.nfe_for_steps(n_steps, ends_at_data, self.with_defaults(options))

    def steps_for_budget(self, nfe: int, ends_at_data: bool, options: Optional[Dict[str, Any]] = None) -> int:
        """The most steps whose counted NFE stays within ``nfe`` (ValueError below the minimum)."""
        options = options or {}
        minimum = self.count(1, ends_at_data, options)
        if nfe < minimum:
            raise ValueError(f"{self.name} needs nfe >= {minimum} (got {nfe}); its rule: {self.nfe_rule}")
        n = 1
        while self.count(n + 1, ends_at_data, options) <= nfe:
            n += 1
        return n


_REGISTRY: Dict[str, SamplerSpec] = {}


def register(name: str, *, order: Any, stochastic: bool, nfe_rule: str,
             nfe_for_steps: Optional[Callable[[int, bool, Dict[str, Any]], int]], paper: str, default_grid: str = "edm",
             grid_options: Tuple[str, ...] = GRID_OPTIONS,
             stochastic_if: Optional[Callable[[Dict[str, Any]], bool]] = None, default_to_zero: bool = True,
             times_from_model: Optional[Callable[[Any, int], torch.Tensor]] = None,
             student: Optional[str] = None) -> Callable:
    """Decorator declaring a sampler ``fn(model, x_T, times, *, <options>, generator=None)``.

    Its keyword parameters (other than generator/max_nfe/stats) become its options, with their
    defaults; registration checks the signature and the NFE rule's basic sanity.
    """

    def wrap(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in _REGISTRY:
            raise ValueError(f"sampler {name!r} is registered twice")
        params = inspect.signature(fn).parameters
        if tuple(params)[:3] != _POSITIONAL:
            raise TypeError(f"{fn.__name__} must take (model, x_T, times, *, ...) first")
        if "generator" not in params:
            raise TypeError(f"{fn.__name__} must accept generator= (randomness only through it)")
        defaults = {}
        for p in list(params.values())[3:]:
            if p.name in _PLUMBING:
                continue
            if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty:
                raise TypeError(f"{fn.__name__}: option {p.name!r} must be keyword-only with a default")
            defaults[p.name] = p.default
        clash = set(defaults) & set(GRID_OPTIONS)
        if clash:
            raise TypeError(f"{fn.__name__}: options {sorted(clash)} clash with grid options")
        if nfe_for_steps is None and "max_nfe" not in params:
            raise TypeError(f"adaptive sampler {name!r} must accept max_nfe=")
        if nfe_for_steps is not None:
            for ends in (True, False):
                counts = [nfe_for_steps(n, ends, dict(defaults)) for n in range(1, 6)]
                if counts[0] < 1 or any(b <= a for a, b in zip(counts, counts[1:])):
                    raise ValueError(f"{name}: NFE rule must be >= 1 and strictly increasing in steps, got {counts}")
        _REGISTRY[name] = SamplerSpec(name, fn, order, stochastic, nfe_rule, nfe_for_steps, paper,
                                      default_grid, tuple(grid_options), defaults, stochastic_if,
                                      reports_stats="stats" in params, default_to_zero=default_to_zero,
                                      times_from_model=times_from_model, student=student)
        return fn

    return wrap


def available() -> list[str]:
    """Names of all registered samplers, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def get(name: str) -> SamplerSpec:
    """The :class:`SamplerSpec` of a registered sampler (ValueError naming the valid ones)."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _load_builtin() -> None:
    # The built-in samplers register themselves on import.
    from . import ddim, distilled, dpm_solver, multistep, ode, pc, sde  # noqa: F401


def sample(name: str, model: DiffusionModel, noise: torch.Tensor, nfe: Optional[int] = None,
           generator: Optional[torch.Generator] = None, stats: Optional[dict] = None,
           **options: Any) -> torch.Tensor:
    """Draw samples with a registered sampler from standard-normal ``noise``.

    Starts at x_T = schedule.prior_std_at(t_start) * noise (= prior_std at the default t_max) and
    makes at most ``nfe`` network evaluations (exactly the registered rule's count for fixed-step
    samplers; a cap for adaptive ones).
    ``grid`` may be a name or a tensor of times (then ``nfe`` may be None). ``stats``, if given,
    is filled with the counted ``nfe``, ``n_steps`` and anything the sampler reports.
    """
    spec = get(name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for sampler {name!r}; valid: {', '.join(spec.options) or 'none'}")
    grid_kw = {k: options.pop(k) for k in spec.grid_options if k in options}
    if "spacing" in grid_kw and "grid" in grid_kw:
        raise ValueError(f"give grid= or spacing= (discrete timesteps), not both; got grid={grid_kw['grid']!r}, "
                         f"spacing={grid_kw['spacing']!r}")
    grid = grid_kw.pop("grid", None if "spacing" in grid_kw else spec.default_grid)
    sched = model.schedule

    if spec.adaptive:
        # An adaptive solver integrates from t_max to t_min (then denoises if to_zero).
        to_zero = spec.ends_at_data(grid_kw)
        times = time_grid(sched, 2 if to_zero else 1, "uniform", **grid_kw)
        n_steps = None
    elif isinstance(grid, torch.Tensor):
        if grid_kw:
            raise ValueError(f"a tensor grid already fixes the times; drop {sorted(grid_kw)}")
        times = time_grid(sched, grid.numel() - 1, grid)
        n_steps = times.numel() - 1
        need = spec.count(n_steps, bool(times[-1] == sched.t_data), options)
        if nfe is not None and need > nfe:
            raise ValueError(f"{name} on the given {n_steps}-step grid needs {need} NFE, more than nfe={nfe}")
    else:
        if nfe is None:
            raise ValueError(f"{name} needs nfe= (or a tensor grid=)")
        n_steps = spec.steps_for_budget(int(nfe), spec.ends_at_data(grid_kw), options)
        if spec.times_from_model is not None:
            times = spec.times_from_model(model, n_steps)
        else:
            times = time_grid(sched, n_steps, grid, **{"to_zero": spec.default_to_zero, **grid_kw})
        n_steps = times.numel() - 1  # a discrete spacing may merge a duplicate final timestep

    x_T = sched.prior_std_at(float(times[0])) * noise
    extra: Dict[str, Any] = {}
    if spec.adaptive:
        extra["max_nfe"] = nfe
    if spec.reports_stats:
        extra["stats"] = stats
    start, start_passes = model.nfe, model.network_passes
    x = spec.fn(model, x_T, times, generator=generator, **extra, **options)
    counted = model.nfe - start
    if nfe is not None and counted > nfe:
        raise RuntimeError(f"{name} made {counted} network evaluations, over its budget of {nfe}: a sampler bug")
    if stats is not None:
        stats.update(nfe=counted, n_steps=n_steps, network_passes=model.network_passes - start_passes)
    return x
