import math

import pytest
import torch
from scipy.integrate import quad

from score_models import EDM, VE, DiscreteVP, RectifiedFlow, VPCosine, VPLinear
from score_models.schedules import SCHEDULES


def interior_times(s, n=9):
    # Stay off DiscreteVP's knots for finite differences: offset by a fraction.
    t = torch.linspace(s.t_min, s.t_max, n, dtype=torch.float64)[1:-1]
    return t + 0.37 if isinstance(s, DiscreteVP) else t


def test_lambda_inverse_round_trips(schedule):
    t = torch.linspace(schedule.t_min, schedule.t_max, 101, dtype=torch.float64)
    back = schedule.inverse_lambda(schedule.lambda_(t))
    assert torch.allclose(back, t, rtol=1e-9, atol=1e-9 * max(1.0, schedule.t_max))


def test_sigma_tilde_inverse_and_t_data(schedule):
    t = torch.linspace(schedule.t_min, schedule.t_max, 57, dtype=torch.float64)
    assert torch.allclose(schedule.t_from_sigma_tilde(schedule.sigma_tilde(t)), t, rtol=1e-9, atol=1e-9 * max(1.0, schedule.t_max))
    assert float(schedule.sigma(schedule.t_data)) == 0.0
    assert float(schedule.alpha(schedule.t_data)) == 1.0
    assert float(schedule.t_from_sigma_tilde(0.0)) == schedule.t_data


def test_lambda_is_log_alpha_over_sigma_and_decreasing(schedule):
    t = torch.linspace(schedule.t_min, schedule.t_max, 33, dtype=torch.float64)
    lam = schedule.lambda_(t)
    assert torch.allclose(lam, torch.log(schedule.alpha(t) / schedule.sigma(t)), rtol=1e-10, atol=1e-10)
    assert bool((lam[1:] < lam[:-1]).all())
    assert torch.allclose(schedule.log_snr(t), 2 * lam)


def test_derivatives_match_finite_differences(schedule):
    t = interior_times(schedule)
    h = 1e-6 * max(1.0, schedule.t_max)
    fd = lambda fn: (fn(t + h) - fn(t - h)) / (2 * h)
    assert torch.allclose(schedule.dalpha_dt(t), fd(schedule.alpha), rtol=1e-5, atol=1e-8)
    assert torch.allclose(schedule.dsigma_dt(t), fd(schedule.sigma), rtol=1e-5, atol=1e-8)


def test_f_and_g2_match_alpha_and_sigma(schedule):
    """f = d log alpha / dt and g^2 = d sigma^2/dt - 2 f sigma^2, both from finite differences."""
    t = interior_times(schedule)
    h = 1e-6 * max(1.0, schedule.t_max)
    dlog_alpha = (torch.log(schedule.alpha(t + h)) - torch.log(schedule.alpha(t - h))) / (2 * h)
    dsigma2 = (schedule.sigma(t + h) ** 2 - schedule.sigma(t - h) ** 2) / (2 * h)
    f = schedule.f(t)
    assert torch.allclose(f, dlog_alpha, rtol=1e-5, atol=1e-8)
    assert torch.allclose(schedule.g2(t), dsigma2 - 2 * f * schedule.sigma(t) ** 2, rtol=1e-5, atol=1e-8)
    assert bool((schedule.g2(t) > 0).all())


def test_vp_linear_alpha_is_exp_of_half_integrated_beta():
    s = VPLinear()
    for t in [0.01, 0.3, 0.77, 1.0]:
        integral, _ = quad(lambda u: 0.1 + u * (20 - 0.1), 0, t)
        assert math.isclose(float(s.alpha(t)), math.exp(-0.5 * integral), rel_tol=1e-12)
        assert math.isclose(float(s.g2(t)), 0.1 + t * 19.9, rel_tol=1e-12)


def test_variance_preserving_and_closed_forms():
    t = torch.linspace(0.01, 0.99, 11, dtype=torch.float64)
    for s in [VPLinear(), VPCosine(), DiscreteVP.linear()]:
        tt = torch.linspace(s.t_min, s.t_max, 11, dtype=torch.float64)
        assert torch.allclose(s.alpha(tt) ** 2 + s.sigma(tt) ** 2, torch.ones_like(tt))
        assert s.prior_std == 1.0
    ve = VE()
    assert math.isclose(float(ve.sigma(0.0)), 0.01) and math.isclose(float(ve.sigma(1.0)), 50.0)
    assert math.isclose(ve.prior_std, 50.0) and math.isclose(float(ve.g2(0.5)), 2 * float(ve.sigma(0.5)) ** 2 * math.log(5000))
    edm = EDM()
    assert edm.prior_std == 80.0 and (edm.t_min, edm.t_max) == (0.002, 80.0)
    assert torch.equal(edm.sigma(t), t) and torch.equal(edm.alpha(t), torch.ones_like(t))
    rf = RectifiedFlow()
    assert torch.allclose(rf.alpha(t), 1 - t) and torch.allclose(rf.sigma(t), t)


def test_vp_cosine_matches_its_discrete_form():
    """The product of Nichol & Dhariwal's discrete betas telescopes to the continuous abar."""
    cont, disc = VPCosine(), DiscreteVP.cosine(1000)
    n = torch.arange(0, 900, dtype=torch.float64)
    abar_cont = cont.alpha((n + 1) / 1000.0) ** 2
    assert torch.allclose(disc.alphas_cumprod[:900], abar_cont, rtol=1e-10)


@pytest.mark.parametrize("beta_schedule,ctor", [
    ("linear", lambda: DiscreteVP.linear(1000, 1e-4, 0.02)),
    ("scaled_linear", lambda: DiscreteVP.scaled_linear(1000, 0.00085, 0.012)),
    ("squaredcos_cap_v2", lambda: DiscreteVP.cosine(1000)),
])
def test_discrete_vp_matches_diffusers(beta_schedule, ctor):
    diffusers = pytest.importorskip("diffusers")
    kw = dict(beta_start=0.00085, beta_end=0.012) if beta_schedule == "scaled_linear" else {}
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, **kw).alphas_cumprod
    ours = ctor().alphas_cumprod
    # diffusers builds its betas in float32.
    assert torch.allclose(ours, ref.to(torch.float64), rtol=2e-5, atol=0)


def test_discrete_vp_hits_its_knots_and_network_time():
    s = DiscreteVP.linear()
    n = torch.arange(1000, dtype=torch.float64)
    assert torch.allclose(s.alpha(n) ** 2, s.alphas_cumprod, rtol=1e-12)
    assert torch.equal(s.net_input(n), n)  # diffusers' UNets take the timestep itself
    assert float(s.alpha(-1.0)) == 1.0 and s.t_data == -1.0
    assert s.t_min == 0.0 and s.t_max == 999.0
    from_abar = DiscreteVP(alphas_cumprod=s.alphas_cumprod)
    assert torch.allclose(from_abar.sigma(n), s.sigma(n))


def test_rectified_flow_admits_t_max_1_where_alpha_is_0():
    """t = 1 (diffusers' flow-matching sigma = 1) is pure noise: alpha = 0, sigma~ = inf."""
    rf = RectifiedFlow(t_min=1e-4, t_max=1.0)
    rf.check_times(torch.tensor([1.0, 0.5, 1e-4], dtype=torch.float64))
    assert float(rf.alpha(1.0)) == 0.0 and float(rf.sigma(1.0)) == 1.0 and math.isinf(float(rf.sigma_tilde(1.0)))


@pytest.mark.parametrize("bad", [
    lambda: VPLinear(beta_min=1.0, beta_max=0.5),
    lambda: VE(sigma_min=2.0, sigma_max=1.0),
    lambda: EDM(sigma_min=0.0),
    lambda: RectifiedFlow(t_max=1.001),
    lambda: VPCosine(t_max=1.0),
    lambda: DiscreteVP(betas=torch.tensor([0.1, 1.5])),
    lambda: DiscreteVP(alphas_cumprod=torch.tensor([0.5, 0.9])),
    lambda: DiscreteVP(),
])
def test_invalid_schedules_are_rejected(bad):
    with pytest.raises(ValueError):
        bad()


def test_check_times_names_the_range():
    with pytest.raises(ValueError, match=r"outside vp_linear's valid range \[t_min=0.001, t_max=1.0\]"):
        VPLinear().check_times(torch.tensor([0.5, 1.5]))
    assert set(SCHEDULES) >= {"vp_linear", "vp_cosine", "ddpm_linear", "ve", "edm", "rectified_flow"}
