"""The grid option of a sweep config beyond named grids: a grid optimised per model x sampler x
NFE, or a JSON file of times.

    grid = "optimized:gits"          # or ays, dp, exact (solvers.optimize_grid)
    grid = "file:grids/mine.json"    # a list of times, or the record `nfebench grid --out` writes

Both are validated with the config, before anything runs: the method must apply to every model
the series runs on, every budget must reach the sampler's minimum, and a file's times must be
strictly decreasing in noise and inside each model's schedule. ``[run] grid_optimizer`` holds the
methods' settings (e.g. ``{ n_samples = 16, fine_steps = 24 }``); each method takes the ones it
knows."""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

__all__ = ["OPTIMIZED", "FILE", "grid_kind", "options_without_special_grid", "load_grid_file", "method_settings",
           "check_special_grids", "check_optimizer_settings"]

OPTIMIZED, FILE = "optimized:", "file:"


def grid_kind(options: Dict[str, Any]) -> Optional[Tuple[str, str]]:
    """("optimized", method) or ("file", path) for a special grid option, else None."""
    grid = options.get("grid")
    if isinstance(grid, str) and grid.startswith(OPTIMIZED):
        return "optimized", grid[len(OPTIMIZED):]
    if isinstance(grid, str) and grid.startswith(FILE):
        return "file", grid[len(FILE):]
    return None


def options_without_special_grid(options: Dict[str, Any]) -> Dict[str, Any]:
    """The options a sampler checks itself: a special grid's spelling checked here and removed."""
    from solvers.optimized_grids import METHODS

    kind = grid_kind(options)
    if kind is None:
        return options
    what, value = kind
    if what == "optimized" and value not in METHODS:
        raise ValueError(f"grid {options['grid']!r}: unknown method {value!r}; valid: "
                         f"{', '.join(OPTIMIZED + m for m in METHODS)}")
    if what == "file" and not Path(value).is_file():
        raise ValueError(f"grid {options['grid']!r}: file {value!r} does not exist")
    rest = {k: v for k, v in options.items() if k != "grid"}
    from solvers.registry import GRID_OPTIONS

    other = sorted(set(rest) & set(GRID_OPTIONS))
    if other:
        raise ValueError(f"grid {options['grid']!r} fixes the times; drop {other}")
    return rest


def load_grid_file(path: str) -> torch.Tensor:
    """The float64 times in a JSON file: a list of numbers or an object with "times"."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"grid file {path!r} is not readable JSON ({e})") from None
    times = data.get("times") if isinstance(data, dict) else data
    if not isinstance(times, list) or len(times) < 2 or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) for t in times):
        raise ValueError(f"grid file {path!r} must hold a list of at least 2 times (or {{\"times\": [...]}})")
    return torch.tensor(times, dtype=torch.float64)


def method_settings(method: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    """Every setting ``method`` takes: its defaults, overridden by those of ``[run] grid_optimizer``
    (all of them, so that a changed default is a different grid)."""
    from solvers.optimized_grids import METHODS

    fn, _ = METHODS[method]
    defaults = {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
    return {**defaults, **{k: v for k, v in settings.items() if k in defaults}}


def check_optimizer_settings(settings: Any) -> Dict[str, Any]:
    """``[run] grid_optimizer``: a table of positive numbers each known to some method."""
    from solvers.optimized_grids import METHODS

    if not isinstance(settings, dict):
        raise ValueError(f"[run] grid_optimizer must be a table, e.g. {{ n_samples = 16 }}; got {settings!r}")
    known: Dict[str, Any] = {}
    for fn, _ in METHODS.values():
        known.update({n: p.default for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY})
    for key, value in settings.items():
        if key not in known:
            raise ValueError(f"unknown [run] grid_optimizer setting {key!r}; valid: {', '.join(sorted(known))}")
        integral = isinstance(known[key], int)
        if isinstance(value, bool) or not isinstance(value, int if integral else (int, float)) or value < (0 if key == "seed" else 1e-300):
            raise ValueError(f"[run] grid_optimizer {key} must be a {'non-negative' if key == 'seed' else 'positive'} "
                             f"{'integer' if integral else 'number'}, got {value!r}")
    return dict(settings)


def check_special_grids(model_specs: List[Any], series: List[Any], nfe: List[int]) -> None:
    """Model-dependent checks of every optimised or file grid (see the module docstring)."""
    import solvers
    from score_models import zoo
    from solvers.grids import check_grid
    from solvers.optimized_grids import check_method

    from .sweep.cells import runs_on

    for s in series:
        kind = grid_kind(s.options)
        if kind is None:
            continue
        spec = solvers.get(s.sampler)
        sampler_options = options_without_special_grid(s.options)
        times = load_grid_file(kind[1]) if kind[0] == "file" else None
        for m in model_specs:
            if m.series is not None and s.key not in m.series:
                continue
            model = zoo.load(m.name, schedule=m.schedule)
            if not runs_on(s.sampler, model):
                continue
            where = f"series {s.key!r} on model {m.key!r}"
            for budget in s.nfe or m.nfe or nfe:
                if kind[0] == "optimized":
                    try:
                        check_method(model, s.sampler, budget, kind[1], sampler_options)
                    except ValueError as e:
                        raise ValueError(f"{where} at nfe={budget}: {e}") from None
                    continue
                try:
                    grid = check_grid(model.schedule, times)
                except ValueError as e:
                    raise ValueError(f"{where}: grid file {kind[1]!r}: {e}") from None
                steps = grid.numel() - 1
                need = spec.count(steps, bool(grid[-1] == model.schedule.t_data), spec.with_fixed(sampler_options))
                if need > budget:
                    raise ValueError(f"{where}: the {steps}-step grid in {kind[1]!r} needs {need} NFE, "
                                     f"more than the budget nfe={budget}")
