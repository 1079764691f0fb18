"""A fixed-step deterministic sampler replayed as one CUDA graph.

On a GPU a sampler's loop launches every kernel of the network and of its own arithmetic from
Python, one by one; for small networks and batches the launches, not the kernels, set the pace.
A CUDA graph records the whole call once (network evaluations and the sampler's updates, for
one noise shape) and replays it with a single launch. Only samplers whose call is the same
sequence of kernels every time qualify: fixed-step (the NFE rule fixes every evaluation) and
deterministic (no fresh noise, which would be drawn on the host and frozen into the graph).

    graphed = GraphedSampler("dpm_solver", model, noise, nfe=10, order=2)
    x0 = graphed(noise, stats=stats)       # same result as solvers.sample(...), one launch

The network evaluations are counted by the model's wrapper while the call is captured; each
replay makes exactly those evaluations again and reports the same counts in ``stats``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from score_models.parameterization import DiffusionModel

from .registry import get
from .sampling import check_noise, sample

__all__ = ["GraphedSampler", "graph_refusal"]

#: eager calls before capture: allocations settle and cuDNN picks its kernels outside the graph
WARMUP_CALLS = 2


def graph_refusal(name: str, options: Dict[str, Any], device: torch.device) -> Optional[str]:
    """Why ``name`` with ``options`` cannot run as a CUDA graph on ``device``, or None if it can."""
    spec = get(name)
    if device.type != "cuda":
        return f"a CUDA graph needs a CUDA device, got {device}"
    if spec.adaptive or spec.steps_option is not None:
        return f"{name} chooses its evaluations while it runs; only fixed-step samplers replay as a graph"
    if spec.is_stochastic(options):
        return f"{name} with these options draws fresh noise each step; only deterministic samplers replay as a graph"
    return None


class GraphedSampler:
    """Capture ``solvers.sample(name, model, noise, nfe=nfe, **options)`` for noise of this
    shape, dtype and device; calling the object replays it on new noise."""

    def __init__(self, name: str, model: DiffusionModel, example_noise: torch.Tensor, nfe: int, **options: Any):
        refusal = graph_refusal(name, options, example_noise.device)
        if refusal is not None:
            raise ValueError(refusal)
        check_noise(model, example_noise)
        self.name, self.model = name, model
        self._noise = example_noise.detach().clone()
        side = torch.cuda.Stream(example_noise.device)
        side.wait_stream(torch.cuda.current_stream(example_noise.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                sample(name, model, self._noise, nfe=nfe, **options)
        torch.cuda.current_stream(example_noise.device).wait_stream(side)
        self.counts: Dict[str, Any] = {}
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._out = sample(name, model, self._noise, nfe=nfe, stats=self.counts, **options)

    def __call__(self, noise: torch.Tensor, stats: Optional[dict] = None) -> torch.Tensor:
        if noise.shape != self._noise.shape or noise.dtype != self._noise.dtype or noise.device != self._noise.device:
            raise ValueError(f"this graph was captured for noise {tuple(self._noise.shape)} {self._noise.dtype} on "
                             f"{self._noise.device}, got {tuple(noise.shape)} {noise.dtype} on {noise.device}")
        check_noise(self.model, noise)
        self._noise.copy_(noise)
        self.graph.replay()
        self.model.count_replayed(self.counts["nfe"], self.counts["network_passes"], self.counts["sequential_depth"])
        if stats is not None:
            stats.update(self.counts)
        return self._out.clone()
