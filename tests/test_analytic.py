
import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from torchdiffeq import odeint

from score_models import EDM, VE, GaussianMixture, ProbabilityFlowODE, VPLinear, zoo

from conftest import rms


def test_score_is_the_gradient_of_the_exact_log_density(schedule):
    m = zoo.load("gmm:mix16d", schedule=schedule)
    for t in torch.linspace(schedule.t_min, schedule.t_max, 5, dtype=torch.float64):
        x = (torch.randn(5, 16, dtype=torch.float64) * float(schedule.sigma(t) + schedule.alpha(t))).requires_grad_()
        grad, = torch.autograd.grad(m.log_prob(x, t).sum(), x)
        assert torch.allclose(m.exact_score(x.detach(), t), grad, rtol=1e-8, atol=1e-10)
        assert torch.allclose(m.score(x.detach(), t), grad, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["gmm:ring8", "gmm:mix16d", "gmm:image3x8x8"])
def test_one_time_for_the_batch_equals_the_per_sample_terms(name, schedule):
    """exact_x0_and_eps multiplies the sums out when the batch shares its time: the same values
    as the per-sample [B, K, D] terms (reached with per-sample times) to round-off."""
    m = zoo.load(name, schedule=schedule)
    g = torch.Generator().manual_seed(3)
    for t in torch.linspace(schedule.t_min, schedule.t_max, 6, dtype=torch.float64).tolist():
        a, sg = float(schedule.alpha(t)), float(schedule.sigma(t))
        x = a * m.sample_data(64, generator=g, dtype=torch.float64) + sg * torch.randn((64,) + m.sample_shape, generator=g, dtype=torch.float64)
        shared = m.exact_x0_and_eps(x, t)
        # per-sample times (one differs, so the batch does not share a time) take the [B, K, D] path
        per_sample = m.exact_x0_and_eps(torch.cat([x, x[:1]]), torch.tensor([t] * 64 + [schedule.t_max], dtype=torch.float64))
        for fast, general in zip(shared, per_sample):
            scale = float(general[:64].abs().max())
            assert float((fast - general[:64]).abs().max()) <= 1e-12 * max(scale, 1.0)


def test_log_prob_matches_scipy_mixture():
    s = VPLinear()
    m = GaussianMixture([[0.0, 1.0], [2.0, -1.0]], [[0.3, 0.5], [0.4, 0.2]], [0.7, 0.3], schedule=s)
    x = torch.randn(7, 2, dtype=torch.float64)
    t = 0.3
    a, sg = float(s.alpha(t)), float(s.sigma(t))
    expected = np.log(sum(
        w * multivariate_normal(a * np.array(mu), np.diag(a**2 * np.array(sd) ** 2 + sg**2)).pdf(x.numpy())
        for w, mu, sd in [(0.7, [0.0, 1.0], [0.3, 0.5]), (0.3, [2.0, -1.0], [0.4, 0.2])]))
    assert np.allclose(m.log_prob(x, t).numpy(), expected, rtol=1e-10)


def test_posterior_mean_is_exact_for_one_gaussian():
    s = EDM()
    m = GaussianMixture(torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 2.0]]), schedule=s)
    x = torch.randn(4, 2, dtype=torch.float64) * 3
    t = 1.7
    var = torch.tensor([0.25, 4.0], dtype=torch.float64)
    mean = torch.tensor([1.0, -2.0], dtype=torch.float64)
    expected = mean + var / (var + t**2) * (x - mean)  # Gaussian conditioning
    assert torch.allclose(m.x0(x, t), expected, rtol=1e-12)


def test_data_samples_have_the_exact_moments():
    m = zoo.load("gmm:ring8", schedule="vp_linear")
    g = torch.Generator().manual_seed(1)
    x = m.sample_data(200_000, generator=g, dtype=torch.float64)
    assert x.shape == (200_000, 2)
    assert torch.allclose(x.mean(0), m.data_mean(), atol=0.02)
    assert torch.allclose(torch.cov(x.T), m.data_covariance(), atol=0.03)
    g2 = torch.Generator().manual_seed(1)
    assert torch.equal(m.sample_data(10, generator=g2), m.sample_data(10, generator=torch.Generator().manual_seed(1)))


def test_image_shaped_mixture_keeps_shapes():
    m = zoo.load("gmm:image3x8x8", schedule="edm")
    x = m.sample_data(3)
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32
    assert m.eps(x, 1.0).shape == (3, 3, 8, 8) and m.eps(x, 1.0).dtype == torch.float32
    assert m.exact_ode_solution(x * 80.0).shape == (3, 3, 8, 8)


@pytest.mark.parametrize("sched", [VPLinear(), EDM(), VE()], ids=lambda s: s.name)
def test_reference_solution_is_exact_for_one_gaussian(sched):
    """PF-ODE of N(mu, s^2) in the scaled space: x~(sigma) = mu + (x~_0 - mu) sqrt(s^2+sigma^2)/sqrt(s^2+sigma_0^2)."""
    mu, sd = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.2, 1.0, 0.05]])
    m = GaussianMixture(mu, sd, schedule=sched)
    x_T = torch.randn(4, 3, dtype=torch.float64) * sched.prior_std
    s0 = float(sched.sigma_tilde(sched.t_max))
    x_tilde0 = x_T / float(sched.alpha(sched.t_max))
    for t_end in [sched.t_data, sched.t_min, 0.5 * (sched.t_min + sched.t_max)]:
        s1, a1 = float(sched.sigma_tilde(t_end)), float(sched.alpha(t_end))
        var = sd.double() ** 2
        expected = a1 * (mu + (x_tilde0 - mu) * torch.sqrt(var + s1**2) / torch.sqrt(var + s0**2))
        got = m.exact_ode_solution(x_T, t_end=t_end)
        assert torch.allclose(got, expected, rtol=1e-8, atol=1e-9), t_end


def test_reference_solution_matches_torchdiffeq_in_t():
    """The sigma~-space reference and a tight torchdiffeq solve of dx/dt (ProbabilityFlowODE)."""
    m = zoo.load("gmm:mix16d", schedule="vp_linear")
    s = m.schedule
    x_T = torch.randn(16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ts = torch.tensor([s.t_max, s.t_min], dtype=torch.float64)
    ours = m.exact_ode_solution(x_T, t_end=s.t_min)
    theirs = odeint(ProbabilityFlowODE(m), x_T, ts, rtol=1e-10, atol=1e-10, method="dopri5",
                    options={"step_t": ts})[-1]
    assert rms(ours, theirs) < 1e-7


def test_invalid_mixtures_are_rejected():
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture(torch.zeros(2, 3), torch.ones(2, 4), schedule=EDM())
    with pytest.raises(ValueError, match="> 0"):
        GaussianMixture(torch.zeros(2, 3), 0.0, schedule=EDM())
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.zeros(2, 3), 1.0, [1.0, -1.0], schedule=EDM())
    with pytest.raises(ValueError, match="unknown model 'gmm:nope'; valid: gmm:ring8"):
        zoo.load("gmm:nope")
    with pytest.raises(ValueError, match="unknown schedule 'vpx'"):
        zoo.load("gmm:ring8", schedule="vpx")
