"""The ``diffusers`` sampler: any diffusers scheduler class's own set_timesteps/step loop, driven by
an nfebench model (its network calls counted by the model's wrapper), so that schedulers without
an nfebench twin can be benchmarked in the same harness:

    [[samplers]]
    sampler = "diffusers"
    options = { scheduler = "UniPCMultistepScheduler", config = { solver_order = 3 } }

diffusers is an optional dependency, imported when the sampler runs. Three kinds of scheduler are
driven, told apart by what the scheduler object offers:

- training-timestep schedulers (those with ``alphas_cumprod``: DDIM, Euler, DPM-Solver, UniPC,
  LCM, ... ): built with the model's own betas (``trained_betas``, ``num_train_timesteps``; the
  model's schedule must have training timesteps) and its prediction type; the network gets
  ``scale_model_input(x, t)`` at diffusers' timestep t, as in a diffusers pipeline;
- EDM-preconditioned schedulers (``precondition_outputs``: EDMEuler, EDMDPMSolverMultistep): the
  model's denoiser D(x~, sigma~) at the scheduler's sigma, handed to step() as the raw output F
  with D = c_skip x + c_out F (c_skip, c_out from the scheduler's own precondition_outputs);
  sigma_min/sigma_max default to the model's sigma~ range;
- flow-matching schedulers (FlowMatch*): the model's flow prediction at time sigma, for models
  whose schedule is rectified flow (alpha = 1 - t, sigma = t).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from score_models.parameterization import DiffusionModel

from ..registry import register

__all__ = ["diffusers_scheduler", "build_scheduler", "calls_for_steps"]

_PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
_SCHEDULE_KEYS = ("num_train_timesteps", "trained_betas", "beta_start", "beta_end", "beta_schedule")


def _import_diffusers():
    try:
        import diffusers
    except ImportError:  # pragma: no cover - diffusers is an optional extra
        raise ValueError("sampler 'diffusers' needs diffusers: pip install 'nfebench[diffusers]'") from None
    diffusers.utils.logging.set_verbosity_error()
    return diffusers


def _scheduler_names(diffusers) -> list:
    return sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and isinstance(getattr(diffusers, n), type)
                  and issubclass(getattr(diffusers, n), diffusers.SchedulerMixin))


def _kind(scheduler: Any) -> str:
    if hasattr(scheduler, "precondition_outputs"):
        return "preconditioned"
    if type(scheduler).__name__.startswith("FlowMatch"):
        return "flow"
    if hasattr(scheduler, "alphas_cumprod"):
        return "timestep"
    return "unsupported"


def build_scheduler(name: str, config: Optional[Dict[str, Any]], model: DiffusionModel) -> Any:
    """The diffusers scheduler ``name`` with ``config`` over its defaults, fitted to ``model``
    (its betas and prediction type, or its sigma range); ValueError naming what is wrong."""
    diffusers = _import_diffusers()
    valid = _scheduler_names(diffusers)
    if name not in valid:
        raise ValueError(f"option scheduler={name!r} of sampler 'diffusers' is not a diffusers scheduler class; "
                         f"valid: {', '.join(valid)}")
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"option config of sampler 'diffusers' must be a table of {name}'s config values, "
                         f"got {config!r}")
    config = dict(config or {})
    cls = getattr(diffusers, name)
    try:
        scheduler = cls.from_config(config)
    except Exception as e:
        raise ValueError(f"{name} rejects config {config!r}: {type(e).__name__}: {e}") from None
    kind, sched = _kind(scheduler), model.schedule
    if kind == "timestep":
        if sched.num_train_timesteps is None:
            raise ValueError(f"{name} steps over training timesteps, and the model's schedule ({sched.name}) has none; "
                             f"use an EDM scheduler (EDMEulerScheduler, EDMDPMSolverMultistepScheduler) for it")
        abar = sched.alphas_cumprod.to(torch.float64)
        betas = 1.0 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        prediction = _PREDICTION_TYPES.get(model.prediction, "epsilon")
        fitted = {**config, "num_train_timesteps": int(abar.numel()), "trained_betas": betas.tolist(),
                  "prediction_type": prediction}
        return cls.from_config(fitted)
    if kind == "preconditioned":
        fitted = {"sigma_min": float(sched.sigma_tilde(sched.t_min)), "sigma_max": float(sched.sigma_tilde(sched.t_max)),
                  **config}
        return cls.from_config(fitted)
    if kind == "flow":
        probe = torch.tensor([0.25, 0.5], dtype=torch.float64)
        if not (torch.allclose(sched.sigma(probe), probe) and torch.allclose(sched.alpha(probe), 1 - probe)):
            raise ValueError(f"{name} is a flow-matching scheduler; it drives models on the rectified_flow schedule, "
                             f"not {sched.name}")
        return scheduler
    raise ValueError(f"{name} is neither a training-timestep, an EDM-preconditioned nor a flow-matching scheduler; "
                     f"sampler 'diffusers' cannot drive it")


def calls_for_steps(scheduler: Any, steps: int) -> int:
    """Network calls of diffusers' loop for ``steps`` inference steps (one per timestep)."""
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def _calls_or_none(scheduler: Any, steps: int) -> Optional[int]:
    try:
        return calls_for_steps(scheduler, steps)
    except Exception:  # a step count the scheduler does not allow (PNDM needs a few)
        return None


def _steps_for_budget(scheduler: Any, budget: int) -> int:
    """The most inference steps whose network calls fit ``budget`` (calls grow with steps)."""
    fewest = next((n for n in range(1, 11) if _calls_or_none(scheduler, n) is not None), None)
    if fewest is None or _calls_or_none(scheduler, fewest) > budget:
        need = "" if fewest is None else f" ({_calls_or_none(scheduler, fewest)} for {fewest} steps)"
        raise ValueError(f"{type(scheduler).__name__} cannot run within nfe={budget}{need}")
    low, high = fewest, budget + 1  # calls(low) <= budget < calls(high): calls >= steps
    while high - low > 1:
        mid = (low + high) // 2
        calls = _calls_or_none(scheduler, mid)
        low, high = (mid, high) if calls is not None and calls <= budget else (low, mid)
    return low


def _network_output(kind: str, scheduler: Any, model: DiffusionModel, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What ``scheduler.step`` expects as model_output at state x and timestep t (one counted call)."""
    if kind == "timestep":
        kind_out = model.prediction if model.prediction in _PREDICTION_TYPES else "eps"
        return model.predict(kind_out, scheduler.scale_model_input(x, t), float(t))
    if kind == "flow":
        sigma = float(t) / scheduler.config.num_train_timesteps
        return model.predict("flow", x, sigma)
    if scheduler.step_index is None:
        scheduler._init_step_index(t)  # as scale_model_input does in a diffusers pipeline
    sigma = scheduler.sigmas[scheduler.step_index]
    denoised = model.denoiser(x, float(sigma))
    c_skip_x = scheduler.precondition_outputs(x, torch.zeros_like(x), sigma)
    c_out = scheduler.precondition_outputs(x, torch.ones_like(x), sigma) - c_skip_x
    return (denoised - c_skip_x) / c_out


@register("diffusers", order=None, order_note="whatever the diffusers scheduler is", stochastic=True, nfe=None,
          grid_options=(),
          paper="diffusers (von Platen et al. 2022): the scheduler class's own set_timesteps/step loop")
def diffusers_scheduler(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, scheduler: str = "EDMEulerScheduler",
                        config: Optional[dict] = None, steps: int = 0, step_options: Optional[dict] = None,
                        generator: Optional[torch.Generator] = None, max_nfe: Optional[int] = None) -> torch.Tensor:
    """Any diffusers scheduler's own denoising loop, as a diffusers pipeline runs it.

    ``scheduler``: a diffusers scheduler class name (default EDMEulerScheduler, which drives any
    model through its denoiser); ``config``: its config values (the model's
    betas, prediction type or sigma range replace the schedule's keys); ``steps``: diffusers'
    num_inference_steps (0: the most whose network calls fit the nfe budget); ``step_options``:
    extra arguments of step() (DDIM's eta). Starts from latents x init_noise_sigma with latents =
    x_T / prior_std; the generator reaches every step() that takes one."""
    diffusers_sched = build_scheduler(scheduler, config, model)
    if steps < 0:
        raise ValueError(f"option steps={steps} of sampler 'diffusers' must be >= 0 (0: from the nfe budget)")
    if steps == 0:
        if max_nfe is None:
            raise ValueError("sampler 'diffusers' needs nfe= or steps=")
        steps = _steps_for_budget(diffusers_sched, max_nfe)
    diffusers_sched.set_timesteps(steps)
    kind = _kind(diffusers_sched)
    step_kwargs = dict(step_options or {})
    import inspect

    if generator is not None and "generator" in inspect.signature(diffusers_sched.step).parameters:
        step_kwargs["generator"] = generator
    latents = x_T / model.schedule.prior_std_at(float(times[0]))
    x = latents * diffusers_sched.init_noise_sigma
    with torch.no_grad():
        for t in diffusers_sched.timesteps:
            out = _network_output(kind, diffusers_sched, model, x, t)
            x = diffusers_sched.step(out, t, x, **step_kwargs).prev_sample
    return x
