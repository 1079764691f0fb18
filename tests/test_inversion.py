"""Inversion (data -> noise) against exact answers: the mixtures' exact PF-ODE encoding, the
sampling orders, the exact-inversion samplers' round trips, the NFE rules, and bad input."""
import math

import pytest
import torch

import solvers
from benchmarks.convergence import ORDER_SPAN, ORDER_STEPS, fitted_order
from score_models import zoo


def _data(model, n, seed=0):
    return model.sample_data(n, generator=torch.Generator().manual_seed(seed)).to(torch.float64)


# --- inversion error against the exact encoding converges at the sampling order ------------------
ORDER_CASES = [("euler", {}), ("ddim", {}), ("heun", {}), ("dpm_solver", {"order": 1}), ("dpm_solver", {}),
               ("dpm_solver_singlestep", {"order": 3}), ("ipndm", {}), ("plms", {"warmup": "improved_euler"}),
               ("pndm", {}), ("unipc", {"lower_order_final": False}), ("deis", {}), ("bdia", {})]


@pytest.mark.parametrize("sampler,options", ORDER_CASES, ids=[f"{n}{o}" for n, o in ORDER_CASES])
def test_inversion_error_converges_at_the_sampling_order(sampler, options):
    """Under the registry's order conditions (16-D mixture, EDM, sigma 0.1 -> 2) the inverted
    latent's RMS error against the exact encoding falls at the order declared for sampling."""
    model = zoo.load("gmm:mix16d", schedule="edm")
    g = torch.Generator().manual_seed(0)
    x = _data(model, 16) + ORDER_SPAN["t_min"] * torch.randn(16, 16, generator=g, dtype=torch.float64)
    exact = model.exact_encoding(x, t_end=ORDER_SPAN["t_max"], t_start=ORDER_SPAN["t_min"])
    spec = solvers.get(sampler)
    nfes, errors = [], []
    for n in ORDER_STEPS:
        stats = {}
        z = solvers.invert(sampler, model, x, nfe=spec.count(n, False, options), stats=stats, **ORDER_SPAN, **options)
        nfes.append(stats["nfe"])
        errors.append(float((z - exact).pow(2).mean().sqrt()))
    declared = spec.order_of(options)
    order = fitted_order(nfes, errors)
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert declared - 0.25 <= order <= declared + 1.0, (order, declared, errors)


def test_inversion_to_sigma_zero_converges_to_the_exact_encoding():
    """From data points themselves (grid ending at sigma = 0, the trapezoidal step off it)."""
    model = zoo.load("gmm:ring8")
    x = _data(model, 32)
    exact = model.exact_encoding(x)
    errors = [float((solvers.invert("heun", model, x, nfe=nfe) - exact).pow(2).mean().sqrt()) for nfe in (25, 101, 401)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3, errors


def test_exact_encoding_is_the_inverse_of_the_exact_solution():
    model = zoo.load("gmm:ring8", schedule="vp_linear")
    x = _data(model, 8)
    noise = model.exact_encoding(x)
    back = model.exact_ode_solution(model.schedule.prior_std_at(model.schedule.t_max) * noise)
    assert float((back - x).abs().max()) < 1e-8


def test_round_trip_through_sample_converges():
    model = zoo.load("gmm:ring8")
    x = _data(model, 32)
    errors = []
    for nfe in (20, 80, 320):
        z = solvers.invert("dpm_solver", model, x, nfe=nfe)
        errors.append(float((solvers.sample("dpm_solver", model, z, nfe=nfe) - x).pow(2).mean().sqrt()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3, errors


# --- exact inversion: EDICT and BDIA -------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["edict", "bdia"])
@pytest.mark.parametrize("nfe", [4, 20, 100, 400])
def test_exact_inversion_round_trip_is_exact_at_any_nfe(sampler, nfe):
    model = zoo.load("gmm:ring8")
    x = _data(model, 16, seed=1)
    reconstructed, encoding, counted = solvers.round_trip(sampler, model, x, nfe=nfe)
    assert float((reconstructed - x).pow(2).mean().sqrt()) < 1e-9
    assert encoding.nfe <= nfe and counted <= 2 * nfe


def test_edict_costs_two_evaluations_per_step():
    model = zoo.load("gmm:ring8")
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for nfe in (2, 9, 30):
        stats = {}
        solvers.sample("edict", model, noise, nfe=nfe, stats=stats)
        assert stats["nfe"] == 2 * stats["n_steps"] == 2 * (nfe // 2)


# --- NFE counted by the wrapper equals the sampling rule -----------------------------------------
@pytest.mark.parametrize("sampler", [n for n in solvers.invertible_samplers() if not solvers.get(n).adaptive
                                     and solvers.get(n).steps_option is None])
def test_inversion_nfe_equals_the_sampling_rule(sampler):
    model = zoo.load("gmm:ring8")
    spec = solvers.get(sampler)
    x = _data(model, 4)
    for to_zero in (True, False):
        for budget in (3, 7, 10, 25):
            if budget < spec.count(1, to_zero, {}):
                continue
            stats, start = {}, model.nfe
            solvers.invert(sampler, model, x, nfe=budget, stats=stats, to_zero=to_zero)
            assert stats["nfe"] == model.nfe - start == spec.count(stats["n_steps"], to_zero, {}) <= budget
            assert stats["n_steps"] == spec.steps_for_budget(budget, to_zero, {})


# --- refusals and bad input ----------------------------------------------------------------------
def test_stochastic_samplers_are_refused_naming_the_deterministic_ones():
    model = zoo.load("gmm:ring8")
    x = _data(model, 4)
    stochastic = [n for n in solvers.available() if solvers.get(n).is_stochastic({}) and not solvers.get(n).exclusive]
    assert stochastic
    for name in stochastic:
        with pytest.raises(ValueError, match="stochastic.*deterministic samplers: .*heun"):
            solvers.invert(name, model, x, nfe=10)


def test_one_way_and_student_samplers_are_refused():
    model = zoo.load("gmm:ring8")
    with pytest.raises(ValueError, match="dpm_adaptive cannot be inverted"):
        solvers.invert("dpm_adaptive", model, _data(model, 2), nfe=50)


@pytest.mark.parametrize("bad,message", [
    (torch.zeros(4, 3, dtype=torch.float64), r"x0 has shape \(4, 3\); this model's data points are \[batch, 2\]"),
    (torch.tensor([[0.0, math.nan]], dtype=torch.float64), "x0 holds NaN or Inf"),
    (torch.zeros(4, 2, dtype=torch.int64), "x0 must be a floating-point tensor"),
])
def test_bad_data_is_refused(bad, message):
    model = zoo.load("gmm:ring8")
    start = model.nfe
    with pytest.raises(ValueError, match=message):
        solvers.invert("heun", model, bad, nfe=10)
    assert model.nfe == start


def test_budget_below_the_minimum_is_refused():
    model = zoo.load("gmm:ring8")
    with pytest.raises(ValueError, match=r"edict needs nfe >= 2 \(got 1\)"):
        solvers.invert("edict", model, _data(model, 2), nfe=1)
    with pytest.raises(ValueError, match="nfe must lie in"):
        solvers.invert("heun", model, _data(model, 2), nfe=0)


# --- nfebench invert ------------------------------------------------------------------------------
def test_invert_command_writes_the_noise_invert_computes(tmp_path, capsys):
    from benchmarks.cli import main

    model = zoo.load("gmm:ring8")
    x = _data(model, 8)
    torch.save(x, tmp_path / "x.pt")
    assert main(["invert", "gmm:ring8", "--sampler", "dpm_solver", "--nfe", "12", "--input", str(tmp_path / "x.pt"),
                 "--out", str(tmp_path / "z.pt")]) == 0
    saved = torch.load(tmp_path / "z.pt", weights_only=True)
    assert torch.equal(saved, solvers.invert("dpm_solver", model, x, nfe=12))


@pytest.mark.parametrize("content,sampler,nfe,message", [
    (torch.zeros(4, 3, dtype=torch.float64), "heun", 10, "x0 has shape"),
    (torch.tensor([[0.0, math.nan]], dtype=torch.float64), "heun", 10, "NaN"),
    (torch.zeros(4, 2, dtype=torch.float64), "euler_maruyama", 10, "stochastic"),
    (torch.zeros(4, 2, dtype=torch.float64), "edict", 1, "needs nfe >= 2"),
    ({"x": 1}, "heun", 10, "holds a dict, not a tensor"),
    (b"not a tensor", "heun", 10, "is not a tensor saved with torch.save"),
])
def test_invert_command_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, content, sampler, nfe, message):
    from benchmarks.cli import main

    source = tmp_path / "x.pt"
    if isinstance(content, bytes):
        source.write_bytes(content)
    else:
        torch.save(content, source)
    out = tmp_path / "z.pt"
    assert main(["invert", "gmm:ring8", "--sampler", sampler, "--nfe", str(nfe), "--input", str(source),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]


# --- the sweep metrics ----------------------------------------------------------------------------
def test_inversion_metrics_in_a_sweep_match_a_direct_computation(tmp_path):
    from benchmarks.config import parse_config
    from benchmarks.metrics.base import REFERENCE_SEED
    from benchmarks.sweep import run_sweep

    config = parse_config({
        "run": {"nfe": [10, 40], "n_samples": 300, "batch_size": 300, "dtype": "float64",
                "metrics": ["inversion_error", "reconstruction_error"]},
        "models": [{"name": "gmm:ring8"}],
        "samplers": [{"sampler": "heun"}, {"sampler": "bdia"}, {"sampler": "euler_maruyama"}],
    })
    df = run_sweep(config, tmp_path / "run", progress=False).set_index(["sampler", "nfe_budget"])
    model = zoo.load("gmm:ring8")
    # n = min(n_samples, 256) real data points from the reference seed.
    x = model.sample_data(256, generator=torch.Generator().manual_seed(REFERENCE_SEED), dtype=torch.float64)
    exact = model.exact_encoding(x)
    for nfe in (10, 40):
        stats = {}
        z = solvers.invert("heun", model, x, nfe=nfe, stats=stats)
        row = df.loc[("heun", nfe)]
        assert row["inversion_error"] == pytest.approx(float((z - exact).pow(2).mean().sqrt()), rel=1e-9)
        assert row["inversion_nfe"] == stats["nfe"] == solvers.get("heun").count(stats["n_steps"], True, {})
        back = solvers.sample("heun", model, z, nfe=nfe)
        assert row["reconstruction_error"] == pytest.approx(float((back - x).pow(2).mean().sqrt()), rel=1e-9)
        assert df.loc[("bdia", nfe)]["reconstruction_error"] < 1e-12
        assert math.isnan(df.loc[("euler_maruyama", nfe)]["inversion_error"])
        assert math.isnan(df.loc[("euler_maruyama", nfe)]["reconstruction_error"])
