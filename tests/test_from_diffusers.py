"""solvers.from_diffusers: every mapped diffusers scheduler configuration, run through diffusers'
own loop and through solvers.sample with the mapped sampler and options, on the exact mixture's
eps over diffusers' DDPM schedule (benchmarks.equivalence.run_scheduler), from the same latents
and with per-step noise from equally seeded generators.

Where solvers.exact_in_diffusers says the mapping reproduces diffusers, the two agree to 1e-5
relative (diffusers keeps its tables in float32: ~1e-7 is typical) with the same number of
network calls; where it names a difference, the difference is real (larger than 1e-5, or a
different number of calls).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import solvers
from score_models import zoo
from benchmarks.equivalence import SCHEDULER_CASES, make_tiny_pipeline, run_scheduler, scheduler_case_label
from solvers.diffusers_mapping import SCHEDULERS

diffusers = pytest.importorskip("diffusers")
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore:Should have t:UserWarning")]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory) -> Path:
    diffusers.utils.logging.set_verbosity_error()
    return make_tiny_pipeline(tmp_path_factory.mktemp("from_diffusers") / "ddpm")


@pytest.mark.parametrize("case", SCHEDULER_CASES, ids=lambda c: scheduler_case_label(*c))
@pytest.mark.parametrize("spacing", ("linspace", "leading", "trailing"))
def test_mapping_reproduces_diffusers_where_it_says_so(pipe_dir, case, spacing):
    class_name, config, step_arguments = case
    for steps in (7, 10):
        row = run_scheduler(pipe_dir, class_name, config, spacing, steps, step_arguments)
        if row["note"]:
            assert row["max_rel_diff"] > 1e-5 or row["nfe_ours"] != row["diffusers_calls"], row
        else:
            assert row["max_rel_diff"] <= 1e-5, row
            assert row["nfe_ours"] == row["diffusers_calls"], row


def test_every_mapped_class_is_run_side_by_side():
    from benchmarks.equivalence import FLOW_CASES

    run = {c[0] for c in SCHEDULER_CASES + FLOW_CASES}
    students_and_edm = {n for n, m in SCHEDULERS.items() if m.family.name in ("student", "edm")}
    assert set(SCHEDULERS) - students_and_edm <= run
    for name, mapping in SCHEDULERS.items():
        assert mapping.sampler in solvers.available() + solvers.aliases(), name


def test_cases_each_sampler_is_reached():
    reached = {solvers.from_diffusers(getattr(diffusers, c).from_config({"clip_sample": False, **cfg}), **sa)[0]
               for c, cfg, sa in SCHEDULER_CASES}
    assert {"ddim", "ddpm", "pndm", "plms", "euler", "heun", "euler_ancestral", "lms", "dpm_2", "dpm_2_ancestral",
            "dpm_solver", "res_multistep", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc", "deis", "sa_solver",
            "dpm_solver_singlestep"} <= reached


# --- the EDM schedulers on an EDM-schedule mixture -----------------------------------------------
@pytest.mark.parametrize("class_name, config", [
    ("EDMEulerScheduler", {}), ("EDMEulerScheduler", {"sigma_schedule": "exponential"}),
    ("EDMEulerScheduler", {"rho": 5.0, "sigma_min": 0.01, "sigma_max": 40.0}),
    ("EDMDPMSolverMultistepScheduler", {}), ("EDMDPMSolverMultistepScheduler", {"solver_order": 3}),
    ("EDMDPMSolverMultistepScheduler", {"solver_order": 2, "sigma_schedule": "exponential"}),
    ("EDMDPMSolverMultistepScheduler", {"solver_type": "heun", "lower_order_final": False}),
])
def test_edm_schedulers(class_name, config):
    from benchmarks.equivalence import _edm_network, diffusers_loop
    from score_models import zoo

    scheduler = getattr(diffusers, class_name)(**config)
    name, options = solvers.from_diffusers(scheduler)
    exact = zoo.load("gmm:image3x8x8", schedule="edm")
    for steps in (7, 10):
        latents = torch.randn((3, 3, 8, 8), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        start = exact.nfe
        theirs = diffusers_loop(scheduler, _edm_network(scheduler, exact), latents, steps)
        calls = exact.nfe - start
        stats = {}
        ours = solvers.sample(name, exact, latents, nfe=calls, stats=stats, **options)
        assert float((ours - theirs).abs().max() / theirs.abs().max()) <= 1e-5
        assert stats["nfe"] == calls


# --- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler, message", [
    (lambda: diffusers.DDIMScheduler(thresholding=True, clip_sample=False),
     r"thresholding=True is not supported; valid: False"),
    (lambda: diffusers.DDIMScheduler(clip_sample=True), r"clip_sample=True is not supported; valid: False"),
    (lambda: diffusers.EulerDiscreteScheduler(interpolation_type="log_linear"),
     r"interpolation_type='log_linear' is not supported; valid: 'linear'"),
    (lambda: diffusers.EulerDiscreteScheduler(timestep_type="continuous"), r"timestep_type='continuous'"),
    (lambda: diffusers.SASolverScheduler(tau_func=lambda t: 0), r"tau_func=.* is not supported; valid: None"),
    (lambda: diffusers.DPMSolverMultistepScheduler(use_lu_lambdas=True), r"use_lu_lambdas=True"),
    (lambda: diffusers.DPMSolverMultistepScheduler(solver_type="heun"), r"valid lower_order_final: False"),
    (lambda: diffusers.UniPCMultistepScheduler(disable_corrector=[0]), r"disable_corrector=\[0\]"),
    (lambda: {"_class_name": "NoSuchScheduler"}, r"'NoSuchScheduler' has no nfebench sampler .*valid: DDIMScheduler"),
    (lambda: {"timestep_spacing": "leading"}, r"needs '_class_name'"),
    (lambda: diffusers.ScoreSdeVeScheduler(), r"ScoreSdeVeScheduler' has no nfebench sampler"),
    (lambda: diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True), r"invert_sigmas=True is not supported; valid: False"),
    (lambda: diffusers.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True),
     r"stochastic_sampling=True is not supported; valid: False"),
    (lambda: diffusers.FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True), r"use_karras_sigmas=True .* valid: False"),
    (lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift_terminal=0.1), r"shift_terminal=0.1 .* valid: None"),
    (lambda: diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
     r"use_dynamic_shifting=True needs mu .*from_diffusers\(scheduler, mu=...\)"),
])
def test_unsupported_values_are_refused_by_name(scheduler, message):
    with pytest.raises(ValueError, match=message):
        solvers.from_diffusers(scheduler())


def test_step_arguments():
    assert solvers.from_diffusers(diffusers.DDIMScheduler(clip_sample=False), eta=0.5)[1]["eta"] == 0.5
    assert solvers.from_diffusers(diffusers.TCDScheduler(), eta=0.1) == ("tcd", {"gamma": 0.1})
    with pytest.raises(ValueError, match=r"step\(\) argument\(s\) \['gamma'\] are not mapped; valid: eta"):
        solvers.from_diffusers(diffusers.DDIMScheduler(clip_sample=False), gamma=0.5)


def test_config_dict_and_instance_agree():
    scheduler = diffusers.UniPCMultistepScheduler(solver_order=3, timestep_spacing="trailing")
    assert solvers.from_diffusers(scheduler) == solvers.from_diffusers(dict(scheduler.config,
                                                                          _class_name="UniPCMultistepScheduler"))


def test_start_noise_options():
    from score_models import zoo

    model = zoo.load("gmm:ring8", schedule="ddpm_linear")
    noise = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t0 = model.schedule.t_max
    sigma = float(model.schedule.sigma(t0))
    for start, scale in (("prior", 1.0), ("sigma", sigma), ("unit_data", 1.0)):
        assert solvers.sampling.start_scale(model, t0, start) == pytest.approx(scale, rel=1e-15)
    edm = zoo.load("gmm:ring8", schedule="edm")
    assert solvers.sampling.start_scale(edm, 80.0, "unit_data") == pytest.approx(math.hypot(1.0, 80.0), rel=1e-15)
    with pytest.raises(ValueError, match=r"start_noise='x'.*valid: 'prior', 'sigma', 'unit_data'"):
        solvers.sample("euler", model, noise, nfe=3, start_noise="x")


def test_drop_last_timestep_grid():
    from score_models.schedules import DiscreteVP

    sched = DiscreteVP.linear()
    for spacing in ("linspace", "leading"):
        scheduler = diffusers.DPMSolverMultistepScheduler(timestep_spacing=spacing)
        scheduler.set_timesteps(9)
        grid = solvers.time_grid(sched, 9, None, spacing=spacing, drop_last_timestep=True)
        assert grid[:-1].tolist() == [float(t) for t in scheduler.timesteps]
        assert float(grid[-1]) == sched.t_data
    with pytest.raises(ValueError, match="drop_last_timestep=True applies to a spacing="):
        solvers.time_grid(sched, 5, "uniform", drop_last_timestep=True)


def test_edm_final_sigma_min_is_flagged():
    # diffusers' karras sigmas already end at sigma_min: its last step is zero-length and still calls the network
    scheduler = diffusers.EDMDPMSolverMultistepScheduler(final_sigmas_type="sigma_min")
    assert "zero-length" in solvers.exact_in_diffusers(scheduler, 10)
    assert solvers.exact_in_diffusers(diffusers.EDMDPMSolverMultistepScheduler(), 10) is None


def test_the_cost_table_agrees_with_exact_in_diffusers():
    """Where exact_in_diffusers says the mapping reproduces diffusers, the cost table's two runs
    coincide; where it names a difference, they part by far more than round-off."""
    from benchmarks.diffusers_costs import cost_table

    rows = cost_table(steps=[10], n=4)
    assert len(rows) == 8
    for row in rows:
        assert row["diffusers_error"] > 0 and row["nfebench_error"] > 0
        if row["exact_in_diffusers"] and row["difference"].startswith("init_noise"):
            assert row["rms_difference"] < 1e-4  # only the start scale differs: sigma(999) vs 1
        elif row["exact_in_diffusers"]:
            assert row["rms_difference"] < 1e-6, row
        else:
            assert row["rms_difference"] > 1e-4, row


def test_a_loaded_pipeline_samples_as_its_scheduler_would_with_no_options(tmp_path):
    """zoo.load("diffusers:DIR") declares its scheduler's grid: ddim with no grid options equals
    diffusers' own DDIM loop with the saved config; a grid the caller names replaces it."""
    from benchmarks.equivalence import _network, diffusers_loop, make_tiny_pipeline

    pipe = make_tiny_pipeline(tmp_path / "pipe")
    base = diffusers.DDPMScheduler.load_config(pipe, subfolder="scheduler")
    config = {**base, "timestep_spacing": "trailing", "clip_sample": False, "set_alpha_to_one": False}
    diffusers.DDIMScheduler.from_config(config).save_config(pipe / "scheduler")
    model, net = _network(pipe, "unet", torch.float64)
    assert model.grid_defaults == {"spacing": "trailing", "to_zero": False} and model.grid_defaults_note is None
    latents = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theirs = diffusers_loop(diffusers.DDIMScheduler.from_pretrained(pipe, subfolder="scheduler"), net, latents, 10)
    with torch.inference_mode():
        ours = solvers.sample("ddim", model, latents, nfe=10)
        other = solvers.sample("ddim", model, latents, nfe=10, grid="edm")
    assert float((ours - theirs).abs().max()) <= 1e-5 * float(theirs.abs().max())
    assert float((other - theirs).abs().max()) > 1e-3 * float(theirs.abs().max())


def test_a_pipeline_whose_scheduler_has_no_mapping_loads_with_the_reason(tmp_path):
    from benchmarks.equivalence import make_tiny_pipeline

    pipe = make_tiny_pipeline(tmp_path / "pipe")
    model = zoo.load(f"diffusers:{pipe}")
    # DDPM's grid is still read; clip_sample=True is what the sampler mapping refuses
    assert model.grid_defaults == {"spacing": "leading", "to_zero": True}
    assert "clip_sample=True" in model.grid_defaults_note


# --- flow matching on the exact mixture under rectified flow -------------------------------------
@pytest.mark.parametrize("case", __import__("benchmarks.equivalence", fromlist=["x"]).FLOW_CASES,
                         ids=lambda c: scheduler_case_label(*c))
def test_flow_match_schedulers_are_reproduced(case):
    """FlowMatchEuler -> euler and FlowMatchHeun -> heun(form="velocity") on the shifted grid from
    t = 1: diffusers' float32 step() arithmetic is the only difference (~1e-7)."""
    from benchmarks.equivalence import run_flow_case

    class_name, config, arguments = case
    for steps in (1, 7, 10):
        row = run_flow_case(class_name, config, steps, arguments)
        assert row["note"] == ""
        assert row["max_rel_diff"] <= 1e-5, row
        assert row["nfe_ours"] == row["diffusers_calls"], row


def test_flow_match_grid_is_diffusers_sigmas():
    """The mapped grid's times are diffusers' sigmas (float32) for static and dynamic shifts."""
    from benchmarks.equivalence import flow_mixture

    schedule = flow_mixture().schedule
    for config, mu in (({"shift": 3.0}, None), ({"shift": 0.7}, None), ({"use_dynamic_shifting": True}, 1.2),
                       ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, 3.0)):
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**config)
        _, options = solvers.from_diffusers(scheduler, **({} if mu is None else {"mu": mu}))
        scheduler.set_timesteps(9, **({} if mu is None else {"mu": mu}))
        grid_options = {k: v for k, v in options.items() if k in solvers.GRID_OPTIONS}
        times = solvers.time_grid(schedule, 9, **grid_options)
        assert torch.allclose(times, scheduler.sigmas.double(), rtol=1e-6, atol=0), config


def test_flow_match_mu_is_checked():
    dynamic = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type="linear")
    with pytest.raises(ValueError, match=r"mu=-1.0 is not valid; valid: mu > 0"):
        solvers.from_diffusers(dynamic, mu=-1.0)
    with pytest.raises(ValueError, match=r"mu=0.5 applies only with config use_dynamic_shifting=True"):
        solvers.from_diffusers(diffusers.FlowMatchEulerDiscreteScheduler(), mu=0.5)
    with pytest.raises(ValueError, match=r"step\(\) argument\(s\) \['mu'\] are not mapped"):
        solvers.from_diffusers(diffusers.FlowMatchHeunDiscreteScheduler(), mu=0.5)
    from solvers.diffusers_mapping import pipeline_grid_defaults

    grid, note = pipeline_grid_defaults(dynamic)
    assert grid == {} and "needs mu" in note


def test_scaled_heun_is_not_flow_match_heun():
    """nfebench's default heun averages dx~/dsigma~ in the scaled space x/alpha; diffusers'
    FlowMatchHeun averages velocities in x. From t = 1 (sigma~ = inf) the scaled form is undefined;
    on a grid below it the two differ by far more than round-off, at second order: the
    difference falls ~4x per halving of the step (both are second-order solvers of one ODE)."""
    from benchmarks.equivalence import flow_mixture

    exact = flow_mixture()
    latents = torch.randn((3, 3, 8, 8), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grid = {"grid": "shifted", "shift": 3.0, "t_min": 0.01}
    with torch.inference_mode():
        assert not bool(torch.isfinite(solvers.sample("heun", exact, latents, nfe=19, t_max=1.0, **grid)).all())
        differences = []
        for n_steps in (8, 16, 32):
            nfe = 2 * n_steps - 1
            scaled = solvers.sample("heun", exact, latents, nfe=nfe, t_max=0.98, **grid)
            velocity = solvers.sample("heun", exact, latents, nfe=nfe, t_max=0.98, form="velocity", **grid)
            differences.append(float((scaled - velocity).abs().max() / velocity.abs().max()))
    assert differences[0] > 1e-4, differences
    for coarse, fine in zip(differences, differences[1:]):
        assert 2.5 < coarse / fine < 6, differences


# --- DPMSolverSinglestep: per-step orders, every step count ----------------------------------------
@pytest.mark.parametrize("config", [
    {"solver_order": 1}, {"solver_order": 2}, {"solver_order": 3}, {"solver_order": 2, "solver_type": "heun"},
    {"solver_order": 3, "solver_type": "heun"}, {"solver_order": 3, "final_sigmas_type": "sigma_min"},
    {"solver_order": 3, "final_sigmas_type": "sigma_min", "lower_order_final": False},
    {"solver_order": 2, "final_sigmas_type": "sigma_min", "lower_order_final": True},
], ids=lambda c: scheduler_case_label("DPMSolverSinglestepScheduler", c, {}))
def test_singlestep_orders_and_step_counts(pipe_dir, config):
    """Steps of order k spanning k of diffusers' timesteps, for step counts that the order does
    and does not divide (1-8): diffusers' loop, given float64 sigma tables (its float32 ones cost
    up to 1.4e-5 on a single third-order step from timestep 999), and
    dpm_solver_singlestep(intermediate='grid') agree to 1e-10 with the same number of calls."""
    from benchmarks.equivalence import _network

    model, net = _network(pipe_dir, "gmm", torch.float64)
    base = diffusers.DDPMScheduler.load_config(pipe_dir, subfolder="scheduler")
    sigma_table = ((1 - model.schedule.alphas_cumprod) / model.schedule.alphas_cumprod).sqrt()
    latents = torch.randn((3, 3, 8, 8), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for steps in range(1, 9):
        scheduler = diffusers.DPMSolverSinglestepScheduler.from_config({**base, "clip_sample": False, **config})
        name, options = solvers.from_diffusers(scheduler)
        scheduler.set_timesteps(steps)
        last = sigma_table[:1] if config.get("final_sigmas_type") == "sigma_min" else torch.zeros(1, dtype=torch.float64)
        scheduler.sigmas = torch.cat([sigma_table[scheduler.timesteps.long()], last])
        x = latents
        with torch.no_grad():
            for t in scheduler.timesteps:
                x = scheduler.step(net(x, t), t, x).prev_sample
        stats = {}
        ours = solvers.sample(name, model, latents, nfe=steps, stats=stats, **options)
        assert float((ours - x).abs().max() / x.abs().max()) <= 1e-10, (steps, config)
        assert stats["nfe"] == len(scheduler.timesteps) == steps


def test_singlestep_positions_are_diffusers_order_list():
    from solvers.samplers.dpm_solver import singlestep_positions

    for order in (1, 2, 3):
        for lower in (True, False):
            for final in ("zero", "sigma_min"):
                for steps in range(1, 13):
                    scheduler = diffusers.DPMSolverSinglestepScheduler(solver_order=order, lower_order_final=lower,
                                                                       final_sigmas_type=final)
                    scheduler.set_timesteps(steps)
                    assert singlestep_positions(order, steps, lower, final == "zero") == scheduler.order_list


def test_singlestep_refusals():
    for config, message in (({"algorithm_type": "sde-dpmsolver++"}, r"algorithm_type='sde-dpmsolver\+\+' is not supported"),
                            ({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
                             r"algorithm_type='dpmsolver' is not supported"),
                            ({"use_flow_sigmas": True}, r"use_flow_sigmas=True is not supported")):
        with pytest.raises(ValueError, match=message):
            solvers.from_diffusers(diffusers.DPMSolverSinglestepScheduler(**config))
    with pytest.raises(ValueError, match=r"order=1 of sampler 'dpm_solver_singlestep' needs intermediate='grid'"):
        solvers.sample("dpm_solver_singlestep", zoo.load("gmm:ring8", schedule="vp_linear"),
                       torch.randn(2, 2, dtype=torch.float64), nfe=4, order=1)


# --- fractional_timesteps: diffusers' unrounded linspace with sigma~ interpolated linearly ---------
@pytest.mark.parametrize("class_name", ["EulerDiscreteScheduler", "HeunDiscreteScheduler",
                                        "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler"])
def test_fractional_timesteps_reproduce_diffusers_linspace(pipe_dir, class_name):
    """At linspace step counts where N - 1 does not divide T - 1, diffusers visits fractional
    timesteps and interpolates sigma~ linearly there: from_diffusers(fractional_timesteps=True) on
    a DiscreteVP(interpolation="sigma") model reproduces it; the default (rounded timesteps, log
    alpha interpolated) does not."""
    for steps in (7, 12):
        row = run_scheduler(pipe_dir, class_name, {}, "linspace", steps, fractional_timesteps=True)
        assert row["note"] == "" and row["max_rel_diff"] <= 1e-5, row
        assert row["nfe_ours"] == row["diffusers_calls"], row
        default = run_scheduler(pipe_dir, class_name, {}, "linspace", steps)
        assert default["note"] and default["max_rel_diff"] > 1e-5, default


def test_sigma_interpolation_of_the_discrete_schedule():
    from score_models.schedules import DiscreteVP

    table = DiscreteVP.linear()
    linear_sigma = DiscreteVP(alphas_cumprod=table.alphas_cumprod, interpolation="sigma")
    knots = torch.arange(-1.0, 1000.0, dtype=torch.float64)
    assert torch.allclose(linear_sigma.alpha(knots), table.alpha(knots), rtol=1e-14)
    t = torch.tensor([0.25, 17.5, 500.4, 998.9], dtype=torch.float64)
    sigma_table = ((1 - table.alphas_cumprod) / table.alphas_cumprod).sqrt()
    lower = t.floor().long()
    expected = sigma_table[lower] + (t - lower) * (sigma_table[lower + 1] - sigma_table[lower])
    assert torch.allclose(linear_sigma.sigma_tilde(t), expected, rtol=1e-13)
    assert torch.allclose(linear_sigma.t_from_sigma_tilde(expected), t, rtol=1e-12)
    assert not torch.allclose(table.sigma_tilde(t), expected, rtol=1e-6)
    step = 1e-6
    numeric = (linear_sigma.log_alpha(t + step) - linear_sigma.log_alpha(t - step)) / (2 * step)
    assert torch.allclose(linear_sigma.dlog_alpha_dt(t), numeric, rtol=1e-6)
    with pytest.raises(ValueError, match=r"fractional_timesteps=True applies to the sigma-space schedulers "
                                         r"\(EulerDiscreteScheduler, .*\), not DDIMScheduler"):
        solvers.from_diffusers(diffusers.DDIMScheduler(clip_sample=False), fractional_timesteps=True)
    with pytest.raises(ValueError, match=r"unknown interpolation 'cubic'; valid: log_alpha, sigma"):
        DiscreteVP(alphas_cumprod=table.alphas_cumprod, interpolation="cubic")


# --- round_net_input: the network at rounded timesteps of Karras sigmas ----------------------------
@pytest.mark.parametrize("class_name, config", [
    ("DPMSolverMultistepScheduler", {}), ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("DPMSolverSinglestepScheduler", {}), ("UniPCMultistepScheduler", {})])
def test_rounded_network_timesteps_reproduce_diffusers_karras(pipe_dir, class_name, config):
    """These schedulers step with each Karras sigma but call the network at the rounded timestep
    of it: a model on DiscreteVP(round_net_input=True) reproduces that; the default (the network
    at the sigma's own time) differs, as exact_in_diffusers says."""
    config = {"use_karras_sigmas": True, **config}
    for steps in (7, 10):
        row = run_scheduler(pipe_dir, class_name, config, "linspace", steps, round_net_input=True)
        assert row["max_rel_diff"] <= 1e-5 and row["nfe_ours"] == row["diffusers_calls"], row
        default = run_scheduler(pipe_dir, class_name, config, "linspace", steps)
        assert default["note"] and default["max_rel_diff"] > 1e-4, default


def test_round_net_input_rounds_only_the_network_time():
    from score_models.schedules import DiscreteVP

    table = DiscreteVP.linear()
    rounding = DiscreteVP(alphas_cumprod=table.alphas_cumprod, round_net_input=True)
    t = torch.tensor([3.4, 3.6, 998.5], dtype=torch.float64)
    assert rounding.net_input(t).tolist() == [3.0, 4.0, 998.0] and table.net_input(t).tolist() == t.tolist()
    assert torch.equal(rounding.alpha(t), table.alpha(t))


# --- fixed_stride: diffusers' DDIM / PNDM arithmetic, reproduced on request -------------------------
_STRIDE_CASES = [("DDIMScheduler", {}, {"eta": 0.0}), ("DDIMScheduler", {}, {"eta": 1.0}),
                 ("PNDMScheduler", {"skip_prk_steps": True}, {}), ("PNDMScheduler", {"skip_prk_steps": False}, {})]


@pytest.mark.parametrize("case", _STRIDE_CASES, ids=lambda c: scheduler_case_label(*c))
@pytest.mark.parametrize("set_alpha_to_one", (True, False))
@pytest.mark.parametrize("spacing", ("linspace", "trailing", "leading"))
def test_fixed_stride_reproduces_diffusers_ddim_and_pndm(pipe_dir, case, set_alpha_to_one, spacing):
    """from_diffusers(fixed_stride=True): each step lands at t - T//N and the next reads the state
    as at the next timestep, as in diffusers' DDIMScheduler / PNDMScheduler (eta > 0 with equally
    seeded per-step noise; PNDM with and without its pseudo Runge-Kutta warm-up). T = 1000: N = 7
    and 14 do not divide it (and T//14 = 71 is odd: PRK's half steps), N = 10 does. Where the
    default mapping differs (linspace; trailing with N not dividing T), fixed_stride is exact."""
    class_name, config, step_arguments = case
    config = {**config, "set_alpha_to_one": set_alpha_to_one}
    if spacing == "linspace" and not set_alpha_to_one:
        return  # refused: test_fixed_stride_refusals
    for steps in (7, 10, 14):
        row = run_scheduler(pipe_dir, class_name, config, spacing, steps, step_arguments, fixed_stride=True)
        if spacing == "leading" and not set_alpha_to_one:
            # the grid ends on timestep 0 and holds N - 1 steps (no fixed stride: the spacing's own);
            # diffusers' extra zero-length step changes nothing, but PRK's half steps with odd T//N do
            assert row["note"].startswith("diffusers spends a network call on a zero-length last step"), row
            assert row["nfe_ours"] == row["diffusers_calls"] - 1, row
            odd_prk = row["sampler"] == "pndm" and (1000 // steps) % 2
            assert (row["max_rel_diff"] > 1e-5) if odd_prk else (row["max_rel_diff"] <= 1e-5), row
            continue
        assert row["note"] == "", row
        assert row["max_rel_diff"] <= 1e-5, row
        assert row["nfe_ours"] == row["diffusers_calls"], row
        if spacing == "linspace" or (spacing == "trailing" and steps != 10):
            default = run_scheduler(pipe_dir, class_name, config, spacing, steps, step_arguments)
            assert "fixed_stride=True" in default["note"] and default["max_rel_diff"] > 1e-4, default
        elif row["sampler"] == "pndm" and (1000 // steps) % 2:  # leading, N = 14: PRK's half steps
            default = run_scheduler(pipe_dir, class_name, config, spacing, steps, step_arguments)
            assert "pseudo Runge-Kutta" in default["note"] and default["max_rel_diff"] > 1e-5, default


def test_fixed_stride_refusals():
    ddim = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=False, timestep_spacing="linspace")
    with pytest.raises(ValueError, match=r"fixed_stride=True cannot reproduce linspace spacing with "
                                         r"set_alpha_to_one=False .*valid: set_alpha_to_one=True"):
        solvers.from_diffusers(ddim, fixed_stride=True)
    with pytest.raises(ValueError, match=r"fixed_stride=True applies to DDIMScheduler, PNDMScheduler, not "
                                         r"EulerDiscreteScheduler"):
        solvers.from_diffusers(diffusers.EulerDiscreteScheduler(), fixed_stride=True)
    model = zoo.load("gmm:ring8", schedule="ddpm_linear")
    noise = torch.randn(2, 2, dtype=torch.float64)
    for name in ("ddim", "plms", "pndm"):
        with pytest.raises(ValueError, match=r"landing='last'.*'next', 'fixed_stride'"):
            solvers.sample(name, model, noise, nfe=20, landing="last")
    # the default mapping keeps the consistent choice; leading spacing needs no fixed stride
    # when the grid ends on timestep 0 (set_alpha_to_one=False, steps_offset=0)
    assert "landing" not in solvers.from_diffusers(ddim.__class__.from_config(
        {**ddim.config, "set_alpha_to_one": True}))[1]
    leading = diffusers.PNDMScheduler(set_alpha_to_one=False, timestep_spacing="leading")
    assert "landing" not in solvers.from_diffusers(leading, fixed_stride=True)[1]
    trailing = diffusers.PNDMScheduler(skip_prk_steps=True, timestep_spacing="trailing")
    assert solvers.from_diffusers(trailing, fixed_stride=True) == (
        "plms", {"warmup": "improved_euler", "landing": "fixed_stride", "spacing": "trailing", "to_zero": False})


def test_landing_times_fixed_stride_is_diffusers_prev_timestep():
    """landing_times(..., "fixed_stride") on a DiscreteVP grid = diffusers' prev_timestep
    t - T//N, clamped at the grid's end (t_data = -1: abar = 1; else timestep 0)."""
    from score_models.schedules import DiscreteVP
    from solvers.grids import landing_times

    sched = DiscreteVP.linear()
    for spacing, n, to_zero in (("linspace", 7, True), ("trailing", 7, True), ("trailing", 14, False),
                                ("leading", 10, True)):
        times = solvers.time_grid(sched, n, None, spacing=spacing, to_zero=to_zero)
        assert times.numel() == n + 1
        expected = [max(float(t) - 1000 // n, float(times[-1])) for t in times[:-1]]
        assert landing_times(sched, times, "fixed_stride").tolist() == expected
        assert landing_times(sched, times, "next").tolist() == times[1:].tolist()
    with pytest.raises(ValueError, match=r"landing='fixed_stride' needs a finite t_data"):
        landing_times(zoo.load("gmm:ring8", schedule="ve").schedule, torch.tensor([80.0, 1.0, 0.1]), "fixed_stride")


def test_fixed_stride_is_refused_on_a_continuous_time_schedule():
    """On t in [0, 1] the stride floor(1 / N) is 0: every step would be zero-length."""
    model = zoo.load("gmm:ring8", schedule="vp_linear")
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match="stride of at least 1"):
        solvers.sample("ddim", model, noise, nfe=10, landing="fixed_stride")
