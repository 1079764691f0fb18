"""DEIS (solvers/samplers/deis.py) against exact answers and side by side with diffusers'
DEISMultistepScheduler on the same network and noise.

diffusers keeps its sigmas in float32 and calls the network at integer timesteps; to show that the
two computations are the same method, the side-by-side runs also use ``_DEIS64``, diffusers' own
scheduler and update code with only its sigma table kept in float64 (and, for karras/exponential
sigmas, the network called at the time of each sigma rather than at a rounded or truncated one).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import solvers
from score_models import zoo
from solvers.samplers.deis import POLY_VARIABLES, deis_coefficients

diffusers = pytest.importorskip("diffusers")
# diffusers' DEIS applies np.log to torch scalars (a NumPy 2 deprecation, thousands of warnings a run).
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

SPACINGS = ("linspace", "leading", "trailing")
STEPS = (7, 10, 13)


@pytest.fixture(scope="module")
def pipe():
    import tempfile
    from pathlib import Path

    from benchmarks.equivalence import make_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        yield make_tiny_pipeline(Path(tmp) / "pipe")


def _deis64(schedule):
    """diffusers' DEISMultistepScheduler with its sigma table in float64; with karras/exponential
    sigmas its timesteps are the (float) times of those sigmas on ``schedule``."""

    class DEIS64(diffusers.DEISMultistepScheduler):
        def set_timesteps(self, num_inference_steps, device=None, mu=None):
            super().set_timesteps(num_inference_steps, device)
            abar = self.alphas_cumprod.double()
            table = ((1 - abar) / abar) ** 0.5
            if self.config.use_karras_sigmas or self.config.use_exponential_sigmas:
                convert = self._convert_to_karras if self.config.use_karras_sigmas else self._convert_to_exponential
                sig = torch.from_numpy(np.asarray(convert(in_sigmas=table.flip(0).numpy(),
                                                          num_inference_steps=num_inference_steps), dtype=np.float64))
                self.sigmas = torch.cat([sig, sig[-1:]])
                self.timesteps = schedule.t_from_sigma_tilde(sig)
            else:
                self.sigmas = torch.cat([table[self.timesteps], table[:1]])

    return DEIS64


def _side_by_side(pipe, network, order, spacing, steps, lower_order_final=True, float64_sigmas=True, **config):
    """(max |ours - diffusers| / max |diffusers|, our counted NFE, diffusers' network calls)."""
    from benchmarks.equivalence import _network, diffusers_loop

    diffusers.utils.logging.set_verbosity_error()
    latents = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(1000), dtype=torch.float64)
    model, net = _network(pipe, network, torch.float64)
    calls = []

    def counted_net(x, t):
        calls.append(t)
        return net(x, t)

    base = diffusers.DDPMScheduler.load_config(pipe, subfolder="scheduler")
    cls = _deis64(model.schedule) if float64_sigmas else diffusers.DEISMultistepScheduler
    sched = cls.from_config({**base, "timestep_spacing": spacing, "solver_order": order,
                             "lower_order_final": lower_order_final, **config})
    theirs = diffusers_loop(sched, counted_net, latents, steps)
    stats: dict = {}
    options = dict(order=order, lower_order_final=lower_order_final)
    if config.get("use_karras_sigmas") or config.get("use_exponential_sigmas"):
        # N sigmas from sigma(999) to sigma(0), evenly in sigma^(1/7) or in log sigma: our karras /
        # exponential grid over N - 1 steps. diffusers' last step goes from sigma_min to sigma_min
        # (its sigma table repeats the last entry): an identity step that still calls the network.
        grid = "karras" if config.get("use_karras_sigmas") else "exponential"
        ours = solvers.sample("deis", model, latents, nfe=steps - 1, grid=grid, t_max=999.0, t_min=0.0,
                              to_zero=False, stats=stats, **options)
    else:
        # diffusers' timesteps (N + 1 points with the last dropped, for linspace/leading), then
        # timestep 0: DEISMultistepScheduler ends at sigma(t=0), not at sigma = 0.
        grid = torch.tensor([float(t) for t in sched.timesteps] + [0.0], dtype=torch.float64)
        ours = solvers.sample("deis", model, latents, grid=grid, stats=stats, **options)
    return float((ours - theirs).abs().max() / theirs.abs().max()), stats["nfe"], len(calls)


# --- side by side with diffusers ----------------------------------------------------------------
@pytest.mark.parametrize("order", (1, 2, 3))
@pytest.mark.parametrize("spacing", SPACINGS)
def test_equals_diffusers_deis_in_float64(pipe, order, spacing):
    """The same method: diffusers' closed-form log-rho coefficients and our quadrature agree to
    round-off once diffusers' sigmas are float64; counted NFE = diffusers' network calls."""
    for steps in STEPS:
        rel, ours, theirs = _side_by_side(pipe, "gmm", order, spacing, steps)
        assert rel <= 1e-11 and ours == theirs == steps, (steps, rel, ours, theirs)


def test_equals_stock_diffusers_deis_to_its_float32_sigmas(pipe):
    """Stock diffusers keeps sigmas in float32: agreement to ~1e-6 relative (observed <= 4e-6)."""
    for order in (1, 2, 3):
        for spacing in SPACINGS:
            rel, ours, theirs = _side_by_side(pipe, "gmm", order, spacing, 13, float64_sigmas=False)
            assert rel <= 1e-5 and ours == theirs == 13, (order, spacing, rel)


@pytest.mark.parametrize("sigmas", ("use_karras_sigmas", "use_exponential_sigmas"))
def test_equals_diffusers_karras_and_exponential_sigmas(pipe, sigmas):
    """Our karras / exponential grids are diffusers' sigmas; diffusers' last step is a zero-length
    step (one wasted call), so we count N - 1 for its N. lower_order_final is compared where it
    coincides (off, or >= 15 steps), since diffusers lowers the order of its wasted last step."""
    for order in (1, 2, 3):
        for steps, lower_order_final in ((7, False), (13, False), (16, True)):
            rel, ours, theirs = _side_by_side(pipe, "gmm", order, "linspace", steps, lower_order_final,
                                              **{sigmas: True})
            assert rel <= 1e-11 and ours == theirs - 1 == steps - 1, (order, steps, rel, ours, theirs)


def test_stock_diffusers_karras_calls_the_network_at_rounded_timesteps(pipe):
    """Stock diffusers steps with the karras sigmas but calls the network at round(t(sigma))
    (truncated for exponential sigmas): its samples differ from the consistent computation."""
    for sigmas in ("use_karras_sigmas", "use_exponential_sigmas"):
        rel, _, _ = _side_by_side(pipe, "gmm", 3, "linspace", 10, False, float64_sigmas=False, **{sigmas: True})
        assert rel > 1e-5, (sigmas, rel)


def test_equals_diffusers_deis_on_the_unet(pipe):
    rel, ours, theirs = _side_by_side(pipe, "unet", 3, "trailing", 10)
    assert rel <= 1e-11 and ours == theirs == 10, rel


@pytest.mark.slow
@pytest.mark.parametrize("order", (1, 2, 3))
def test_equals_diffusers_deis_on_the_unet_every_configuration(pipe, order):
    for spacing in SPACINGS:
        for steps in STEPS:
            rel, ours, theirs = _side_by_side(pipe, "unet", order, spacing, steps)
            assert rel <= 1e-11 and ours == theirs == steps, (spacing, steps, rel)
    for sigmas in ("use_karras_sigmas", "use_exponential_sigmas"):
        for steps in STEPS:
            rel, ours, theirs = _side_by_side(pipe, "unet", order, "linspace", steps, False, **{sigmas: True})
            assert rel <= 1e-11 and ours == theirs - 1, (sigmas, steps, rel)


# --- exact answers ---------------------------------------------------------------------------------
def _exact_integral(poly_in, coeffs, rho0, rho1):
    """int_{rho0}^{rho1} p(v) drho for p(v) = sum_m coeffs[m] v^m, in closed form."""
    if poly_in == "rho":
        return sum(c * (rho1 ** (m + 1) - rho0 ** (m + 1)) / (m + 1) for m, c in enumerate(coeffs))

    def antiderivative(rho):  # int u^m e^u du = e^u sum_l (-1)^l m!/(m-l)! u^(m-l), u = log rho
        u = math.log(rho)
        return sum(c * rho * sum((-1) ** l * math.factorial(m) / math.factorial(m - l) * u ** (m - l)
                                 for l in range(m + 1)) for m, c in enumerate(coeffs))

    return antiderivative(rho1) - antiderivative(rho0)


@pytest.mark.parametrize("poly_in", ("log_rho", "rho"))
def test_coefficients_integrate_the_lagrange_polynomial_exactly(poly_in):
    """sum_j C_j p(v_j) = int p(v(rho)) drho for every polynomial p of degree < k (the defining
    property of the DEIS coefficients), on uneven nodes and steps up to e^8 in rho."""
    v_of_u = (lambda u: u) if poly_in == "log_rho" else np.exp
    gen = np.random.default_rng(0)
    for rho_levels in ([80.0, 30.0, 9.0, 2.5], [3.0, 1.0, 0.4, 0.02], [0.9, 0.5, 0.3, 0.3 * math.exp(-8)]):
        for k in (1, 2, 3):
            nodes = [float(v_of_u(np.array([math.log(r)]))[0]) for r in rho_levels[2::-1][:k]]  # newest first
            start, end = rho_levels[2], rho_levels[3]
            c = deis_coefficients(nodes, start, end, v_of_u)
            for degree in range(k):
                p = gen.normal(size=degree + 1)
                lhs = sum(cj * np.polyval(p[::-1], vj) for cj, vj in zip(c, nodes))
                rhs = _exact_integral(poly_in, list(p), start, end)
                assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-13 * abs(end - start)), (rho_levels, k, degree)


def test_t_variable_integrates_polynomials_in_the_schedule_time():
    """tAB: on vp_linear, the coefficients reproduce int p(t(rho)) drho (scipy's adaptive quad)."""
    from scipy.integrate import quad

    sched = zoo.load("gmm:mix16d", schedule="vp_linear").schedule
    t_of = lambda rho: float(sched.t_from_sigma_tilde(torch.tensor(rho, dtype=torch.float64)))  # noqa: E731
    v_of_u = lambda u: sched.t_from_sigma_tilde(torch.from_numpy(np.exp(u))).numpy()  # noqa: E731
    levels = [0.9, 0.7, 0.55, 0.4]
    nodes = [float(sched.t_from_sigma_tilde(torch.tensor(levels[2 - j], dtype=torch.float64))) for j in range(3)]
    start, end = float(sched.sigma_tilde(levels[2])), float(sched.sigma_tilde(levels[3]))
    c = deis_coefficients(nodes, start, end, v_of_u)
    for p in ([1.0], [0.3, -2.0], [0.5, 1.0, -4.0]):
        lhs = sum(cj * np.polyval(p[::-1], vj) for cj, vj in zip(c, nodes))
        rhs = quad(lambda r: np.polyval(p[::-1], t_of(r)), start, end, epsabs=0, epsrel=1e-13)[0]
        assert lhs == pytest.approx(rhs, rel=1e-10)


def test_order_one_is_ddim():
    """First-order DEIS is DDIM = Euler in the scaled space (Zhang & Chen 2023, sec. 4)."""
    model = zoo.load("gmm:mix16d", schedule="vp_linear")
    noise = torch.randn((32,) + model.sample_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for to_zero in (True, False):
        ours = solvers.sample("deis", model, noise, nfe=12, order=1, to_zero=to_zero)
        euler = solvers.sample("euler", model, noise, nfe=12, grid="logsnr", to_zero=to_zero)
        assert torch.allclose(ours, euler, rtol=0, atol=1e-12)


def test_log_rho_and_rho_depend_only_on_the_noise_levels():
    """log-rho and rho DEIS see a schedule only through sigma~ = rho: on the same rho levels, VP
    and EDM give the same x/alpha. tAB (poly_in='t') extrapolates in each schedule's own time, so
    it differs (the paper's point about the choice of time variable)."""
    edm, vp = (zoo.load("gmm:mix16d", schedule=s) for s in ("edm", "vp_linear"))
    rho = torch.exp(torch.linspace(math.log(20.0), math.log(0.05), 9, dtype=torch.float64))
    x_tilde = 20.0 * torch.randn((32,) + edm.sample_shape, generator=torch.Generator().manual_seed(2),
                                 dtype=torch.float64)
    t_edm, t_vp = edm.schedule.t_from_sigma_tilde(rho), vp.schedule.t_from_sigma_tilde(rho)
    fn = solvers.get("deis").fn
    for poly_in in POLY_VARIABLES:
        a = fn(edm, x_tilde, t_edm, poly_in=poly_in)
        b = fn(vp, float(vp.schedule.alpha(t_vp[0])) * x_tilde, t_vp, poly_in=poly_in) / float(vp.schedule.alpha(t_vp[-1]))
        diff = float((a - b).abs().max() / a.abs().max())
        if poly_in == "t":
            assert diff > 1e-4, diff
        else:
            assert diff < 1e-12, (poly_in, diff)


def test_converges_to_the_exact_ode_solution():
    """Against GaussianMixture's exact PF-ODE solution: the error falls with N at each order, and
    at 256 steps order 3 < order 2 < order 1."""
    model = zoo.load("gmm:mix16d", schedule="edm")
    noise = torch.randn((64,) + model.sample_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    span = dict(t_max=2.0, t_min=0.1, to_zero=False)
    exact = model.exact_ode_solution(2.0 * noise, t_start=2.0, t_end=0.1)
    errors = {}
    for order in (1, 2, 3):
        errors[order] = [float(((solvers.sample("deis", model, noise, nfe=n, order=order, **span) - exact) ** 2)
                               .mean().sqrt()) for n in (64, 256)]
        assert errors[order][1] < errors[order][0] / 3.5, (order, errors[order])
    assert errors[3][1] < errors[2][1] < errors[1][1], errors


# --- bad inputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("options,message", [
    (dict(order=4), r"order=4 .*valid: 1, 2, 3"),
    (dict(order=0), r"order=0 .*valid: 1, 2, 3"),
    (dict(poly_in="lambda"), r"poly_in='lambda' .*valid: 'log_rho', 'rho', 't'"),
    (dict(solver_type="logrho"), r"unknown option\(s\) \['solver_type'\]"),
])
def test_bad_options_name_the_valid_choices(options, message):
    model = zoo.load("gmm:mix16d", schedule="edm")
    with pytest.raises(ValueError, match=message):
        solvers.sample("deis", model, torch.randn(2, *model.sample_shape), nfe=5, **options)
