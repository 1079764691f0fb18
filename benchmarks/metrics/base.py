"""The metric registry: a metric is a class registered under a name; it streams, seeing each
batch of (noise, samples) as it is produced, and answers with named columns at the end of the
cell. Where a metric does not apply it answers NaN."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Type

import torch

from score_models.parameterization import DiffusionModel

__all__ = ["METRICS", "CellInfo", "Metric", "register_metric", "REFERENCE_SEED"]

REFERENCE_SEED = 2**31 - 1  # exact data samples for reference sets use their own stream


@dataclass
class CellInfo:
    """What a metric may know about the cell it measures."""

    model: DiffusionModel
    model_key: str
    sampler: str
    options: Dict[str, Any]
    seed: int
    n_samples: int
    device: torch.device
    reference: Dict[str, Any] = field(default_factory=dict)  # [run.reference] settings
    cache: Dict[Any, Any] = field(default_factory=dict)  # shared across the cells of a run
    nfe_budget: Optional[int] = None  # the cell's NFE budget (None: the sampler's own rule or cap)


class Metric(abc.ABC):
    """Base class: ``update`` per batch (CPU or device tensors), ``result`` once."""

    columns: tuple = ()

    def __init__(self, cell: CellInfo):
        self.cell = cell

    @abc.abstractmethod
    def update(self, batch_index: int, noise: torch.Tensor, samples: torch.Tensor) -> None: ...

    @abc.abstractmethod
    def result(self) -> Dict[str, float]: ...


METRICS: Dict[str, Type[Metric]] = {}


def register_metric(name: str) -> Callable[[Type[Metric]], Type[Metric]]:
    def wrap(cls: Type[Metric]) -> Type[Metric]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = cls
        return cls
    return wrap
