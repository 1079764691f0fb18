"""sa_solver (SA-Solver, Xue et al. 2023) side by side with diffusers' SASolverScheduler on the same
network and the same per-step noise, its weights against diffusers' and against quadrature, its
PF-ODE limit against the exact mixture, and its option checks."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate

import solvers
from score_models import zoo
from solvers.samplers.sa_solver import sa_weights, tau_on_step

diffusers = pytest.importorskip("diffusers")

SIGMA_KINDS = {"timesteps": {}, "karras": {"use_karras_sigmas": True}, "exponential": {"use_exponential_sigmas": True}}
WHOLE_RANGE = {"tau_sigma_min": 0.0, "tau_sigma_max": 1e9}
#: (diffusers config, diffusers tau_func or None for its default, our options)
CONFIGS = {
    "default p2 c2": ({}, None, {}),
    "p3 c4": ({"predictor_order": 3, "corrector_order": 4}, None, {"predictor_order": 3, "corrector_order": 4}),
    "p1 c1": ({"predictor_order": 1, "corrector_order": 1}, None, {"predictor_order": 1, "corrector_order": 1}),
    "p4 c3": ({"predictor_order": 4, "corrector_order": 3}, None, {"predictor_order": 4, "corrector_order": 3}),
    "p3 c3 no lower_order_final": ({"predictor_order": 3, "corrector_order": 3, "lower_order_final": False}, None,
                                   {"predictor_order": 3, "corrector_order": 3, "lower_order_final": False}),
    "tau 0 (ODE)": ({}, lambda t: 0, {"tau": 0.0}),
    "tau 1 everywhere (SDE)": ({"predictor_order": 3, "corrector_order": 2}, lambda t: 1,
                               {"predictor_order": 3, "corrector_order": 2, **WHOLE_RANGE}),
    "tau 0.5 in 200..800": ({}, lambda t: 0.5 if 200 <= t <= 800 else 0, {"tau": 0.5}),
}


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from benchmarks.equivalence import make_tiny_pipeline

    diffusers.utils.logging.set_verbosity_error()
    return make_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "ddpm")


_MODELS = {}


def _gmm(pipe):
    """The gmm network of benchmarks.equivalence (the exact image-shaped mixture on the pipeline's
    DDPM schedule), loaded once per pipeline."""
    from benchmarks.equivalence import _network

    if pipe not in _MODELS:
        _MODELS[pipe] = _network(pipe, "gmm", torch.float64)[0]
    return _MODELS[pipe]


def _sa_vs_diffusers(pipe, spacing, steps, config, tau_func, options, seed=0):
    """(max |ours - theirs| / max |theirs|, our NFE, diffusers' network calls).

    diffusers' loop with the exact mixture (the gmm network of benchmarks.equivalence) evaluated at
    the noise level diffusers assigns to the step (its karras timesteps are rounded, its sigmas not),
    and per-step noise from step(..., generator=); ours on the grid of those levels with an equally
    seeded generator: one draw per step in both, so the same z_i. diffusers' sigma-table grids
    (karras, exponential) repeat the last level, a zero-length last step that only corrects the
    state at sigma_min with one more evaluation: our ``final_corrector`` on the distinct levels."""
    model = _gmm(pipe)
    sched = model.schedule
    base = diffusers.DDPMScheduler.load_config(pipe, subfolder="scheduler")
    extra = {} if tau_func is None else {"tau_func": tau_func}
    scheduler = diffusers.SASolverScheduler.from_config({**base, "timestep_spacing": spacing, **config, **extra})
    latents = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)
    scheduler.set_timesteps(steps)
    # diffusers computes lambda and every coefficient from its sigma table, built in float32; hold the
    # same table in float64 (our sigma~ at the times of its levels: they differ by <= 2e-8 relative)
    times = sched.t_from_sigma_tilde(scheduler.sigmas.double()).clamp(sched.t_min, sched.t_max)
    scheduler.sigmas = sched.sigma_tilde(times)
    generator = torch.Generator().manual_seed(seed)
    x = latents * scheduler.init_noise_sigma
    states, calls = [x], []
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            start = model.nfe
            x = scheduler.step(model.eps(scheduler.scale_model_input(x, t), times[i]), t, x,
                               generator=generator).prev_sample
            states.append(x)
            calls.append(model.nfe - start)
    levels = scheduler.sigmas
    if bool(levels[-1] == levels[-2]):
        # diffusers' sigma tables end with the last level twice: its last step only corrects the
        # state at that level with one more evaluation, i.e. our final_corrector on the distinct levels
        levels, times, options = levels[:-1], times[:-1], {**options, "final_corrector": True}
    # the tau band of our options classifies every step as diffusers' tau_func does
    spec = solvers.get("sa_solver")
    opts = spec.with_defaults(options)
    theirs_tau = [float(scheduler.tau_func(t)) for t in scheduler.timesteps[:len(levels) - 1]]
    ours_tau = [tau_on_step(float(s), opts["tau"], opts["tau_sigma_min"], opts["tau_sigma_max"]) for s in levels[:-1]]
    assert theirs_tau == ours_tau, (theirs_tau, ours_tau)

    stats = {}
    ours = solvers.sample("sa_solver", model, latents, grid=times, generator=torch.Generator().manual_seed(seed),
                          stats=stats, **options)
    theirs = states[-1]
    return float((ours - theirs).abs().max() / theirs.abs().max()), stats["nfe"], sum(calls)


#: (configuration, sigma kind, spacing, steps): every configuration, spacing, step count and sigma
#: kind at least once; the full cross product is the slow test below.
FAST_CASES = [
    ("default p2 c2", "timesteps", "linspace", 7), ("default p2 c2", "timesteps", "leading", 13),
    ("default p2 c2", "timesteps", "trailing", 13), ("default p2 c2", "karras", "trailing", 7),
    ("default p2 c2", "exponential", "linspace", 13), ("p3 c4", "timesteps", "trailing", 13),
    ("p3 c4", "karras", "leading", 13), ("p1 c1", "timesteps", "leading", 7), ("p4 c3", "timesteps", "linspace", 13),
    ("p3 c3 no lower_order_final", "karras", "linspace", 7), ("tau 0 (ODE)", "timesteps", "trailing", 7),
    ("tau 1 everywhere (SDE)", "timesteps", "linspace", 13), ("tau 1 everywhere (SDE)", "karras", "trailing", 13),
    ("tau 0.5 in 200..800", "timesteps", "leading", 13),
]


def _check_case(pipe, label, kind, spacing, steps):
    config, tau_func, options = CONFIGS[label]
    diff, ours, theirs = _sa_vs_diffusers(pipe, spacing, steps, {**config, **SIGMA_KINDS[kind]}, tau_func, options)
    assert diff <= 1e-10, (label, kind, spacing, steps, diff)  # round-off (the brief asks <= 1e-6)
    assert ours == theirs, (label, kind, spacing, steps, ours, theirs)


@pytest.mark.parametrize("label, kind, spacing, steps", FAST_CASES, ids=lambda v: str(v))
def test_sa_solver_matches_diffusers(tiny_pipeline, label, kind, spacing, steps):
    _check_case(tiny_pipeline, label, kind, spacing, steps)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SIGMA_KINDS))
@pytest.mark.parametrize("label", list(CONFIGS))
def test_sa_solver_matches_diffusers_everywhere(tiny_pipeline, label, kind):
    for spacing in ("linspace", "leading", "trailing"):
        for steps in (7, 13):
            _check_case(tiny_pipeline, label, kind, spacing, steps)


def test_default_band_is_diffusers_default_tau_func(tiny_pipeline):
    """Our default tau band [0.7235, 25.74] holds exactly the timesteps 200..800 of DDPM's linear
    schedule (diffusers' default tau_func); the "default" cases above run diffusers' default
    tau_func against our defaults."""
    model = _gmm(tiny_pipeline)
    d = solvers.get("sa_solver").defaults
    t = torch.arange(0, 1000, dtype=torch.float64)
    inside = [(d["tau_sigma_min"] <= s <= d["tau_sigma_max"]) for s in model.schedule.sigma_tilde(t).tolist()]
    assert [i for i, v in enumerate(inside) if v] == list(range(200, 801))


def test_noise_actually_enters():
    """The parity above is not vacuous: another seed changes the samples (the noise is used)."""
    model = zoo.load("gmm:mix16d", schedule="edm")
    noise = torch.randn((16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    runs = [solvers.sample("sa_solver", model, noise, nfe=10, generator=torch.Generator().manual_seed(s))
            for s in (1, 2)]
    assert float((runs[0] - runs[1]).abs().max()) > 1e-2


def test_sa_solver_case_for_the_equivalence_harness(tiny_pipeline):
    """Cases for benchmarks.equivalence.CASES that its run_case expresses as it stands: tau = 0
    (run_case passes no generator to SASolverScheduler.step), the trailing spacing (diffusers'
    SA-Solver spaces linspace/leading over N + 1 timesteps), ending at timestep 0 (to_zero=False).
    diffusers keeps its sigma table in float32 here: ~4e-7 relative."""
    from benchmarks.equivalence import Case, run_case

    cases = [Case("SA-Solver p2 c2 tau=0", "SASolverScheduler", dict(tau_func=lambda t: 0), "sa_solver",
                  dict(tau=0.0, to_zero=False)),
             Case("SA-Solver p3 c4 tau=0", "SASolverScheduler", dict(predictor_order=3, corrector_order=4,
                                                                     tau_func=lambda t: 0),
                  "sa_solver", dict(predictor_order=3, corrector_order=4, tau=0.0, to_zero=False))]
    for case in cases:
        for steps in (7, 13):
            r = run_case(tiny_pipeline, case, "trailing", network="gmm", steps=steps)
            assert r["max_abs_diff"] <= 1e-6 * r["max_abs_value"], r
            assert r["nfe_ours"] == r["diffusers_calls"] == steps, r


# --- the weights ------------------------------------------------------------------------------------
def _their_weights(order, lam_s, lam_t, nodes, tau, corrector):
    """diffusers' get_coefficients_fn (float64), with its order-2 modification, scaled to x~."""
    scheduler = diffusers.SASolverScheduler()
    t64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    kappa = 1 + tau**2
    coeffs = [float(c) for c in scheduler.get_coefficients_fn(order, t64(lam_s), t64(lam_t), [t64(v) for v in nodes],
                                                             t64(tau))]
    h = lam_t - lam_s
    if order == 2:
        if corrector:
            extra = math.exp(kappa * lam_t) * (h / 2 - (h * kappa - 1 + math.exp(-kappa * h)) / (kappa**2 * h))
        else:
            extra = math.exp(kappa * lam_t) * (h**2 / 2 - (h * kappa - 1 + math.exp(-kappa * h)) / kappa**2) / (
                nodes[0] - nodes[1])
        coeffs = [coeffs[0] + extra, coeffs[1] - extra]
    # x = ... + (1 + tau^2) sigma_t e^{-tau^2 lambda_t} c_j D_j, divided by alpha_t = sigma_t e^{lambda_t}
    return [kappa * math.exp(-kappa * lam_t) * c for c in coeffs]


@pytest.mark.parametrize("tau", [0.0, 1.0, 0.5])
def test_weights_equal_diffusers_coefficients(tau):
    lam = [-1.3, -0.6, 0.1, 0.45, 1.2]  # uneven steps
    kappa = 1 + tau**2
    for order in (1, 2, 3, 4):
        # predictor from lam[3] to lam[4] on nodes lam[3], lam[2], ...
        nodes = lam[3 - order + 1:4][::-1]
        ours = sa_weights(nodes, lam[3], lam[4], kappa, simple_order_2=True)
        theirs = _their_weights(order, lam[3], lam[4], nodes, tau, corrector=False)
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)
        # corrector from lam[3] to lam[4] on nodes lam[4], lam[3], ...
        nodes = lam[4 - order + 1:5][::-1]
        ours = sa_weights(nodes, lam[3], lam[4], kappa, simple_order_2=True, corrector=True)
        theirs = _their_weights(order, lam[3], lam[4], nodes, tau, corrector=True)
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_weights_integrate_the_interpolant_exactly(tau):
    """sum_j b_j p(lambda_j) = kappa int e^{-kappa(lambda_t - lam)} p(lam) dlam for every polynomial p of
    degree < the number of nodes (quadrature), also for tiny steps (no cancellation)."""
    kappa = 1 + tau**2
    for h in (0.7, 1e-3):
        nodes = [0.0, -h, -2.5 * h, -3 * h]
        for k in (1, 2, 3, 4):
            w = sa_weights(nodes[:k], 0.0, h, kappa)
            for degree in range(k):
                p = lambda lam: (lam / h + 0.3) ** degree  # noqa: E731
                exact = integrate.quad(lambda lam: kappa * math.exp(-kappa * (h - lam)) * p(lam), 0.0, h,
                                       epsabs=0, epsrel=1e-13)[0]
                assert sum(wj * p(lj) for wj, lj in zip(w, nodes)) == pytest.approx(exact, rel=1e-11)
    simple = sa_weights([0.0, -0.5], 0.0, 0.5, kappa, simple_order_2=True)
    assert sum(simple) == pytest.approx(-math.expm1(-kappa * 0.5))


# --- exact answers ------------------------------------------------------------------------------------
def test_tau_zero_converges_to_the_exact_pf_ode_solution():
    """tau = 0 solves the PF-ODE: the endpoint error against the mixture's exact solution falls at
    order ~3 for p3 c4 without lower_order_final (and is deterministic: no generator needed)."""
    model = zoo.load("gmm:mix16d", schedule="edm")
    noise = torch.randn((16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    opts = dict(tau=0.0, predictor_order=3, corrector_order=4, lower_order_final=False, to_zero=False,
                t_max=2.0, t_min=0.1)
    exact = model.exact_ode_solution(2.0 * noise, t_start=2.0, t_end=0.1)
    errors = [float((solvers.sample("sa_solver", model, noise, nfe=n, **opts) - exact).pow(2).mean().sqrt())
              for n in (32, 64)]
    assert 2.6 <= math.log2(errors[0] / errors[1]) <= 4.0, errors
    assert not solvers.get("sa_solver").is_stochastic({"tau": 0.0}) and solvers.get("sa_solver").is_stochastic({})


def test_sde_samples_the_mixture():
    """tau = 1 everywhere (the reverse diffusion SDE) from the prior to sigma = 0 gives the mixture's
    mean and covariance within 4 standard errors (1024 samples of the 2-D ring, 100 steps; at 24
    steps its variance is still biased high by ~4 standard errors)."""
    model = zoo.load("gmm:ring8", schedule="edm")
    n = 1024
    noise = torch.randn((n, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = solvers.sample("sa_solver", model, noise, nfe=100, generator=torch.Generator().manual_seed(10), tau=1.0,
                       **WHOLE_RANGE)
    data = model.sample_data(200_000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    centred = data - data.mean(0)
    products = (centred[:, :, None] * centred[:, None, :]).reshape(len(data), 4)
    assert ((x.mean(0) - data.mean(0)).abs() <= 4 * data.std(0) / n**0.5).all()
    assert ((torch.cov(x.T) - torch.cov(data.T)).flatten().abs() <= 4 * products.std(0) / n**0.5).all()


# --- options ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"predictor_order": 5}, "predictor_order=5 .* valid: 1, 2, 3, 4"),
    ({"corrector_order": -1}, "corrector_order=-1 .* valid: 0, 1, 2, 3, 4"),
    ({"tau": -0.5}, "tau=-0.5 .* valid: >= 0"),
    ({"tau_sigma_min": 30.0}, "tau_sigma_min <= tau_sigma_max"),
    ({"simple_order_2": 1}, "simple_order_2=1 .* true or false"),
])
def test_bad_options_are_refused(options, message):
    model = zoo.load("gmm:ring8", schedule="edm")
    with pytest.raises(ValueError, match=message):
        solvers.sample("sa_solver", model, torch.randn(4, 2), nfe=5, **options)


def test_nfe_is_one_per_step_with_the_corrector():
    model = zoo.load("gmm:ring8", schedule="vp_linear")
    for to_zero in (True, False):
        for options in ({}, {"corrector_order": 0}, {"predictor_order": 4, "corrector_order": 4}):
            stats = {}
            solvers.sample("sa_solver", model, torch.randn(8, 2), nfe=9, generator=torch.Generator().manual_seed(0),
                           stats=stats, to_zero=to_zero, **options)
            assert stats["nfe"] == stats["n_steps"] == 9
