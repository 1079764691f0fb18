"""Side-by-side equivalence with diffusers' schedulers on the same network and noise.

    python -m benchmarks.equivalence          # prints the table (sampler x spacing -> max |diff|)

Each diffusers scheduler configuration (:data:`CASES`) runs through diffusers' own denoising loop
and through the sampler and options :func:`solvers.from_diffusers` maps it to, from the same
latents (per-step noise from equally seeded generators); the note column is
:func:`solvers.exact_in_diffusers`' verdict where the mapping is not exact. Two networks:

- ``gmm``: the exact eps of the image-shaped Gaussian mixture on diffusers' DDPM schedule, so the
  samples live at data scale and max |diff| is an absolute figure (the tests ask <= 1e-4);
- ``unet``: a small random UNet2DModel saved with save_pretrained and loaded back through
  ``zoo.load("diffusers:<dir>")``. Untrained, it drives samples to |x| ~ 10^2, so its max |diff|
  is read relative to max |x| (diffusers keeps alphas_cumprod in float32: ~1e-7 relative).

Then the EDM schedulers (:data:`EDM_CASES`) on the mixture under the EDM schedule and the
flow-matching ones (:data:`FLOW_CASES`) on the mixture under rectified flow with flow prediction.
"""
from __future__ import annotations

import argparse
import inspect
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

import solvers
from score_models import GaussianMixture, zoo
from solvers import grids

__all__ = ["CASES", "Case", "make_tiny_pipeline", "run_case", "equivalence_table", "diffusers_loop", "not_comparable",
           "EDM_CASES", "run_edm_case", "edm_equivalence_table", "FLOW_CASES", "flow_mixture", "run_flow_case"]


def make_tiny_pipeline(directory: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """A small random DDPM pipeline (UNet2DModel on 3x8x8, DDPM linear betas) saved to disk."""
    import diffusers

    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(directory)
    return Path(directory)


@dataclass(frozen=True)
class Case:
    """One diffusers scheduler configuration. Its nfebench side is :func:`solvers.from_diffusers`'
    mapping unless ``sampler`` names one by hand (the parity tests propose such cases for what
    the mapping refuses, e.g. SA-Solver with tau_func = 0)."""

    label: str
    scheduler: str
    scheduler_config: Dict[str, Any]
    sampler: Optional[str] = None  # None: from_diffusers' sampler and options
    options: Dict[str, Any] = field(default_factory=dict)
    grid_from_diffusers: bool = False  # hand cases: pass diffusers' own timesteps as our grid
    scale_noise_like: Optional[str] = None  # hand cases: "sigma" where diffusers scales latents by init_noise_sigma
    step_kwargs: Dict[str, Any] = field(default_factory=dict)  # passed to diffusers' step() (and from_diffusers)


CASES: List[Case] = [
    Case("DDIM eta=0", "DDIMScheduler", dict(set_alpha_to_one=True), step_kwargs={"eta": 0.0}),
    Case("DDIM eta=1", "DDIMScheduler", dict(set_alpha_to_one=True), step_kwargs={"eta": 1.0}),
    Case("DDPM fixed_small", "DDPMScheduler", dict(variance_type="fixed_small")),
    Case("DDPM fixed_large", "DDPMScheduler", dict(variance_type="fixed_large")),
    Case("PNDM (PRK warm-up)", "PNDMScheduler", dict(skip_prk_steps=False, set_alpha_to_one=True)),
    Case("PNDM skip_prk_steps", "PNDMScheduler", dict(skip_prk_steps=True, set_alpha_to_one=True)),
    Case("PNDM skip_prk, alpha_1=abar_0", "PNDMScheduler", dict(skip_prk_steps=True, set_alpha_to_one=False)),
    Case("EulerDiscrete", "EulerDiscreteScheduler", {}),
    Case("HeunDiscrete", "HeunDiscreteScheduler", {}),
    Case("DPM-Solver++ 2M", "DPMSolverMultistepScheduler", dict(solver_order=2, algorithm_type="dpmsolver++")),
    Case("DPM-Solver++ 3M", "DPMSolverMultistepScheduler", dict(solver_order=3, algorithm_type="dpmsolver++")),
    Case("EulerAncestral", "EulerAncestralDiscreteScheduler", {}),
    Case("KDPM2Ancestral", "KDPM2AncestralDiscreteScheduler", {}),
    Case("LMSDiscrete", "LMSDiscreteScheduler", {}),
    Case("SA-Solver p2 c2", "SASolverScheduler", {}),
    Case("UniPC bh2 p=2", "UniPCMultistepScheduler", dict(solver_order=2, solver_type="bh2")),
    Case("UniPC bh2 p=3", "UniPCMultistepScheduler", dict(solver_order=3, solver_type="bh2")),
    Case("DPM-Solver++ 2M heun (RES)", "DPMSolverMultistepScheduler",
         dict(solver_order=2, algorithm_type="dpmsolver++", solver_type="heun", lower_order_final=False)),
    Case("DPM-Solver++ 2S singlestep", "DPMSolverSinglestepScheduler", dict(solver_order=2)),
    Case("DPM-Solver++ 3S singlestep", "DPMSolverSinglestepScheduler", dict(solver_order=3)),
]

SPACINGS = grids.SPACINGS


def _scheduler(case: Case, spacing: str, base: Optional[Dict[str, Any]] = None) -> Any:
    """The case's diffusers scheduler over the pipeline's scheduler config (``base``; default
    DDPMScheduler's, which :func:`make_tiny_pipeline` saves), at this timestep spacing."""
    import diffusers

    if base is None:  # (diffusers' _use_default_values would override the values given here)
        base = {k: v for k, v in diffusers.DDPMScheduler().config.items() if not k.startswith("_")}
    return getattr(diffusers, case.scheduler).from_config(
        {**base, "timestep_spacing": spacing, "clip_sample": False, **case.scheduler_config})


def not_comparable(steps: int = 10) -> Dict[tuple, str]:
    """(case label, spacing) -> why from_diffusers' mapping does not reproduce diffusers there:
    :func:`solvers.exact_in_diffusers`' verdict for each of :data:`CASES`."""
    _quiet_diffusers()
    notes = {}
    for case in CASES:
        for spacing in SPACINGS:
            note = solvers.exact_in_diffusers(_scheduler(case, spacing), steps, **case.step_kwargs)
            if note:
                notes[(case.label, spacing)] = note
    return notes


def __getattr__(name: str) -> Any:
    # NOT_COMPARABLE: the cells not_comparable() names for the table's 10 steps, computed on
    # first use (it builds diffusers schedulers).
    if name == "NOT_COMPARABLE":
        globals()["NOT_COMPARABLE"] = not_comparable()
        return globals()["NOT_COMPARABLE"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _quiet_diffusers() -> None:
    import diffusers

    diffusers.utils.logging.set_verbosity_error()


def diffusers_loop(scheduler: Any, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], latents: torch.Tensor,
                   steps: int, set_timesteps_kwargs: Optional[Dict[str, Any]] = None, **step_kwargs: Any) -> torch.Tensor:
    """diffusers' own denoising loop with a configured scheduler: set_timesteps(steps), start from
    latents x init_noise_sigma (1 where a scheduler has none: flow matching), then
    net(scale_model_input(x, t), t) (x itself where there is no scale_model_input) and step() for
    each timestep."""
    scheduler.set_timesteps(steps, device=latents.device, **(set_timesteps_kwargs or {}))
    x = latents * getattr(scheduler, "init_noise_sigma", 1.0)
    scale = getattr(scheduler, "scale_model_input", lambda sample, t: sample)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(scale(x, t), t), t, x, **step_kwargs).prev_sample
    return x


def _diffusers_case(pipe_dir: Path, case: Case, spacing: str, steps: int, latents: torch.Tensor,
                    seed: int, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                    ) -> tuple[torch.Tensor, List[float], float]:
    import diffusers

    base = diffusers.DDPMScheduler.load_config(pipe_dir, subfolder="scheduler")
    cls = getattr(diffusers, case.scheduler)
    sched = cls.from_config({**base, "timestep_spacing": spacing, "clip_sample": False, **case.scheduler_config})
    kwargs = dict(case.step_kwargs)
    if "generator" in inspect.signature(sched.step).parameters:
        # per-step noise from a generator seeded as ours: stochastic schedulers share their draws
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    x = diffusers_loop(sched, net, latents, steps, **kwargs)
    return x, [float(t) for t in sched.timesteps], float(sched.init_noise_sigma)


def _network(pipe_dir: Path, network: str, dtype: torch.dtype, interpolation: str = "log_alpha",
             round_net_input: bool = False):
    """(our DiffusionModel, the same network as diffusers' loop calls it: net(x, t) -> eps).
    ``interpolation``, ``round_net_input``: the gmm's DiscreteVP options."""
    model = zoo.load(f"diffusers:{pipe_dir}")
    if network == "unet":
        model.net.to(dtype)
        return model, lambda x, t: model.net(x, t.expand(x.shape[0]).to(x.dtype))
    if network == "gmm":
        from score_models.schedules import DiscreteVP

        schedule = DiscreteVP(alphas_cumprod=model.schedule.alphas_cumprod, interpolation=interpolation,
                              round_net_input=round_net_input)
        preset = zoo.load("gmm:image3x8x8", schedule=schedule)
        exact = GaussianMixture(preset.means.reshape(-1, 3, 8, 8), preset.variances.sqrt().reshape(-1, 3, 8, 8),
                                preset.weights, schedule=schedule, prediction="eps")
        return exact, lambda x, t: exact.net(x, torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0]))
    raise ValueError(f"unknown network {network!r}; valid: gmm, unet")


def run_case(pipe_dir: Path, case: Case, spacing: str, network: str = "gmm", steps: int = 10, n: int = 4,
             seed: int = 0, dtype: torch.dtype = torch.float64) -> Dict[str, Any]:
    """Run one case both ways (network and states in ``dtype``; diffusers keeps its float32
    alphas_cumprod); returns max |ours - diffusers| and the counted NFE of each, and (for a
    case mapped by from_diffusers) exact_in_diffusers' note."""
    if case.sampler is None:
        row = run_scheduler(pipe_dir, case.scheduler, case.scheduler_config, spacing, steps, case.step_kwargs,
                            network=network, n=n, seed=seed, dtype=dtype)
        return {**row, "case": case.label}
    _quiet_diffusers()
    latents = torch.randn((n, 3, 8, 8), generator=torch.Generator().manual_seed(1000 + seed), dtype=dtype)
    model, net = _network(pipe_dir, network, dtype)
    theirs, their_timesteps, init_sigma = _diffusers_case(pipe_dir, case, spacing, steps, latents, seed, net)
    options = dict(case.options)
    noise = latents
    if case.scale_noise_like == "sigma":
        # diffusers' sigma-space samplers start from x~ = init_noise_sigma * latents; our x_T is
        # unscaled (x = alpha x~), so feed the same state.
        noise = latents * init_sigma * float(model.schedule.alpha(their_timesteps[0]))
    if case.grid_from_diffusers:
        # diffusers' DPMSolverMultistepScheduler spaces its timesteps its own way (N+1 points, last
        # dropped, for linspace/leading); give its timesteps to our sampler as the grid.
        options["grid"] = torch.tensor(sorted(set(their_timesteps), reverse=True) + [model.schedule.t_data],
                                       dtype=torch.float64)
        nfe = None
    else:
        options["spacing"] = spacing
        spec = solvers.get(case.sampler)
        nfe = spec.count(steps, spec.ends_at_data(options), options)
    stats: Dict[str, Any] = {}
    ours = solvers.sample(case.sampler, model, noise, nfe=nfe, generator=torch.Generator().manual_seed(seed),
                          stats=stats, **options)
    return {"case": case.label, "spacing": spacing, "network": network, "max_abs_diff": float((ours - theirs).abs().max()),
            "max_abs_value": float(theirs.abs().max()),
            "nfe_ours": stats["nfe"], "diffusers_calls": len(their_timesteps)}


#: (diffusers scheduler class, config, step() arguments): the configurations the table and the
#: tests run through :func:`solvers.from_diffusers`, across every timestep spacing.
SCHEDULER_CASES: List[tuple] = [
    ("DDIMScheduler", {}, {"eta": 0.0}), ("DDIMScheduler", {}, {"eta": 1.0}),
    ("DDIMScheduler", {"set_alpha_to_one": False, "steps_offset": 1}, {"eta": 0.0}),
    ("DDPMScheduler", {}, {}), ("DDPMScheduler", {"variance_type": "fixed_large"}, {}),
    ("PNDMScheduler", {"set_alpha_to_one": True}, {}), ("PNDMScheduler", {"skip_prk_steps": True}, {}),
    ("EulerDiscreteScheduler", {}, {}), ("HeunDiscreteScheduler", {}, {}), ("EulerAncestralDiscreteScheduler", {}, {}),
    ("LMSDiscreteScheduler", {}, {}), ("LMSDiscreteScheduler", {}, {"order": 2}), ("KDPM2DiscreteScheduler", {}, {}),
    ("KDPM2AncestralDiscreteScheduler", {}, {}), ("DPMSolverSDEScheduler", {}, {}),
    ("DPMSolverMultistepScheduler", {}, {}), ("DPMSolverMultistepScheduler", {"solver_order": 1}, {}),
    ("DPMSolverMultistepScheduler", {"solver_order": 3}, {}),
    ("DPMSolverMultistepScheduler", {"solver_order": 3, "lower_order_final": False}, {}),
    ("DPMSolverMultistepScheduler", {"final_sigmas_type": "sigma_min"}, {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}, {}),
    ("DPMSolverMultistepScheduler", {"solver_type": "heun", "lower_order_final": False}, {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, {}),
    ("UniPCMultistepScheduler", {}, {}),
    # bh1 divides by the last sigma: diffusers itself returns NaN with final sigma 0. (predict_x0=False
    # amplifies diffusers' float32 tables to ~1e-4: tests/test_parity_unipc.py runs it with float64 ones.)
    ("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"}, {}),
    ("UniPCMultistepScheduler", {"final_sigmas_type": "sigma_min"}, {}),
    ("DEISMultistepScheduler", {}, {}), ("DEISMultistepScheduler", {"solver_order": 3}, {}),
    ("SASolverScheduler", {}, {}), ("SASolverScheduler", {"predictor_order": 3, "corrector_order": 4}, {}),
    # no timestep_spacing: its linspace timesteps whatever the pipeline's spacing
    ("DPMSolverSinglestepScheduler", {}, {}), ("DPMSolverSinglestepScheduler", {"solver_order": 3}, {}),
    ("DPMSolverSinglestepScheduler", {"solver_order": 3, "solver_type": "heun", "final_sigmas_type": "sigma_min"}, {}),
]


def scheduler_case_label(class_name: str, config: Dict[str, Any], step_arguments: Dict[str, Any]) -> str:
    extra = ", ".join(f"{k}={v!r}" for k, v in {**config, **step_arguments}.items())
    return class_name.removesuffix("Scheduler") + (f"({extra})" if extra else "")


def run_scheduler(pipe_dir: Path, class_name: str, config: Dict[str, Any], spacing: str, steps: int = 10,
                  step_arguments: Optional[Dict[str, Any]] = None, network: str = "gmm", n: int = 3, seed: int = 0,
                  dtype: torch.dtype = torch.float64, fractional_timesteps: bool = False,
                  round_net_input: bool = False, fixed_stride: bool = False) -> Dict[str, Any]:
    """diffusers' own loop with ``class_name`` (the pipeline's scheduler config, ``timestep_spacing``
    = spacing, ``config`` over it) against :func:`solvers.sample` with the sampler and options
    :func:`solvers.from_diffusers` maps it to, from the same latents, budget = diffusers' network
    calls; per-step noise from equally seeded generators. Returns the relative max difference,
    both counts and :func:`solvers.exact_in_diffusers`' verdict. ``fractional_timesteps``: passed
    to from_diffusers, with the gmm's DiscreteVP interpolating sigma~ linearly, as diffusers does;
    ``round_net_input``: the gmm's DiscreteVP calls its network at rounded timesteps;
    ``fixed_stride``: passed to from_diffusers (DDIM and PNDM step as diffusers does)."""
    import diffusers

    _quiet_diffusers()
    step_arguments = dict(step_arguments or {})
    base = diffusers.DDPMScheduler.load_config(pipe_dir, subfolder="scheduler")
    scheduler = getattr(diffusers, class_name).from_config(
        {**base, "timestep_spacing": spacing, "clip_sample": False, **config})
    name, options = solvers.from_diffusers(scheduler, fractional_timesteps=fractional_timesteps,
                                           fixed_stride=fixed_stride, **step_arguments)
    model, net = _network(pipe_dir, network, dtype, "sigma" if fractional_timesteps else "log_alpha", round_net_input)
    latents = torch.randn((n, 3, 8, 8), generator=torch.Generator().manual_seed(1000 + seed), dtype=dtype)
    calls = []

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(float(t))
        return net(x, t)

    kwargs = dict(step_arguments)
    if "generator" in inspect.signature(scheduler.step).parameters:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    theirs = diffusers_loop(scheduler, counted, latents, steps, **kwargs)
    stats: Dict[str, Any] = {}
    ours = solvers.sample(name, model, latents, nfe=len(calls), generator=torch.Generator().manual_seed(seed),
                          stats=stats, **options)
    return {"case": scheduler_case_label(class_name, config, step_arguments), "spacing": spacing, "network": network,
            "steps": steps, "sampler": name, "options": options,
            "max_rel_diff": float((ours - theirs).abs().max() / theirs.abs().max()),
            "max_abs_diff": float((ours - theirs).abs().max()), "max_abs_value": float(theirs.abs().max()),
            "nfe_ours": stats["nfe"], "diffusers_calls": len(calls),
            "note": solvers.exact_in_diffusers(scheduler, steps, fractional_timesteps=fractional_timesteps,
                                               fixed_stride=fixed_stride, **step_arguments) or ""}


def equivalence_table(steps: int = 10, cases: Sequence[Case] = tuple(CASES),
                      networks: Sequence[str] = ("gmm", "unet")) -> List[Dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pipe_dir = make_tiny_pipeline(Path(tmp) / "pipe")
        for case in cases:
            for spacing in SPACINGS:
                for network in networks:
                    row = run_case(pipe_dir, case, spacing, network=network, steps=steps)
                    row.setdefault("note", "")
                    rows.append(row)
    return rows


#: diffusers' EDM schedulers (sigma-space, EDM preconditioning) and the nfebench call that equals each.
EDM_CASES: List[Case] = [
    Case("EDMEuler karras", "EDMEulerScheduler", dict(sigma_schedule="karras")),
    Case("EDMEuler exponential", "EDMEulerScheduler", dict(sigma_schedule="exponential")),
    Case("EDMDPMSolverMultistep 2M", "EDMDPMSolverMultistepScheduler", dict(solver_order=2)),
    Case("EDMDPMSolverMultistep 3M", "EDMDPMSolverMultistepScheduler", dict(solver_order=3)),
    Case("EDMDPMSolverMultistep 2M exponential", "EDMDPMSolverMultistepScheduler",
         dict(solver_order=2, sigma_schedule="exponential")),
    Case("EDMDPMSolverMultistep 2M heun (RES)", "EDMDPMSolverMultistepScheduler",
         dict(solver_order=2, solver_type="heun", lower_order_final=False)),
]


def _edm_network(scheduler: Any, exact: GaussianMixture) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The network F that diffusers' EDM preconditioning turns into the exact denoiser:
    diffusers calls F(c_in x, c_noise) and forms D = c_skip x + c_out F, so F = (D - c_skip x)/c_out."""
    sigma_data = scheduler.config.sigma_data

    def net(model_input: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        sigma = float(torch.exp(4.0 * torch.as_tensor(c_noise, dtype=torch.float64)))  # c_noise = log(sigma)/4
        x = model_input * (sigma ** 2 + sigma_data ** 2) ** 0.5
        c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
        c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2) ** 0.5
        return (exact.x0(x, sigma) - c_skip * x) / c_out

    return net


def run_edm_case(case: Case, steps: int = 10, n: int = 8, seed: int = 0) -> Dict[str, Any]:
    """One EDM scheduler both ways on the image-shaped exact mixture (EDM schedule, float64):
    diffusers' loop from latents x init_noise_sigma, ours from the same state."""
    import diffusers

    _quiet_diffusers()
    exact = zoo.load("gmm:image3x8x8", schedule="edm")
    scheduler = getattr(diffusers, case.scheduler)(**case.scheduler_config)
    latents = torch.randn((n, 3, 8, 8), generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)
    start = exact.nfe
    theirs = diffusers_loop(scheduler, _edm_network(scheduler, exact), latents, steps)
    calls = exact.nfe - start
    # from_diffusers' start_noise="unit_data" starts from latents x sqrt(sigma_max^2 + 1), as diffusers.
    name, options = solvers.from_diffusers(scheduler)
    stats: Dict[str, Any] = {}
    ours = solvers.sample(name, exact, latents, nfe=calls, stats=stats, **options)
    return {"case": case.label, "spacing": "-", "network": "gmm", "steps": steps,
            "max_abs_diff": float((ours - theirs).abs().max()), "max_abs_value": float(theirs.abs().max()),
            "nfe_ours": stats["nfe"], "diffusers_calls": calls}


#: diffusers' flow-matching schedulers: (class, config, from_diffusers arguments (mu)).
FLOW_CASES: List[tuple] = [
    ("FlowMatchEulerDiscreteScheduler", {}, {}), ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, {}),
    ("FlowMatchEulerDiscreteScheduler", {"shift": 0.5, "num_train_timesteps": 500}, {}),
    ("FlowMatchEulerDiscreteScheduler", {"use_dynamic_shifting": True}, {"mu": 0.7}),
    ("FlowMatchEulerDiscreteScheduler", {"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"mu": 2.5}),
    ("FlowMatchHeunDiscreteScheduler", {}, {}), ("FlowMatchHeunDiscreteScheduler", {"shift": 3.0}, {}),
]


def flow_mixture(t_min: float = 1e-4) -> GaussianMixture:
    """The image-shaped exact mixture on rectified flow from t = 1 (diffusers' sigma = 1) with
    flow (velocity) prediction, as diffusers' flow-matching transformers predict."""
    from score_models.schedules import RectifiedFlow

    schedule = RectifiedFlow(t_min=t_min, t_max=1.0)
    preset = zoo.load("gmm:image3x8x8", schedule=schedule)
    return GaussianMixture(preset.means.reshape(-1, 3, 8, 8), preset.variances.sqrt().reshape(-1, 3, 8, 8),
                           preset.weights, schedule=schedule, prediction="flow")


def run_flow_case(class_name: str, config: Dict[str, Any], steps: int = 10,
                  step_arguments: Optional[Dict[str, Any]] = None, n: int = 3, seed: int = 0) -> Dict[str, Any]:
    """A diffusers FlowMatch scheduler's own loop against :func:`solvers.from_diffusers`' sampler
    on :func:`flow_mixture` (float64), from the same latents, budget = diffusers' network calls.
    diffusers calls the network at timestep = sigma T and steps with its velocity."""
    import diffusers

    _quiet_diffusers()
    step_arguments = dict(step_arguments or {})
    scheduler = getattr(diffusers, class_name).from_config(config)
    name, options = solvers.from_diffusers(scheduler, **step_arguments)
    exact = flow_mixture()
    t_train = scheduler.config.num_train_timesteps

    def net(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return exact.flow(x, torch.as_tensor(timestep, dtype=torch.float64) / t_train)

    latents = torch.randn((n, 3, 8, 8), generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)
    start = exact.nfe
    theirs = diffusers_loop(scheduler, net, latents, steps, set_timesteps_kwargs=step_arguments)
    calls = exact.nfe - start
    stats: Dict[str, Any] = {}
    ours = solvers.sample(name, exact, latents, nfe=calls, stats=stats, **options)
    return {"case": scheduler_case_label(class_name, config, step_arguments), "spacing": "-", "network": "gmm",
            "steps": steps, "sampler": name, "options": options,
            "max_rel_diff": float((ours - theirs).abs().max() / theirs.abs().max()),
            "max_abs_diff": float((ours - theirs).abs().max()), "max_abs_value": float(theirs.abs().max()),
            "nfe_ours": stats["nfe"], "diffusers_calls": calls,
            "note": solvers.exact_in_diffusers(scheduler, steps, **step_arguments) or ""}


def edm_equivalence_table(steps: Sequence[int] = (7, 10, 13)) -> List[Dict[str, Any]]:
    return [dict(run_edm_case(case, n_steps), note="") for case in EDM_CASES for n_steps in steps]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"{'diffusers scheduler':<30} {'spacing':<9} {'network':<7} {'max|diff|':>10} {'max|x|':>8} {'NFE ours':>8} "
          f"{'diffusers calls':>15}  note")
    flow_rows = [run_flow_case(c, config, args.steps, arguments) for c, config, arguments in FLOW_CASES]
    for r in equivalence_table(args.steps) + edm_equivalence_table((args.steps,)) + flow_rows:
        print(f"{r['case']:<30} {r['spacing']:<9} {r['network']:<7} {r['max_abs_diff']:10.2e} {r['max_abs_value']:8.3g} "
              f"{r['nfe_ours']:8d} {r['diffusers_calls']:15d}  {r['note']}")


if __name__ == "__main__":
    main()
