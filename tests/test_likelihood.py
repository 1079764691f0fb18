"""PF-ODE log-likelihoods against the Gaussian mixtures' exact log-densities.

For the exact field, the ODE likelihood of x is log p_{t_min}(x) + log N(x_T; 0, prior_std^2)
- log p_T(x_T), x_T the exact PF-ODE image of x at t_max (the prior mismatch at t_max): both
terms are exact here, so the ODE's figure is checked to the solver tolerance.
"""
from __future__ import annotations

import math

import pytest
import torch

from score_models import GaussianMixture, bits_per_dim, log_likelihood, zoo
from score_models.likelihood import dequantize_images
from score_models.schedules import VPLinear


def exact_ode_log_likelihood(mixture: GaussianMixture, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the ODE likelihood must equal, the prior mismatch log N(x_T) - log p_T(x_T)) per point."""
    sched = mixture.schedule
    x_T = mixture.exact_ode_solution(x.double(), t_start=sched.t_min, t_end=sched.t_max)
    std, d = sched.prior_std_at(sched.t_max), x[0].numel()
    log_prior = -0.5 * (x_T / std).pow(2).flatten(1).sum(1) - d * (math.log(std) + 0.5 * math.log(2 * math.pi))
    mismatch = log_prior - mixture.log_prob(x_T, sched.t_max)
    return mixture.log_prob(x.double(), sched.t_min) + mismatch, mismatch


CASES = [("ring8", "vp_linear"), ("ring8", "edm"), ("mix16d", "vp_linear"), ("mix16d", "edm")]


@pytest.mark.parametrize("preset,schedule", CASES)
def test_exact_divergence_matches_analytic_log_density(preset, schedule):
    mixture = zoo.load(f"gmm:{preset}", schedule=schedule)
    x = mixture.sample_data(32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected, mismatch = exact_ode_log_likelihood(mixture, x)
    errors = {}
    for rtol in (1e-4, 1e-7):
        log_p, stats = log_likelihood(mixture, x, rtol=rtol, atol=rtol)
        assert log_p.dtype == torch.float64 and log_p.shape == (32,)
        assert stats["nfe"] > 0 and stats["network_passes"] == stats["nfe"]
        assert stats["vjps"] == stats["nfe"] * mixture.dim  # one per dimension per drift evaluation
        errors[rtol] = float((log_p - expected).abs().max())
    assert errors[1e-7] < 1e-3
    assert errors[1e-7] < errors[1e-4]  # the error follows the tolerance
    # The mismatch is real (the prior is not the model's marginal at t_max): without it the
    # ODE's figure would not match the data's log-density.
    assert float(mismatch.abs().max()) > 10 * errors[1e-7]


@pytest.mark.parametrize("preset,schedule", [("ring8", "vp_linear"), ("mix16d", "edm")])
@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_within_its_standard_error(preset, schedule, probe):
    mixture = zoo.load(f"gmm:{preset}", schedule=schedule)
    x = mixture.sample_data(2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact, _ = log_likelihood(mixture, x, rtol=1e-7, atol=1e-7)
    # 64 copies of each point, each with its own probe: 64 independent estimates per point (the
    # estimate is a quadratic form in the probe, skewed: a few copies would misjudge its spread).
    repeated = x.repeat_interleave(64, dim=0)
    estimate, stats = log_likelihood(mixture, repeated, rtol=1e-7, atol=1e-7, divergence="hutchinson",
                                     generator=torch.Generator().manual_seed(2), probe=probe)
    assert stats["vjps"] == stats["nfe"]  # one probe: one vector-Jacobian product per evaluation
    estimate = estimate.reshape(2, 64)
    mean, se = estimate.mean(1), estimate.std(1) / 8.0
    assert bool((se > 0).all())  # the estimator does vary
    assert bool(((mean - exact).abs() < 4 * se + 1e-4).all()), (mean - exact, se)


def test_more_probes_reduce_the_spread():
    mixture = zoo.load("gmm:mix16d", schedule="vp_linear")
    x = mixture.sample_data(1, generator=torch.Generator().manual_seed(3), dtype=torch.float64).repeat(24, 1)
    spread = {}
    for n_probes in (1, 8):
        estimate, stats = log_likelihood(mixture, x, rtol=1e-6, atol=1e-6, divergence="hutchinson",
                                         n_probes=n_probes, generator=torch.Generator().manual_seed(4))
        assert stats["vjps"] == stats["nfe"] * n_probes
        spread[n_probes] = float(estimate.std())
    assert spread[8] < 0.6 * spread[1]  # ~ 1/sqrt(8) = 0.35 in expectation


def test_probes_come_from_the_generator():
    mixture = zoo.load("gmm:ring8", schedule="vp_linear")
    x = mixture.sample_data(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    run = lambda seed: log_likelihood(mixture, x, rtol=1e-5, atol=1e-5, divergence="hutchinson",
                                      generator=torch.Generator().manual_seed(seed))[0]
    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_float32_state_matches_float64():
    mixture = zoo.load("gmm:ring8", schedule="vp_linear")
    x = mixture.sample_data(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_p64, _ = log_likelihood(mixture, x, rtol=1e-6, atol=1e-6)
    log_p32, _ = log_likelihood(mixture, x.float(), rtol=1e-6, atol=1e-6)
    assert float((log_p64 - log_p32).abs().max()) < 1e-3


@pytest.mark.parametrize("kwargs,message", [
    ({"divergence": "hutch"}, "valid: exact, hutchinson"),
    ({"n_probes": 0}, "n_probes"),
    ({"n_probes": 1.5}, "n_probes"),
    ({"probe": "normal"}, "valid: rademacher, gaussian"),
    ({"rtol": 0.0}, "rtol"),
    ({"atol": float("nan")}, "atol"),
])
def test_bad_options_are_refused(kwargs, message):
    mixture = zoo.load("gmm:ring8")
    x = mixture.sample_data(2)
    with pytest.raises(ValueError, match=message):
        log_likelihood(mixture, x, **kwargs)


@pytest.mark.parametrize("x,message", [
    (torch.zeros(3, 3), r"needs \[B, 2\]"),
    (torch.zeros(2), r"needs \[B, 2\]"),
    (torch.zeros(0, 2), r"needs \[B, 2\]"),
    (torch.tensor([[0.0, float("nan")]]), "NaN"),
    (torch.zeros(2, 2, dtype=torch.long), "floating-point"),
])
def test_bad_input_is_refused(x, message):
    with pytest.raises(ValueError, match=message):
        log_likelihood(zoo.load("gmm:ring8"), x)


# --- bits/dim -----------------------------------------------------------------------------------
def _pixel_gaussian(schedule, data_range):
    """One diagonal Gaussian on a 1x2x2 "image" well inside the data range, wide against the
    1/256 quantisation cells (its discrete probabilities are products of normal CDF differences)."""
    lo, hi = data_range
    means = torch.tensor([[[[0.3, 0.5], [0.6, 0.45]]]], dtype=torch.float64) * (hi - lo) + lo
    stds = torch.tensor([[[[0.08, 0.1], [0.12, 0.09]]]], dtype=torch.float64) * (hi - lo)
    return GaussianMixture(means, stds, schedule=schedule)


@pytest.mark.parametrize("data_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_bits_per_dim_matches_the_discrete_probability(data_range):
    """The mean bits/dim over dequantisations equals -log2 P(k) / D of the 256-level pixel values
    under the density the ODE computes (Jensen's gap is ~1e-5 here): this checks the offset
    (8 - log2(hi - lo)) and the scaling, for either data range."""
    schedule = VPLinear()
    model = _pixel_gaussian(schedule, data_range)
    lo, hi = data_range
    levels = torch.tensor([[[[77, 128], [150, 115]]]], dtype=torch.uint8).repeat(48, 1, 1, 1)
    bpd, stats = bits_per_dim(model, levels, data_range=data_range, generator=torch.Generator().manual_seed(0),
                              dtype=torch.float64, rtol=1e-7, atol=1e-7)
    assert stats["nfe"] > 0 and bpd.shape == (48,)
    # Exact: the ODE density is the t_min marginal (a Gaussian) times exp(prior mismatch), and the
    # mismatch is constant across a 1/256 cell to ~1e-6, so P(k) = exp(mismatch) * Gaussian mass.
    x = dequantize_images(levels[:1], data_range, dequantize=False)
    _, mismatch = exact_ode_log_likelihood(model, x)
    alpha, sigma = float(schedule.alpha(schedule.t_min)), float(schedule.sigma(schedule.t_min))
    mean = alpha * model.means.reshape(-1)
    std = (alpha**2 * model.variances.reshape(-1) + sigma**2).sqrt()
    k = levels[0].reshape(-1).double()
    edges_lo, edges_hi = lo + (hi - lo) * k / 256, lo + (hi - lo) * (k + 1) / 256
    normal = torch.distributions.Normal(mean, std)
    log_mass = torch.log(normal.cdf(edges_hi) - normal.cdf(edges_lo)).sum() + mismatch[0]
    expected = float(-log_mass / (4 * math.log(2)))
    se = float(bpd.std() / math.sqrt(48))
    assert abs(float(bpd.mean()) - expected) < 4 * se + 1e-3, (float(bpd.mean()), expected, se)


def test_float_images_are_read_as_256_levels():
    levels = torch.tensor([[0, 1, 128, 255]], dtype=torch.uint8)
    as_float = levels.double() / 255
    a = dequantize_images(levels, dequantize=False)
    b = dequantize_images(as_float, dequantize=False)
    assert torch.equal(a, b)
    assert torch.allclose(a, torch.tensor([[0.5, 1.5, 128.5, 255.5]], dtype=torch.float64) / 256 * 2 - 1)
    noisy = dequantize_images(levels, generator=torch.Generator().manual_seed(0))
    assert bool(((noisy + 1) / 2 * 256 >= levels.double()).all() and ((noisy + 1) / 2 * 256 < levels.double() + 1).all())


@pytest.mark.parametrize("images,message", [
    (torch.full((1, 4), 1.5), r"in \[0, 1\]"),
    (torch.full((1, 4), float("nan")), r"in \[0, 1\]"),
    (torch.zeros(1, 4, dtype=torch.int32), "uint8"),
])
def test_bad_images_are_refused(images, message):
    with pytest.raises(ValueError, match=message):
        dequantize_images(images)
