"""The ancestral and DPM-2 samplers (euler_ancestral, dpm_2, dpm_2_ancestral, dpmpp_2s_ancestral):

- side by side with k-diffusion's samplers on the same denoiser, sigmas and per-step noise;
- side by side with diffusers' EulerAncestralDiscreteScheduler, KDPM2DiscreteScheduler and
  KDPM2AncestralDiscreteScheduler on the exact mixture over diffusers' DDPM schedule, sharing
  the per-step noise through equally seeded generators;
- against exact identities of the family (DDIM, DDPM, Euler, DPM-Solver++(2S)) and the exact
  mixture's distribution.
"""
import inspect
import math

import pytest
import torch

import solvers
from benchmarks.kdiffusion import KCase, denoiser, run_case
from score_models import zoo
from solvers.grids import discrete_timesteps
from solvers.samplers.ancestral import ancestral_step
from solvers.sampling import plan_times

NAMES = ("euler_ancestral", "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral")


def _noise(model, n=32, seed=1):
    return torch.randn((n,) + tuple(model.sample_shape), generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _rel(a, b):
    return float((a - b).abs().max()) / float(b.abs().max())


# --- the ancestral split -------------------------------------------------------------------------
PAIRS = [(80.0, 40.0), (2.0, 1.9), (1.0, 0.01), (14.6, 0.03), (0.5, 0.0)]


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0, 1.5, 3.0])
def test_ancestral_step_lands_on_the_target_noise_level(eta):
    for sigma_from, sigma_to in PAIRS:
        down, up = ancestral_step(sigma_from, sigma_to, eta)
        assert 0.0 <= down <= sigma_to and 0.0 <= up <= sigma_to
        assert math.isclose(down**2 + up**2, sigma_to**2, rel_tol=1e-12, abs_tol=1e-300)


def test_ancestral_step_closed_forms():
    for sigma_from, sigma_to in PAIRS:
        r = sigma_to / sigma_from
        assert ancestral_step(sigma_from, sigma_to, 0.0) == (sigma_to, 0.0)
        down, up = ancestral_step(sigma_from, sigma_to, 1.0)  # DDPM's posterior std in the scaled space
        assert math.isclose(down, sigma_to * r, rel_tol=1e-14, abs_tol=1e-300)
        assert math.isclose(up, sigma_to * math.sqrt(1 - r * r), rel_tol=1e-14, abs_tol=1e-300)
    assert ancestral_step(1.0, 0.01, 3.0) == (0.0, 0.01)  # the noise is capped at sigma_to
    down, up = ancestral_step(1e6, 1e-4, 1.0)  # a tiny ratio keeps sigma_down > 0 (no cancellation)
    assert math.isclose(down, 1e-14, rel_tol=1e-14) and up == 1e-4


def test_ancestral_step_is_k_diffusions(k_sampling):
    for eta in (0.3, 1.0, 1.5):
        for sigma_from, sigma_to in PAIRS[:-1]:
            theirs = k_sampling.get_ancestral_step(torch.tensor(sigma_from, dtype=torch.float64),
                                                   torch.tensor(sigma_to, dtype=torch.float64), eta)
            for ours, their in zip(ancestral_step(sigma_from, sigma_to, eta), theirs):
                assert math.isclose(ours, float(their), rel_tol=1e-12, abs_tol=1e-15), (eta, sigma_from, sigma_to)


# --- side by side with k-diffusion ---------------------------------------------------------------
def _k(name, noise=True, **options):
    kwargs = {k: v for k, v in options.items() if k in ("eta", "s_noise")}
    return KCase(name, name, options, kwargs, noise_sampler=noise and name != "dpm_2")


K_CASES = [
    _k("euler_ancestral"), _k("euler_ancestral", eta=0.5, s_noise=0.7), _k("euler_ancestral", eta=1.5),
    _k("euler_ancestral", eta=0.0),
    _k("dpm_2"), _k("dpm_2", to_zero=False),
    _k("dpm_2_ancestral"), _k("dpm_2_ancestral", eta=0.5, s_noise=0.7), _k("dpm_2_ancestral", eta=0.0),
    _k("dpmpp_2s_ancestral"), _k("dpmpp_2s_ancestral", eta=0.3, s_noise=1.2), _k("dpmpp_2s_ancestral", eta=0.0),
    _k("dpmpp_2s_ancestral", to_zero=False),
]


@pytest.mark.parametrize("case", K_CASES, ids=lambda c: c.sampler + "".join(f"-{k}={v}" for k, v in c.options.items()))
@pytest.mark.parametrize("schedule, grid", [("edm", "karras"), ("vp_linear", "exponential")])
def test_equal_to_k_diffusion(k_sampling, case, schedule, grid):
    """Same denoiser, sigmas and per-step noise (k-diffusion's noise_sampler draws from the
    generator ours gets, in the same order): equal to round-off, the same number of calls.
    eta = 1.5 exercises the capped noise (sigma_down = 0 before the last step)."""
    model = zoo.load("gmm:mix16d", schedule=schedule)
    for nfe in (7, 10, 16):
        row = run_case(case, model, _noise(model), nfe, grid=grid)
        assert row["max_rel_diff"] <= 1e-10, row
        assert row["nfe_ours"] == row["nfe_theirs"], row


@pytest.mark.parametrize("schedule, grid", [("edm", "karras"), ("vp_linear", "exponential")])
def test_churned_dpm_2_equals_k_diffusion(k_sampling, schedule, grid):
    """k-diffusion's sample_dpm_2 draws its churn noise from torch's global generator once per
    step whether or not the step is churned; ours draws once per churned step. With step 0
    unchurned (s_tmax below sigma_0: k-diffusion would lift sigma above the grid there, which ours
    never does) and the unchurned steps last, the two streams line up once k-diffusion's unused
    first draw is skipped."""
    model = zoo.load("gmm:mix16d", schedule=schedule)
    spec, noise = solvers.get("dpm_2"), _noise(model)
    for nfe in (7, 16):
        times, n = plan_times(spec, model, nfe, {"grid": grid})
        sigmas = model.schedule.sigma_tilde(times)
        churn = dict(s_churn=5.0, s_tmax=float(0.5 * (sigmas[0] + sigmas[1])), s_tmin=float(sigmas[n - 2]), s_noise=0.9)
        generator = torch.Generator().manual_seed(3)
        torch.randn(noise.shape, generator=generator, dtype=noise.dtype)  # k-diffusion's unused step-0 draw
        stats = {}
        ours = solvers.sample("dpm_2", model, noise, nfe=nfe, generator=generator, stats=stats, grid=grid, **churn)
        x_tilde = model.schedule.prior_std_at(float(times[0])) * noise / float(model.schedule.alpha(times[0]))
        torch.manual_seed(3)
        start = model.nfe
        with torch.no_grad():
            theirs = k_sampling.sample_dpm_2(denoiser(model), x_tilde, sigmas, disable=True, **churn)
        theirs = float(model.schedule.alpha(times[-1])) * theirs
        assert _rel(ours, theirs) <= 1e-10 and stats["nfe"] == model.nfe - start
        plain = solvers.sample("dpm_2", model, noise, nfe=nfe, grid=grid)
        assert _rel(ours, plain) > 1e-3  # the churn did something


# --- exact identities of the family -------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["vp_linear", "edm", "rectified_flow"])
def test_euler_ancestral_is_ddim_with_the_same_eta(schedule):
    """Song et al. 2021a, eq. 12 in the scaled space: DDIM's c = eta sigma_s sqrt(1 - sigma~_s^2/sigma~_t^2)
    is alpha_s sigma_up, and its deterministic part lands on sigma_down; the noise is drawn in the
    same order (none on the step onto sigma = 0)."""
    model = zoo.load("gmm:mix16d", schedule=schedule)
    for eta in (0.0, 0.4, 1.0):
        run = lambda name: solvers.sample(name, model, _noise(model), nfe=12, grid="karras", eta=eta,
                                          generator=torch.Generator().manual_seed(7))
        assert _rel(run("euler_ancestral"), run("ddim")) <= 1e-12, eta


def test_euler_ancestral_at_eta_one_is_ddpm():
    """With eta = 1 the ancestral split is DDPM's posterior (Ho et al. 2020, Algorithm 2; beta tilde)."""
    model = zoo.load("gmm:ring8", schedule="ddpm_linear")
    run = lambda name, **o: solvers.sample(name, model, _noise(model), nfe=20, spacing="trailing",
                                           generator=torch.Generator().manual_seed(2), **o)
    assert _rel(run("euler_ancestral"), run("ddpm", variance="fixed_small")) <= 1e-12


@pytest.mark.parametrize("name, deterministic, options", [
    ("euler_ancestral", "euler", {}), ("dpm_2_ancestral", "dpm_2", {}),
    ("dpmpp_2s_ancestral", "dpm_solver_singlestep", {"order": 2}),
])
def test_eta_zero_is_the_ode_solver(name, deterministic, options):
    """eta = 0: no noise, the plain solver on the same grid, and the generator is not touched."""
    model = zoo.load("gmm:mix16d", schedule="vp_linear")
    for to_zero in (True, False):
        ours = solvers.sample(name, model, _noise(model), nfe=15, grid="karras", eta=0.0, to_zero=to_zero,
                              generator=torch.Generator().manual_seed(1))
        again = solvers.sample(name, model, _noise(model), nfe=15, grid="karras", eta=0.0, to_zero=to_zero)
        ode = solvers.sample(deterministic, model, _noise(model), nfe=15, grid="karras", to_zero=to_zero, **options)
        assert torch.equal(ours, again) and _rel(ours, ode) <= 1e-12
    assert not solvers.get(name).is_stochastic({"eta": 0.0}) and solvers.get(name).is_stochastic({})


@pytest.mark.parametrize("name", ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral"])
def test_same_seed_same_samples_different_seed_different(name):
    model = zoo.load("gmm:ring8", schedule="edm")
    run = lambda seed: solvers.sample(name, model, _noise(model), nfe=9, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1), run(1)) and not torch.allclose(run(1), run(2))


@pytest.mark.parametrize("name, schedule, nfe, options", [
    ("euler_ancestral", "vp_linear", 100, {"grid": "uniform"}),
    ("dpm_2_ancestral", "edm", 59, {}),
    ("dpmpp_2s_ancestral", "edm", 59, {}),
    pytest.param("euler_ancestral", "edm", 150, {"eta": 0.5}, marks=pytest.mark.slow),
    pytest.param("dpm_2_ancestral", "vp_linear", 99, {"eta": 0.7, "grid": "exponential"}, marks=pytest.mark.slow),
])
def test_ancestral_samplers_match_the_data_distribution(name, schedule, nfe, options):
    """With the exact denoiser, n = 2000 samples of ring8 (8 modes, radius 2, std 0.3): mean error
    < 0.1, covariance error < 0.25 (the suite's bounds for stochastic samplers at 4000 samples;
    the sampling error of these statistics is ~0.03 and ~0.06 here)."""
    model = zoo.load("gmm:ring8", schedule=schedule)
    x = solvers.sample(name, model, _noise(model, 2000, seed=0), nfe=nfe, generator=torch.Generator().manual_seed(0),
                       **options)
    mean_err = float((x.mean(0) - model.data_mean()).abs().max())
    cov_err = float((torch.cov(x.T) - model.data_covariance()).abs().max())
    assert mean_err < 0.1 and cov_err < 0.25, (mean_err, cov_err)


@pytest.mark.slow  # scipy's DOP853 at rtol 1e-11 for the exact endpoints
def test_dpm_2_converges_to_the_exact_ode_solution():
    """Exact PF-ODE endpoint of the mixture (to sigma = 0): the error shrinks ~4x per doubling."""
    model = zoo.load("gmm:mix16d", schedule="vp_linear")
    noise = _noise(model, 16)
    exact = model.exact_ode_solution(noise)
    errors = [float((solvers.sample("dpm_2", model, noise, nfe=2 * n - 1, grid="karras") - exact).abs().max())
              for n in (40, 80, 160)]
    assert errors[0] / errors[1] > 3.0 and errors[1] / errors[2] > 3.0, errors


def test_bad_options_name_the_valid_values():
    model = zoo.load("gmm:ring8", schedule="edm")
    noise = _noise(model, 4)
    cases = [
        ("euler_ancestral", {"eta": -0.5}, r"option eta=-0.5 of sampler 'euler_ancestral' is not valid; valid: >= 0"),
        ("euler_ancestral", {"s_noise": -1.0}, r"option s_noise=-1.0 .* valid: >= 0"),
        ("dpm_2_ancestral", {"eta": 1.5}, r"option eta=1.5 of sampler 'dpm_2_ancestral' is not valid; valid: >= 0 and <= 1"),
        ("dpmpp_2s_ancestral", {"eta": -1.0}, r"option eta=-1.0 .* valid: >= 0 and <= 1"),
        ("dpm_2", {"s_churn": -1.0}, r"option s_churn=-1.0 of sampler 'dpm_2' is not valid; valid: >= 0"),
        ("dpm_2", {"eta": 1.0}, r"unknown option\(s\) \['eta'\] for sampler 'dpm_2'; valid: s_churn, s_tmin, s_tmax, s_noise"),
        ("dpm_2_ancestral", {"s_noise": "x"}, r"option s_noise='x' .* must be a number"),
    ]
    for name, options, message in cases:
        with pytest.raises(ValueError, match=message):
            solvers.sample(name, model, noise, nfe=9, **options)


# --- side by side with diffusers ----------------------------------------------------------------
class _Diffusers:
    """diffusers' schedulers on the tiny DDPM pipeline's config (linear betas 1e-4..0.02, T = 1000),
    each built once (KDPM2's constructor converts all 1000 timesteps), and the exact mixture."""

    def __init__(self, tmp_path):
        import diffusers

        from benchmarks.equivalence import _network, _quiet_diffusers, make_tiny_pipeline

        _quiet_diffusers()
        pipe = make_tiny_pipeline(tmp_path / "ddpm")
        self.diffusers = diffusers
        self.base = diffusers.DDPMScheduler.load_config(pipe, subfolder="scheduler")
        self.exact, self.net = _network(pipe, "gmm", torch.float64)  # the equivalence harness's gmm network
        self._schedulers = {}

    def scheduler(self, cls, config, spacing):
        key = (cls, tuple(sorted(config.items())), spacing)
        if key not in self._schedulers:
            self._schedulers[key] = getattr(self.diffusers, cls).from_config(
                {**self.base, "timestep_spacing": spacing, **config})
        return self._schedulers[key]


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    pytest.importorskip("diffusers")
    return _Diffusers(tmp_path_factory.mktemp("ancestral"))


SAMPLER_OF = {"EulerAncestralDiscreteScheduler": "euler_ancestral", "KDPM2DiscreteScheduler": "dpm_2",
              "KDPM2AncestralDiscreteScheduler": "dpm_2_ancestral"}


def _level_of_this_call(scheduler):
    """The sigma~ at which the scheduler evaluates the current call: what its scale_model_input
    scales by (KDPM2's second call of a step is at its midpoint level, kept in sigmas_interpol,
    indexed one behind in the ancestral scheduler)."""
    k = scheduler.step_index
    if not hasattr(scheduler, "sigmas_interpol") or scheduler.state_in_first_order:
        return float(scheduler.sigmas[k])
    return float(scheduler.sigmas_interpol[k - 1 if hasattr(scheduler, "sigmas_up") else k])


def _at_its_own_level(hf, scheduler):
    """The exact mixture's eps at the noise level diffusers uses for each call, instead of at the
    level our DiscreteVP gives diffusers' (possibly rounded or fractional) timestep: separates the
    step arithmetic from the timestep conventions."""
    schedule = hf.exact.schedule

    def net(x_in, timestep):
        t = schedule.t_from_sigma_tilde(_level_of_this_call(scheduler))
        return hf.exact.net(x_in, t.expand(x_in.shape[0]))

    return net


def _theirs(hf, cls, config, spacing, steps, consistent, seed=0, n=4):
    from benchmarks.equivalence import diffusers_loop

    scheduler = hf.scheduler(cls, config, spacing)
    latents = torch.randn((n, 3, 8, 8), generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)
    calls = []
    net = _at_its_own_level(hf, scheduler) if consistent else hf.net
    counted = lambda x, t: calls.append(t) or net(x, t)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters  # the ancestral ones
    kwargs = {"generator": torch.Generator().manual_seed(seed)} if takes_generator else {}
    x = diffusers_loop(scheduler, counted, latents, steps, **kwargs)
    levels = scheduler.sigmas.double()
    if hasattr(scheduler, "sigmas_interpol"):  # KDPM2 keeps each level twice, beside its midpoints
        levels = torch.cat([levels[:1], levels[1:-1:2]])
    return x, latents, float(scheduler.init_noise_sigma), levels, len(calls)


def _named_options(config, spacing, steps):
    """The nfebench grid options that give diffusers' step levels: its spacing, or karras /
    exponential sigmas between the first and last spaced timestep's."""
    if not config:
        return {"spacing": spacing}
    ts = discrete_timesteps(1000, steps, spacing)
    return {"grid": "karras" if config.get("use_karras_sigmas") else "exponential",
            "t_max": float(ts[0]), "t_min": float(ts[-1])}


def _tensor_grid(schedule, levels):
    """Times at diffusers' own levels (float32 sigma~ at t = 0 may invert to a hair below 0)."""
    t = schedule.t_from_sigma_tilde(levels[:-1]).clamp(schedule.t_min, schedule.t_max)
    return torch.cat([t, torch.tensor([schedule.t_data], dtype=torch.float64)])


def _reproduces_levels(config, spacing, steps):
    """Whether a named grid gives diffusers' levels: not for linspace at fractional timesteps
    (999/(N-1) not whole), where diffusers interpolates sigma~ linearly between timesteps and our
    spacing rounds to training timesteps."""
    return bool(config) or spacing != "linspace" or (999 / (steps - 1)).is_integer()


def _ours(hf, name, latents, init_sigma, options, steps, seed=0):
    spec, schedule = solvers.get(name), hf.exact.schedule
    nfe = spec.count(steps, True, {})
    times, _ = plan_times(spec, hf.exact, nfe, dict(options))
    # diffusers starts at x~ = latents * init_noise_sigma; ours at x = prior_std * noise = alpha x~.
    noise = latents * init_sigma * float(schedule.alpha(times[0])) / schedule.prior_std_at(float(times[0]))
    stats = {}
    x = solvers.sample(name, hf.exact, noise, nfe=nfe, generator=torch.Generator().manual_seed(seed), stats=stats,
                       **options)
    return x, times, stats["nfe"]


DIFFUSERS_CASES = [
    (cls, config, spacing)
    for cls, configs in [("EulerAncestralDiscreteScheduler", [{}]),
                         ("KDPM2DiscreteScheduler", [{}, {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}]),
                         ("KDPM2AncestralDiscreteScheduler", [{}, {"use_karras_sigmas": True}])]
    for config in configs for spacing in ("leading", "trailing", "linspace")
]


def _id(case):
    cls, config, spacing = case
    return cls.replace("Scheduler", "") + "".join(f"-{k}" for k in config) + f"-{spacing}"


@pytest.mark.parametrize("case", DIFFUSERS_CASES, ids=_id)
def test_diffusers_step_arithmetic_and_noise(hf, case):
    """Our sampler on diffusers' levels, from the same latents and with diffusers' step(generator=)
    seeded as ours: equal up to diffusers' float32 (sigmas; EulerAncestral's state), the same
    number of network calls, when the exact mixture is evaluated at the level diffusers uses.

    Noise: EulerAncestral draws one tensor per step (the last one times sigma_up = 0; we draw none
    there), KDPM2Ancestral one per step but the last, in its second call; both in the model
    output's dtype (float64 here, as our state), so the streams are the same numbers."""
    cls, config, spacing = case
    name = SAMPLER_OF[cls]
    for steps in (7, 13):
        theirs, latents, init_sigma, levels, calls = _theirs(hf, cls, config, spacing, steps, consistent=True)
        named = _named_options(config, spacing, steps)
        options = named if _reproduces_levels(config, spacing, steps) else {"grid": _tensor_grid(hf.exact.schedule, levels)}
        ours, times, nfe = _ours(hf, name, latents, init_sigma, options, steps)
        our_levels = hf.exact.schedule.sigma_tilde(times)
        assert float(((our_levels - levels) / levels.clamp(min=1e-30)).abs().max()) <= 3e-7, (steps, options)
        assert _rel(ours, theirs) <= 2e-5, (steps, _rel(ours, theirs))
        assert nfe == calls == solvers.get(name).count(steps, True, {})
        if not _reproduces_levels(config, spacing, steps):
            rounded = hf.exact.schedule.sigma_tilde(_ours(hf, name, latents, init_sigma, named, steps)[1])
            assert float(((rounded - levels) / levels.clamp(min=1e-30)).abs().max()) > 1e-3


INTEGER_TIMESTEPS = [c for c in DIFFUSERS_CASES if not c[1] and c[2] != "linspace" and c[0] != "KDPM2DiscreteScheduler"]


@pytest.mark.parametrize("case", INTEGER_TIMESTEPS, ids=_id)
def test_diffusers_with_the_gmm_network(hf, case):
    """The equivalence harness's gmm network (exact eps at diffusers' timestep): where every call
    is at a training timestep (leading / trailing; KDPM2Ancestral's eta = 1 midpoint
    sqrt(sigma_i sigma_down) is sigma_{i+1} exactly), the same samples."""
    cls, config, spacing = case
    for steps in (7, 13):
        theirs, latents, init_sigma, _, calls = _theirs(hf, cls, config, spacing, steps, consistent=False)
        ours, _, nfe = _ours(hf, SAMPLER_OF[cls], latents, init_sigma, _named_options(config, spacing, steps), steps)
        assert _rel(ours, theirs) <= 2e-5 and nfe == calls


CONVENTION_CASES = [
    ("KDPM2DiscreteScheduler", {}, "leading"),  # midpoint timesteps interpolated in log sigma~
    ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}, "linspace"),  # step timesteps rounded
    ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}, "trailing"),  # step timesteps rounded
    ("EulerAncestralDiscreteScheduler", {}, "linspace"),  # sigma~ linear between timesteps 166 and 167
]


@pytest.mark.parametrize("case", CONVENTION_CASES, ids=_id)
def test_diffusers_timestep_conventions_are_the_whole_difference(hf, case):
    """Where diffusers calls the network at a timestep whose noise level under our DiscreteVP
    (log alpha piecewise linear in t) is not the level it steps with, the gmm network's results
    differ from ours (> 1e-6 relative); the level-consistent network removes the whole difference."""
    cls, config, spacing = case
    steps = 7
    plain, latents, init_sigma, levels, _ = _theirs(hf, cls, config, spacing, steps, consistent=False)
    consistent = _theirs(hf, cls, config, spacing, steps, consistent=True)[0]
    options = _named_options(config, spacing, steps) if _reproduces_levels(config, spacing, steps) else \
        {"grid": _tensor_grid(hf.exact.schedule, levels)}
    ours = _ours(hf, SAMPLER_OF[cls], latents, init_sigma, options, steps)[0]
    assert _rel(ours, plain) > 1e-6 and _rel(ours, consistent) <= 2e-5


@pytest.mark.slow  # scipy's DOP853 at rtol 1e-11 on 4 x 192 dimensions
@pytest.mark.parametrize("case", CONVENTION_CASES[:2], ids=_id)
def test_diffusers_conventions_are_small_beside_the_discretisation_error(hf, case):
    """diffusers' timestep conventions move KDPM2's samples by < 1% of the distance from either
    run to the exact PF-ODE solution from the same start."""
    cls, config, spacing = case
    steps = 7
    plain, latents, init_sigma, _, _ = _theirs(hf, cls, config, spacing, steps, consistent=False)
    ours, times, _ = _ours(hf, SAMPLER_OF[cls], latents, init_sigma, _named_options(config, spacing, steps), steps)
    t0 = float(times[0])
    exact = hf.exact.exact_ode_solution(latents * init_sigma * float(hf.exact.schedule.alpha(t0)), t_start=t0)
    assert float((ours - plain).abs().max()) < 0.01 * float((ours - exact).abs().max())
