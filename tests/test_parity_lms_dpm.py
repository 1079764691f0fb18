"""lms, dpm_fast and dpm_adaptive side by side with k-diffusion (and lms with diffusers'
LMSDiscreteScheduler) on the same network and noise, against exact answers, and their errors.

k-diffusion's sample_dpm_fast / sample_dpm_adaptive take (sigma_min, sigma_max) instead of a grid:
they get our grid's first and last positive noise levels, and when our grid ends at sigma = 0 we
apply the one final denoising step to their output (k-diffusion and ComfyUI stop at sigma_min).
"""
import math

import numpy as np
import pytest
import torch

import solvers
from benchmarks.kdiffusion import KCase, denoiser, run_case
from score_models import NFEBudgetExceeded, zoo
from solvers.noise import randn_like
from solvers.samplers.dpm_adaptive import fast_orders
from solvers.samplers.lms import lms_coefficients

from conftest import rms

# k-diffusion's sample_dpm_* call torch.tensor() on the (tensor) sigma_min/sigma_max they are given.
pytestmark = pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These are 16-dimensional states: torch's intra-op threads only add synchronisation (which
    stalls badly on a loaded machine), so this module runs single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def noise_for(model, n=16, seed=1):
    return torch.randn((n,) + model.sample_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module", params=["edm", "vp_linear"])
def mixture(request):
    return zoo.load("gmm:mix16d", schedule=request.param)


# --- lms ---------------------------------------------------------------------------------------
def _lagrange_integrals(nodes, a, b):
    """int_a^b l_j for the Lagrange basis on ``nodes``, expanded and integrated exactly."""
    out = []
    for j, node in enumerate(nodes):
        others = [n for k, n in enumerate(nodes) if k != j]
        basis = (np.polynomial.Polynomial.fromroots(others) if others else np.polynomial.Polynomial([1.0]))
        basis = basis / np.prod([node - n for n in others])
        antiderivative = basis.integ()
        out.append(antiderivative(b) - antiderivative(a))
    return out


def test_lms_coefficients_are_the_integrated_lagrange_basis(k_sampling):
    model = zoo.load("gmm:mix16d", schedule="edm")
    sigmas = model.schedule.sigma_tilde(solvers.grids.time_grid(model.schedule, 12, "karras")).tolist()
    for i in range(len(sigmas) - 1):
        for order in range(1, min(i + 1, 4) + 1):
            ours = lms_coefficients(sigmas, i, order)
            exact = _lagrange_integrals([sigmas[i - j] for j in range(order)], sigmas[i], sigmas[i + 1])
            quad = [k_sampling.linear_multistep_coeff(order, np.array(sigmas), i, j) for j in range(order)]
            scale = abs(sigmas[i + 1] - sigmas[i])
            assert np.allclose(ours, exact, rtol=0, atol=1e-12 * max(scale, 1e-3)), (i, order)
            assert np.allclose(ours, quad, rtol=0, atol=1e-12 * max(scale, 1e-3)), (i, order)
            assert math.isclose(sum(ours), sigmas[i + 1] - sigmas[i], rel_tol=1e-12)  # integrates constants
    with pytest.raises(ValueError, match="order 3 needs 3 past slopes; step 1 has 2"):
        lms_coefficients(sigmas, 1, 3)


@pytest.mark.parametrize("grid", ["karras", "exponential", "vp"])
def test_lms_matches_k_diffusion(k_sampling, mixture, grid):
    noise = noise_for(mixture)
    for nfe in (7, 13, 25):
        for order in (1, 2, 3, 4, 6):
            r = run_case(KCase("lms", "lms", {"order": order}, {"order": order}), mixture, noise, nfe, grid=grid)
            assert r["max_rel_diff"] <= 1e-10, r
            assert r["nfe_ours"] == r["nfe_theirs"] == nfe, r


def test_lms_is_ipndm_with_variable_steps(mixture):
    """The same variable-step Adams-Bashforth method in sigma~ (k-diffusion's lms and ipndm_v)."""
    noise = noise_for(mixture)
    for order in (2, 4):
        for to_zero in (True, False):
            a = solvers.sample("lms", mixture, noise, nfe=13, order=order, to_zero=to_zero)
            b = solvers.sample("ipndm", mixture, noise, nfe=13, max_order=order, variable_step=True, to_zero=to_zero)
            assert rms(a, b) <= 1e-12 * float(b.abs().max())


def test_lms_order_four_away_from_the_warm_up_cap():
    """From sigma~ = 80 (nearly linear ODE) the first steps' lower order costs little: order 4 shows."""
    from benchmarks.convergence import endpoint_errors

    model = zoo.load("gmm:mix16d", schedule="edm")
    noise = noise_for(model, n=64, seed=0)
    _, errors = endpoint_errors("lms", model, noise, [128, 256], t_max=80.0, t_min=0.1, to_zero=False)
    assert math.log2(errors[0] / errors[1]) > 3.5, errors


# --- lms against diffusers' LMSDiscreteScheduler -----------------------------------------------
diffusers = pytest.importorskip("diffusers")
SIGMA_KINDS = {"timesteps": {}, "karras": {"use_karras_sigmas": True}, "exponential": {"use_exponential_sigmas": True},
               "beta": {"use_beta_sigmas": True}}


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from benchmarks.equivalence import make_tiny_pipeline

    diffusers.utils.logging.set_verbosity_error()
    return make_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "ddpm")


class _LMSInFloat64(diffusers.LMSDiscreteScheduler):
    """diffusers' LMS with its two float32 roundings lifted: the input scaling x/sqrt(sigma^2 + 1)
    and the coefficient integrand, both evaluated on the float32 sigma table."""

    def scale_model_input(self, sample, timestep):
        if self.step_index is None:
            self._init_step_index(timestep)
        self.is_scale_input_called = True
        return sample / (float(self.sigmas[self.step_index]) ** 2 + 1) ** 0.5

    def get_lms_coefficient(self, order, t, current_order):
        return lms_coefficients(self.sigmas.double().tolist(), t, order)[current_order]


def _lms_vs_diffusers(pipe, spacing, steps, config, cls=diffusers.LMSDiscreteScheduler):
    """diffusers' loop with the exact mixture (the gmm network of benchmarks.equivalence) evaluated
    at the noise level diffusers assigns to the step, and our lms on the grid of those levels: both
    see the same (x, sigma) at every evaluation, also where diffusers' timesteps are fractional."""
    from benchmarks.equivalence import _network, diffusers_loop

    model, _ = _network(pipe, "gmm", torch.float64)
    sched = model.schedule
    base = diffusers.DDPMScheduler.load_config(pipe, subfolder="scheduler")
    scheduler = cls.from_config({**base, "timestep_spacing": spacing, **config})
    latents = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(1000), dtype=torch.float64)

    def net(x, t):
        return model.eps(x, sched.t_from_sigma_tilde(float(scheduler.sigmas[scheduler.step_index])))

    start = model.nfe
    theirs = diffusers_loop(scheduler, net, latents, steps)
    their_nfe = model.nfe - start
    levels = scheduler.sigmas[:-1].double()  # then 0
    times = torch.cat([sched.t_from_sigma_tilde(levels).clamp(sched.t_min, sched.t_max),
                       torch.tensor([sched.t_data], dtype=torch.float64)])
    noise = latents * float(scheduler.init_noise_sigma) * float(sched.alpha(times[0]))  # the same x~ at the start
    stats = {}
    ours = solvers.sample("lms", model, noise, grid=times, stats=stats)
    return float((ours - theirs).abs().max()) / float(theirs.abs().max()), stats["nfe"], their_nfe


@pytest.mark.parametrize("kind", list(SIGMA_KINDS))
def test_lms_matches_diffusers(tiny_pipeline, kind):
    for spacing in ("linspace", "leading", "trailing"):
        for steps in (7, 13, 25):
            diff, ours, theirs = _lms_vs_diffusers(tiny_pipeline, spacing, steps, SIGMA_KINDS[kind])
            # diffusers scales the network input with float32 sigmas; on the beta grid's long last
            # steps that rounding grows to ~3e-5 (see the float64 test below).
            assert diff <= (1e-4 if kind == "beta" else 1e-6), (spacing, steps, diff)
            assert ours == theirs == steps


def test_lms_matches_diffusers_lifted_to_float64(tiny_pipeline):
    """With diffusers' float32 roundings lifted, the beta grid agrees to ~1e-8 too."""
    for spacing, steps in [("linspace", 7), ("leading", 7), ("trailing", 13)]:
        diff, _, _ = _lms_vs_diffusers(tiny_pipeline, spacing, steps, SIGMA_KINDS["beta"], cls=_LMSInFloat64)
        assert diff <= 1e-7, (spacing, steps, diff)


def test_lms_case_for_the_equivalence_harness(tiny_pipeline):
    """The Case proposed for benchmarks.equivalence.CASES: diffusers' own loop (network at its
    integer timesteps) against lms on the spacing's grid."""
    from benchmarks.equivalence import Case, run_case

    case = Case("LMSDiscrete", "LMSDiscreteScheduler", {}, "lms", {}, scale_noise_like="sigma")
    for spacing, steps in [("leading", 7), ("leading", 13), ("trailing", 13), ("trailing", 25), ("linspace", 10)]:
        r = run_case(tiny_pipeline, case, spacing, network="gmm", steps=steps)
        assert r["max_abs_diff"] <= 1e-6 * r["max_abs_value"], r
        assert r["nfe_ours"] == r["diffusers_calls"] == steps, r


# --- dpm_fast and dpm_adaptive against k-diffusion ---------------------------------------------
def _k_dpm(sampling, name, model, noise, nfe, to_zero, seed=0, **options):
    """(max |ours - theirs| / max |theirs|, our stats, k-diffusion's NFE, k-diffusion's info)."""
    spec = solvers.get(name)
    stats = {}
    ours = solvers.sample(name, model, noise, nfe=nfe, generator=torch.Generator().manual_seed(seed), stats=stats,
                          to_zero=to_zero, **options)
    times, _ = solvers.sampling.plan_times(spec, model, nfe, {"to_zero": to_zero})
    sched = model.schedule
    t_first, t_last = times[0], times[-2] if to_zero else times[-1]
    sigma_max, sigma_min = sched.sigma_tilde(t_first), sched.sigma_tilde(t_last)  # float64 0-d tensors
    x = sched.prior_std_at(float(t_first)) * noise / float(sched.alpha(t_first))
    generator = torch.Generator().manual_seed(seed)
    kwargs = dict(options)
    if options.get("eta", 0.0) > 0:
        kwargs["noise_sampler"] = lambda sigma, sigma_next: randn_like(x, generator)
    D = denoiser(model)
    start = model.nfe
    # k-diffusion builds its log-SNR grid with torch.linspace (and atol with torch.tensor) in the
    # default dtype: float32 would round its step times to ~1e-7 (differences up to ~7e-5).
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            if name == "dpm_fast":
                info = None
                y = sampling.sample_dpm_fast(D, x, sigma_min, sigma_max, nfe - to_zero, disable=True, **kwargs)
            else:
                y, info = sampling.sample_dpm_adaptive(D, x, sigma_min, sigma_max, disable=True, return_info=True,
                                                       **kwargs)
    finally:
        torch.set_default_dtype(default)
    their_nfe = model.nfe - start
    if to_zero:
        y = D(y, sigma_min.reshape(1))
    theirs = float(sched.alpha(times[-1])) * y
    return float((ours - theirs).abs().max()) / float(theirs.abs().max()), stats, their_nfe, info


@pytest.mark.parametrize("to_zero", [False, True])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpm_fast_matches_k_diffusion(k_sampling, mixture, to_zero, eta):
    noise = noise_for(mixture)
    for nfe in (2, 3, 4, 5, 7, 10, 13, 25):
        diff, stats, their_nfe, _ = _k_dpm(k_sampling, "dpm_fast", mixture, noise, nfe, to_zero, eta=eta)
        assert diff <= 1e-10, (nfe, diff)
        assert stats["nfe"] == nfe == their_nfe + to_zero


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpm_adaptive_matches_k_diffusion(k_sampling, mixture, order, eta):
    noise = noise_for(mixture)
    for (rtol, atol), to_zero in [((0.05, 0.0078), False), ((1e-2, 1e-3), True), ((1e-3, 1e-4), False)]:
        diff, stats, their_nfe, info = _k_dpm(k_sampling, "dpm_adaptive", mixture, noise, 2000, to_zero,
                                              order=order, rtol=rtol, atol=atol, eta=eta)
        assert diff <= 1e-8, (rtol, diff)
        assert stats["nfe"] == their_nfe + to_zero == info["nfe"] + to_zero
        assert (stats["accepted_steps"], stats["rejected_steps"]) == (info["n_accept"], info["n_reject"])


def test_dpm_adaptive_controller_options_match_k_diffusion(k_sampling):
    model = zoo.load("gmm:mix16d", schedule="edm")
    noise = noise_for(model)
    for options in ({"pcoeff": 0.3, "icoeff": 0.9, "dcoeff": 0.1}, {"h_init": 0.5, "accept_safety": 0.95}):
        diff, stats, their_nfe, info = _k_dpm(k_sampling, "dpm_adaptive", model, noise, 2000, False,
                                              rtol=1e-3, atol=1e-4, **options)
        assert diff <= 1e-8 and stats["nfe"] == their_nfe, (options, diff)
        assert stats["rejected_steps"] == info["n_reject"]


# --- structure, exact answers, caps and errors -------------------------------------------------
def test_fast_orders_follow_the_paper():
    for k in range(1, 40):
        orders = fast_orders(k)
        assert sum(orders) == k and len(orders) == k // 3 + 1
        tail = {0: [2, 1], 1: [1], 2: [2]}[k % 3]
        assert orders[len(orders) - len(tail):] == tail and set(orders[:len(orders) - len(tail)]) <= {3}
    with pytest.raises(ValueError, match="at least 1 evaluation"):
        fast_orders(0)


def test_dpm_fast_one_step_is_ddim(mixture):
    """K = 1 is one DPM-Solver-1 step = DDIM = Euler in sigma~ from t_max to t_min; with to_zero,
    plus the final denoise = Euler's step onto sigma = 0."""
    sched = mixture.schedule
    noise = noise_for(mixture)
    a = solvers.sample("dpm_fast", mixture, noise, nfe=1, to_zero=False)
    b = solvers.sample("euler", mixture, noise, grid=torch.tensor([sched.t_max, sched.t_min], dtype=torch.float64))
    assert rms(a, b) <= 1e-12 * float(b.abs().max())
    a = solvers.sample("dpm_fast", mixture, noise, nfe=2, to_zero=True)
    b = solvers.sample("euler", mixture, noise, grid=torch.tensor([sched.t_max, sched.t_min, sched.t_data],
                                                                  dtype=torch.float64))
    assert rms(a, b) <= 1e-12 * float(b.abs().max())


def test_against_the_exact_ode_solution():
    model = zoo.load("gmm:mix16d", schedule="vp_linear")
    sched = model.schedule
    noise = noise_for(model, n=64, seed=0)
    exact = model.exact_ode_solution(sched.prior_std_at(sched.t_max) * noise, t_start=sched.t_max, t_end=sched.t_min)
    errors = [rms(solvers.sample("dpm_fast", model, noise, nfe=k, to_zero=False), exact) for k in (30, 60, 120)]
    assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5, errors  # K = 0 mod 3: order 2
    for order in (2, 3):
        errors = [rms(solvers.sample("dpm_adaptive", model, noise, nfe=5000, order=order, rtol=tol, atol=tol,
                                     to_zero=False), exact) for tol in (1e-3, 1e-5)]
        assert errors[1] < 3e-5 and errors[0] > 10 * errors[1], (order, errors)


def test_dpm_adaptive_budget_is_a_cap_never_a_truncation():
    model = zoo.load("gmm:mix16d", schedule="edm")
    noise = noise_for(model)
    stats = {}
    full = solvers.sample("dpm_adaptive", model, noise, nfe=5000, rtol=1e-3, atol=1e-4, stats=stats)
    needed = stats["nfe"]
    assert needed == 3 * (stats["accepted_steps"] + stats["rejected_steps"]) + 1
    again = solvers.sample("dpm_adaptive", model, noise, nfe=needed, rtol=1e-3, atol=1e-4)
    assert torch.equal(full, again)
    start = model.nfe
    with pytest.raises(NFEBudgetExceeded, match=f"more than {needed - 1} network evaluations"):
        solvers.sample("dpm_adaptive", model, noise, nfe=needed - 1, rtol=1e-3, atol=1e-4)
    assert model.nfe - start <= needed - 1
    with pytest.raises(ValueError, match=r"order=3 needs nfe >= 4 \(got 3\)"):
        solvers.sample("dpm_adaptive", model, noise, nfe=3)
    with pytest.raises(ValueError, match=r"order=2 needs nfe >= 2 \(got 1\)"):
        solvers.sample("dpm_adaptive", model, noise, nfe=1, order=2, to_zero=False)


@pytest.mark.parametrize("name,options,message", [
    ("lms", {"order": 0}, "option order=0 of sampler 'lms' is not valid; valid: >= 1"),
    ("lms", {"order": 2.5}, "option order=2.5 of sampler 'lms' must be a whole number"),
    ("dpm_fast", {"eta": -0.5}, "option eta=-0.5 of sampler 'dpm_fast' is not valid; valid: >= 0"),
    ("dpm_fast", {"grid": "karras"}, r"unknown option\(s\) \['grid'\] for sampler 'dpm_fast'"),
    ("dpm_adaptive", {"order": 1}, "option order=1 of sampler 'dpm_adaptive' is not valid; valid: 2, 3"),
    ("dpm_adaptive", {"rtol": 0.0}, "option rtol=0.0 of sampler 'dpm_adaptive' is not valid; valid: > 0"),
    ("dpm_adaptive", {"s_noise": -1.0}, "option s_noise=-1.0 of sampler 'dpm_adaptive' is not valid; valid: >= 0"),
])
def test_bad_options_are_refused(name, options, message):
    model = zoo.load("gmm:mix16d", schedule="edm")
    with pytest.raises(ValueError, match=message):
        solvers.sample(name, model, noise_for(model), nfe=20, **options)
