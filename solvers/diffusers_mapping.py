"""diffusers schedulers as nfebench samplers: :func:`from_diffusers`.

    name, options = solvers.from_diffusers(pipeline.scheduler)      # or its config dict
    x0 = solvers.sample(name, model, latents, nfe=..., **options)

One table, :data:`SCHEDULERS`, says for each diffusers scheduler class which registered sampler
computes the same update and how its config values become options. The time grid follows from
the class's family (:class:`Family`): which training timesteps diffusers visits for each
``timestep_spacing``, where its last step ends, and how it scales the starting latents
(``init_noise_sigma``). A config value the table does not map (``thresholding=True``, a
``tau_func``, ``invert_sigmas``, ...) is refused with a ValueError naming the value and the
values that are valid; values that only define the schedule (betas, ``num_train_timesteps``)
belong to the model and are not read here.

Mapped exactly besides the DDPM-schedule and EDM families:

- DPMSolverSinglestepScheduler -> ``dpm_solver_singlestep(intermediate="grid")``: a step of order
  k spans k of diffusers' timesteps, the orders by its get_order_list; dpmsolver++ only.
- FlowMatchEulerDiscreteScheduler -> ``euler``, FlowMatchHeunDiscreteScheduler -> ``heun`` with
  ``form="velocity"`` (diffusers averages velocities; heun's default scaled form differs at
  second order and is undefined at t = 1), both on ``grid="shifted"`` (SD3's time shift) from
  t = 1, so on a model with ``RectifiedFlow(t_max=1.0)`` and flow prediction. Dynamic shifting
  takes diffusers' set_timesteps ``mu`` as ``from_diffusers(scheduler, mu=...)``; inverted
  sigmas, stochastic sampling, ``shift_terminal`` and Karras / exponential / beta sigmas (spaced
  in sigma = t, not sigma/alpha) are refused.

Where diffusers' arithmetic is not what a grid of times can say, the mapping gives the
consistent choice and :func:`exact_in_diffusers` says that the two differ:

- DDIM, DDPM and PNDM step from t to t - T//N (a fixed stride), and then evaluate the network at
  the next timestep of the spacing; the two agree for leading spacing, and for trailing when N
  divides T, but not for linspace: the state is moved to one time and read as if at another.
  The mapping lands each step on the next timestep, the consistent choice.
  ``from_diffusers(fixed_stride=True)`` (off by default) reproduces diffusers' DDIM and PNDM
  (with or without its pseudo Runge-Kutta warm-up) instead, through the samplers' option
  ``landing="fixed_stride"`` (:func:`solvers.grids.landing_times`); it refuses linspace spacing
  with ``set_alpha_to_one=False``, whose last, zero-length step from timestep 0 a grid cannot hold.
  DDPMScheduler has no such option here.
- The sigma-space schedulers (Euler, Heun, LMS, ...) visit fractional timesteps for linspace
  spacing when N - 1 does not divide T - 1, and interpolate sigma~ linearly between integer
  timesteps there; nfebench's discrete schedule interpolates log alpha (which keeps lambda(t)
  monotone and the PF-ODE's coefficients piecewise smooth) and its linspace spacing rounds to
  integer timesteps, as the network was trained on. ``from_diffusers(fractional_timesteps=True)``
  on a model with ``DiscreteVP(interpolation="sigma")`` reproduces diffusers here (off by default).
- With karras / exponential / beta sigmas diffusers steps with the unrounded sigma but calls
  the network at a rounded (or log-sigma interpolated) timestep. A model on
  ``DiscreteVP(round_net_input=True)`` reproduces the rounding of DPMSolverMultistep,
  DPMSolverSinglestep and UniPCMultistep with karras sigmas (off by default).

:func:`exact_in_diffusers` names, per scheduler configuration, which of these applies;
``python -m benchmarks.diffusers_costs`` measures what each costs on an exact mixture.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

__all__ = ["from_diffusers", "exact_in_diffusers", "pipeline_grid_defaults", "SCHEDULERS", "Family", "SchedulerMapping", "scheduler_config"]


@dataclass(frozen=True)
class Family:
    """How a family of diffusers schedulers spaces its timesteps, ends and starts.

    - ``spacing``: reads ``timestep_spacing`` / ``steps_offset`` into nfebench's ``spacing`` /
      ``steps_offset``;
    - ``drop_last_for``: spacings for which diffusers spaces N + 1 timesteps and drops the last;
    - ``end``: ``"set_alpha_to_one"`` (the config value says whether the last step ends at
      sigma = 0), ``"final_sigmas_type"`` ("zero" or "sigma_min", i.e. timestep 0), ``"zero"`` or
      ``"timestep_0"``;
    - ``start``: ``"prior"`` (x_T = noise, VP), ``"sigma_space"`` (init_noise_sigma = sigma_max for
      linspace/trailing, sqrt(sigma_max^2 + 1) for leading), ``"edm"`` (sqrt(sigma_max^2 + 1));
    - ``sigma_grids``: whether use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas exist.
    """

    name: str
    spacing: bool = True
    drop_last_for: Tuple[str, ...] = ()
    end: str = "zero"
    start: str = "prior"
    sigma_grids: bool = False
    fixed_spacing: Optional[str] = None  # the spacing of a class without timestep_spacing


STRIDE = Family("stride", end="set_alpha_to_one")
#: DPMSolverSinglestep has no timestep_spacing: linspace over N + 1 timesteps, the last dropped.
SINGLESTEP = Family("singlestep", drop_last_for=("linspace",), end="final_sigmas_type", sigma_grids=True,
                    fixed_spacing="linspace")
SIGMA_SPACE = Family("sigma_space", start="sigma_space", sigma_grids=True)
MULTISTEP = Family("multistep", drop_last_for=("linspace", "leading"), end="final_sigmas_type", sigma_grids=True)
EDM_FAMILY = Family("edm", spacing=False, end="final_sigmas_type", start="edm")
#: Flow matching: sigma = t of rectified flow, from 1 (pure noise) to the shifted end, then 0.
FLOW_MATCH = Family("flow_match", spacing=False)
STUDENT = Family("student", spacing=False)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except Exception:  # arrays and the like: compare as lists
        return list(a) == list(b)


@dataclass(frozen=True)
class SchedulerMapping:
    """A diffusers scheduler class and the nfebench sampler that computes its update.

    ``accepts``: the config keys (besides the family's grid keys) this mapping reads, each with
    the values it can map (None: any value). ``options``: config -> the sampler's own options.
    """

    sampler: str
    family: Family
    accepts: Dict[str, Optional[Tuple[Any, ...]]] = field(default_factory=dict)
    options: Callable[[Mapping[str, Any]], Dict[str, Any]] = lambda config: {}
    note: str = ""


def _dpm_multistep(config: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
    order, algorithm = int(config.get("solver_order", 2)), config.get("algorithm_type", "dpmsolver++")
    solver_type, lower = config.get("solver_type", "midpoint"), bool(config.get("lower_order_final", True))
    if algorithm == "sde-dpmsolver++":
        if order == 2:
            return "dpmpp_2m_sde", {"eta": 1.0, "solver_type": solver_type, "lower_order_final": lower}
        if order == 3:
            return "dpmpp_3m_sde", {"eta": 1.0, "solver_type": solver_type, "third_order_term": "diffusers",
                                    "lower_order_final": lower}
        raise ValueError("algorithm_type='sde-dpmsolver++' with solver_order=1 has no nfebench equivalent; valid "
                         "solver_order: 2, 3")
    if solver_type == "heun" and order == 2 and algorithm == "dpmsolver++":
        if lower:
            raise ValueError("DPMSolverMultistep solver_type='heun' maps to res_multistep, which keeps order 2 to "
                             "the end; valid lower_order_final: False (or solver_type='midpoint')")
        return "res_multistep", {}
    if solver_type == "heun" and order > 1:
        raise ValueError(f"solver_type='heun' with solver_order={order}, algorithm_type={algorithm!r} has no nfebench "
                         f"equivalent; valid: solver_type='midpoint', or solver_order=2 with 'dpmsolver++'")
    options = {"order": order, "algorithm": algorithm, "lower_order_final": lower}
    if order == 3:
        options["third_order_term"] = "diffusers"
    return "dpm_solver", options


_ORDERS = (1, 2, 3)
#: variance_type values with which diffusers' multistep schedulers read no variance channels
#: (a model with learned variance declares it itself: DiffusionModel(learned_variance=True)).
_NOT_LEARNED = (None, "fixed_small", "fixed_large", "fixed_small_log", "fixed_large_log")
_DPM_ACCEPTS = {"solver_order": _ORDERS, "algorithm_type": ("dpmsolver++", "dpmsolver", "sde-dpmsolver++"),
                "solver_type": ("midpoint", "heun"), "lower_order_final": (True, False), "euler_at_final": (False,),
                "lambda_min_clipped": (-math.inf,), "variance_type": _NOT_LEARNED, "use_lu_lambdas": (False,)}
_NO_FLOW = {"use_flow_sigmas": (False,), "flow_shift": (1.0,), "use_dynamic_shifting": (False,),
            "time_shift_type": None}

#: diffusers scheduler class -> its nfebench sampler. Declared once; checked by :func:`check_table`.
SCHEDULERS: Dict[str, SchedulerMapping] = {
    "DDIMScheduler": SchedulerMapping("ddim", STRIDE, {"set_alpha_to_one": (True, False)},
                                      note="eta is an argument of diffusers' step(): pass it as from_diffusers(eta=)"),
    "DDPMScheduler": SchedulerMapping(
        "ddpm", Family("stride_to_zero"), {"variance_type": ("fixed_small", "fixed_large", "learned_range")},
        lambda c: {"variance": c.get("variance_type", "fixed_small")}),
    "PNDMScheduler": SchedulerMapping(
        "pndm", STRIDE, {"set_alpha_to_one": (True, False), "skip_prk_steps": (True, False)}),
    "EulerDiscreteScheduler": SchedulerMapping(
        "euler", SIGMA_SPACE, {"interpolation_type": ("linear",), "timestep_type": ("discrete",),
                               "final_sigmas_type": ("zero",), "sigma_min": (None,), "sigma_max": (None,)}),
    "HeunDiscreteScheduler": SchedulerMapping("heun", SIGMA_SPACE),
    "EulerAncestralDiscreteScheduler": SchedulerMapping("euler_ancestral", SIGMA_SPACE),
    "LMSDiscreteScheduler": SchedulerMapping("lms", SIGMA_SPACE,
                                             note="order is an argument of diffusers' step() (default 4)"),
    "KDPM2DiscreteScheduler": SchedulerMapping("dpm_2", SIGMA_SPACE),
    "KDPM2AncestralDiscreteScheduler": SchedulerMapping("dpm_2_ancestral", SIGMA_SPACE),
    "DPMSolverSDEScheduler": SchedulerMapping(
        "dpmpp_sde", SIGMA_SPACE, {"noise_sampler_seed": None}, lambda c: {"noise_sampler": "brownian"},
        note="the Brownian tree's seed comes from nfebench's generator, not noise_sampler_seed"),
    "DPMSolverMultistepScheduler": SchedulerMapping("dpm_solver", MULTISTEP, {**_DPM_ACCEPTS, **_NO_FLOW}),
    "DPMSolverSinglestepScheduler": SchedulerMapping(
        "dpm_solver_singlestep", SINGLESTEP,
        {**_DPM_ACCEPTS, "algorithm_type": ("dpmsolver++",), "lower_order_final": (True, False),
         "use_flow_sigmas": (False,), "flow_shift": (1.0,), "use_dynamic_shifting": (False,), "time_shift_type": None},
        lambda c: {"order": int(c.get("solver_order", 2)), "intermediate": "grid",
                   "solver_type": c.get("solver_type", "midpoint"), "lower_order_final": bool(c.get("lower_order_final", False))},
        note="a step of order k spans k of diffusers' timesteps (intermediate='grid'), orders by its get_order_list"),
    "UniPCMultistepScheduler": SchedulerMapping(
        "unipc", MULTISTEP,
        {"solver_order": _ORDERS, "solver_type": ("bh1", "bh2"), "predict_x0": (True, False),
         "lower_order_final": (True, False), "disable_corrector": ([],), "solver_p": (None,),
         "sigma_min": (None,), "sigma_max": (None,), "shift_terminal": (None,), **_NO_FLOW},
        lambda c: {"order": int(c.get("solver_order", 2)), "variant": c.get("solver_type", "bh2"),
                   "predict_x0": bool(c.get("predict_x0", True)), "lower_order_final": bool(c.get("lower_order_final", True))}),
    "DEISMultistepScheduler": SchedulerMapping(
        "deis", Family("multistep_to_timestep_0", drop_last_for=("linspace", "leading"), end="timestep_0",
                       sigma_grids=True),
        {"solver_order": _ORDERS, "algorithm_type": ("deis",), "solver_type": ("logrho",),
         "lower_order_final": (True, False), **_NO_FLOW},
        lambda c: {"order": int(c.get("solver_order", 2)), "poly_in": "log_rho",
                   "lower_order_final": bool(c.get("lower_order_final", True))}),
    "SASolverScheduler": SchedulerMapping(
        "sa_solver", Family("multistep_to_timestep_0", drop_last_for=("linspace", "leading"), end="timestep_0",
                            sigma_grids=True),
        {"predictor_order": (1, 2, 3, 4), "corrector_order": (1, 2, 3, 4), "tau_func": (None,),
         "algorithm_type": ("data_prediction",), "lower_order_final": (True, False),
         "lambda_min_clipped": (-math.inf,), "variance_type": _NOT_LEARNED, **_NO_FLOW},
        lambda c: {"predictor_order": int(c.get("predictor_order", 2)), "corrector_order": int(c.get("corrector_order", 2)),
                   "lower_order_final": bool(c.get("lower_order_final", True))},
        note="a tau_func other than diffusers' default cannot be read; use sa_solver's tau options"),
    "FlowMatchEulerDiscreteScheduler": SchedulerMapping(
        "euler", FLOW_MATCH,
        {"shift": None, "use_dynamic_shifting": (True, False), "time_shift_type": ("exponential", "linear"),
         "base_shift": None, "max_shift": None, "base_image_seq_len": None, "max_image_seq_len": None,
         "invert_sigmas": (False,), "shift_terminal": (None,), "stochastic_sampling": (False,),
         "use_karras_sigmas": (False,), "use_exponential_sigmas": (False,), "use_beta_sigmas": (False,)},
        note="dynamic shifting's mu is an argument of diffusers' set_timesteps(): pass it as from_diffusers(mu=); "
             "base_shift, max_shift and the image sequence lengths are the pipeline's recipe for mu"),
    "FlowMatchHeunDiscreteScheduler": SchedulerMapping("heun", FLOW_MATCH, {"shift": None},
                                                       lambda c: {"form": "velocity"}),
    "EDMEulerScheduler": SchedulerMapping("euler", EDM_FAMILY, {"sigma_data": None}),
    "EDMDPMSolverMultistepScheduler": SchedulerMapping(
        "dpm_solver", EDM_FAMILY, {"sigma_data": None, **_DPM_ACCEPTS}),
    "LCMScheduler": SchedulerMapping(
        "consistency", STUDENT, {"original_inference_steps": None, "timestep_scaling": None,
                                 "set_alpha_to_one": (True,), "timestep_spacing": None, "steps_offset": None},
        note="runs on the grid the consistency student declares"),
    "TCDScheduler": SchedulerMapping(
        "tcd", STUDENT, {"original_inference_steps": None, "timestep_scaling": None, "set_alpha_to_one": (True,),
                         "timestep_spacing": None, "steps_offset": None},
        note="gamma is diffusers' step(eta=): pass it as from_diffusers(eta=)"),
    "CMStochasticIterativeScheduler": SchedulerMapping(
        "consistency", STUDENT, {"sigma_min": None, "sigma_max": None, "sigma_data": None, "rho": None,
                                 "s_noise": (1.0,), "clip_denoised": (False,)},
        note="runs on the grid the consistency student declares"),
}

#: Config keys that define the schedule (the model's business) or are bookkeeping.
SCHEDULE_KEYS = ("_class_name", "_diffusers_version", "_use_default_values", "num_train_timesteps", "beta_start",
                 "beta_end", "beta_schedule", "trained_betas", "prediction_type", "clip_sample_range",
                 "dynamic_thresholding_ratio", "sample_max_value")
#: Keys every family reads.
_COMMON = {"thresholding": (False,), "clip_sample": (False,), "rescale_betas_zero_snr": (False,)}
_SPACING_KEYS = {"timestep_spacing": ("linspace", "leading", "trailing"), "steps_offset": None}
_SIGMA_GRID_KEYS = {"use_karras_sigmas": (True, False), "use_exponential_sigmas": (True, False),
                    "use_beta_sigmas": (True, False)}
_EDM_KEYS = {"sigma_min": None, "sigma_max": None, "rho": None, "sigma_schedule": ("karras", "exponential"),
             "final_sigmas_type": ("zero", "sigma_min")}
#: step() arguments diffusers takes per call, and the nfebench option each becomes.
STEP_ARGUMENTS = {"DDIMScheduler": {"eta": "eta"}, "TCDScheduler": {"eta": "gamma"}, "LMSDiscreteScheduler": {"order": "order"}}
#: Schedulers whose set_timesteps(mu=) shifts the grid (with use_dynamic_shifting): from_diffusers(mu=).
SET_TIMESTEPS_MU = ("FlowMatchEulerDiscreteScheduler",)


def scheduler_config(scheduler: Any) -> Tuple[str, Dict[str, Any]]:
    """(class name, config dict) of a diffusers scheduler instance or a config mapping with
    ``_class_name`` (as saved in scheduler_config.json)."""
    if isinstance(scheduler, Mapping):
        config = dict(scheduler)
        name = config.get("_class_name")
        if not isinstance(name, str):
            raise ValueError("a scheduler config needs '_class_name' (as diffusers saves it); valid: "
                             + ", ".join(SCHEDULERS))
        return name, config
    config = getattr(scheduler, "config", None)
    if config is None:
        raise ValueError(f"from_diffusers takes a diffusers scheduler or its config dict, got {type(scheduler).__name__}")
    return type(scheduler).__name__, dict(config)


def _class_defaults(name: str) -> Dict[str, Any]:
    """The defaults of the class's __init__ (diffusers' own), or {} when diffusers is absent."""
    try:
        import diffusers
    except ImportError:  # a config dict can be mapped without diffusers installed
        return {}
    cls = getattr(diffusers, name, None)
    if cls is None:
        return {}
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _accepted_keys(mapping: SchedulerMapping) -> Dict[str, Optional[Tuple[Any, ...]]]:
    keys = dict(_COMMON)
    if mapping.family.spacing:
        keys.update(_SPACING_KEYS)
        if mapping.family.end == "set_alpha_to_one":
            keys["set_alpha_to_one"] = (True, False)
        if mapping.family.end == "final_sigmas_type":
            keys["final_sigmas_type"] = ("zero", "sigma_min")
    if mapping.family.sigma_grids:
        keys.update(_SIGMA_GRID_KEYS)
    if mapping.family is EDM_FAMILY:
        keys.update(_EDM_KEYS)
    keys.update(mapping.accepts)
    return keys


def _check_values(name: str, config: Dict[str, Any], mapping: SchedulerMapping) -> None:
    defaults = _class_defaults(name)
    accepted = _accepted_keys(mapping)
    for key, value in config.items():
        if key in SCHEDULE_KEYS:
            continue
        if defaults and key not in defaults:
            continue  # diffusers keeps, and ignores, keys of other classes (a config saved by one, loaded by another)
        if key not in accepted:
            if key in defaults and _same(value, defaults[key]):
                continue  # a value at diffusers' default that changes nothing here
            raise ValueError(f"{name} config {key}={value!r} has no nfebench equivalent; this mapping reads "
                             f"{', '.join(sorted(accepted))} (and the schedule's keys)")
        valid = accepted[key]
        if valid is not None and not any(_same(value, v) and type(value) is type(v) or
                                         (isinstance(value, (int, float)) and not isinstance(value, bool) and
                                          isinstance(v, (int, float)) and not isinstance(v, bool) and value == v)
                                         for v in valid):
            raise ValueError(f"{name} config {key}={value!r} is not supported; valid: "
                             f"{', '.join(repr(v) for v in valid)}")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"{name} config prediction_type={prediction!r} is not supported; valid: 'epsilon', "
                         f"'v_prediction', 'sample' (the model's wrapper reads it)")
    chosen = [k for k in _SIGMA_GRID_KEYS if config.get(k)]
    if len(chosen) > 1:
        raise ValueError(f"{name} config sets {', '.join(chosen)}; diffusers allows one of them")


def _flow_match_shift(name: str, config: Mapping[str, Any], mu: Optional[float]) -> Tuple[float, float]:
    """(shift, the unshifted end of the grid) of a FlowMatch scheduler: diffusers spaces its
    timesteps evenly between sigma_max = 1 and its sigma_min, then shifts them. A static
    ``shift`` is applied to the training sigmas too, so sigma_min = shift(1/T) is shifted twice;
    with ``use_dynamic_shifting`` the shift is exp(mu) (``time_shift_type="exponential"``) or mu
    ("linear"), applied once, and mu comes from set_timesteps(mu=)."""
    t_train = int(config.get("num_train_timesteps", 1000))
    if config.get("use_dynamic_shifting", False):
        if mu is None:
            raise ValueError(f"{name} config use_dynamic_shifting=True needs mu (an argument of diffusers' "
                             f"set_timesteps()); pass from_diffusers(scheduler, mu=...)")
        linear = config.get("time_shift_type", "exponential") == "linear"
        if linear and not mu > 0:
            raise ValueError(f"{name} time_shift_type='linear' shifts by mu itself; mu={mu!r} is not valid; valid: mu > 0")
        return (float(mu) if linear else math.exp(float(mu))), 1.0 / t_train
    if mu is not None:
        raise ValueError(f"{name}: mu={mu!r} applies only with config use_dynamic_shifting=True (diffusers ignores it "
                         f"otherwise); valid: no mu")
    shift = float(config.get("shift", 1.0))
    if not shift > 0:
        raise ValueError(f"{name} config shift={shift!r} is not supported; valid: shift > 0")
    from .grids import time_shift

    return shift, time_shift(1.0 / t_train, shift)


def _grid_options(name: str, config: Dict[str, Any], family: Family, mu: Optional[float] = None,
                  fractional_timesteps: bool = False) -> Dict[str, Any]:
    options: Dict[str, Any] = {}
    if family is FLOW_MATCH:
        from .grids import time_shift

        shift, unshifted_end = _flow_match_shift(name, config, mu)
        # rectified flow's t is diffusers' sigma: the grid starts at t = 1 (the model's schedule
        # needs RectifiedFlow(t_max=1.0)), ends at the shifted end, then t = 0 (sigma = 0).
        return {"grid": "shifted", "shift": shift, "t_max": 1.0, "t_min": float(time_shift(unshifted_end, shift))}
    if family is EDM_FAMILY:
        options["grid"] = config.get("sigma_schedule", "karras")
        if options["grid"] == "karras":
            options["rho"] = float(config.get("rho", 7.0))
        options["t_min"] = float(config.get("sigma_min", 0.002))
        options["t_max"] = float(config.get("sigma_max", 80.0))
        options["to_zero"] = config.get("final_sigmas_type", "zero") == "zero"
        options["start_noise"] = "unit_data"
        return options
    if not family.spacing:
        return options
    sigma_grid = next((g for k, g in (("use_karras_sigmas", "karras"), ("use_exponential_sigmas", "exponential"),
                                      ("use_beta_sigmas", "beta")) if config.get(k)), None)
    spacing = family.fixed_spacing or config.get("timestep_spacing",
                                                 _class_defaults(name).get("timestep_spacing", "leading"))
    if sigma_grid is not None:
        # diffusers spaces these sigmas between those of timesteps T-1 and 0.
        options.update(grid=sigma_grid, t_max=float(config.get("num_train_timesteps", 1000) - 1), t_min=0.0)
        if sigma_grid == "beta":
            options.update(beta_a=0.6, beta_b=0.6)
    elif fractional_timesteps and family is SIGMA_SPACE and spacing == "linspace":
        # linspace(T-1, 0, N) unrounded: the fractional timesteps diffusers visits
        options.update(grid="uniform", t_max=float(config.get("num_train_timesteps", 1000) - 1), t_min=0.0)
    else:
        options["spacing"] = spacing
        if spacing == "leading" and int(config.get("steps_offset", 0)):
            options["steps_offset"] = int(config["steps_offset"])
        if spacing in family.drop_last_for:
            options["drop_last_timestep"] = True
    if family.end == "set_alpha_to_one":
        options["to_zero"] = bool(config.get("set_alpha_to_one", _class_defaults(name).get("set_alpha_to_one", True)))
    elif family.end == "final_sigmas_type":
        options["to_zero"] = config.get("final_sigmas_type", "zero") == "zero"
    elif family.end == "timestep_0":
        options["to_zero"] = False
    if family.start == "sigma_space":
        options["start_noise"] = "unit_data" if (spacing == "leading" and sigma_grid is None) else "sigma"
    if name == "DDPMScheduler":
        options["to_zero"] = True  # DDPM's last step always lands on the data
    return options


def _spacing_ends_on_timestep_0(spacing: Optional[str], steps_offset: Any) -> bool:
    """Whether a DDIM/PNDM/DDPM spacing's last timestep is 0: linspace always, leading without a
    steps_offset (trailing ends on T//N - 1)."""
    return spacing == "linspace" or (spacing == "leading" and not int(steps_offset or 0))


def from_diffusers(scheduler: Any, *, fractional_timesteps: bool = False, fixed_stride: bool = False,
                   **step_arguments: Any) -> Tuple[str, Dict[str, Any]]:
    """(sampler name, options) that make :func:`solvers.sample` compute what diffusers' own loop
    with this scheduler computes (:func:`exact_in_diffusers` says where only approximately).

    ``scheduler``: a diffusers scheduler instance or its config dict (with ``_class_name``).
    ``step_arguments``: what diffusers passes to ``step()`` or ``set_timesteps()`` rather than
    keeps in the config (DDIM's ``eta``, TCD's ``eta`` = gamma, LMS's ``order``, FlowMatchEuler's
    ``mu``); see :data:`STEP_ARGUMENTS`.
    ``fractional_timesteps`` (off by default): the sigma-space schedulers' linspace timesteps
    unrounded (``grid="uniform"`` from T-1 to 0), as diffusers visits them; with a model whose
    ``DiscreteVP(interpolation="sigma")`` interpolates sigma~ linearly between timesteps, as
    diffusers does, this reproduces diffusers' loop there too. The default rounds to the integer
    timesteps the network was trained on.
    ``fixed_stride`` (off by default): DDIM and PNDM (with or without PRK warm-up) step as
    diffusers does, from t to t - T//N, then read the state as at the next timestep of the
    spacing (the samplers' ``landing="fixed_stride"``, set for linspace and trailing spacing;
    leading spacing's next timestep is t - T//N already). This reproduces diffusers; the default,
    each step landing on the next timestep, is the consistent discretisation.
    Give ``nfe`` to solvers.sample as diffusers' number of network calls for its
    ``num_inference_steps`` (the sampler's NFE rule: ``solvers.get(name).count``).
    """
    name, config = scheduler_config(scheduler)
    mapping = SCHEDULERS.get(name)
    if mapping is None:
        raise ValueError(f"diffusers scheduler {name!r} has no nfebench sampler (run it with sampler 'diffusers'); "
                         f"valid: {', '.join(SCHEDULERS)}")
    _check_values(name, config, mapping)
    if fractional_timesteps and mapping.family is not SIGMA_SPACE:
        raise ValueError(f"fractional_timesteps=True applies to the sigma-space schedulers "
                         f"({', '.join(n for n, m in SCHEDULERS.items() if m.family is SIGMA_SPACE)}), not {name}")
    if fixed_stride and mapping.family is not STRIDE:
        raise ValueError(f"fixed_stride=True applies to {', '.join(n for n, m in SCHEDULERS.items() if m.family is STRIDE)}, "
                         f"not {name}")
    mu = step_arguments.pop("mu", None) if name in SET_TIMESTEPS_MU else None
    allowed = STEP_ARGUMENTS.get(name, {})
    unknown = sorted(set(step_arguments) - set(allowed))
    if unknown:
        raise ValueError(f"{name} step() argument(s) {unknown} are not mapped; valid: {', '.join(allowed) or 'none'}")
    sampler = mapping.sampler
    if name in ("DPMSolverMultistepScheduler", "EDMDPMSolverMultistepScheduler"):
        sampler, options = _dpm_multistep(config)
    else:
        options = dict(mapping.options(config))
    if name == "PNDMScheduler" and config.get("skip_prk_steps", False):
        sampler, options = "plms", {"warmup": "improved_euler"}
    options.update({allowed[k]: v for k, v in step_arguments.items()})
    options.update(_grid_options(name, config, mapping.family, mu, fractional_timesteps))
    if fixed_stride:
        # Where the spacing's last timestep is 0 and the grid ends there (set_alpha_to_one=False),
        # diffusers takes a last, zero-length step from timestep 0 that a grid cannot hold: its
        # stride counts N timesteps where the grid has N - 1 steps. For leading spacing the
        # stride is the grid's own, so landing on the next timestep is the same there.
        spacing = options.get("spacing")
        ends_on_timestep_0 = not options["to_zero"] and _spacing_ends_on_timestep_0(spacing, options.get("steps_offset"))
        if ends_on_timestep_0 and spacing == "linspace":
            raise ValueError(f"{name} fixed_stride=True cannot reproduce linspace spacing with set_alpha_to_one=False "
                             f"(a zero-length last step from timestep 0); valid: set_alpha_to_one=True, or trailing "
                             f"or leading spacing")
        if not ends_on_timestep_0:
            options["landing"] = "fixed_stride"
    from .registry import get

    spec = get(sampler)
    options = {k: v for k, v in options.items() if k in spec.options}  # a student sampler has no grid options
    spec.check_options(options)
    return sampler, options


def pipeline_grid_defaults(scheduler: Any) -> Tuple[Dict[str, Any], Optional[str]]:
    """(grid options, note): the grid part of :func:`from_diffusers`' mapping (timestep spacing,
    steps_offset, where the last step ends, how the latents are scaled), which a model loaded
    from a diffusers pipeline declares as its ``grid_defaults``, so that any sampler run on it
    visits the timesteps the pipeline's scheduler would. The grid does not depend on the values
    the sampler mapping may refuse (``clip_sample``, ``thresholding``); the note names such a
    refusal, or why there are no defaults (a class without a mapping), else it is None."""
    try:
        name, config = scheduler_config(scheduler)
    except ValueError as e:
        return {}, str(e)
    mapping = SCHEDULERS.get(name)
    if mapping is None:
        return {}, f"diffusers scheduler {name!r} has no nfebench mapping: samplers use their own default grids"
    try:
        from_diffusers(config)
        note = None
    except ValueError as e:
        note = f"grid defaults from {name}; its sampler mapping refuses: {e}"
    try:
        return _grid_options(name, config, mapping.family), note
    except ValueError as e:  # a grid that needs a set_timesteps() argument (dynamic shifting's mu)
        return {}, f"{name}'s grid cannot be read from its config: {e}"


def exact_in_diffusers(scheduler: Any, num_inference_steps: int, *, fractional_timesteps: bool = False,
                       fixed_stride: bool = False, **step_arguments: Any) -> Optional[str]:
    """None when :func:`from_diffusers`' mapping reproduces diffusers' loop for this many steps
    (to diffusers' float32 round-off), else why not (see the module docstring). Arguments as
    for :func:`from_diffusers`; with ``fractional_timesteps`` the verdict assumes a model whose
    DiscreteVP interpolates sigma~ linearly (``interpolation="sigma"``)."""
    name, config = scheduler_config(scheduler)
    mapping = SCHEDULERS[name]
    sampler, options = from_diffusers(scheduler, fractional_timesteps=fractional_timesteps, fixed_stride=fixed_stride,
                                      **step_arguments)
    strided = options.get("landing") == "fixed_stride"
    family, n = mapping.family, int(num_inference_steps)
    if family is FLOW_MATCH:
        return None
    t_train = int(config.get("num_train_timesteps", 1000))
    spacing = family.fixed_spacing or config.get("timestep_spacing", _class_defaults(name).get("timestep_spacing", "leading"))
    if family is EDM_FAMILY and config.get("final_sigmas_type", "zero") == "sigma_min":
        return "diffusers' sigmas already end at sigma_min: its last step is zero-length and still calls the network"
    if family.sigma_grids and any(config.get(k) for k in _SIGMA_GRID_KEYS):
        if family.end == "timestep_0":
            return ("diffusers' sigmas end with a zero-length step from sigma_min to itself that still calls the "
                    "network (and it calls the network at rounded or log-sigma interpolated timesteps)")
        return "diffusers calls the network at a rounded or log-sigma interpolated timestep of each sigma"
    if family is STRIDE and (spacing == "linspace" or (spacing == "trailing" and t_train % n)) and not strided:
        return (f"diffusers steps t -> t - {t_train}//{n} and then evaluates at the next {spacing} timestep "
                f"(from_diffusers(fixed_stride=True) reproduces this)")
    last = _spacing_ends_on_timestep_0(spacing, config.get("steps_offset", 0))
    if family is STRIDE and last and not config.get("set_alpha_to_one", _class_defaults(name).get("set_alpha_to_one")):
        return "diffusers spends a network call on a zero-length last step, from timestep 0 to abar_0"
    if sampler == "pndm" and not strided and (t_train // n) % 2:
        return (f"diffusers' pseudo Runge-Kutta warm-up evaluates its half steps at t_(i+1) + floor({t_train}//{n} / 2), "
                f"a timestep below the midpoint t_i - floor((t_i - t_(i+1)) / 2) (from_diffusers(fixed_stride=True) "
                f"reproduces this)")
    if name == "DDPMScheduler" and config.get("variance_type") == "fixed_large" and spacing == "trailing":
        return ("diffusers adds beta-variance noise on its last step, from timestep > 0 into the data; nfebench adds "
                "none on a step onto sigma = 0")
    if family is SIGMA_SPACE and spacing == "linspace" and n > 1 and (t_train - 1) % (n - 1) and not fractional_timesteps:
        return ("diffusers visits fractional timesteps (linspace unrounded) and interpolates sigma linearly "
                "between integer timesteps there")
    if name == "KDPM2DiscreteScheduler" and spacing != "trailing":
        return "diffusers calls the network at the log-sigma interpolated timestep of each midpoint sigma"
    if config.get("algorithm_type") == "sde-dpmsolver++":
        return "diffusers draws its per-step noise in its own order and dtype (the same SDE, other draws)"
    if name == "DPMSolverSDEScheduler":
        return "diffusers seeds its Brownian tree from noise_sampler_seed, nfebench from its generator"
    return None
