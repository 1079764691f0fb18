
import pytest
import torch

import solvers
from benchmarks.convergence import endpoint_errors, fitted_order
from score_models import EDM, DiscreteVP, NFEBudgetExceeded, ReverseSDE, RectifiedFlow, zoo
from solvers.grids import time_grid

from conftest import rms


def noise_for(model, n=64, seed=0):
    return torch.randn((n,) + model.sample_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- exact ground truth: the scaled-space solvers keep their order on every schedule ----------
# (tests/test_registry.py checks every sampler's declared order under one set of conditions;
# here Euler and Heun are checked across models and schedules on the full span.)
ACROSS_SCHEDULES = {
    "euler": ([32, 64, 128, 256], {"grid": "edm", "to_zero": False}),
    "heun": ([32, 64, 128, 256], {"grid": "edm", "to_zero": False}),
}


@pytest.mark.parametrize("model_name", ["gmm:mix16d", "gmm:image3x8x8"])
@pytest.mark.parametrize("schedule", ["vp_linear", "edm"])
@pytest.mark.parametrize("sampler", sorted(ACROSS_SCHEDULES))
def test_fitted_order_matches_the_method(model_name, schedule, sampler):
    model = zoo.load(model_name, schedule=schedule)
    budgets, options = ACROSS_SCHEDULES[sampler]
    nfes, errors = endpoint_errors(sampler, model, noise_for(model), budgets, **options)
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    order = fitted_order(nfes, errors)
    assert abs(order - solvers.get(sampler).order_of(options)) <= 0.3, (order, errors)


@pytest.mark.parametrize("schedule", ["vp_linear", "edm", "ddpm_linear"])
def test_rk45_error_is_within_ten_times_its_tolerance(schedule):
    model = zoo.load("gmm:mix16d", schedule=schedule)
    noise = noise_for(model)
    for tol in (1e-4, 1e-6):
        _, (err,) = endpoint_errors("rk45", model, noise, [100_000], rtol=tol, atol=tol, to_zero=False)
        assert err < 10 * tol, (tol, err)


def test_denoising_to_zero_lands_on_the_exact_data_endpoint():
    model = zoo.load("gmm:mix16d", schedule="edm")
    nfes, errors = endpoint_errors("heun", model, noise_for(model), [63, 255], grid="edm")
    assert errors[1] < errors[0] / 8 and errors[1] < 1e-3


def test_euler_is_deterministic_ddim():
    """Deterministic DDIM (Song et al. 2021a, eq. 12 with sigma_t = 0) on the same grid."""
    model = zoo.load("gmm:mix16d", schedule=DiscreteVP.linear())
    s = model.schedule
    times = time_grid(s, 10, "uniform")
    noise = noise_for(model)
    x = noise.clone()
    for t, t_next in zip(times[:-1], times[1:]):
        a, a_next, sg, sg_next = (float(v) for v in (s.alpha(t), s.alpha(t_next), s.sigma(t), s.sigma(t_next)))
        eps = model.eps(x, t)
        x = a_next * (x - sg * eps) / a + sg_next * eps
    assert rms(solvers.sample("euler", model, noise, grid=times), x) < 1e-12


def test_euler_on_rectified_flow_is_euler_on_the_velocity():
    model = zoo.load("gmm:mix16d", schedule=RectifiedFlow())
    times = time_grid(model.schedule, 12, "uniform")
    noise = noise_for(model)
    x = noise.clone()
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + float(t_next - t) * model.flow(x, t)
    assert rms(solvers.sample("euler", model, noise, grid=times), x) < 1e-12


def test_heun_on_edm_is_karras_algorithm_1():
    """Algorithm 1 written out literally for sigma(t) = t, s(t) = 1."""
    model = zoo.load("gmm:mix16d", schedule=EDM())
    noise = noise_for(model)
    n = 6
    rho, smax, smin = 7.0, 80.0, 0.002
    ts = [(smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for i in range(n)] + [0.0]
    x = noise * ts[0]
    for i in range(n):
        d = (x - model.x0(x, ts[i])) / ts[i]
        x_next = x + (ts[i + 1] - ts[i]) * d
        if ts[i + 1] != 0:
            x_next = x + (ts[i + 1] - ts[i]) * (0.5 * d + 0.5 * (x_next - model.x0(x_next, ts[i + 1])) / ts[i + 1])
        x = x_next
    assert rms(solvers.sample("heun", model, noise, nfe=2 * n - 1, grid="edm"), x) < 1e-10


def test_heun_budget_conventions():
    assert solvers.get("heun").count(18, True, {}) == 35  # EDM's 35-NFE CIFAR-10 setting
    model = zoo.load("gmm:ring8", schedule="edm")
    stats = {}
    solvers.sample("heun", model, torch.randn(4, 2), nfe=36, stats=stats)
    assert stats == {"nfe": 35, "n_steps": 18, "network_passes": 35, "sequential_depth": 35}  # even budgets: at most N


def test_rk45_cap_is_enforced_and_reported():
    model = zoo.load("gmm:mix16d", schedule="vp_linear")
    model.reset_nfe()
    with pytest.raises(NFEBudgetExceeded, match="more than 19 network evaluations"):
        solvers.sample("rk45", model, noise_for(model), nfe=20, rtol=1e-8, atol=1e-8)
    assert model.nfe == 19  # the cap less the final denoising step; evaluation 20 never ran
    stats = {}
    solvers.sample("rk45", model, noise_for(model), nfe=None, stats=stats)
    assert stats["nfe"] > 0 and stats["accepted_steps"] > 0
    # dopri5: 2 evaluations to pick h0, 6 per attempted step (FSAL), +1 final denoising step.
    assert stats["nfe"] == 2 + 6 * (stats["accepted_steps"] + stats["rejected_steps"]) + 1


# --- randomness --------------------------------------------------------------------------------
@pytest.mark.parametrize("name,options", [("euler_maruyama", {}), ("heun", {"s_churn": 10.0})])
def test_same_seed_same_samples_different_seed_different(name, options):
    model = zoo.load("gmm:ring8", schedule="vp_linear")
    assert solvers.get(name).is_stochastic(options)
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(5))
    run = lambda seed: solvers.sample(name, model, noise, nfe=20, generator=torch.Generator().manual_seed(seed), **options)
    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2))


def test_deterministic_samplers_ignore_the_generator():
    model = zoo.load("gmm:ring8", schedule="edm")
    noise = torch.randn(8, 2)
    for name in ("euler", "heun", "rk45"):
        a = solvers.sample(name, model, noise, nfe=500, generator=torch.Generator().manual_seed(1))
        b = solvers.sample(name, model, noise, nfe=500, generator=torch.Generator().manual_seed(2))
        assert torch.equal(a, b)
        assert not solvers.get(name).is_stochastic({})


# --- the reverse SDE ---------------------------------------------------------------------------
def test_euler_maruyama_equals_torchsde_on_the_same_brownian_path():
    torchsde = pytest.importorskip("torchsde")
    model = zoo.load("gmm:ring8", schedule="vp_linear")
    s = model.schedule
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    times = time_grid(s, 40, "uniform", to_zero=False)
    bm = torchsde.BrownianInterval(t0=-s.t_max, t1=-s.t_min, size=x_T.shape, dtype=torch.float64, entropy=7)
    # torchsde steps by dt and interpolates onto ts; one dt per grid interval makes it step on the grid.
    theirs = torchsde.sdeint(ReverseSDE(model), x_T, -times, bm=bm, method="euler", dt=float(times[0] - times[1]))[-1]
    ours = solvers.sample("euler_maruyama", model, x_T, grid=times, brownian=bm)
    # Not 1e-12: torchsde accumulates t by repeated += dt and interpolates onto ts, so its step
    # ends differ from the grid by round-off.
    assert rms(ours, theirs) < 1e-6


def test_euler_maruyama_samples_the_data_distribution():
    """With the exact score, 500 EM steps reproduce the data mean and covariance (n = 4000)."""
    model = zoo.load("gmm:ring8", schedule="vp_linear")
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    x = solvers.sample("euler_maruyama", model, noise, nfe=500, generator=g)
    assert torch.allclose(x.mean(0), model.data_mean(), atol=0.1)
    assert torch.allclose(torch.cov(x.T), model.data_covariance(), atol=0.25)
    # every sample sits near one of the 8 modes (std 0.3): distance to nearest mean
    nearest = torch.cdist(x, model.means).min(dim=1).values
    assert float((nearest < 1.2).double().mean()) > 0.98


# --- errors name the bad value and the valid choices --------------------------------------------
def test_errors_name_valid_choices():
    model = zoo.load("gmm:ring8", schedule="vp_linear")
    noise = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"unknown sampler 'hune'; valid: .*consistency, ddim, ddpm, .*euler, .*euler_maruyama, heun"):
        solvers.sample("hune", model, noise, nfe=10)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['churn'\] for sampler 'heun'; valid: s_churn, s_tmin, s_tmax, s_noise, form; grid options: grid, rho, t_min, t_max, to_zero, spacing"):
        solvers.sample("heun", model, noise, nfe=10, churn=1.0)
    with pytest.raises(ValueError, match=r"heun needs nfe >= 2 \(got 1\)"):
        solvers.sample("heun", model, noise, nfe=1, to_zero=False)
    with pytest.raises(ValueError, match=r"option grid='karas' of sampler 'euler' is not valid; valid: 'uniform', 'quadratic', 'edm', 'karras', .* or a 1-D tensor"):
        solvers.sample("euler", model, noise, nfe=10, grid="karas")
    with pytest.raises(ValueError, match="needs nfe="):
        solvers.sample("euler", model, noise)
    with pytest.raises(ValueError, match="outside vp_linear's valid range"):
        solvers.sample("euler", model, noise, nfe=10, t_max=2.0)
    with pytest.raises(ValueError, match="needs 19 NFE, more than nfe=5"):
        solvers.sample("heun", model, noise, nfe=5, grid=time_grid(model.schedule, 10, "uniform"))
    with pytest.raises(ValueError, match="unknown option"):
        solvers.sample("rk45", model, noise, nfe=100, grid="edm")
    with pytest.raises(ValueError, match="option rtol=0.0 of sampler .rk45. is not valid; valid: > 0"):
        solvers.sample("rk45", model, noise, nfe=100, rtol=0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_samplers_run_on_cuda_with_a_cpu_generator():
    from benchmarks.sweep import runs_on

    mixture = zoo.load("gmm:image3x8x8", schedule="edm")
    # an exclusive sampler runs on its students (MLP ones first: cuDNN's TF32 convolutions would
    # blur the comparison), at the first budget the student accepts; a cap is loose
    students = sorted(zoo.STUDENTS, key=lambda m: not m.startswith("toy2d"))
    for name in solvers.available():
        spec = solvers.get(name)
        model = mixture if not spec.exclusive else next(
            zoo.load(m) for m in students if runs_on(name, zoo.load(m)))
        budgets = (20, 16, 8, 4, 2, 1) if not spec.adaptive and spec.steps_option is None else (2000,)
        noise = torch.randn((8,) + model.sample_shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            for budget in budgets:
                try:
                    cpu = solvers.sample(name, model, noise, nfe=budget, generator=torch.Generator().manual_seed(0))
                    break
                except ValueError:
                    continue
            gpu = solvers.sample(name, model.to("cuda"), noise.cuda(), nfe=budget,
                                 generator=torch.Generator().manual_seed(0))
            model.to("cpu")
        assert gpu.device.type == "cuda" and rms(cpu, gpu.cpu()) < 1e-4, name


def test_a_tensor_grid_takes_no_other_grid_options():
    model = zoo.load("gmm:ring8", schedule="vp_linear")
    with pytest.raises(ValueError, match=r"a tensor grid already fixes the times; drop \['rho'\]"):
        solvers.sample("euler", model, torch.randn(2, 2), grid=time_grid(model.schedule, 4, "uniform"), rho=3.0)
