import pytest
import torch

from score_models import PREDICTIONS, DiffusionModel, GaussianMixture, VPLinear, zoo
from score_models.parameterization import Coefficients, combine, split


@pytest.mark.parametrize("kind", PREDICTIONS)
@pytest.mark.parametrize("per_sample_t", [False, True])
def test_split_combine_round_trip(schedule, kind, per_sample_t):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    t = torch.linspace(schedule.t_min, schedule.t_max, 7, dtype=torch.float64)[1:-1]
    t = t if per_sample_t else t[2]
    t = t[:5] if per_sample_t else t
    c = Coefficients(schedule, t, x0, derivatives=True)
    x = c.alpha * x0 + c.sigma * eps
    out = combine(kind, x0, eps, c)
    x0_back, eps_back = split(kind, out, x, c)
    assert torch.allclose(x0_back, x0, rtol=1e-9, atol=1e-9)
    assert torch.allclose(eps_back, eps, rtol=1e-9, atol=1e-9)
    assert torch.allclose(combine(kind, x0_back, eps_back, c), out, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["v", "score", "flow"])
def test_conversions_match_their_definitions(kind):
    s = VPLinear()
    t = 0.4
    x0, eps = torch.randn(2, 4, 2, dtype=torch.float64)
    a, sg, da, ds = (float(f(t)) for f in (s.alpha, s.sigma, s.dalpha_dt, s.dsigma_dt))
    c = Coefficients(s, t, x0, derivatives=True)
    expected = {"v": a * eps - sg * x0, "score": -eps / sg, "flow": da * x0 + ds * eps}[kind]
    assert torch.allclose(combine(kind, x0, eps, c), expected)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_every_prediction_type_gives_the_same_model(schedule, prediction):
    """An exact mixture whose "network" outputs any kind: the wrapper's conversions agree."""
    reference = zoo.load("gmm:mix16d", schedule=schedule)
    other = GaussianMixture(reference.means, reference.variances.sqrt(), reference.weights,
                            schedule=schedule, prediction=prediction)
    x = torch.randn(8, 16, dtype=torch.float64) * 2
    for t in torch.linspace(schedule.t_min, schedule.t_max, 5, dtype=torch.float64)[1:-1]:
        for kind in PREDICTIONS:
            a, b = reference.predict(kind, x, t), other.predict(kind, x, t)
            assert torch.allclose(a, b, rtol=1e-7, atol=1e-9), (prediction, kind, float(t))


def test_nfe_is_counted_per_call_and_shared_by_conditioned_views():
    calls = []

    def net(x, t, class_labels=None):
        calls.append(class_labels)
        return torch.zeros_like(x)

    model = DiffusionModel(net, VPLinear(), prediction="eps")
    x = torch.randn(3, 2)
    model.eps(x, 0.5)
    model.x0(x, 0.5)
    model.score(x, 0.5, class_labels=torch.tensor([1, 2, 3]))
    assert model.nfe == 3
    view = model.with_condition(class_labels="y")
    view.v(x, 0.3)
    assert model.nfe == 4 and view.nfe == 4
    assert calls[-1] == "y" and calls[0] is None and calls[2].tolist() == [1, 2, 3]
    model.reset_nfe()
    assert model.nfe == 0 and view.nfe == 0


def test_network_gets_time_in_its_dtype_and_batch_shape():
    seen = {}

    def net(x, t):
        seen["t"] = t
        return x

    model = DiffusionModel(net, VPLinear(), prediction="x0")
    model.eps(torch.randn(4, 3), 0.25)
    assert seen["t"].dtype == torch.float32 and seen["t"].shape == (4,) and torch.allclose(seen["t"], torch.full((4,), 0.25))
    model.eps(torch.randn(4, 3), torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    assert torch.allclose(seen["t"], torch.tensor([0.1, 0.2, 0.3, 0.4]))


def test_denoiser_and_ode_drift_agree_with_the_scaled_ode(schedule):
    """dx/dt = alpha' x~ + alpha dx~/dsigma~ dsigma~/dt with dx~/dsigma~ = (x~ - D)/sigma~."""
    m = zoo.load("gmm:mix16d", schedule=schedule)
    x = torch.randn(6, 16, dtype=torch.float64)
    for t in torch.linspace(schedule.t_min, schedule.t_max, 6, dtype=torch.float64)[1:-1]:
        a, s_t = float(schedule.alpha(t)), float(schedule.sigma_tilde(t))
        h = 1e-6 * max(1.0, schedule.t_max)
        dsig_dt = float((schedule.sigma_tilde(t + h) - schedule.sigma_tilde(t - h)) / (2 * h))
        x_tilde = x / a
        D = m.denoiser(x_tilde, s_t)
        assert torch.allclose(D, m.x0(x, t), rtol=1e-9, atol=1e-9)
        expected = float(schedule.dalpha_dt(t)) * x_tilde + a * (x_tilde - D) / s_t * dsig_dt
        assert torch.allclose(m.ode_drift(x, t), expected, rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown prediction 'epsilon'; valid: eps, x0, v, score, flow"):
        DiffusionModel(lambda x, t: x, VPLinear(), prediction="epsilon")
    with pytest.raises(TypeError, match="Schedule"):
        DiffusionModel(lambda x, t: x, "vp", prediction="eps")
