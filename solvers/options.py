"""Sampler options as validated data: each option's type comes from its default in the sampler's
signature, its range or choices are declared with ``@register(checks=...)``, and cross-option
rules with ``@register(requires=...)``. ``solvers.sample`` and config validation both check
options here, before anything runs, with one message format naming the option, the bad value
and what is valid.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from .grids import GRIDS, SPACINGS

__all__ = ["Check", "at_least", "above", "one_of", "check_value", "check_grid_value", "GRID_OPTION_CHECKS"]


@dataclass(frozen=True)
class Check:
    """A range (``low``, inclusive unless ``strict``; ``high``, inclusive) or a set of ``choices``."""

    low: Optional[float] = None
    strict: bool = False
    high: Optional[float] = None
    choices: Optional[Tuple[Any, ...]] = None

    def describe(self) -> str:
        if self.choices is not None:
            return ", ".join(repr(c) for c in self.choices)
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.strict else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"<= {self.high:g}")
        return " and ".join(parts) or "any value"

    def admits(self, value: Any) -> bool:
        if self.choices is not None:
            return any(value == c and type(value) is type(c) for c in self.choices)
        if self.low is not None and (value < self.low or (self.strict and value == self.low)):
            return False
        return self.high is None or value <= self.high


def at_least(low: float, high: Optional[float] = None) -> Check:
    return Check(low=low, high=high)


def above(low: float, high: Optional[float] = None) -> Check:
    return Check(low=low, strict=True, high=high)


def one_of(*choices: Any) -> Check:
    return Check(choices=tuple(choices))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _type_problem(value: Any, default: Any) -> Optional[str]:
    """Why ``value`` cannot stand where ``default`` does, or None (None defaults take anything)."""
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, int):
        return None if isinstance(value, numbers.Integral) and not isinstance(value, bool) else "must be a whole number"
    if isinstance(default, float):
        if not _is_number(value):
            return "must be a number"
        return None if math.isfinite(value) or (math.isinf(value) and math.isinf(default)) else "must be finite"
    if isinstance(default, str):
        return None if isinstance(value, str) else "must be a string"
    return None


def _plain(value: Any) -> Any:
    """A 0-d tensor or a numpy scalar (np.float64, np.bool_) as the Python value it stands for."""
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return value.item()
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        return value.item()
    return value


def check_value(sampler: str, name: str, value: Any, default: Any, check: Optional[Check]) -> None:
    """ValueError naming the option, the value and what is valid, when ``value`` does not fit."""
    value = _plain(value)
    problem = _type_problem(value, default)
    if problem is None and check is not None and not check.admits(value):
        problem = "is not valid"
    if problem is not None:
        valid = check.describe() if check is not None else type(default).__name__
        raise ValueError(f"option {name}={value!r} of sampler {sampler!r} {problem}; valid: {valid}")


#: (a default standing for the type, check) of each grid option; ``grid`` may also be a tensor.
GRID_OPTION_CHECKS: Dict[str, Tuple[Any, Optional[Check]]] = {
    "grid": ("edm", one_of(*GRIDS)), "rho": (7.0, above(0.0)), "t_min": (0.0, None), "t_max": (0.0, None),
    "to_zero": (True, None), "spacing": ("leading", one_of(*SPACINGS)), "steps_offset": (0, at_least(0)),
    "discard_penultimate": (False, None), "beta_a": (0.6, above(0.0)), "beta_b": (0.6, above(0.0)),
    "vp_beta_d": (19.9, above(0.0)), "vp_beta_min": (0.1, at_least(0.0)), "lq_threshold": (0.025, above(0.0, 1.0)),
    "shift": (1.0, above(0.0)),
    "drop_last_timestep": (False, None), "start_noise": ("prior", one_of("prior", "sigma", "unit_data")),
}


def check_grid_value(sampler: str, name: str, value: Any, tensor_grid_allowed: bool) -> None:
    """As :func:`check_value` for a grid option (a tensor grid where ``tensor_grid_allowed``)."""
    if name == "grid" and isinstance(value, torch.Tensor) and value.dim() > 0:
        if not tensor_grid_allowed:
            raise ValueError(f"option grid of sampler {sampler!r} must be a grid name here; valid: "
                             f"{GRID_OPTION_CHECKS['grid'][1].describe()}")
        return
    default, check = GRID_OPTION_CHECKS[name]
    try:
        check_value(sampler, name, value, default, check)
    except ValueError as e:
        raise ValueError(f"{e}{' or a 1-D tensor of times' if name == 'grid' and tensor_grid_allowed else ''}") from None
