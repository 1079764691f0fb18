"""Every case of benchmarks.kdiffusion.CASES, run side by side with k-diffusion's own sampler on
the same denoiser, noise and sigmas: equal to round-off (per-step noise shared through the same
generator or Brownian tree) and the same number of network calls."""
import pytest
import torch

from benchmarks.kdiffusion import CASES, run_case
from score_models import zoo


def _noise(model):
    return torch.randn((32,) + tuple(model.sample_shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.k_name}-{c.sampler}" + "".join(f"-{k}={v}" for k, v in c.options.items()))
@pytest.mark.parametrize("schedule, grid", [("edm", "karras"), ("vp_linear", "exponential")])
def test_equal_to_k_diffusion(k_sampling, case, schedule, grid):
    model = zoo.load("gmm:mix16d", schedule=schedule)
    for nfe in (7, 16):
        row = run_case(case, model, _noise(model), nfe, grid=grid)
        assert row["max_rel_diff"] <= 1e-10, row
        assert row["nfe_ours"] == row["nfe_theirs"], row
