"""LCM multistep sampling (the ``consistency`` sampler) and TCD (``tcd``) against diffusers'
LCMScheduler and TCDScheduler side by side, and against exact answers.

The student both sides run is one function: a ConsistencyModel on diffusers' own DDPM schedule
(DiscreteVP from its alphas_cumprod) whose network F makes nfebench's f = c_skip x~ + c_out F
equal to what diffusers computes from an eps network (the exact eps of an image-shaped Gaussian
mixture) and its own boundary scalings:

- LCMScheduler: f = c_skip_L(t) x_t + c_out_L(t) x0(x_t), with diffusers' c_skip_L, c_out_L
  (timestep_scaling, sigma_data = 0.5; evaluated by diffusers' own method) and x0 from eps;
- TCDScheduler: no boundary scalings, f = x0(x_t) = (x_t - sqrt(1 - abar) eps)/sqrt(abar), so the
  eps a ConsistencyModel implies, (x - alpha f)/sigma, is the network's eps.

LCM re-noises its f as clean data (variance sigma^2, not sigma^2 - eps^2): the student declares
sigma_min = 1e-12, so sqrt(tau^2 - sigma_min^2) = tau to the last bit. diffusers keeps
alphas_cumprod in float32; the schedulers here run with them cast to float64 (the same numbers our
DiscreteVP holds), so the comparison measures the algorithms (~1e-14), and once as shipped
(float32 coefficients, ~1e-7).
"""
import math

import pytest
import torch

import solvers
from benchmarks.sweep import runs_on
from score_models import DiscreteVP, GaussianMixture, zoo
from score_models.distilled import ConsistencyModel, consistency_scalings
from solvers.grids import time_grid

diffusers = pytest.importorskip("diffusers")

SIGMA_MIN, SIGMA_DATA = 1e-12, 0.5
STUDENT_SAMPLERS = ("consistency", "tcd")  # the declaration ConsistencyModel needs for tcd (see the report)


def _rel(ours, theirs):
    return float((ours - theirs).abs().max() / theirs.abs().max())


def _scheduler(name, beta_schedule="scaled_linear", float64=True, **config):
    diffusers.utils.logging.set_verbosity_error()
    sched = getattr(diffusers, name)(beta_schedule=beta_schedule, **config)
    if float64:
        sched.alphas_cumprod = sched.alphas_cumprod.to(torch.float64)
    return sched


def _mixture(schedule):
    preset = zoo.load("gmm:image3x8x8", schedule=schedule)
    return GaussianMixture(preset.means.reshape(-1, 3, 8, 8), preset.variances.sqrt().reshape(-1, 3, 8, 8),
                           preset.weights, schedule=schedule, prediction="eps")


class DiffusersStudent:
    """F(x, t) such that nfebench's f(x~, sigma~) = c_skip x~ + c_out F is the consistency function
    diffusers' scheduler forms from the eps network: (f_diffusers - c_skip x~) / c_out."""

    def __init__(self, scheduler, schedule, eps, boundary):
        self.scheduler, self.schedule, self.eps, self.boundary = scheduler, schedule, eps, boundary

    def f_diffusers(self, x, timestep):
        abar = self.scheduler.alphas_cumprod[timestep]
        eps = self.eps(x, torch.tensor(float(timestep), dtype=torch.float64))
        x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
        if not self.boundary:
            return x0
        c_skip, c_out = self.scheduler.get_scalings_for_boundary_condition_discrete(timestep)
        return c_out * x0 + c_skip * x

    def __call__(self, x, t_net):
        t = float(t_net[0])
        assert t.is_integer(), t  # the schedulers' timesteps
        alpha, sigma = float(self.schedule.alpha(t)), float(self.schedule.sigma(t))
        c_skip, c_out = consistency_scalings(sigma / alpha, SIGMA_MIN, SIGMA_DATA)
        return (self.f_diffusers(x, torch.tensor(int(t))) - c_skip * (x / alpha)) / c_out


def _student(scheduler, boundary):
    """(our ConsistencyModel, diffusers' eps network net(x, t)) built on the scheduler's schedule."""
    schedule = DiscreteVP(alphas_cumprod=scheduler.alphas_cumprod.to(torch.float64))
    exact = _mixture(schedule)
    eps = lambda x, t: exact.net(x, torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0]))
    net = DiffusersStudent(scheduler, schedule, eps, boundary)
    cm = ConsistencyModel(net, schedule, SIGMA_MIN, SIGMA_DATA, sample_shape=(3, 8, 8))
    cm.net_time_dtype = torch.float64
    cm.native_samplers = STUDENT_SAMPLERS
    return cm, eps


def _diffusers_run(scheduler, eps, latents, seed, steps=None, timesteps=None, **step_kwargs):
    """diffusers' loop; returns (sample, its timesteps, network calls)."""
    scheduler.set_timesteps(steps, timesteps=timesteps)
    generator, calls = torch.Generator().manual_seed(seed), 0
    x = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out, calls = eps(scheduler.scale_model_input(x, t), t), calls + 1
        x = scheduler.step(out, t, x, generator=generator, **step_kwargs).prev_sample
    return x, [int(t) for t in scheduler.timesteps], calls


def _ours(sampler, cm, latents, timesteps, seed, **options):
    # diffusers' timesteps, then timestep 0 where the chain ends (TCD's last step lands there;
    # LCM returns f at its last timestep and never looks at the end).
    grid = torch.tensor(timesteps + [0.0], dtype=torch.float64)
    stats = {}
    x = solvers.sample(sampler, cm, latents, grid=grid, generator=torch.Generator().manual_seed(seed),
                       stats=stats, **options)
    return x, stats["nfe"]


def _latents(n=4, seed=0):
    return torch.randn((n, 3, 8, 8), generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)


# --- LCM: the consistency sampler is LCMScheduler --------------------------------------------------
LCM_CASES = [(steps, beta, {}) for steps in (1, 2, 3, 4, 7, 13) for beta in ("scaled_linear", "linear")] + [
    (3, "scaled_linear", {"original_inference_steps": 100}), (6, "scaled_linear", {"timestep_scaling": 1.0})]


@pytest.mark.parametrize("steps,beta,config", LCM_CASES, ids=lambda v: str(v))
def test_consistency_sampler_is_lcm_scheduler(steps, beta, config):
    scheduler = _scheduler("LCMScheduler", beta, **config)
    cm, eps = _student(scheduler, boundary=True)
    latents = _latents(seed=steps)
    theirs, timesteps, calls = _diffusers_run(scheduler, eps, latents, seed=steps, steps=steps)
    ours, nfe = _ours("consistency", cm, latents, timesteps, seed=steps)
    assert _rel(ours, theirs) <= 1e-10 and nfe == calls == steps, (_rel(ours, theirs), nfe, calls)


def test_consistency_sampler_is_lcm_scheduler_with_float32_coefficients():
    """diffusers as shipped: float32 alphas_cumprod and boundary scalings."""
    for steps in (2, 5):
        scheduler = _scheduler("LCMScheduler", float64=False)
        cm, eps = _student(scheduler, boundary=True)
        latents = _latents(seed=steps)
        theirs, timesteps, calls = _diffusers_run(scheduler, eps, latents, seed=steps, steps=steps)
        ours, nfe = _ours("consistency", cm, latents, timesteps, seed=steps)
        assert _rel(ours, theirs) <= 1e-6 and nfe == calls == steps, _rel(ours, theirs)


# --- TCD ---------------------------------------------------------------------------------------------
# Default timesteps (999, 979, ...: 20k - 1) with gamma = 0 and 1, where diffusers' integer
# s = floor((1 - gamma) t') is (1 - gamma) t'; other gammas on timesteps (multiples of 4) where it
# is too. Elsewhere diffusers rounds s down to an integer timestep and we do not (see
# test_tcd_differs_only_by_the_floor_of_s).
TCD_CASES = ([(steps, gamma, None) for steps in (1, 2, 3, 4, 7) for gamma in (0.0, 1.0)]
             + [(None, gamma, ts) for gamma in (0.25, 0.5, 0.75)
                for ts in ([996, 748, 500, 252], [980, 600, 404, 200, 100, 48, 8])])


@pytest.mark.parametrize("steps,gamma,timesteps", TCD_CASES, ids=lambda v: str(v))
def test_tcd_is_tcd_scheduler(steps, gamma, timesteps):
    scheduler = _scheduler("TCDScheduler")
    cm, eps = _student(scheduler, boundary=False)
    latents = _latents(seed=len(timesteps or []) + (steps or 0))
    theirs, used, calls = _diffusers_run(scheduler, eps, latents, seed=5, steps=steps, timesteps=timesteps, eta=gamma)
    their_s = [int(torch.floor((1 - gamma) * torch.tensor(t))) for t in used[1:]]
    assert their_s == [(1 - gamma) * t for t in used[1:]]  # the comparable case
    ours, nfe = _ours("tcd", cm, latents, used, seed=5, gamma=gamma)
    assert _rel(ours, theirs) <= 1e-10 and nfe == calls == len(used), (_rel(ours, theirs), nfe, calls)


def test_tcd_is_tcd_scheduler_with_float32_coefficients():
    scheduler = _scheduler("TCDScheduler", float64=False)
    cm, eps = _student(scheduler, boundary=False)
    latents = _latents()
    for steps, gamma in ((4, 0.0), (4, 1.0), (7, 1.0)):
        theirs, used, calls = _diffusers_run(scheduler, eps, latents, seed=1, steps=steps, eta=gamma)
        ours, nfe = _ours("tcd", cm, latents, used, seed=1, gamma=gamma)
        assert _rel(ours, theirs) <= 1e-6 and nfe == calls, _rel(ours, theirs)


def test_tcd_differs_only_by_the_floor_of_s():
    """diffusers' default gamma = 0.3 on its default timesteps: diffusers steps to the integer
    timestep s = floor(0.7 t'), we to s = 0.7 t' (a fraction of a timestep above it). The samples
    then differ, by a small amount (the same noise, s off by < 1 of 1000 timesteps)."""
    scheduler = _scheduler("TCDScheduler")
    cm, eps = _student(scheduler, boundary=False)
    latents = _latents()
    theirs, used, _ = _diffusers_run(scheduler, eps, latents, seed=2, steps=4, eta=0.3)
    assert any(0.7 * t != math.floor(0.7 * t) for t in used[1:])
    ours, _ = _ours("tcd", cm, latents, used, seed=2, gamma=0.3)
    assert 1e-9 < _rel(ours, theirs) < 1e-2


# --- exact answers --------------------------------------------------------------------------------
class DenoiserAsF:
    """F with f = the mixture's exact denoiser D (a consistency model whose f is E[x0 | x_t])."""

    def __init__(self, gmm):
        self.gmm = gmm

    def __call__(self, x, t_net):
        t = float(t_net[0])
        sched = self.gmm.schedule
        alpha, sigma = float(sched.alpha(t)), float(sched.sigma(t))
        c_skip, c_out = consistency_scalings(sigma / alpha, SIGMA_MIN, SIGMA_DATA)
        return (self.gmm.x0(x, t) - c_skip * (x / alpha)) / c_out


def _denoiser_student(schedule):
    gmm = zoo.load("gmm:mix16d", schedule=schedule)
    cm = ConsistencyModel(DenoiserAsF(gmm), gmm.schedule, SIGMA_MIN, SIGMA_DATA, sample_shape=(16,))
    cm.net_time_dtype = torch.float64
    cm.native_samplers = STUDENT_SAMPLERS
    return gmm, cm


@pytest.mark.parametrize("schedule", ["edm", "vp_linear", "ddpm_linear", "rectified_flow"])
def test_tcd_gamma_0_is_ddim_with_the_students_x0_and_eps(schedule):
    gmm, cm = _denoiser_student(schedule)
    noise = torch.randn(32, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for to_zero in (True, False):
        times = time_grid(cm.schedule, 9, "edm", to_zero=to_zero)
        stats = {}
        ours = solvers.sample("tcd", cm, noise, grid=times, gamma=0.0, stats=stats)
        want = solvers.sample("ddim", gmm, noise, grid=times)
        assert float((ours - want).abs().max()) < 1e-11 and stats["nfe"] == 9


@pytest.mark.parametrize("schedule", ["edm", "vp_linear"])
def test_tcd_gamma_1_is_lcm_multistep_sampling(schedule):
    """On a grid ending at sigma = 0 and a schedule whose t = 0 is sigma = 0, gamma = 1 steps to
    s = 0 (x0) and re-noises to t' with sigma(t'): LCM's chain, i.e. the consistency sampler with
    the same noise, draw for draw."""
    _, cm = _denoiser_student(schedule)
    noise = torch.randn(32, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for nfe in (1, 2, 5):
        ours = solvers.sample("tcd", cm, noise, nfe=nfe, gamma=1.0, to_zero=True,
                              generator=torch.Generator().manual_seed(nfe))
        lcm = solvers.sample("consistency", cm, noise, nfe=nfe, to_zero=True, generator=torch.Generator().manual_seed(nfe))
        assert float((ours - lcm).abs().max()) < 1e-11


@pytest.mark.slow  # scipy's DOP853 at rtol 1e-11 per evaluation
def test_one_step_tcd_is_the_exact_trajectory_end():
    """With the exact consistency function (PF-ODE solution to sigma~_min), one TCD step onto
    sigma = 0 returns f: the exact trajectory end, whatever gamma."""
    gmm = zoo.load("gmm:ring8", schedule="vp_linear")
    sched = gmm.schedule
    sigma_min = float(sched.sigma_tilde(sched.t_min))

    def exact_f(x, t_net):
        t = float(t_net[0])
        end = gmm.exact_ode_solution(x, t_start=t, t_end=sched.t_min) / float(sched.alpha(sched.t_min))
        c_skip, c_out = consistency_scalings(float(sched.sigma_tilde(t)), sigma_min, SIGMA_DATA)
        return (end - c_skip * x / float(sched.alpha(t))) / c_out

    cm = ConsistencyModel(exact_f, sched, sigma_min, SIGMA_DATA, sample_shape=(2,))
    cm.net_time_dtype = torch.float64
    cm.native_samplers = STUDENT_SAMPLERS
    noise = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    exact = gmm.exact_ode_solution(noise, t_end=sched.t_min) / float(sched.alpha(sched.t_min))
    for gamma in (0.0, 1.0):
        stats = {}
        one = solvers.sample("tcd", cm, noise, nfe=1, gamma=gamma, to_zero=True, stats=stats)
        torch.testing.assert_close(one, exact, rtol=1e-9, atol=1e-9)
        assert stats["nfe"] == 1


# --- declarations, counts and errors ---------------------------------------------------------------
def test_tcd_counts_one_evaluation_per_step_on_shipped_students():
    """What the registry-wide NFE test will do once the students name tcd (see the report)."""
    runs = [("toy2d-moons-cd", gamma, to_zero, nfe) for gamma in (0.0, 0.3, 1.0) for to_zero in (True, False)
            for nfe in (1, 3)] + [("toy2d-moons-cd", 0.3, False, 7), ("digits-unet-cd", 0.3, False, 2)]
    models = {}
    for name, gamma, to_zero, nfe in runs:
        if name not in models:
            models[name] = zoo.load(name)
            models[name].native_samplers = STUDENT_SAMPLERS
        model = models[name]
        noise = torch.randn((4,) + model.sample_shape, generator=torch.Generator().manual_seed(0))
        stats = {}
        with torch.inference_mode():
            x = solvers.sample("tcd", model, noise, nfe=nfe, gamma=gamma, to_zero=to_zero,
                               generator=torch.Generator().manual_seed(1), stats=stats)
        assert stats["nfe"] == stats["n_steps"] == nfe and bool(torch.isfinite(x).all())
        assert x.dtype == torch.float32


def test_tcd_is_exclusive_and_checks_gamma():
    spec = solvers.get("tcd")
    assert spec.exclusive and spec.known_as == {"diffusers": "TCDScheduler"}
    assert spec.is_stochastic({}) and not spec.is_stochastic({"gamma": 0.0})
    teacher = zoo.load("gmm:ring8", schedule="vp_linear")
    _, student = _denoiser_student("vp_linear")
    assert runs_on("tcd", student) and not runs_on("tcd", teacher)
    noise = torch.randn(4, 2)
    with pytest.raises(ValueError, match="tcd runs only on models that name it as a native sampler"):
        solvers.sample("tcd", teacher, noise, nfe=2)
    noise16 = torch.randn(4, 16, dtype=torch.float64)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"option gamma={bad} of sampler 'tcd' is not valid; valid: >= 0 and <= 1"):
            solvers.sample("tcd", student, noise16, nfe=2, gamma=bad)


def test_lcm_alias_runs_the_consistency_sampler():
    if "lcm" not in solvers.aliases():
        pytest.skip("the lcm alias of consistency is not registered yet (see solvers/samplers/lcm.py)")
    spec = solvers.get("lcm")
    assert spec.alias_of == "consistency" and spec.fixed == {}
    assert spec.known_as == {"ComfyUI": "lcm", "diffusers": "LCMScheduler"}
    _, cm = _denoiser_student("edm")
    cm.native_samplers = ("consistency", "lcm", "tcd")
    noise = torch.randn(8, 16, dtype=torch.float64)
    got = solvers.sample("lcm", cm, noise, nfe=3, generator=torch.Generator().manual_seed(1))
    want = solvers.sample("consistency", cm, noise, nfe=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, want)
