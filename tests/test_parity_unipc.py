"""UniPC (solvers/samplers/unipc.py) side by side with diffusers' UniPCMultistepScheduler, against
exact answers, and its option checks.

Side by side: the exact eps of the image-shaped Gaussian mixture (``gmm``) and the tiny random
UNet (``unet``) of benchmarks.equivalence, on diffusers' DDPM schedule, in float64, from the same
latents, with diffusers' own step() loop. Each configuration is run twice:

- ``float64``: diffusers with its sigma table replaced by the same sigmas in float64 (our
  schedule's, from diffusers' float32 alphas_cumprod), so both sides do float64 arithmetic on
  the same numbers: the two must agree to round-off (<= 1e-10 relative; ~1e-14 is typical);
- ``as is``: diffusers unmodified, whose float32 sigma table and float32 lambda arithmetic
  differ from ours at ~1e-7 relative (<= 1e-6 asserted on its default path, the data prediction
  with lower_order_final; see _as_is_bound for the paths that amplify float32 round-off).

Which of our grids are diffusers' timesteps:

- ``timestep_spacing`` linspace/leading: our ``spacing=`` of the same name with
  ``discard_penultimate=True`` (diffusers' UniPC spaces N + 1 timesteps and drops the last);
  trailing: ``spacing="trailing"`` as is; ``final_sigmas_type="zero"`` is ``to_zero=True`` (the
  last step ends at t_data). ``"sigma_min"`` ends at timestep 0: diffusers' timesteps and 0 are
  passed as a tensor grid (time_grid's linspace/leading spacings with to_zero=False end at 0
  with one interval fewer than asked, so no named option gives them).
- ``use_karras_sigmas`` / ``use_exponential_sigmas``: ``grid="karras"`` / ``"exponential"``
  with ``t_max=999, t_min=0`` give diffusers' sigmas (to float32 precision). diffusers then
  calls the network at round(t) (karras) or int(t) (exponential) of each sigma while it steps
  with the unrounded sigma; our sampler evaluates at the time of the sigma itself. The side-by-
  side runs therefore call the same network at diffusers' integer timesteps
  (:class:`_AtTimesteps`); the difference the rounding makes is asserted separately.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch

import solvers
from benchmarks.convergence import endpoint_errors, fitted_order
from score_models import DiffusionModel, zoo
from solvers.grids import time_grid

diffusers = pytest.importorskip("diffusers")

STEPS = (7, 10, 13)
SPACINGS = ("linspace", "leading", "trailing")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors here are tiny: one thread, so a loaded machine cannot make a second one spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the two loops ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory) -> Path:
    from benchmarks.equivalence import make_tiny_pipeline

    diffusers.utils.logging.set_verbosity_error()
    return make_tiny_pipeline(tmp_path_factory.mktemp("unipc") / "ddpm")


@pytest.fixture(scope="module")
def networks(pipe_dir):
    """{name: (our model, net(x, t) as diffusers' loop calls it)} for gmm and unet, in float64."""
    from benchmarks.equivalence import _network

    return {name: _network(pipe_dir, name, torch.float64) for name in ("gmm", "unet")}


def _latents(n: int = 3) -> torch.Tensor:
    return torch.randn((n, 3, 8, 8), generator=torch.Generator().manual_seed(1000), dtype=torch.float64)


def _scheduler(pipe_dir: Path, **config):
    base = diffusers.DDPMScheduler.load_config(pipe_dir, subfolder="scheduler")
    return diffusers.UniPCMultistepScheduler.from_config({**base, "clip_sample": False, **config})


def _diffusers_run(scheduler, net, latents: torch.Tensor, steps: int, sigmas: Optional[torch.Tensor] = None):
    """diffusers' loop (set_timesteps, then net and step() per timestep); ``sigmas`` replaces its
    sigma table after set_timesteps. Returns (sample, number of network calls)."""
    scheduler.set_timesteps(steps)
    if sigmas is not None:
        scheduler.sigmas = sigmas.clone()
    x, calls = latents.clone(), 0
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t), t, x).prev_sample
            calls += 1
    return x, calls


class _AtTimesteps:
    """A network called at diffusers' integer timestep for each of our grid times (diffusers'
    karras/exponential sigmas step with the exact sigma but call the network at its rounded time)."""

    def __init__(self, net, ours: torch.Tensor, theirs: torch.Tensor):
        self.net = net
        self.timestep = {float(a): float(b) for a, b in zip(ours, theirs)}

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, torch.full_like(t, self.timestep[float(t[0])]))


def _relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert bool(torch.isfinite(theirs).all()), "diffusers' sample is not finite"
    return float((ours - theirs).abs().max() / theirs.abs().max())


def _options(order, variant, corrector, predict_x0=True, lower_order_final=True) -> Dict:
    """Our options for a corrector mode: "on", "off" (UniP alone) or "from2" (steps 0, 1 uncorrected)."""
    return dict(order=order, variant=variant, predict_x0=predict_x0, lower_order_final=lower_order_final,
                disable_corrector=corrector == "off", corrector_from=2 if corrector == "from2" else 0)


def _disable_corrector(corrector: str, steps: int) -> List[int]:
    return {"on": [], "off": list(range(steps)), "from2": [0, 1]}[corrector]


def _spacing_grid(spacing: str, to_zero: bool) -> Dict:
    """Our grid options for diffusers' UniPC timestep_spacing (see the module docstring)."""
    if not to_zero:
        # discard_penultimate would drop timestep 0 itself, which ends a to_zero=False grid.
        return {}
    return dict(spacing=spacing, discard_penultimate=spacing != "trailing", to_zero=True)


def _side_by_side(pipe_dir, networks, network: str, steps: int, config: Dict, options: Dict, final: str,
                  spacing: str) -> Dict:
    model, net = networks[network]
    sched = model.schedule
    latents = _latents()
    scheduler = _scheduler(pipe_dir, timestep_spacing=spacing, final_sigmas_type=final, **config)
    scheduler.set_timesteps(steps)
    their_times = [float(t) for t in scheduler.timesteps]
    grid = torch.tensor(their_times + [sched.t_data if final == "zero" else 0.0], dtype=torch.float64)
    named = _spacing_grid(spacing, final == "zero")
    if named:  # our named spacing gives diffusers' timesteps exactly
        assert torch.equal(time_grid(sched, steps, None, **named), grid)
    results = {}
    for label, sigmas in (("as_is", None), ("float64", sched.sigma_tilde(grid))):
        theirs, calls = _diffusers_run(scheduler, net, latents, steps, sigmas)
        stats: Dict = {}
        ours = solvers.sample("unipc", model, latents, grid=grid, stats=stats, **options)
        results[label] = _relative(ours, theirs)
        results["nfe"], results["calls"] = stats["nfe"], calls
    return results


#: Bound on the as-is relative difference (diffusers' float32 sigmas and lambdas): its default path
#: (data prediction, lower_order_final) stays near 1e-7; the noise prediction and
#: lower_order_final=False amplify float32 round-off of the lambdas through the divided differences.
def _as_is_bound(predict_x0: bool, lower_order_final: bool) -> float:
    return 1e-6 if predict_x0 and lower_order_final else 2e-3


def _check(result: Dict, predict_x0: bool = True, lower_order_final: bool = True) -> None:
    assert result["float64"] <= 1e-10, result
    assert result["as_is"] <= _as_is_bound(predict_x0, lower_order_final), result
    assert result["nfe"] == result["calls"], result


def _cycled(cases, *axes):
    """Each case with one value of each axis, the j-th axis at index (i + j (i // n)) mod n (a
    Latin-square pattern), so a short list visits every value of every axis without tying one axis
    to another (the slow test runs the full products)."""
    out = []
    for i, case in enumerate(cases):
        extra = tuple(axis[(i + j * (i // len(axis))) % len(axis)] for j, axis in enumerate(axes, start=1))
        out.append(tuple(case) + extra)
    return out


# --- final sigma zero: diffusers' default path (bh2, data prediction, lower_order_final) -----------
# (diffusers' bh1 and its noise prediction are NaN onto sigma = 0, and lower_order_final=False
# fails there on a singular system: those run with final_sigmas_type="sigma_min" below.)
def _zero_case(pipe_dir, networks, network, order, corrector, spacing, steps):
    config = dict(solver_order=order, solver_type="bh2", disable_corrector=_disable_corrector(corrector, steps))
    _check(_side_by_side(pipe_dir, networks, network, steps, config, _options(order, "bh2", corrector),
                         "zero", spacing))


ZERO_CASES = _cycled(itertools.product((1, 2, 3), ("on", "off", "from2")), SPACINGS, STEPS)


@pytest.mark.parametrize("order,corrector,spacing,steps", ZERO_CASES, ids=str)
def test_bh2_to_zero_matches_diffusers(pipe_dir, networks, order, corrector, spacing, steps):
    _zero_case(pipe_dir, networks, "gmm", order, corrector, spacing, steps)


@pytest.mark.parametrize("order,corrector,spacing,steps", [(3, "on", "leading", 10), (2, "from2", "trailing", 13),
                                                           (1, "off", "linspace", 7)], ids=str)
def test_bh2_to_zero_matches_diffusers_on_the_unet(pipe_dir, networks, order, corrector, spacing, steps):
    _zero_case(pipe_dir, networks, "unet", order, corrector, spacing, steps)


# --- final sigma_min: bh1, the noise prediction, lower_order_final=False ------------------------------
def _sigma_min_case(pipe_dir, networks, network, order, variant, predict_x0, lower_order_final, corrector, spacing,
                    steps):
    config = dict(solver_order=order, solver_type=variant, predict_x0=predict_x0,
                  lower_order_final=lower_order_final, disable_corrector=_disable_corrector(corrector, steps))
    options = _options(order, variant, corrector, predict_x0, lower_order_final)
    _check(_side_by_side(pipe_dir, networks, network, steps, config, options, "sigma_min", spacing),
           predict_x0, lower_order_final)


SIGMA_MIN_CASES = _cycled(itertools.product((1, 2, 3), ("bh1", "bh2"), (True, False), (True, False)),
                          ("on", "off", "from2"), SPACINGS, STEPS)


@pytest.mark.parametrize("order,variant,predict_x0,lower_order_final,corrector,spacing,steps", SIGMA_MIN_CASES,
                         ids=str)
def test_sigma_min_matches_diffusers(pipe_dir, networks, order, variant, predict_x0, lower_order_final, corrector,
                                     spacing, steps):
    _sigma_min_case(pipe_dir, networks, "gmm", order, variant, predict_x0, lower_order_final, corrector, spacing, steps)


def test_diffusers_onto_zero_is_nan_where_ours_is_finite(pipe_dir, networks):
    """diffusers' bh1 and its noise prediction step onto sigma = 0 through inf * 0 (B(h) = -inf,
    sigma_t (e^h - 1) = 0 * inf) and return NaN; ours lands on D there (as bh2 does in diffusers)."""
    model, net = networks["gmm"]
    latents = _latents()
    for config, options in ((dict(solver_type="bh1"), dict(variant="bh1")),
                            (dict(predict_x0=False), dict(predict_x0=False))):
        theirs, _ = _diffusers_run(_scheduler(pipe_dir, **config), net, latents, 10)
        assert bool(torch.isnan(theirs).any())
        ours = solvers.sample("unipc", model, latents, nfe=10, spacing="leading", discard_penultimate=True, **options)
        assert bool(torch.isfinite(ours).all())


# --- karras and exponential sigmas ---------------------------------------------------------------
SIGMA_GRIDS = {"use_karras_sigmas": "karras", "use_exponential_sigmas": "exponential"}


def _sigma_grid_side_by_side(pipe_dir, networks, network, kind, steps, config, options, final="zero"):
    model, net = networks[network]
    sched = model.schedule
    latents = _latents()
    scheduler = _scheduler(pipe_dir, final_sigmas_type=final, **{kind: True}, **config)
    scheduler.set_timesteps(steps)
    their_sigmas = scheduler.sigmas.double()
    n_ours = steps if final == "zero" else steps - 1  # sigma_min repeats the last level: an h = 0 step
    grid_options = dict(grid=SIGMA_GRIDS[kind], t_max=999.0, t_min=0.0, to_zero=final == "zero")
    times = time_grid(sched, n_ours, **grid_options)
    ours_sigmas = sched.sigma_tilde(times)
    # diffusers' N levels (float32) are our grid's first N.
    assert torch.allclose(ours_sigmas[:steps], their_sigmas[:steps], rtol=2e-7, atol=0)
    at_theirs = DiffusionModel(_AtTimesteps(model.net, times[:steps], scheduler.timesteps), sched,
                               prediction=model.prediction)
    result = {}
    full_sigmas = ours_sigmas if final == "zero" else torch.cat([ours_sigmas, ours_sigmas[-1:]])
    for label, sigmas in (("as_is", None), ("float64", full_sigmas)):
        theirs, calls = _diffusers_run(scheduler, net, latents, steps, sigmas)
        stats: Dict = {}
        ours = solvers.sample("unipc", at_theirs, latents, nfe=n_ours, stats=stats, **grid_options, **options)
        result[label] = _relative(ours, theirs)
        result["nfe"], result["calls"] = stats["nfe"], calls
    # Our sampler calling the network at the times of the sigmas themselves (no rounding):
    result["unrounded"] = _relative(solvers.sample("unipc", model, latents, nfe=n_ours, **grid_options, **options),
                                    theirs)
    return result


def _sigma_grid_case(pipe_dir, networks, network, kind, order, corrector, steps):
    config = dict(solver_order=order, solver_type="bh2", disable_corrector=_disable_corrector(corrector, steps))
    result = _sigma_grid_side_by_side(pipe_dir, networks, network, kind, steps, config,
                                      _options(order, "bh2", corrector))
    assert result["float64"] <= 1e-10 and result["as_is"] <= 1e-5, result
    assert result["nfe"] == result["calls"] == steps, result
    if network == "gmm":
        # diffusers' rounded network times move its sample by far more than round-off.
        assert result["unrounded"] > 1e-5, result


SIGMA_GRID_CASES = _cycled(itertools.product(SIGMA_GRIDS, (1, 2, 3)), ("on", "off"), STEPS)


@pytest.mark.parametrize("kind,order,corrector,steps", SIGMA_GRID_CASES, ids=str)
def test_karras_and_exponential_sigmas_match_diffusers(pipe_dir, networks, kind, order, corrector, steps):
    _sigma_grid_case(pipe_dir, networks, "gmm", kind, order, corrector, steps)


@pytest.mark.parametrize("kind", list(SIGMA_GRIDS))
def test_karras_and_exponential_sigmas_match_diffusers_on_the_unet(pipe_dir, networks, kind):
    _sigma_grid_case(pipe_dir, networks, "unet", kind, 3, "on", 10)


@pytest.mark.parametrize("kind", list(SIGMA_GRIDS))
def test_bh1_with_karras_sigmas_needs_sigma_min(pipe_dir, networks, kind):
    """diffusers' bh1 onto sigma = 0 is NaN; with final_sigmas_type="sigma_min" its sigma table
    repeats sigma_min, so its last step is a no-op (h = 0) whose network call serves only the
    corrector of the step before. With the corrector off, and the orders its extra step leaves
    (lower_order_final then lowers only that no-op step), that is our N - 1 steps ending at
    sigma_min without lower_order_final, at one NFE fewer."""
    steps = 10
    config = dict(solver_order=2, solver_type="bh1", disable_corrector=list(range(steps)))
    options = dict(_options(2, "bh1", "off"), lower_order_final=False)
    result = _sigma_grid_side_by_side(pipe_dir, networks, "gmm", kind, steps, config, options, final="sigma_min")
    assert result["float64"] <= 1e-10 and result["as_is"] <= 1e-5, result
    assert result["nfe"] == steps - 1 and result["calls"] == steps, result


# --- every configuration ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("network", ["gmm", "unet"])
def test_every_configuration_matches_diffusers(pipe_dir, networks, network):
    """The full products: 765 configurations a network (~30 s on the mixture, ~3 min on the UNet)."""
    with torch.no_grad():
        for order, corrector, spacing, steps in itertools.product((1, 2, 3), ("on", "off", "from2"), SPACINGS, STEPS):
            _zero_case(pipe_dir, networks, network, order, corrector, spacing, steps)
        for case in itertools.product((1, 2, 3), ("bh1", "bh2"), (True, False), (True, False), ("on", "off", "from2"),
                                      SPACINGS, STEPS):
            _sigma_min_case(pipe_dir, networks, network, *case)
        for kind, order, corrector, steps in itertools.product(SIGMA_GRIDS, (1, 2, 3), ("on", "off"), STEPS):
            _sigma_grid_case(pipe_dir, networks, network, kind, order, corrector, steps)


# --- the harness of benchmarks.equivalence ----------------------------------------------------------
def test_equivalence_harness_cases(pipe_dir):
    """The Case lines proposed for benchmarks.equivalence.CASES pass its own checks."""
    from benchmarks.equivalence import Case, run_case

    for order, corrector, spacing in ((2, "on", "linspace"), (3, "on", "leading"), (3, "off", "trailing")):
        case = Case(f"UniPC bh2 p={order} {corrector}", "UniPCMultistepScheduler",
                    dict(solver_order=order, solver_type="bh2", disable_corrector=_disable_corrector(corrector, 1000)),
                    "unipc", dict(order=order, disable_corrector=corrector == "off"), grid_from_diffusers=True)
        exact = run_case(pipe_dir, case, spacing, network="gmm")
        assert exact["max_abs_diff"] <= 1e-6 * exact["max_abs_value"], exact
        assert exact["nfe_ours"] == exact["diffusers_calls"], exact
    unet = run_case(pipe_dir, case, "trailing", network="unet")
    assert unet["max_abs_diff"] <= 1e-6 * unet["max_abs_value"], unet


# --- exact answers --------------------------------------------------------------------------------
def _mixture_noise(model, n=16):
    return torch.randn((n,) + model.sample_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("order,steps", [(2, 7), (2, 12), (1, 9)])
def test_predictor_alone_is_dpm_solver_plus_plus(order, steps):
    """UniP-1 is DDIM and UniP-2 with B(h) = e^h - 1 is DPM-Solver++(2M) (both predictions), on any grid."""
    model = zoo.load("gmm:mix16d", schedule="vp_linear")
    noise = _mixture_noise(model)
    for predict_x0, algorithm in ((True, "dpmsolver++"), (False, "dpmsolver")):
        for grid in ("logsnr", "edm"):
            ours = solvers.sample("unipc", model, noise, nfe=steps, grid=grid, order=order, disable_corrector=True,
                                  predict_x0=predict_x0)
            dpm = solvers.sample("dpm_solver", model, noise, nfe=steps, grid=grid, order=order, algorithm=algorithm)
            assert (ours - dpm).abs().max() <= 1e-12 * dpm.abs().max()


def test_corrector_raises_the_order_on_the_exact_mixture():
    """Without lower_order_final, UniPC-p converges at order p + 1 (the first, UniC-1-corrected
    step caps p = 3 at 3), UniP-p at 2, against the exact PF-ODE solution (EDM, sigma 2 -> 0.1)."""
    model = zoo.load("gmm:mix16d", schedule="edm")
    noise = _mixture_noise(model, 32)
    span = dict(t_max=2.0, t_min=0.1, to_zero=False, lower_order_final=False)
    slopes = {}
    for label, options in (("unipc-1", dict(order=1)), ("unipc-2", dict(order=2)),
                           ("unip-2", dict(order=2, disable_corrector=True))):
        nfes, errors = endpoint_errors("unipc", model, noise, [32, 64, 128], **span, **options)
        assert all(b < a for a, b in zip(errors, errors[1:])), (label, errors)
        slopes[label] = fitted_order(nfes, errors)
    assert abs(slopes["unipc-1"] - 2) < 0.3 and abs(slopes["unip-2"] - 2) < 0.3, slopes
    assert slopes["unipc-2"] > 2.7, slopes


def test_converges_to_the_exact_solution_onto_zero():
    model = zoo.load("gmm:mix16d", schedule="edm")
    noise = _mixture_noise(model)
    sched = model.schedule
    exact = model.exact_ode_solution(sched.prior_std_at(sched.t_max) * noise, t_start=sched.t_max, t_end=sched.t_data)
    errors = [float((solvers.sample("unipc", model, noise, nfe=n) - exact).pow(2).mean().sqrt()) for n in (10, 20, 40)]
    # Each doubling of the steps cuts the error by more than 3 (order > 1.6; ~2 asymptotically).
    assert errors[1] < errors[0] / 3 and errors[2] < errors[1] / 3 and errors[2] < 2e-3, errors


# --- options --------------------------------------------------------------------------------------
def test_bad_options_are_refused():
    model = zoo.load("gmm:ring8", schedule="edm")
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    cases = [
        (dict(order=4), r"option order=4 of sampler 'unipc' is not valid; valid: 1, 2, 3"),
        (dict(order=0), r"option order=0 .* valid: 1, 2, 3"),
        (dict(variant="bh3"), r"option variant='bh3' .* valid: 'bh1', 'bh2'"),
        (dict(corrector_from=-1), r"option corrector_from=-1 .* valid: >= 0"),
        (dict(disable_corrector="yes"), r"option disable_corrector='yes' .* must be true or false"),
        (dict(predict_x0=1), r"option predict_x0=1 .* must be true or false"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            solvers.sample("unipc", model, noise, nfe=5, **options)
    with pytest.raises(ValueError, match="conflicts with alias 'uni_pc'"):
        solvers.sample("uni_pc", model, noise, nfe=5, variant="bh2")


def test_aliases_and_names():
    spec = solvers.get("unipc")
    assert spec.known_as["diffusers"] == "UniPCMultistepScheduler"
    assert solvers.get("uni_pc").fixed == {"order": 3, "variant": "bh1"}
    assert solvers.get("uni_pc").known_as == {"ComfyUI": "uni_pc"}
    assert solvers.get("uni_pc_bh2").fixed == {"order": 3, "variant": "bh2"}
    model = zoo.load("gmm:ring8", schedule="edm")
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(solvers.sample("uni_pc", model, noise, nfe=6),
                       solvers.sample("unipc", model, noise, nfe=6, order=3, variant="bh1"))


def test_corrector_from_beyond_the_steps_is_the_predictor_alone():
    model = zoo.load("gmm:ring8", schedule="edm")
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = dict(nfe=8, to_zero=False, t_min=0.01)
    alone = solvers.sample("unipc", model, noise, disable_corrector=True, **grid)
    # Step 7 is the last, which no corrector follows: corrector_from=7 corrects nothing.
    assert torch.equal(solvers.sample("unipc", model, noise, corrector_from=7, **grid), alone)
    assert not torch.equal(solvers.sample("unipc", model, noise, corrector_from=6, **grid), alone)
    # Onto sigma = 0 the last step lands on D evaluated at the uncorrected state, so correcting
    # the step before it changes nothing either.
    assert torch.equal(solvers.sample("unipc", model, noise, nfe=8, corrector_from=6),
                       solvers.sample("unipc", model, noise, nfe=8, disable_corrector=True))


def test_float32_state_stays_float32():
    model = zoo.load("gmm:ring8", schedule="edm")
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    double = solvers.sample("unipc", model, noise, nfe=8)
    single = solvers.sample("unipc", model, noise.float(), nfe=8)
    assert single.dtype == torch.float32 and (single.double() - double).abs().max() < 1e-4
