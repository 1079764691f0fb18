"""ParaDiGMS (parallel-in-time Picard iterations) and the sequential-depth count.

- at tol = 0 it reproduces its base sampler's chain (ddim, euler, ddpm with the same noise per
  step), in fewer sequential network calls than steps;
- at tol > 0 it stays within the tolerance's scale of that chain, closer as tol shrinks;
- the wrapper counts a stacked window as that many evaluations in one sequential call, the cap
  is honoured, and the network really is called once per Picard iteration;
- sequential samplers report depth = nfe; classifier-free guidance reports depth = nfe batched
  and 2 nfe unbatched.
"""
import pytest
import torch

import solvers
from score_models import NFEBudgetExceeded, zoo
from score_models.guidance import ClassifierFreeGuidance, cycle_labels
from score_models.parameterization import DiffusionModel

from conftest import rms

STEPS = 40


def _noise(model, n=48, seed=0):
    return torch.randn((n,) + model.sample_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _pair(model, base, tol, seed=3, **grid):
    """(paradigms' result and stats, the base sampler's sequential result) from the same noise and generator."""
    noise, stats = _noise(model), {}
    parallel = solvers.sample("paradigms", model, noise, nfe=100_000, base=base, steps=STEPS, tol=tol, stats=stats,
                              generator=torch.Generator().manual_seed(seed), **grid)
    sequential = solvers.sample(base, model, noise, nfe=STEPS, generator=torch.Generator().manual_seed(seed),
                                **{"grid": "uniform", **grid})
    return parallel, stats, sequential


@pytest.mark.parametrize("base", ["ddim", "euler", "ddpm"])
@pytest.mark.parametrize("preset,schedule", [("ring8", "vp_linear"), ("image3x8x8", "ddpm_linear"), ("mix16d", "edm")])
def test_zero_tolerance_reproduces_the_base_chain_in_fewer_sequential_calls(base, preset, schedule):
    model = zoo.load(f"gmm:{preset}", schedule=schedule)
    parallel, stats, sequential = _pair(model, base, tol=0.0)
    assert rms(parallel, sequential) <= 1e-9 * float(sequential.abs().max())
    assert stats["sequential_depth"] == stats["picard_iterations"] < STEPS
    assert stats["nfe"] == stats["network_passes"] >= STEPS


@pytest.mark.parametrize("base", ["ddim", "ddpm"])
def test_tolerance_bounds_the_distance_to_the_base_chain(base):
    model = zoo.load("gmm:image3x8x8", schedule="ddpm_linear")
    errors, depths = [], []
    for tol in (0.1, 0.01, 0.001):
        parallel, stats, sequential = _pair(model, base, tol)
        errors.append(rms(parallel, sequential) / rms(sequential, torch.zeros_like(sequential)))
        depths.append(stats["sequential_depth"])
    assert errors[0] < 0.1  # within the tolerance's scale, relative to the samples
    assert errors[0] > errors[1] > errors[2]
    assert depths[0] <= depths[1] <= depths[2] < STEPS


def test_window_is_one_network_call_counted_as_its_evaluations():
    mixture = zoo.load("gmm:ring8", schedule="vp_linear")
    calls = []

    def net(x, t):
        calls.append(x.shape[0])
        return mixture.raw(x, t)

    model = DiffusionModel(net, mixture.schedule, prediction=mixture.prediction, sample_shape=(2,))
    noise, stats = _noise(model, n=16), {}
    solvers.sample("paradigms", model, noise.float(), nfe=10_000, steps=40, window=8, stats=stats)
    assert len(calls) == stats["sequential_depth"] == stats["picard_iterations"]
    assert sum(calls) // 16 == stats["nfe"] == stats["network_passes"]
    assert max(calls) == 8 * 16  # the window's states stacked into one batch
    with pytest.raises(NFEBudgetExceeded, match="paradigms needs more than 30"):
        start = model.nfe
        solvers.sample("paradigms", model, noise.float(), nfe=30, steps=40, window=8)
    assert model.nfe - start <= 30


def test_sequential_samplers_and_guidance_report_their_depth():
    model = zoo.load("gmm:ring8", schedule="vp_linear")
    stats = {}
    solvers.sample("heun", model, _noise(model, n=8), nfe=9, stats=stats)
    assert stats["sequential_depth"] == stats["nfe"] == 9
    digits = zoo.load("digits-unet")
    noise = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    for batched, depth_per_evaluation in ((True, 1), (False, 2)):
        guided = ClassifierFreeGuidance(digits, 1.0, cycle_labels(), null_label=10, batched=batched)
        stats = {}
        with torch.inference_mode():
            solvers.sample("ddim", guided, noise, nfe=3, stats=stats)
        assert stats["nfe"] == 3 and stats["network_passes"] == 6
        assert stats["sequential_depth"] == 3 * depth_per_evaluation


def test_bad_options_are_named():
    model = zoo.load("gmm:ring8", schedule="vp_linear")
    with pytest.raises(ValueError, match="base=.heun.*valid: .ddim., .ddpm., .euler."):
        solvers.sample("paradigms", model, _noise(model, n=2), nfe=100, base="heun")
    with pytest.raises(ValueError, match="window"):
        solvers.sample("paradigms", model, _noise(model, n=2), nfe=100, window=0)


def test_sweep_rows_carry_sequential_depth_and_plots_can_use_it(tmp_path):
    from benchmarks.cli import main
    from benchmarks.config import parse_config
    from benchmarks.sweep import run_sweep

    config = parse_config({
        "run": {"nfe": [200], "n_samples": 16, "batch_size": 16, "metrics": ["solver_error"]},
        "models": [{"name": "gmm:ring8", "schedule": "vp_linear"}],
        "samplers": [{"sampler": "paradigms", "options": {"steps": 40}}, {"sampler": "ddim", "nfe": [40]}],
    })
    df = run_sweep(config, tmp_path / "run", progress=False).set_index("sampler")
    assert df.loc["ddim", "sequential_depth"] == df.loc["ddim", "nfe"] == 40
    assert df.loc["paradigms", "sequential_depth"] < 40 <= df.loc["paradigms", "nfe"] <= 200
    assert main(["plot", str(tmp_path / "run" / "results.csv"), "--x-axis", "sequential_depth",
                 "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "gmm_ring8_vp_linear_solver_error_depth.png").is_file()
    old = tmp_path / "old.csv"
    old.write_text((tmp_path / "run" / "results.csv").read_text().replace("sequential_depth", "depth_unknown"))
    assert main(["plot", str(old), "--x-axis", "sequential_depth", "--out", str(tmp_path / "old")]) == 2
    assert not (tmp_path / "old").exists()
