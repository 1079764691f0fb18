import os
from pathlib import Path

import pytest
import torch

from score_models import EDM, VE, DiscreteVP, RectifiedFlow, VPCosine, VPLinear

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def k_sampling():
    """k-diffusion's sampling module from its wheel (``$NFEBENCH_K_DIFFUSION_WHEEL``, else downloaded
    once with pip). Skips when neither works, unless ``NFEBENCH_REQUIRE_REFERENCES=1`` (CI), which
    turns that into a failure."""
    from benchmarks.kdiffusion import WHEEL_VARIABLE, download_wheel, load_sampling

    wheel = os.environ.get(WHEEL_VARIABLE) or download_wheel()
    if wheel is None:
        message = f"k-diffusion wheel unavailable: set {WHEEL_VARIABLE} (pip download --no-deps k-diffusion)"
        if os.environ.get("NFEBENCH_REQUIRE_REFERENCES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    os.environ[WHEEL_VARIABLE] = wheel  # so benchmarks.kdiffusion.run_case finds it too
    return load_sampling(wheel)


def all_schedules():
    return [VPLinear(), VPCosine(), DiscreteVP.linear(1000, 1e-4, 0.02), VE(), EDM(), RectifiedFlow()]


@pytest.fixture(params=all_schedules(), ids=lambda s: s.name)
def schedule(request):
    return request.param


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference per dimension."""
    return float(((a - b) ** 2).mean().sqrt())
