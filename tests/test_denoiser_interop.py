"""DiffusionModel.from_denoiser (any D(x, sigma)) and solvers.as_kdiffusion (nfebench samplers with
k-diffusion's signature), against a denoiser written here with a closed-form answer and side by
side with k-diffusion's own samplers."""
from __future__ import annotations

import math

import pytest
import torch

import solvers
from score_models import DiffusionModel

MU, S = 0.7, 0.4  # data N(MU, S^2 I)


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x0 + sigma eps = x] for x0 ~ N(MU, S^2 I), sigma shaped [batch] as k-diffusion passes it."""
    sigma = sigma.reshape((-1,) + (1,) * (x.dim() - 1))
    return MU + S ** 2 / (S ** 2 + sigma ** 2) * (x - MU)


def exact_flow(x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """The PF-ODE dx/dsigma = (x - D)/sigma for that Gaussian: x - MU scales by sqrt(S^2 + sigma^2)."""
    return MU + math.sqrt((S ** 2 + sigma_to ** 2) / (S ** 2 + sigma_from ** 2)) * (x - MU)


def _noise(n=16, d=5, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_from_denoiser_counts_and_converges_to_the_exact_flow():
    model = DiffusionModel.from_denoiser(gaussian_denoiser, 0.002, 80.0, sigma_data=0.5, sample_shape=(5,))
    noise = _noise()
    exact = exact_flow(80.0 * noise, 80.0, 0.0)
    errors, budgets = [], (63, 127, 255)
    for nfe in budgets:
        stats = {}
        x = solvers.sample("heun", model, noise, nfe=nfe, stats=stats)
        assert stats["nfe"] == nfe == model.nfe - sum(budgets[:len(errors)])
        errors.append(float((x - exact).abs().max()))
    # Heun is second order: the error falls ~4x per doubling of the budget (sigma_max / S = 200 is stiff)
    assert all(a / b > 3.5 for a, b in zip(errors, errors[1:])) and errors[-1] < 2e-3, errors
    assert model.sigma_data == 0.5 and model.prediction == "x0"


def test_from_denoiser_rejects_bad_input():
    with pytest.raises(ValueError, match="needs a callable D"):
        DiffusionModel.from_denoiser(3.0, 0.002, 80.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        DiffusionModel.from_denoiser(gaussian_denoiser, 1.0, 0.5)


def _karras(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


@pytest.mark.parametrize("name, k_name, options", [
    ("euler", "sample_euler", {}), ("heun", "sample_heun", {}), ("dpm_2", "sample_dpm_2", {}),
    ("dpmpp_2m", "sample_dpmpp_2m", {}), ("lms", "sample_lms", {}),
])
def test_as_kdiffusion_is_a_drop_in_for_k_diffusion(k_sampling, name, k_name, options):
    sigmas = _karras(12)
    x = 80.0 * _noise()
    theirs = getattr(k_sampling, k_name)(gaussian_denoiser, x, sigmas, disable=True)
    seen = []
    ours = solvers.as_kdiffusion(name, **options)(gaussian_denoiser, x, sigmas, extra_args={}, disable=True,
                                                 callback=seen.append)
    assert float((ours - theirs).abs().max() / theirs.abs().max()) <= 1e-12
    assert seen and {"x", "i", "sigma", "sigma_hat", "denoised"} <= set(seen[0])
    assert [d["i"] for d in seen] == list(range(len(seen)))


def test_as_kdiffusion_passes_extra_args_and_rejects_bad_options():
    def conditioned(x, sigma, shift=0.0):
        return gaussian_denoiser(x, sigma) + shift

    sigmas = _karras(6)
    x = 80.0 * _noise()
    a = solvers.as_kdiffusion("euler")(conditioned, x, sigmas, extra_args={"shift": 0.0})
    b = solvers.as_kdiffusion("euler")(conditioned, x, sigmas, extra_args={"shift": 1.0})
    assert float((b - a).abs().min()) > 0.5
    with pytest.raises(ValueError, match="takes its grid from the sigmas"):
        solvers.as_kdiffusion("euler", grid="karras")
    with pytest.raises(ValueError, match=r"unknown sampler 'nope'"):
        solvers.as_kdiffusion("nope")
    with pytest.raises(ValueError, match=r"option s_churn=-1.0"):
        solvers.as_kdiffusion("heun", s_churn=-1.0)
