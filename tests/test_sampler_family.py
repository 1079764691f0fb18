"""The sampler family against exact answers: fitted orders, exact equivalences, distributions,
and side by side with diffusers' schedulers."""
import math

import numpy as np
import pytest
import torch

import solvers
from benchmarks.convergence import endpoint_errors, fitted_order
from benchmarks.equivalence import EDM_CASES
from benchmarks.metrics import sliced_wasserstein
from score_models import EDM, DiffusionModel, DiscreteVP, zoo
from solvers.grids import discrete_timesteps, time_grid
from solvers.samplers.multistep import ADAMS_BASHFORTH, variable_step_weights

from conftest import rms


def noise_for(model, n=64, seed=0):
    return torch.randn((n,) + model.sample_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- fitted orders against the exact PF-ODE solution --------------------------------------------
# (sampler, options, budgets, expected order, tolerance). Budgets sit in the asymptotic range;
# plms/pndm use a grid uniform in sigma (where fixed Adams-Bashforth weights are exact) over [0.1, 2].
ORDER_CASES = [
    ("ddim", dict(grid="logsnr"), [32, 64, 128, 256], 1.0, 0.3),
    ("dpm_solver", dict(order=1), [32, 64, 128, 256], 1.0, 0.3),
    ("dpm_solver", dict(order=2), [64, 128, 256, 512], 2.0, 0.5),
    ("dpm_solver", dict(order=3), [64, 128, 256, 512], 3.0, 0.5),
    ("dpm_solver", dict(order=2, algorithm="dpmsolver"), [64, 128, 256, 512], 2.0, 0.5),
    ("dpm_solver_singlestep", dict(order=2), [64, 128, 256, 512], 2.0, 0.5),
    ("dpm_solver_singlestep", dict(order=3), [192, 384, 768, 1536], 3.0, 0.5),
    ("ipndm", dict(variable_step=True), [32, 64, 128, 256], 3.0, 0.5),
    ("plms", dict(warmup="improved_euler", grid="uniform", t_max=2.0, t_min=0.1), [16, 32, 64, 128], 3.5, 0.5),
    ("pndm", dict(grid="uniform", t_max=2.0, t_min=0.1), [24, 40, 72, 136], 4.0, 0.6),
]


@pytest.mark.parametrize("sampler,options,budgets,expected,tol", ORDER_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in ORDER_CASES])
def test_fitted_orders(sampler, options, budgets, expected, tol):
    model = zoo.load("gmm:mix16d", schedule="edm")
    nfes, errors = endpoint_errors(sampler, model, noise_for(model), budgets, to_zero=False, **options)
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert abs(fitted_order(nfes, errors) - expected) <= tol, (fitted_order(nfes, errors), errors)


def test_third_order_term_of_dpm_solver_3m():
    """diffusers' / the reference code's D2 weight is half the Taylor-consistent one: the method
    then converges at order ~2; with the exact weight at order ~3."""
    model = zoo.load("gmm:mix16d", schedule="vp_linear")
    budgets = [128, 256, 512, 1024]
    slopes = {}
    for term in ("exact", "diffusers"):
        nfes, errors = endpoint_errors("dpm_solver", model, noise_for(model), budgets, to_zero=False,
                                       order=3, third_order_term=term)
        slopes[term] = -math.log(errors[-1] / errors[-2]) / math.log(2)
    assert slopes["exact"] > 2.7 and slopes["diffusers"] < 2.4, slopes


def test_fixed_weight_multistep_loses_order_on_nonuniform_grids():
    """iPNDM's fixed Adams-Bashforth weights on the EDM grid (not uniform in sigma): order ~2."""
    model = zoo.load("gmm:mix16d", schedule="edm")
    nfes, errors = endpoint_errors("ipndm", model, noise_for(model), [128, 256, 512], to_zero=False)
    assert abs(-math.log(errors[-1] / errors[-2]) / math.log(2) - 2.0) < 0.3


# --- exact equivalences -------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["vp_linear", "edm", "ddpm_linear", "ve", "rectified_flow"])
def test_first_order_members_coincide(schedule):
    """Deterministic DDIM == Euler in sigma-space == DPM-Solver(++)-1, on the same grid."""
    model = zoo.load("gmm:mix16d", schedule=schedule)
    noise = noise_for(model)
    times = time_grid(model.schedule, 12, "logsnr")
    ref = solvers.sample("euler", model, noise, grid=times)
    assert rms(solvers.sample("ddim", model, noise, grid=times), ref) < 1e-12
    assert rms(solvers.sample("dpm_solver", model, noise, grid=times, order=1), ref) < 1e-12
    assert rms(solvers.sample("dpm_solver", model, noise, grid=times, order=1, algorithm="dpmsolver"), ref) < 1e-12


def test_ddim_eta_one_is_ddpm_fixed_small():
    """eta = 1 gives the DDPM posterior variance: the same draws give the same samples."""
    model = zoo.load("gmm:ring8", schedule=DiscreteVP.linear())
    noise = noise_for(model, 32)
    kw = dict(spacing="trailing", nfe=20)
    a = solvers.sample("ddim", model, noise, eta=1.0, generator=torch.Generator().manual_seed(3), **kw)
    b = solvers.sample("ddpm", model, noise, variance="fixed_small", generator=torch.Generator().manual_seed(3), **kw)
    assert rms(a, b) < 1e-12


def test_ipndm_with_fixed_weights_is_plms():
    model = zoo.load("gmm:mix16d", schedule="vp_linear")
    noise = noise_for(model)
    times = time_grid(model.schedule, 15, "edm")
    assert rms(solvers.sample("ipndm", model, noise, grid=times),
               solvers.sample("plms", model, noise, grid=times)) < 1e-12


def test_variable_step_weights_reduce_to_adams_bashforth_and_integrate_polynomials():
    for k in (2, 3, 4):
        assert np.allclose(variable_step_weights([float(-j) for j in range(k)], 1.0), ADAMS_BASHFORTH[k])
    nodes, target = [1.0, 0.7, 0.5, 0.2], 1.6
    w = variable_step_weights(nodes, target)
    h = target - nodes[0]
    for m in range(4):  # integrates (s - s_0)^m over the step exactly
        assert math.isclose(sum(wi * (n - nodes[0]) ** m for wi, n in zip(w, nodes)), h**m / (m + 1), rel_tol=1e-10)


def test_discrete_spacings_follow_lin_et_al_table_2():
    assert discrete_timesteps(1000, 10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert discrete_timesteps(1000, 10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert discrete_timesteps(1000, 10, "leading", steps_offset=1).tolist()[0] == 901
    assert discrete_timesteps(1000, 10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    sched = DiscreteVP.linear()
    assert time_grid(sched, 10, None, spacing="trailing").tolist()[-2:] == [99.0, -1.0]
    assert time_grid(sched, 10, None, spacing="leading", to_zero=False).tolist()[-1] == 0.0
    with pytest.raises(ValueError, match="needs a discrete schedule"):
        time_grid(EDM(), 10, None, spacing="leading")
    with pytest.raises(ValueError, match="unknown spacing 'middle'; valid: leading, trailing, linspace"):
        discrete_timesteps(1000, 10, "middle")
    model = zoo.load("gmm:ring8", schedule=sched)
    with pytest.raises(ValueError, match="give grid= or spacing="):
        solvers.sample("ddim", model, torch.randn(2, 2), nfe=10, grid="uniform", spacing="leading")


# --- stochastic samplers reproduce the data distribution ----------------------------------------
N_DIST = 4000


def _distribution_errors(model, x):
    data = model.sample_data(N_DIST, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    return (float((x.mean(0) - model.data_mean()).abs().max()),
            float((torch.cov(x.T) - model.data_covariance()).abs().max()),
            sliced_wasserstein(x, data))


@pytest.mark.parametrize("sampler,schedule,nfe,options", [
    ("ddpm", "ddpm_linear", 200, dict(spacing="trailing")),
    ("ddpm", "ddpm_linear", 200, dict(spacing="trailing", variance="fixed_large")),
    ("pc", "ve", 400, dict(grid="logsnr", predictor="reverse_diffusion", n_corrector=1, snr=0.16)),
    ("pc", "vp_linear", 400, dict(grid="uniform", predictor="euler_maruyama", n_corrector=1, snr=0.16)),
    ("langevin", "ve", 1001, dict(steps_per_level=10, step_lr=2e-4)),
    ("heun", "edm", 79, dict(s_churn=20.0)),
])
def test_stochastic_samplers_match_the_data_distribution(sampler, schedule, nfe, options):
    """With the exact score, n = 4000 samples of ring8 (8 modes, radius 2, std 0.3): mean error
    < 0.1, covariance error < 0.25, sliced W2 < 0.12 (two independent exact samples of this size
    are ~0.03 apart)."""
    model = zoo.load("gmm:ring8", schedule=schedule)
    g = torch.Generator().manual_seed(0)
    x = solvers.sample(sampler, model, noise_for(model, N_DIST), nfe=nfe, generator=g, **options)
    mean_err, cov_err, sw = _distribution_errors(model, x)
    assert mean_err < 0.1 and cov_err < 0.25 and sw < 0.12, (mean_err, cov_err, sw)


def test_langevin_corrector_beats_its_predictor_alone_at_equal_steps():
    model = zoo.load("gmm:ring8", schedule="ve")
    noise = noise_for(model, N_DIST)
    results = {}
    for label, corrector in (("predictor only", "none"), ("with corrector", "langevin")):
        options = dict(grid="logsnr", predictor="reverse_diffusion", corrector=corrector, snr=0.16, n_corrector=1)
        times = time_grid(model.schedule, 30, "logsnr")
        x = solvers.sample("pc", model, noise, grid=times, generator=torch.Generator().manual_seed(1),
                           **{k: v for k, v in options.items() if k != "grid"})
        results[label] = _distribution_errors(model, x)[2]
    assert results["with corrector"] < results["predictor only"], results


def test_learned_range_variance_uses_the_extra_channels():
    """A network whose extra channels say v = -1 (beta tilde) or +1 (beta) reproduces fixed_small /
    fixed_large exactly (Nichol & Dhariwal 2021, eq. 15)."""
    exact = zoo.load("gmm:image3x8x8", schedule=DiscreteVP.linear())
    for v, twin in ((-1.0, "fixed_small"), (1.0, "fixed_large")):
        net = lambda x, t, v=v: torch.cat([exact.net(x, t), torch.full_like(x, v)], dim=1)
        learned = DiffusionModel(net, exact.schedule, prediction=exact.prediction, sample_shape=(3, 8, 8),
                                 learned_variance=True)
        learned.net_time_dtype = torch.float64
        noise = noise_for(exact, 8)
        kw = dict(spacing="leading", nfe=25)
        a = solvers.sample("ddpm", learned, noise, variance="learned_range", generator=torch.Generator().manual_seed(2), **kw)
        b = solvers.sample("ddpm", exact, noise, variance=twin, generator=torch.Generator().manual_seed(2), **kw)
        assert rms(a, b) < 1e-10


def test_option_errors_name_the_valid_values():
    model = zoo.load("gmm:ring8", schedule="vp_linear")
    noise = torch.randn(4, 2)
    cases = [
        ("ddpm", dict(variance="large"), "option variance='large' of sampler 'ddpm' is not valid; "
                                          "valid: 'fixed_small', 'fixed_large', 'learned_range'"),
        ("pc", dict(predictor="ode"), "option predictor='ode' of sampler 'pc' is not valid; "
                                      "valid: 'reverse_diffusion', 'euler_maruyama', 'none'"),
        ("pc", dict(predictor="none", corrector="none"), "predictor='none' needs a corrector"),
        ("dpm_solver", dict(order=4), "option order=4 of sampler 'dpm_solver' is not valid; valid: 1, 2, 3"),
        ("dpm_solver", dict(order=2.0), "option order=2.0 of sampler 'dpm_solver' must be a whole number"),
        ("dpm_solver", dict(algorithm="unipc"), "option algorithm='unipc' .* valid: 'dpmsolver\\+\\+', 'dpmsolver'"),
        ("dpm_solver", dict(third_order_term="half"), "third_order_term='half' .* valid: 'exact', 'diffusers'"),
        ("plms", dict(warmup="rk"), "warmup='rk' .* valid: 'lower_order', 'improved_euler'"),
        ("ddim", dict(eta=-1.0), "option eta=-1.0 of sampler 'ddim' is not valid; valid: >= 0"),
        ("ddim", dict(eta="abc"), "option eta='abc' of sampler 'ddim' must be a number; valid: >= 0"),
        ("ipndm", dict(max_order=5), "option max_order=5 .* valid: 1, 2, 3, 4"),
    ]
    for name, options, message in cases:
        with pytest.raises(ValueError, match=message):
            solvers.sample(name, model, noise, nfe=20, **options)
    with pytest.raises(ValueError, match="langevin needs nfe >= 11"):
        solvers.sample("langevin", model, noise, nfe=10)


# --- diffusers-format models and side-by-side equivalence ---------------------------------------
diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from benchmarks.equivalence import make_tiny_pipeline

    return make_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "ddpm")


def test_diffusers_loader_builds_the_model(tiny_pipeline):
    model = zoo.load(f"diffusers:{tiny_pipeline}")
    ref = diffusers.DDPMScheduler.from_pretrained(tiny_pipeline, subfolder="scheduler")
    assert model.sample_shape == (3, 8, 8) and model.prediction == "eps" and not model.learned_variance
    assert torch.equal(model.schedule.alphas_cumprod, ref.alphas_cumprod.double())
    unet = diffusers.UNet2DModel.from_pretrained(tiny_pipeline, subfolder="unet")
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(model.eps(x, 500.0), unet(x, torch.tensor([500, 500])).sample, atol=1e-6)
    x = solvers.sample("ddim", model, torch.randn(2, 3, 8, 8), spacing="leading", nfe=5)
    assert x.shape == (2, 3, 8, 8) and model.nfe == 6


def test_diffusers_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        zoo.load(f"diffusers:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="could not load diffusers model from directory"):
        zoo.load(f"diffusers:{tmp_path / 'empty'}")


def test_v_prediction_pipeline_loads_as_v(tmp_path):
    from benchmarks.equivalence import make_tiny_pipeline

    model = zoo.load(f"diffusers:{make_tiny_pipeline(tmp_path / 'v', prediction_type='v_prediction')}")
    assert model.prediction == "v"


def _equivalence_cases():
    from benchmarks.equivalence import CASES, NOT_COMPARABLE, SPACINGS

    return [(c, s) for c in CASES for s in SPACINGS if (c.label, s) not in NOT_COMPARABLE]


@pytest.mark.parametrize("case,spacing", _equivalence_cases(), ids=lambda v: getattr(v, "label", v))
def test_matches_diffusers_side_by_side(tiny_pipeline, case, spacing):
    from benchmarks.equivalence import run_case

    exact = run_case(tiny_pipeline, case, spacing, network="gmm")
    assert exact["max_abs_diff"] <= 1e-4, exact
    assert exact["nfe_ours"] <= exact["diffusers_calls"]
    unet = run_case(tiny_pipeline, case, spacing, network="unet")
    assert unet["max_abs_diff"] <= 1e-6 * unet["max_abs_value"], unet


def test_documented_mismatches_are_real(tiny_pipeline):
    """The cells we do not claim to match (exact_in_diffusers' notes) do differ: in the samples or
    in the number of network calls (so the notes are not stale)."""
    from benchmarks.equivalence import CASES, NOT_COMPARABLE, run_case

    by_label = {c.label: c for c in CASES}
    assert NOT_COMPARABLE
    for label, spacing in NOT_COMPARABLE:
        row = run_case(tiny_pipeline, by_label[label], spacing, network="gmm")
        assert row["max_abs_diff"] > 1e-3 or row["nfe_ours"] != row["diffusers_calls"], row


@pytest.mark.parametrize("case", EDM_CASES, ids=lambda c: c.label)
def test_matches_diffusers_edm_schedulers(case):
    """diffusers' EDMEuler / EDMDPMSolverMultistep (EDM preconditioning, karras or exponential
    sigmas) equal our euler / dpm_solver on the exact mixture; diffusers keeps its sigmas in
    float32, which bounds the agreement near 1e-7 relative."""
    from benchmarks.equivalence import run_edm_case

    for steps in (7, 13):
        row = run_edm_case(case, steps)
        assert row["max_abs_diff"] <= 1e-6 * row["max_abs_value"], row
        assert row["nfe_ours"] == row["diffusers_calls"], row
