"""The cells of a sweep and their random streams.

A cell is (model, sampler series, NFE budget, seed). Which series run on which model is the
models' own declaration: a few-step student names its native samplers and runs only those; an
exclusive sampler (a student's) runs only on models that name it. A budget a sampler cannot
honour is skipped with a note, not faked."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

import solvers
from score_models import zoo
from score_models.parameterization import DiffusionModel

from ..config import ModelSpec, SeriesSpec, SweepConfig

__all__ = ["Cell", "expand_cells", "runs_on", "batch_generator", "all_batches"]


@dataclass(frozen=True)
class Cell:
    model: ModelSpec
    series: SeriesSpec
    nfe_budget: int
    seed: int

    @property
    def key(self) -> Tuple[str, str, int, int]:
        return (self.model.key, self.series.key, self.nfe_budget, self.seed)


def runs_on(sampler: str, model: Optional[DiffusionModel]) -> bool:
    """Whether a sweep pairs this sampler with this model (see the module docstring); a model
    that failed to load (None) is paired like any teacher, and its cells fail as rows."""
    spec = solvers.get(sampler)
    if model is not None and model.native_samplers:
        return (spec.alias_of or sampler) in model.native_samplers
    return not spec.exclusive


def expand_cells(cfg: SweepConfig, load: Optional[Callable[[ModelSpec], DiffusionModel]] = None
                 ) -> Tuple[List[Cell], List[str]]:
    """All cells in run order, and a note for each budget a sampler cannot honour. ``load`` gives
    a model spec's model (default: zoo.load, once per spec)."""
    loaded: Dict[str, DiffusionModel] = {}
    if load is None:
        def load(spec: ModelSpec) -> DiffusionModel:
            if spec.key not in loaded:
                loaded[spec.key] = zoo.load(spec.name, schedule=spec.schedule)
            return loaded[spec.key]
    cells, skipped = [], []
    for model_spec in cfg.models:
        try:
            model: Optional[DiffusionModel] = load(model_spec)
        except Exception:  # noqa: BLE001 - run_cell loads it again and records the failure in its rows
            model = None
        for series in cfg.samplers:
            if model_spec.series is not None and series.key not in model_spec.series:
                continue
            if not runs_on(series.sampler, model):
                continue
            spec = solvers.get(series.sampler)
            for nfe in series.nfe or model_spec.nfe or cfg.nfe:
                if not spec.adaptive:
                    try:
                        steps = spec.steps_for_budget(nfe, spec.ends_at_data(series.options, model), series.options)
                        if not spec.grid_options and model is not None:  # a student's grid: one step count
                            model.own_grid(steps)
                    except ValueError as e:
                        skipped.append(f"{series.key} @ nfe={nfe}: {e}")
                        continue
                for seed in cfg.seeds:
                    cells.append(Cell(model_spec, series, nfe, seed))
    return cells, sorted(set(skipped))


def batch_generator(seed: int, batch_index: int, stream: int) -> torch.Generator:
    """Generator for (seed, batch, stream): stream 0 draws the noise, stream 1 the sampler's steps."""
    return torch.Generator().manual_seed(seed * 1_000_003 + 2 * batch_index + stream)


def all_batches(n_samples: int, batch_size: int) -> List[Tuple[int, int]]:
    """(batch index, size) covering n_samples; the batching is fixed by the config alone."""
    return [(i, min(batch_size, n_samples - i * batch_size)) for i in range(math.ceil(n_samples / batch_size))]
