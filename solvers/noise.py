"""Randomness only through a torch.Generator: samplers draw every random number here, from the
generator they were given, so the same seed gives the same samples on any device."""
from __future__ import annotations

from typing import Optional

import torch


def randn_like(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn from ``generator`` on the generator's device
    (so a CPU generator gives the same numbers whether x lives on the CPU or a GPU)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
