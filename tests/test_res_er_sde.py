"""res_multistep (RES, Zhang, Song & Chen 2023) and er_sde (ER-SDE-Solver, Cui et al. 2025), the
ComfyUI samplers k-diffusion lacks. ComfyUI itself cannot run here, so each is checked against:

- a running reference where the mathematics makes one equal to it: res_multistep (eta = 0) is
  k-diffusion's sample_dpmpp_2m_sde(eta=0, solver_type="heun") and diffusers'
  DPMSolverMultistepScheduler(solver_type="heun"); er_sde with phi(x) = x^2 and one stage is
  Euler-ancestral (= DDPM's posterior step), k-diffusion's sample_euler_ancestral, with shared noise;
- a few-line formula from each paper written here (the variation-of-constants integral with D
  replaced by its interpolant / Taylor polynomial, integrated by quadrature), step by step;
- the known difference from DPM-Solver++(2M) (phi_2 against phi_1/2 on the first difference);
- the exact mixture's moments (stochastic variants), with tolerances from the sample size.
Fitted orders of the deterministic variants run in tests/test_registry.py.
"""
import math

import pytest
import torch
from scipy import integrate

import solvers
from benchmarks.kdiffusion import KCase, run_case
from score_models import zoo
from solvers.grids import time_grid
from solvers.noise import randn_like


def _noise(model, n=32, seed=1):
    return torch.randn((n,) + tuple(model.sample_shape), generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


# --- side by side with k-diffusion --------------------------------------------------------------
KCASES = [
    # RES multistep == DPM-Solver++(2M) with the phi_2 ("heun") first-difference weight, no noise.
    KCase("dpmpp_2m_sde", "res_multistep", {}, {"eta": 0.0, "solver_type": "heun"}, noise_sampler=True),
    # ER-SDE-Solver-1 with phi(x) = x^2: r = sigma'^2/sigma^2, noise sigma' sqrt(1 - sigma'^2/sigma^2),
    # which is Euler-ancestral with eta = 1 (sigma_down = sigma'^2/sigma); same per-step noise.
    KCase("euler_ancestral", "er_sde", {"solver_type": "reverse_time_sde", "eta": 1.0, "max_stage": 1},
          {"eta": 1.0}, noise_sampler=True),
]


@pytest.mark.parametrize("case", KCASES, ids=lambda c: f"{c.k_name}-{c.sampler}")
@pytest.mark.parametrize("schedule, grid", [("edm", "karras"), ("vp_linear", "exponential"),
                                            ("rectified_flow", "karras")])
def test_equal_to_k_diffusion(k_sampling, case, schedule, grid):
    model = zoo.load("gmm:mix16d", schedule=schedule)
    for nfe in (7, 13):
        row = run_case(case, model, _noise(model), nfe, grid=grid)
        assert row["max_rel_diff"] <= 1e-10, row
        assert row["nfe_ours"] == row["nfe_theirs"] == nfe, row


# --- side by side with diffusers ----------------------------------------------------------------
diffusers = pytest.importorskip("diffusers")
from benchmarks.equivalence import Case, make_tiny_pipeline, run_case as diffusers_run_case, run_edm_case  # noqa: E402

HEUN_2M = dict(solver_order=2, algorithm_type="dpmsolver++", solver_type="heun", lower_order_final=False)


@pytest.mark.parametrize("steps", [7, 10, 13])
def test_res_multistep_equals_diffusers_edm_dpmsolver_heun(steps):
    case = Case("EDMDPMSolverMultistep 2M heun", "EDMDPMSolverMultistepScheduler",
                {k: v for k, v in HEUN_2M.items() if k != "algorithm_type"}, "res_multistep", dict(grid="karras"))
    row = run_edm_case(case, steps)
    assert row["max_abs_diff"] <= 1e-6 * row["max_abs_value"], row  # diffusers keeps float32 sigmas
    assert row["nfe_ours"] == row["diffusers_calls"] == steps, row


def test_res_multistep_equals_diffusers_dpmsolver_heun_on_ddpm_timesteps(tmp_path):
    pipe = make_tiny_pipeline(tmp_path / "pipe")
    case = Case("DPM-Solver++ 2M heun", "DPMSolverMultistepScheduler", HEUN_2M, "res_multistep", {},
                grid_from_diffusers=True)
    for spacing in ("leading", "trailing", "linspace"):
        row = diffusers_run_case(pipe, case, spacing, network="gmm", steps=10)
        assert row["max_abs_diff"] <= 1e-4, row  # the harness's bound (diffusers' float32 alphas_cumprod)
        assert row["nfe_ours"] == row["diffusers_calls"], row


# --- res_multistep: the paper's formula, written here -------------------------------------------
def _res_by_quadrature(model, noise, times):
    """RES multistep as the variation-of-constants integral x~_t = e^{-h} x~_s + int_0^h e^{-(h-u)}
    P(lambda_s + u) du with P the line through the last two (lambda, D), integrated by quadrature;
    the first step and a step onto sigma = 0 use P = D_s."""
    sched = model.schedule
    sig, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    x = sched.prior_std_at(float(times[0])) * noise / alphas[0]
    prev = None
    for i in range(len(sig) - 1):
        d = model.x0(alphas[i] * x, times[i])
        lam = -math.log(sig[i])
        if sig[i + 1] == 0:
            x = d
            continue
        h = math.log(sig[i] / sig[i + 1])
        kernel = lambda u: math.exp(-(h - u))  # noqa: E731
        if prev is None:
            x = math.exp(-h) * x + integrate.quad(kernel, 0, h, epsabs=0, epsrel=1e-13)[0] * d
        else:
            d_prev, lam_prev = prev
            w_cur = integrate.quad(lambda u: kernel(u) * (lam + u - lam_prev) / (lam - lam_prev), 0, h,
                                   epsabs=0, epsrel=1e-13)[0]
            w_prev = integrate.quad(lambda u: kernel(u) * (lam + u - lam) / (lam_prev - lam), 0, h,
                                    epsabs=0, epsrel=1e-13)[0]
            x = math.exp(-h) * x + w_cur * d + w_prev * d_prev
        prev = (d, lam)
    return alphas[-1] * x


@pytest.mark.parametrize("schedule", ["edm", "vp_linear", "ve"])
@pytest.mark.parametrize("grid, to_zero", [("karras", True), ("logsnr", False), ("uniform", True)])
def test_res_multistep_is_the_integral_of_the_linear_interpolant(schedule, grid, to_zero):
    model = zoo.load("gmm:mix16d", schedule=schedule)
    noise = _noise(model, n=16)
    times = time_grid(model.schedule, 9, grid, to_zero=to_zero)
    ours = solvers.sample("res_multistep", model, noise, grid=times)
    assert _rel(ours, _res_by_quadrature(model, noise, times)) < 1e-10


@pytest.mark.parametrize("grid", ["logsnr", "karras"])
def test_res_multistep_minus_dpmpp_2m_is_the_phi_2_term(grid):
    """Over two steps (the first is exponential Euler for both), RES - DPM-Solver++(2M) =
    alpha_2 h (phi_2(-h) - phi_1(-h)/2) (D_1 - D_0)/r with r = h_prev/h (r = 1 on a uniform
    log-SNR grid): the 2M "midpoint" weight phi_1/2 against the order condition's phi_2 (2M
    without diffusers' lower_order_final, which would make this last step first order)."""
    model = zoo.load("gmm:mix16d", schedule="vp_linear")
    sched = model.schedule
    noise = _noise(model)
    times = time_grid(sched, 2, grid, to_zero=False)
    sig, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    x0 = sched.prior_std_at(float(times[0])) * noise / alphas[0]
    d0 = model.x0(alphas[0] * x0, times[0])
    x1 = (sig[1] / sig[0]) * x0 + (1 - sig[1] / sig[0]) * d0
    d1 = model.x0(alphas[1] * x1, times[1])
    h_prev, h = math.log(sig[0] / sig[1]), math.log(sig[1] / sig[2])
    phi_1 = (1 - math.exp(-h)) / h
    phi_2 = (h - 1 + math.exp(-h)) / h**2
    expected = alphas[2] * h * (phi_2 - phi_1 / 2) * (d1 - d0) / (h_prev / h)
    diff = solvers.sample("res_multistep", model, noise, grid=times) - solvers.sample("dpmpp_2m", model, noise, grid=times,
                                                                               lower_order_final=False)
    assert float(expected.abs().max()) > 1e-4  # the term is there to see
    assert float((diff - expected).abs().max()) < 1e-12 * float(expected.abs().max()) + 1e-14


def test_res_multistep_is_dpmpp_2m_sde_heun_without_noise():
    model = zoo.load("gmm:mix16d", schedule="edm")
    noise = _noise(model)
    a = solvers.sample("res_multistep", model, noise, nfe=12)
    b = solvers.sample("dpmpp_2m_sde", model, noise, nfe=12, eta=0.0, solver_type="heun")
    assert _rel(a, b) < 1e-12


# --- er_sde: the paper's exact solution with D replaced by its Taylor polynomial ----------------
def _phi_and_derivative(solver_type, eta):
    if solver_type == "er_sde":
        return (lambda x: x * (math.exp(x**0.3) + 10), lambda x: math.exp(x**0.3) + 10 + 0.3 * x**0.3 * math.exp(x**0.3))
    if solver_type == "reverse_time_sde":
        return (lambda x: x ** (eta + 1), lambda x: (eta + 1) * x**eta)
    return (lambda x: x, lambda x: 1.0)


def _er_sde_by_quadrature(model, noise, times, solver_type, eta, max_stage, s_noise, generator):
    """x~_t = r x~_s + phi(t) int_t^s phi'(u)/phi(u)^2 P(u) du + s_noise sqrt(t^2 - s^2 r^2) z with
    P(u) = D + (u - s) D1 + (u - s)^2/2 D2 (min(max_stage, i + 1) terms; D1, D2 the backward divided
    differences in sigma~), the integral taken term by term by quadrature."""
    sched = model.schedule
    phi, dphi = _phi_and_derivative(solver_type, eta)
    sig, alphas = sched.sigma_tilde(times).tolist(), sched.alpha(times).tolist()
    x = sched.prior_std_at(float(times[0])) * noise / alphas[0]
    ds, d1s = [], []
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        ds.append(model.x0(alphas[i] * x, times[i]))
        if t == 0:
            x = ds[-1]
            continue
        k = min(max_stage, i + 1)
        m = [integrate.quad(lambda u: dphi(u) / phi(u) ** 2 * (u - s) ** j, t, s, epsabs=0, epsrel=1e-13)[0]
             for j in range(3)]
        r = phi(t) / phi(s)
        x_next = r * x + phi(t) * m[0] * ds[-1]
        if k >= 2:
            d1s.append((ds[-1] - ds[-2]) / (s - sig[i - 1]))
            x_next = x_next + phi(t) * m[1] * d1s[-1]
        if k >= 3:
            d2 = (d1s[-1] - d1s[-2]) / ((s - sig[i - 2]) / 2)
            x_next = x_next + phi(t) * m[2] / 2 * d2
        if s_noise > 0 and solver_type != "ode":
            x_next = x_next + s_noise * math.sqrt(max(t**2 - s**2 * r**2, 0.0)) * randn_like(x, generator)
        x = x_next
    return alphas[-1] * x


@pytest.mark.parametrize("options", [dict(solver_type="er_sde", max_stage=3, eta=1.0, s_noise=1.0),
                                     dict(solver_type="reverse_time_sde", max_stage=2, eta=0.5, s_noise=0.7),
                                     dict(solver_type="ode", max_stage=3, eta=1.0, s_noise=0.0)],
                         ids=lambda o: o["solver_type"])
@pytest.mark.parametrize("schedule, grid", [("edm", "karras"), ("vp_linear", "logsnr")])
def test_er_sde_is_the_papers_solution_with_taylor_expanded_d(options, schedule, grid):
    model = zoo.load("gmm:mix16d", schedule=schedule)
    noise = _noise(model, n=16)
    times = time_grid(model.schedule, 8, grid)
    ours = solvers.sample("er_sde", model, noise, grid=times, generator=torch.Generator().manual_seed(3), **options)
    ref = _er_sde_by_quadrature(model, noise, times, generator=torch.Generator().manual_seed(3), **options)
    assert _rel(ours, ref) < 1e-9


def test_er_sde_ode_first_stage_is_ddim():
    model = zoo.load("gmm:mix16d", schedule="vp_linear")
    noise = _noise(model)
    a = solvers.sample("er_sde", model, noise, nfe=10, solver_type="ode", max_stage=1)
    b = solvers.sample("euler", model, noise, nfe=10, grid="karras")
    assert _rel(a, b) < 1e-12


def test_er_sde_comfyui_riemann_sum_is_within_its_step_of_the_exact_integrals():
    """quadrature_points=n (ComfyUI's left Riemann sum) moves the result by O(1/n) of the
    correction terms: visible, and shrinking ~n-fold from n = 200 to n = 2000."""
    model = zoo.load("gmm:mix16d", schedule="edm")
    noise = _noise(model)
    kw = dict(nfe=10, solver_type="ode")
    exact = solvers.sample("er_sde", model, noise, **kw)
    gaps = [float((solvers.sample("er_sde", model, noise, quadrature_points=n, **kw) - exact).abs().max())
            for n in (200, 2000)]
    assert 1e-7 < gaps[0] < 1e-2 and 7 < gaps[0] / gaps[1] < 13, gaps


# --- distributions on the exact mixture ---------------------------------------------------------
N_DIST = 2000


def _moment_z_scores(model, x):
    """max |sample mean - exact mean| and max |sample covariance - exact covariance| in units of
    their standard errors at n = len(x) (the covariance entries' from 200,000 exact samples)."""
    mean, cov = model.data_mean(), model.data_covariance()
    big = model.sample_data(200_000, generator=torch.Generator().manual_seed(5), dtype=torch.float64) - mean
    se_mean = (torch.diag(cov) / len(x)).sqrt()
    se_cov = ((big[:, :, None] * big[:, None, :]).var(0) / len(x)).sqrt()
    return (float(((x.mean(0) - mean).abs() / se_mean).max()), float(((torch.cov(x.T) - cov).abs() / se_cov).max()))


@pytest.mark.parametrize("sampler, options", [("res_multistep_ancestral", {}), ("er_sde", {}),
                                              ("er_sde", dict(solver_type="reverse_time_sde"))],
                         ids=["res_multistep_ancestral", "er_sde", "er_sde-reverse_time_sde"])
def test_stochastic_variants_match_the_mixture_moments(sampler, options):
    """ring8 on EDM, n = 2000, 50 steps onto sigma = 0: every mean and covariance entry within 5
    standard errors of the exact moments (P ~ 1e-6 per entry for an unbiased sampler)."""
    model = zoo.load("gmm:ring8", schedule="edm")
    x = solvers.sample(sampler, model, _noise(model, N_DIST, seed=0), nfe=50,
                       generator=torch.Generator().manual_seed(1), **options)
    z_mean, z_cov = _moment_z_scores(model, x)
    assert z_mean < 5 and z_cov < 5, (z_mean, z_cov)


def test_moment_check_sees_missing_noise():
    """The same check fails when er_sde's noise is halved (its drift then no longer matches)."""
    model = zoo.load("gmm:ring8", schedule="edm")
    x = solvers.sample("er_sde", model, _noise(model, N_DIST, seed=0), nfe=50,
                       generator=torch.Generator().manual_seed(1), s_noise=0.5)
    assert max(_moment_z_scores(model, x)) > 10


# --- randomness, aliases, options ---------------------------------------------------------------
@pytest.mark.parametrize("sampler, options", [("res_multistep", dict(eta=1.0)), ("er_sde", {})])
def test_noise_comes_only_from_the_generator(sampler, options):
    model = zoo.load("gmm:ring8", schedule="edm")
    noise = _noise(model, 8)
    runs = []
    for global_seed, seed in ((0, 7), (123, 7), (0, 8)):
        torch.manual_seed(global_seed)
        runs.append(solvers.sample(sampler, model, noise, nfe=6, generator=torch.Generator().manual_seed(seed), **options))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_ancestral_alias_is_res_multistep_with_eta_1():
    model = zoo.load("gmm:ring8", schedule="edm")
    noise = _noise(model, 8)
    a = solvers.sample("res_multistep_ancestral", model, noise, nfe=8, generator=torch.Generator().manual_seed(2))
    b = solvers.sample("res_multistep", model, noise, nfe=8, eta=1.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="conflicts with alias 'res_multistep_ancestral'"):
        solvers.sample("res_multistep_ancestral", model, noise, nfe=8, eta=0.5)


def test_declarations():
    res, er = solvers.get("res_multistep"), solvers.get("er_sde")
    assert res.known_as == {"ComfyUI": "res_multistep"} and er.known_as == {"ComfyUI": "er_sde"}
    assert solvers.get("res_multistep_ancestral").known_as == {"ComfyUI": "res_multistep_ancestral"}
    assert not res.is_stochastic({}) and res.is_stochastic({"eta": 1.0}) and res.order_of({"eta": 1.0}) is None
    assert er.is_stochastic({}) and er.order_of({}) is None
    assert not er.is_stochastic({"solver_type": "ode"}) and er.order_of({"solver_type": "ode"}) == 2
    assert not er.is_stochastic({"solver_type": "reverse_time_sde", "eta": 0.0})
    assert er.order_of({"solver_type": "ode", "max_stage": 1}) == 1


@pytest.mark.parametrize("sampler, options, message", [
    ("er_sde", dict(solver_type="sde"), "option solver_type='sde' of sampler 'er_sde' is not valid; "
                                        "valid: 'er_sde', 'reverse_time_sde', 'ode'"),
    ("er_sde", dict(max_stage=4), "option max_stage=4 of sampler 'er_sde' is not valid; valid: 1, 2, 3"),
    ("er_sde", dict(eta=-1.0), "option eta=-1.0 of sampler 'er_sde' is not valid; valid: >= 0"),
    ("er_sde", dict(s_noise=-0.5), "option s_noise=-0.5 of sampler 'er_sde' is not valid; valid: >= 0"),
    ("er_sde", dict(quadrature_points=-1), "option quadrature_points=-1 of sampler 'er_sde' is not valid"),
    ("er_sde", dict(quadrature_points=2.5), "option quadrature_points=2.5 of sampler 'er_sde' must be a whole number"),
    ("res_multistep", dict(eta=-0.1), "option eta=-0.1 of sampler 'res_multistep' is not valid; valid: >= 0"),
    ("res_multistep", dict(s_noise=-1.0), "option s_noise=-1.0 of sampler 'res_multistep' is not valid; valid: >= 0"),
    ("res_multistep", dict(order=3), r"unknown option\(s\) \['order'\] for sampler 'res_multistep'; valid: eta, s_noise"),
])
def test_bad_options_name_the_valid_values(sampler, options, message):
    model = zoo.load("gmm:ring8", schedule="edm")
    with pytest.raises(ValueError, match=message):
        solvers.sample(sampler, model, torch.randn(2, 2), nfe=5, **options)


# --- deterministic limit: orders (slow; the declared orders also run in test_registry) ---------
@pytest.mark.slow
def test_er_sde_ode_orders_and_the_riemann_floor():
    """gmm:mix16d on EDM, sigma 2 -> 0.1: stage 3 converges at order 2, not 3 (its D' is a
    backward difference, O(h) off); ComfyUI's 200-point Riemann sum leaves a first-order term
    h/n that bends the last slope well below 2."""
    from benchmarks.convergence import fitted_order

    model = zoo.load("gmm:mix16d", schedule="edm")
    noise = _noise(model, 64, seed=0)
    span = dict(t_max=2.0, t_min=0.1, to_zero=False)
    reference = model.exact_ode_solution(model.schedule.prior_std_at(2.0) * noise, t_start=2.0, t_end=0.1)
    budgets = [64, 128, 256, 512]

    def errors(**options):
        return [float(((solvers.sample("er_sde", model, noise, nfe=n, solver_type="ode", **span, **options)
                        - reference) ** 2).mean().sqrt()) for n in budgets]

    stage3, riemann = errors(), errors(quadrature_points=200)
    assert abs(fitted_order(budgets, stage3) - 2.0) < 0.2, stage3
    assert -math.log(riemann[-1] / riemann[-2]) / math.log(2) < 1.6, riemann
