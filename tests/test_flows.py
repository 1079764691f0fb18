"""Rectified flows: the training target, the straightness metric, the shipped flow models.

- the flow-matching target eps - x0 is the rectified_flow schedule's flow prediction;
- S(Z) is 0 for straight trajectories (a point mass), the same in every schedule's frame for the
  same data, and reflow lowers it on the shipped models;
- every deterministic ODE sampler runs the shipped flows unchanged;
- 1-RF and reflow training run end to end into a directory and load back.
"""
import pytest
import torch

import solvers
from benchmarks.metrics import straightness
from benchmarks.training import flows, train
from score_models import EDM, GaussianMixture, RectifiedFlow, VPLinear, zoo
from score_models.parameterization import Coefficients, combine


def test_flow_matching_target_is_the_schedules_flow_prediction():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(64, 2, generator=g, dtype=torch.float64), torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.99 + 0.005
    c = Coefficients(RectifiedFlow(), t, x0, derivatives=True)
    assert torch.allclose(combine("flow", x0, eps, c), eps - x0)
    assert torch.allclose(c.alpha * x0 + c.sigma * eps, (1 - t[:, None]) * x0 + t[:, None] * eps)


def test_straightness_is_zero_for_straight_paths_and_frame_independent():
    noise = torch.randn(400, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    point = GaussianMixture(torch.ones(1, 2), 1e-4, schedule=RectifiedFlow())
    assert straightness(point, noise) < 1e-7
    values = [straightness(zoo.load("gmm:ring8", schedule=s), noise) for s in (RectifiedFlow(), VPLinear(), EDM())]
    assert min(values) > 0.1  # eight modes: curved paths
    assert max(values) / min(values) < 1.05  # the same trajectories, up to where each schedule starts


@pytest.mark.parametrize("family", ["toy2d-moons", "digits"])
def test_reflow_straightens_the_shipped_flow(family):
    first, second = zoo.load(f"{family}-rf"), zoo.load(f"{family}-rf2")
    noise = torch.randn((300,) + first.sample_shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert straightness(second, noise, steps=32) < 0.5 * straightness(first, noise, steps=32)


def test_every_deterministic_sampler_runs_the_flow_models_unchanged():
    model = zoo.load("toy2d-moons-rf")
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    for name in solvers.available():
        spec = solvers.get(name)
        if spec.exclusive or spec.is_stochastic({}) or spec.adaptive:
            continue
        nfe = max(8, spec.count(1, True, {}))
        with torch.inference_mode():
            x = solvers.sample(name, model, noise, nfe=nfe)
        assert torch.isfinite(x).all(), name


def test_training_and_reflow_write_loadable_models(tmp_path, monkeypatch):
    monkeypatch.setitem(flows.FLOW_SETTINGS, "toy2d-moons",
                        {**flows.FLOW_SETTINGS["toy2d-moons"], "reflow_pairs": 256, "reflow_tol": 1e-3})
    first = train("toy2d-moons-rf", steps=20, out_dir=tmp_path, quiet=True, evaluate=False)
    second = train("toy2d-moons-rf2", steps=20, out_dir=tmp_path, quiet=True, evaluate=False)
    assert first["kind"] == "rectified_flow" and second["reflow_of"] == "toy2d-moons-rf"
    assert second["pair_generation"]["pairs"] == 256 and second["pair_generation"]["network_evaluations"] > 0
    model = zoo.load("toy2d-moons-rf2", weights_dir=tmp_path)
    assert model.prediction == "flow" and model.schedule.name == "rectified_flow"
    with torch.inference_mode():
        assert torch.isfinite(solvers.sample("euler", model, torch.randn(8, 2), nfe=2)).all()
