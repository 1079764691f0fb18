from pathlib import Path

import pytest
import torch

from score_models import EDM, VE, DiscreteVP, RectifiedFlow, VPCosine, VPLinear

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parent.parent


def all_schedules():
    return [VPLinear(), VPCosine(), DiscreteVP.linear(1000, 1e-4, 0.02), VE(), EDM(), RectifiedFlow()]


@pytest.fixture(params=all_schedules(), ids=lambda s: s.name)
def schedule(request):
    return request.param


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference per dimension."""
    return float(((a - b) ** 2).mean().sqrt())
