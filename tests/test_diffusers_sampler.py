"""The ``diffusers`` sampler (solvers/samplers/diffusers_scheduler.py) runs a diffusers scheduler's
own loop inside nfebench: side by side with diffusers' loop on the same network, latents and
per-step noise (the exact mixture's eps on diffusers' DDPM schedule; the EDM mixture for the EDM
schedulers), with the network calls counted by our wrapper."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import solvers
from score_models import zoo

diffusers = pytest.importorskip("diffusers")
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory) -> Path:
    from benchmarks.equivalence import make_tiny_pipeline

    diffusers.utils.logging.set_verbosity_error()
    return make_tiny_pipeline(tmp_path_factory.mktemp("diffusers_sampler") / "ddpm")


def _latents(seed=3):
    return torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# (class, config, step() options): schedulers with and without an nfebench twin, stochastic ones included
CASES = [
    ("DDIMScheduler", {"timestep_spacing": "linspace"}, {"eta": 0.0}),
    ("DDIMScheduler", {"timestep_spacing": "trailing"}, {"eta": 1.0}),
    ("DDPMScheduler", {"timestep_spacing": "leading"}, None),
    ("PNDMScheduler", {"timestep_spacing": "leading"}, None),
    ("EulerDiscreteScheduler", {"timestep_spacing": "linspace"}, None),
    ("HeunDiscreteScheduler", {"timestep_spacing": "linspace", "use_karras_sigmas": True}, None),
    ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}, None),
    ("DPMSolverSinglestepScheduler", {"solver_order": 3}, None),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, None),
    ("UniPCMultistepScheduler", {"solver_order": 3, "timestep_spacing": "linspace"}, None),
    ("DEISMultistepScheduler", {"timestep_spacing": "trailing"}, None),
    ("KDPM2DiscreteScheduler", {"timestep_spacing": "trailing"}, None),
    ("LCMScheduler", {}, None),
]


@pytest.mark.parametrize("name, config, step_options", CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_equals_diffusers_own_loop(pipe_dir, name, config, step_options):
    from benchmarks.equivalence import _network, diffusers_loop

    model, net = _network(pipe_dir, "gmm", torch.float64)
    base = diffusers.DDPMScheduler.load_config(pipe_dir, subfolder="scheduler")
    full = {k: v for k, v in {**base, "clip_sample": False, **config}.items() if not k.startswith("_")}
    scheduler = getattr(diffusers, name).from_config(full)
    kwargs = dict(step_options or {})
    import inspect

    if "generator" in inspect.signature(scheduler.step).parameters:
        kwargs["generator"] = torch.Generator().manual_seed(11)
    calls = []
    theirs = diffusers_loop(scheduler, lambda x, t: calls.append(t) or net(x, t), _latents(), 6, **kwargs)
    stats = {}
    ours = solvers.sample("diffusers", model, _latents(), nfe=len(calls), generator=torch.Generator().manual_seed(11),
                          stats=stats, scheduler=name, config=full, step_options=step_options)
    assert float((ours - theirs).abs().max() / theirs.abs().max()) <= 1e-5
    assert stats["nfe"] == len(calls)


def test_edm_scheduler_on_an_edm_model():
    from benchmarks.equivalence import _edm_network, diffusers_loop

    exact = zoo.load("gmm:image3x8x8", schedule="edm")
    scheduler = diffusers.EDMDPMSolverMultistepScheduler(solver_order=3)
    theirs = diffusers_loop(scheduler, _edm_network(scheduler, exact), _latents(), 9)
    stats = {}
    ours = solvers.sample("diffusers", exact, _latents(), nfe=9, stats=stats, scheduler="EDMDPMSolverMultistepScheduler",
                          config={"solver_order": 3})
    assert float((ours - theirs).abs().max() / theirs.abs().max()) <= 1e-5 and stats["nfe"] == 9


def test_budget_picks_the_most_steps_that_fit(pipe_dir):
    from benchmarks.equivalence import _network

    model, _ = _network(pipe_dir, "gmm", torch.float64)
    for nfe, heun_steps in ((9, 5), (10, 5), (11, 6)):  # Heun: 2N - 1 calls
        stats = {}
        solvers.sample("diffusers", model, _latents(), nfe=nfe, stats=stats, scheduler="HeunDiscreteScheduler")
        assert stats["nfe"] == 2 * heun_steps - 1


def test_default_scheduler_drives_any_schedule():
    for schedule in ("vp_linear", "edm", "ve"):
        model = zoo.load("gmm:ring8", schedule=schedule)
        noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        x = solvers.sample("diffusers", model, noise, nfe=40)
        reference = solvers.sample("euler", model, noise, nfe=40, grid="karras")
        assert float((x - reference).abs().max()) < 0.05, schedule  # same method, diffusers' sigma range


@pytest.mark.parametrize("options, message", [
    ({"scheduler": "NoSuchScheduler"}, r"scheduler='NoSuchScheduler' .* valid: .*DDIMScheduler"),
    ({"scheduler": "DDIMScheduler"}, r"DDIMScheduler steps over training timesteps, and the model's schedule"),
    ({"scheduler": "EulerDiscreteScheduler", "config": [1, 2]}, r"option config .* must be a table"),
    ({"scheduler": "FlowMatchEulerDiscreteScheduler"}, r"flow-matching scheduler; it drives models on the rectified_flow"),
    ({"steps": -1}, r"steps=-1"),
])
def test_bad_options_are_named(options, message):
    model = zoo.load("gmm:ring8", schedule="vp_linear")
    with pytest.raises(ValueError, match=message):
        solvers.sample("diffusers", model, torch.randn(2, 2, dtype=torch.float64), nfe=5, **options)


def test_config_file_accepts_a_scheduler_table(tmp_path):
    from benchmarks.config import parse_config

    config = parse_config({"run": {"n_samples": 8, "nfe": [10]},
                           "models": [{"name": "gmm:ring8", "schedule": "ddpm_linear"}],
                           "samplers": [{"sampler": "diffusers", "options": {
                               "scheduler": "UniPCMultistepScheduler", "config": {"solver_order": 3}}}]})
    assert config.samplers[0].options["config"] == {"solver_order": 3}
