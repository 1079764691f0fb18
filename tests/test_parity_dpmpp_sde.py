"""The DPM-Solver++ SDE samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde) side by side with
k-diffusion and diffusers on the same network and noise, their Brownian-tree noise across step
counts, their eta = 0 limits and the distribution they sample on an exact mixture."""
import math
from functools import lru_cache

import pytest
import torch

import solvers
from benchmarks.kdiffusion import KCase, denoiser, run_case
from score_models import DiscreteVP, GaussianMixture, zoo
from solvers.grids import time_grid
from solvers.noise import randn_like
from solvers.samplers.dpmpp_sde import StepNoise, brownian_entropy

from conftest import rms

# k-diffusion's and diffusers' trees warn when queried at an endpoint past torchsde's 6-decimal
# rounding of it (the query is clamped to it); ours silences this itself.
pytestmark = pytest.mark.filterwarnings("ignore:Should have t:UserWarning")


@lru_cache(maxsize=None)
def mix16d(schedule: str):
    return zoo.load("gmm:mix16d", schedule=schedule)


def noise_for(model, n=8, seed=1, dtype=torch.float64):
    return torch.randn((n,) + model.sample_shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- side by side with k-diffusion ---------------------------------------------------------------
# Per-step Gaussian noise: k-diffusion's noise_sampler draws from the generator ours is given, in
# the same order (the harness's KCase(noise_sampler=True)).
K_CASES = [
    KCase("dpmpp_2m_sde", "dpmpp_2m_sde", noise_sampler=True),
    KCase("dpmpp_2m_sde", "dpmpp_2m_sde_heun", k_kwargs={"solver_type": "heun"}, noise_sampler=True),
    KCase("dpmpp_2m_sde", "dpmpp_2m_sde", {"eta": 0.5, "s_noise": 0.8}, {"eta": 0.5, "s_noise": 0.8},
          noise_sampler=True),
    KCase("dpmpp_2m_sde", "dpmpp_2m_sde", {"eta": 0.0}, {"eta": 0.0}, noise_sampler=True),
    KCase("dpmpp_3m_sde", "dpmpp_3m_sde", noise_sampler=True),
    KCase("dpmpp_3m_sde", "dpmpp_3m_sde", {"eta": 0.4, "s_noise": 1.3}, {"eta": 0.4, "s_noise": 1.3},
          noise_sampler=True),
    KCase("dpmpp_3m_sde", "dpmpp_3m_sde", {"eta": 0.0}, {"eta": 0.0}, noise_sampler=True),
    KCase("dpmpp_sde", "dpmpp_sde", {"eta": 0.0}, {"eta": 0.0}, noise_sampler=True),
]
# (schedule, grid, NFE): EDM and VP-linear, karras and exponential grids, several budgets
K_CONFIGS = [("edm", "karras", 7), ("edm", "exponential", 20), ("vp_linear", "karras", 20),
             ("vp_linear", "exponential", 7), ("edm", "karras", 13)]


@pytest.mark.parametrize("schedule,grid,nfe", K_CONFIGS)
def test_equal_to_k_diffusion_with_per_step_noise(k_sampling, schedule, grid, nfe):
    model = mix16d(schedule)
    for case in K_CASES:
        r = run_case(case, model, noise_for(model), nfe, seed=3, grid=grid)
        assert r["max_rel_diff"] < 1e-12, (case, nfe, r)
        assert r["nfe_ours"] == r["nfe_theirs"], (case, nfe, r)


class PathNoise:
    """A k-diffusion noise_sampler drawing from a shared generator: the normalised increment of a
    Brownian path over [sigma_next, sigma]; a call from the same sigma reaching further down
    extends the previous increment by a fresh one (sample_dpmpp_sde asks s -> u, then s -> t)."""

    def __init__(self, x, generator):
        self.x, self.generator, self.previous = x, generator, None

    def __call__(self, sigma, sigma_next):
        s, t = float(sigma), float(sigma_next)
        if self.previous is not None and self.previous[0] == s:
            u, w = self.previous[1], self.previous[2]
            w = w + math.sqrt(u - t) * randn_like(self.x, self.generator)
        else:
            w = math.sqrt(s - t) * randn_like(self.x, self.generator)
        self.previous = (s, t, w)
        return w / math.sqrt(s - t)


def k_side_by_side(sampling, sampler, options, k_name, k_kwargs, model, noise, nfe, grid, seed, kind):
    """Ours with noise_sampler=kind against k-diffusion given the same path: ``"tree"`` a
    BrownianTreeNoiseSampler seeded with our tree's entropy, ``"path"`` :class:`PathNoise` on the
    same generator. Returns (max rel diff, NFE ours, NFE theirs)."""
    spec = solvers.get(sampler)
    options = {"grid": grid, **options, "noise_sampler": "brownian" if kind == "tree" else "gaussian"}
    stats = {}
    ours = solvers.sample(sampler, model, noise, nfe=nfe, generator=torch.Generator().manual_seed(seed), stats=stats,
                          **options)
    times, _ = solvers.sampling.plan_times(spec, model, nfe, spec.with_fixed(dict(options)))
    schedule = model.schedule
    sigmas = schedule.sigma_tilde(times)
    x = schedule.prior_std_at(float(times[0])) * noise / float(schedule.alpha(times[0]))
    if kind == "tree":
        positive = sigmas[sigmas > 0]
        noise_sampler = sampling.BrownianTreeNoiseSampler(x, positive.min(), positive.max(),
                                                          seed=brownian_entropy(torch.Generator().manual_seed(seed)))
    else:
        noise_sampler = PathNoise(x, torch.Generator().manual_seed(seed))
    start = model.nfe
    with torch.no_grad():
        theirs = getattr(sampling, f"sample_{k_name}")(denoiser(model), x, sigmas, disable=True,
                                                       noise_sampler=noise_sampler, **k_kwargs)
    theirs = float(schedule.alpha(times[-1])) * theirs
    return float((ours - theirs).abs().max() / theirs.abs().max()), stats["nfe"], model.nfe - start


# (nfebench sampler, its options, k-diffusion function, its kwargs)
TREE_CASES = [
    ("dpmpp_sde", {}, "dpmpp_sde", {}),
    ("dpmpp_sde", {"eta": 0.7, "r": 0.3, "s_noise": 0.8}, "dpmpp_sde", {"eta": 0.7, "r": 0.3, "s_noise": 0.8}),
    ("dpmpp_2m_sde", {}, "dpmpp_2m_sde", {}),
    ("dpmpp_2m_sde_heun", {}, "dpmpp_2m_sde", {"solver_type": "heun"}),
    ("dpmpp_3m_sde", {}, "dpmpp_3m_sde", {}),
]


@pytest.mark.parametrize("schedule,grid,nfe", K_CONFIGS)
def test_equal_to_k_diffusion_on_the_same_brownian_tree(k_sampling, schedule, grid, nfe):
    model = mix16d(schedule)
    for sampler, options, k_name, k_kwargs in TREE_CASES:
        diff, ours, theirs = k_side_by_side(k_sampling, sampler, options, k_name, k_kwargs, model, noise_for(model),
                                            nfe, grid, seed=5, kind="tree")
        assert diff < 1e-12 and ours == theirs, (sampler, options, nfe, diff, ours, theirs)


@pytest.mark.parametrize("schedule,grid,nfe", K_CONFIGS)
def test_dpmpp_sde_equal_to_k_diffusion_with_gaussian_path_noise(k_sampling, schedule, grid, nfe):
    """The singlestep sampler's two noises are increments of one path over [s, u] and [s, t]; with
    per-step Gaussian draws from the shared generator, k-diffusion gets the same path (PathNoise)."""
    model = mix16d(schedule)
    for options in ({}, {"eta": 0.7, "r": 0.3, "s_noise": 0.8}):
        diff, ours, theirs = k_side_by_side(k_sampling, "dpmpp_sde", options, "dpmpp_sde", options, model,
                                            noise_for(model), nfe, grid, seed=2, kind="path")
        assert diff < 1e-12 and ours == theirs, (options, nfe, diff, ours, theirs)


# --- side by side with diffusers -----------------------------------------------------------------
# The gmm network of benchmarks.equivalence: the exact eps of the image-shaped mixture on diffusers'
# default DDPM schedule (linear betas 1e-4..0.02, 1000 steps). diffusers' network is evaluated at the
# noise level its update uses (scheduler.sigmas[step_index], or its midpoint sigma): for integer
# timesteps this is the timestep's own level up to diffusers' float32 alphas_cumprod, but with
# use_karras_sigmas DPMSolverMultistepScheduler rounds the timesteps it passes to the network while
# its update keeps the unrounded sigmas, and DPMSolverSDEScheduler's midpoint timesteps interpolate
# log sigma (not log alpha as DiscreteVP does). Our grid is diffusers' sigmas mapped to our times.
@lru_cache(maxsize=None)
def ddpm_mixtures():
    schedule = DiscreteVP.linear(1000, 1e-4, 0.02)
    preset = zoo.load("gmm:image3x8x8", schedule=schedule)

    def mixture(prediction):
        return GaussianMixture(preset.means.reshape(-1, 3, 8, 8), preset.variances.sqrt().reshape(-1, 3, 8, 8),
                               preset.weights, schedule=schedule, prediction=prediction)

    return mixture("x0"), mixture("eps")  # ours, diffusers' network


def diffusers_net(sigma, x, calls):
    _, theirs = ddpm_mixtures()
    calls.append(float(sigma))
    t = theirs.schedule.t_from_sigma_tilde(float(sigma))
    return theirs.net(x, t.expand(x.shape[0]).to(torch.float64)).to(x.dtype)


def diffusers_multistep(order, spacing, steps, karras, solver_type="midpoint", seed=0):
    """diffusers' DPMSolverMultistepScheduler(sde-dpmsolver++) against ours, noise from equally
    seeded generators: diffusers draws float32 noise in step(), so both run in float32."""
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        algorithm_type="sde-dpmsolver++", solver_order=order, solver_type=solver_type, timestep_spacing=spacing,
        use_karras_sigmas=karras)
    sched.set_timesteps(steps)
    latents = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float32)
    generator, calls = torch.Generator().manual_seed(seed), []
    x = latents * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = diffusers_net(sched.sigmas[sched.step_index or 0], sched.scale_model_input(x, t), calls)
        x = sched.step(eps, t, x, generator=generator).prev_sample
    ours_model, _ = ddpm_mixtures()
    grid = ours_model.schedule.t_from_sigma_tilde(sched.sigmas.double())
    options = dict(lower_order_final=True, solver_type=solver_type)
    if order == 3:
        options["third_order_term"] = "diffusers"
    stats = {}
    ours = solvers.sample(f"dpmpp_{order}m_sde", ours_model, latents, grid=grid, stats=stats,
                          generator=torch.Generator().manual_seed(seed), **options)
    return float((ours - x).abs().max() / x.abs().max()), stats["nfe"], len(calls)


# (timestep_spacing, steps, use_karras_sigmas); karras sigmas ignore the spacing
DIFFUSERS_CONFIGS = [("linspace", 7, False), ("leading", 13, False), ("trailing", 7, False), ("linspace", 13, False),
                     ("trailing", 13, False), ("leading", 7, False), ("linspace", 7, True), ("linspace", 13, True)]
SDE_CONFIGS = DIFFUSERS_CONFIGS[:3] + DIFFUSERS_CONFIGS[-2:]


@pytest.mark.parametrize("order", [2, 3])
def test_equal_to_diffusers_sde_dpmsolver_multistep(order):
    for spacing, steps, karras in DIFFUSERS_CONFIGS:
        diff, ours, theirs = diffusers_multistep(order, spacing, steps, karras)
        assert diff < 5e-6 and ours == theirs == steps, (order, spacing, steps, karras, diff, ours, theirs)
    diff, ours, theirs = diffusers_multistep(order, "linspace", 13, False, solver_type="heun")
    assert diff < 5e-6 and ours == theirs, (order, "heun", diff)


def diffusers_sde(spacing, steps, karras, seed=0, snap=False):
    """diffusers' DPMSolverSDEScheduler (noise_sampler_seed = our tree's entropy) against dpmpp_sde
    with noise_sampler="brownian", in float64. diffusers queries its tree at float32 sigmas
    (sigma_fn(t_fn(sigma)) and its midpoints in float32): where torchsde's 6-decimal rounding of
    those differs from ours, the path is read a few 1e-6 away, and a Brownian path moves by
    ~sqrt(1e-6) there. ``snap`` hands diffusers, in place of its own tree, ours with each query
    snapped to the nearest of our float64 sigmas and midpoints (the same path, read where our
    sampler reads it)."""
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    entropy = brownian_entropy(torch.Generator().manual_seed(seed))
    sched = diffusers.DPMSolverSDEScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                            beta_schedule="linear", timestep_spacing=spacing, use_karras_sigmas=karras,
                                            noise_sampler_seed=entropy)
    sched.set_timesteps(steps)
    latents = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)
    ours_model, _ = ddpm_mixtures()
    sigmas = torch.cat([sched.sigmas[0::2], sched.sigmas[-1:]]).double()  # diffusers repeats each inner sigma
    grid = ours_model.schedule.t_from_sigma_tilde(sigmas)
    x = latents * sched.init_noise_sigma
    if snap:
        levels = sigmas.tolist()
        midpoints = [math.exp(-(-math.log(s) + 0.5 * math.log(s / t))) for s, t in zip(levels, levels[1:]) if t > 0]
        points = levels[:-1] + midpoints
        tree = StepNoise("brownian", x, levels, torch.Generator().manual_seed(seed))

        def snapped(sigma, sigma_next):
            return tree(*(min(points, key=lambda p: abs(p - float(q))) for q in (sigma, sigma_next)))

    calls = []
    for t in sched.timesteps:
        if snap and sched.noise_sampler is None:
            sched.noise_sampler = snapped
        sigma = sched.sigmas[sched.step_index or 0] if sched.state_in_first_order else sched.mid_point_sigma
        eps = diffusers_net(sigma, sched.scale_model_input(x, t), calls)
        x = sched.step(eps, t, x).prev_sample
    noise = latents * float(sched.init_noise_sigma) * float(ours_model.schedule.alpha(grid[0]))  # the same x~_T
    stats = {}
    ours = solvers.sample("dpmpp_sde", ours_model, noise, grid=grid, noise_sampler="brownian", stats=stats,
                          generator=torch.Generator().manual_seed(seed))
    return float((ours - x).abs().max() / x.abs().max()), stats["nfe"], len(calls)


def test_equal_to_diffusers_dpmsolver_sde_on_the_same_brownian_path():
    for spacing, steps, karras in SDE_CONFIGS:
        diff, ours, theirs = diffusers_sde(spacing, steps, karras, snap=True)
        assert diff < 5e-6 and ours == theirs == 2 * steps - 1, (spacing, steps, karras, diff, ours, theirs)


def test_diffusers_dpmsolver_sde_own_tree_reads_the_same_path():
    """diffusers' own tree (same entropy), unmodified: equal up to its float32 query jitter, far
    closer than a run on another path."""
    for spacing, steps, karras in [("linspace", 7, False), ("trailing", 13, False), ("linspace", 13, True)]:
        diff, ours, theirs = diffusers_sde(spacing, steps, karras)
        assert diff < 1e-3 and ours == theirs, (spacing, steps, karras, diff)
    entropy = brownian_entropy(torch.Generator().manual_seed(0))
    ours_model, _ = ddpm_mixtures()
    times = time_grid(ours_model.schedule, 7, "karras")
    a = solvers.sample("dpmpp_sde", ours_model, noise_for(ours_model, 4), grid=times, noise_sampler="brownian",
                       generator=torch.Generator().manual_seed(0))
    b = solvers.sample("dpmpp_sde", ours_model, noise_for(ours_model, 4), grid=times, noise_sampler="brownian",
                       generator=torch.Generator().manual_seed(1))
    assert entropy != brownian_entropy(torch.Generator().manual_seed(1))
    assert float((a - b).abs().max() / a.abs().max()) > 0.1


# --- the Brownian tree is one path whatever the grid ----------------------------------------------
def test_brownian_increments_over_a_coarse_step_equal_the_sum_of_fine_ones():
    x = torch.zeros(512, 16, dtype=torch.float64)
    coarse = time_grid(mix16d("edm").schedule, 6, "karras", to_zero=False).tolist()  # sigma~ = t on EDM
    fine = sorted(set(coarse) | {math.sqrt(a * b) for a, b in zip(coarse, coarse[1:])}
                  | {a ** 0.25 * b ** 0.75 for a, b in zip(coarse, coarse[1:])}, reverse=True)
    coarse_noise = StepNoise("brownian", x, coarse, torch.Generator().manual_seed(7))
    fine_noise = StepNoise("brownian", x, fine, torch.Generator().manual_seed(7))
    fine_increments = {(a, b): fine_noise(a, b) * math.sqrt(a - b) for a, b in zip(fine, fine[1:])}
    for a, b in zip(coarse, coarse[1:]):
        z = coarse_noise(a, b)
        summed = sum(w for (u, v), w in fine_increments.items() if a >= u and v >= b)
        assert torch.allclose(z * math.sqrt(a - b), summed, rtol=0, atol=1e-12)
        # a standard normal in every entry (8192 of them)
        assert abs(float(z.mean())) < 5 / math.sqrt(z.numel())
        assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / z.numel())
    other = StepNoise("brownian", x, coarse, torch.Generator().manual_seed(8))
    assert not torch.allclose(other(coarse[0], coarse[1]), coarse_noise(coarse[0], coarse[1]))


def test_gaussian_path_noise_of_the_singlestep_stages():
    """noise_sampler="gaussian": s -> u then s -> t are increments of one path (correlation
    sqrt((s - u)/(s - t))); consecutive steps are independent draws."""
    x = torch.zeros(20000, dtype=torch.float64)
    noise = StepNoise("gaussian", x, [4.0, 1.0], torch.Generator().manual_seed(0))
    s, u, t = 4.0, 2.0, 1.0
    z1, z2, z3 = noise(s, u), noise(s, t), noise(t, 0.5)
    se = 5 / math.sqrt(x.numel())
    assert abs(float((z1 * z2).mean()) - math.sqrt((s - u) / (s - t))) < se
    assert abs(float((z2 * z3).mean())) < se and abs(float(z2.var()) - 1) < 2 * se


def test_brownian_runs_converge_across_step_counts():
    """On one Brownian path (the tree), runs with more steps approach each other (strong
    convergence; median over samples, as a few may switch modes); with fresh draws per step
    they stay as far apart as independent samples."""
    model = mix16d("edm")
    noise = noise_for(model, 32, seed=0)

    def runs(kind, budgets):
        return [solvers.sample("dpmpp_2m_sde", model, noise, nfe=nfe, noise_sampler=kind,
                               generator=torch.Generator().manual_seed(4)) for nfe in budgets]

    def gaps(xs):
        return [float((a - b).norm(dim=1).median()) for a, b in zip(xs, xs[1:])]

    tree, fresh = gaps(runs("brownian", (20, 40, 80, 160))), gaps(runs("gaussian", (20, 40)))
    assert all(b < 0.6 * a for a, b in zip(tree, tree[1:])), tree
    assert tree[-1] < 0.05 * fresh[0], (tree, fresh)


# --- eta = 0: the deterministic DPM-Solver++ samplers ----------------------------------------------
EQUAL_AT_ETA_0 = [
    ("dpmpp_sde", {}, "dpm_solver_singlestep", {"order": 2}),
    ("dpmpp_2m_sde", {"lower_order_final": True}, "dpm_solver", {"order": 2}),
    ("dpmpp_3m_sde", {"lower_order_final": True, "solver_type": "midpoint", "third_order_term": "exact"},
     "dpm_solver", {"order": 3}),
    ("dpmpp_3m_sde", {"lower_order_final": True, "solver_type": "midpoint"},
     "dpm_solver", {"order": 3, "third_order_term": "diffusers"}),
]


@pytest.mark.parametrize("schedule", ["vp_linear", "edm", "ddpm_linear", "ve", "rectified_flow"])
def test_eta_0_is_dpm_solver_plus_plus(schedule):
    model = mix16d(schedule)
    noise = noise_for(model, 16)
    times = time_grid(model.schedule, 12, "logsnr")
    for sampler, options, reference, ref_options in EQUAL_AT_ETA_0:
        ours = solvers.sample(sampler, model, noise, grid=times, eta=0.0, generator=torch.Generator().manual_seed(0),
                              **options)
        again = solvers.sample(sampler, model, noise, grid=times, eta=0.0, generator=torch.Generator().manual_seed(1),
                               **options)
        assert torch.equal(ours, again)  # no randomness drawn
        ref = solvers.sample(reference, model, noise, grid=times, **ref_options)
        assert rms(ours, ref) < 1e-12 * max(1.0, float(ref.abs().max())), (sampler, options)


def test_no_evaluation_at_sigma_zero():
    model = mix16d("vp_linear")
    seen = []
    original = model.x0

    def recording(x, t):
        seen.append(float(model.schedule.sigma(t)))
        return original(x, t)

    model.x0 = recording
    try:
        for sampler in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"):
            for nfe in (1, 2, 5):
                solvers.sample(sampler, model, noise_for(model), nfe=nfe, generator=torch.Generator().manual_seed(0))
    finally:
        del model.x0
    assert seen and min(seen) > 0


# --- the distribution sampled, against the exact mixture's moments ---------------------------------
def mixture_moments(model):
    w, mu, var = model.weights, model.means, model.variances
    mean = (w[:, None] * mu).sum(0)
    second = (w[:, None, None] * (torch.diag_embed(var) + mu[:, :, None] * mu[:, None, :])).sum(0)
    return mean, second - mean[:, None] * mean[None, :]


def moment_zscores(x, model):
    """max |z| of the sample mean and covariance against the exact ones, each standard error
    estimated from the samples."""
    mean, cov = mixture_moments(model)
    n = x.shape[0]
    centred = x - mean
    products = centred[:, :, None] * centred[:, None, :]
    shift = x.mean(0) - mean
    z_mean = shift / (x.std(0) / math.sqrt(n))
    z_cov = (products.mean(0) - shift[:, None] * shift[None, :] - cov) / (products.std(0) / math.sqrt(n))
    return float(z_mean.abs().max()), float(z_cov.abs().max())


@pytest.mark.parametrize("sampler,options,nfe,n", [
    ("dpmpp_2m_sde", {}, 50, 4000), ("dpmpp_2m_sde_heun", {"eta": 0.5}, 50, 4000),
    ("dpmpp_sde", {}, 99, 4000), ("dpmpp_sde", {"eta": 0.5, "r": 0.25}, 99, 4000), ("dpmpp_3m_sde", {}, 50, 4000),
    pytest.param("dpmpp_2m_sde", {"noise_sampler": "brownian"}, 50, 2000, marks=pytest.mark.slow),
])
def test_samples_have_the_mixture_moments(sampler, options, nfe, n):
    model = mix16d("edm")
    x = solvers.sample(sampler, model, noise_for(model, n, seed=0), nfe=nfe, generator=torch.Generator().manual_seed(1),
                       **options)
    z_mean, z_cov = moment_zscores(x, model)
    assert z_mean < 5 and z_cov < 5, (z_mean, z_cov)


@pytest.mark.slow
def test_diffusers_third_order_sde_term_drifts_with_more_steps():
    """diffusers' D2 weight (~ -1, reproduced by third_order_term="diffusers" and equal to diffusers
    above) moves the samples off the mixture as the step count grows; k-diffusion's does not."""
    model = mix16d("edm")
    noise = noise_for(model, 2000, seed=0)
    z = {term: moment_zscores(solvers.sample("dpmpp_3m_sde", model, noise, nfe=400, third_order_term=term,
                                             generator=torch.Generator().manual_seed(1)), model)[1]
         for term in ("k-diffusion", "diffusers")}
    assert z["k-diffusion"] < 5 and z["diffusers"] > 8, z


# --- bad options ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler,options,named", [
    ("dpmpp_sde", {"eta": -0.1}, "eta"), ("dpmpp_2m_sde", {"s_noise": -1.0}, "s_noise"),
    ("dpmpp_3m_sde", {"noise_sampler": "pink"}, "noise_sampler"),
    ("dpmpp_2m_sde", {"solver_type": "rk4"}, "solver_type"),
    ("dpmpp_3m_sde", {"third_order_term": "half"}, "third_order_term"), ("dpmpp_sde", {"r": 0.0}, "r"),
    ("dpmpp_sde", {"r": 1.5}, "r"), ("dpmpp_3m_sde", {"third_order_term": "diffusers", "eta": 0.5}, "eta"),
    ("dpmpp_2m_sde_heun", {"solver_type": "midpoint"}, "solver_type"),
])
def test_bad_options_are_refused(sampler, options, named):
    model = mix16d("edm")
    with pytest.raises(ValueError, match=named):
        solvers.sample(sampler, model, noise_for(model), nfe=5, **options)
