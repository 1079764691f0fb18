"""Named models.

- ``load("gmm:<preset>", schedule=...)``: an exact GaussianMixture on any schedule. Presets are
  fixed by their definition here (seeded), so results are comparable across runs.
- ``load("python:<module>:<function>", schedule=...)``: your own model; ``function(schedule)``
  (schedule: the Schedule built from the name given) returns a DiffusionModel with its
  ``sample_shape`` set. This is how a config points at a network of your own.
- ``load("diffusers:<local dir or hub id>")``: a diffusers UNet (or any diffusers model called as
  ``model(x, t).sample``) with the DDPM-family scheduler saved beside it: a pipeline directory
  (model_index.json, ``unet/``, ``scheduler/``) or a model directory with a
  scheduler_config.json. The schedule comes from the scheduler's betas (DiscreteVP), the
  prediction type from its ``prediction_type``; the schedule argument is ignored.

- Shipped trained networks (package data, trained by ``nfebench train``):
  ``toy2d-{moons,swissroll,8gaussians,checkerboard}`` (MLP eps-nets, VP linear schedule),
  ``digits-unet`` (unconditional: the null class), ``digits-unet-cond`` (class-conditional,
  labels 0..9 cycling over the batch), ``digits-unet-cfg[=w]`` (classifier-free guidance, scale w,
  default 1) and ``digits-unet-cg[=w]`` (classifier guidance with digits-noisy-classifier,
  default 1). Their ``sample_data`` draws the training distribution (toy2d: fresh samples;
  digits: the held-out test split), the reference set of the distribution metrics and FID.
- Shipped few-step students (``nfebench train`` reproduces them from their teacher):
  ``digits-unet-pd{16,8,4,2,1}`` and ``toy2d-moons-pd{16,8,4,2,1}`` (progressive distillation, run
  with the ``distilled`` sampler at their step count), ``digits-unet-cd`` and
  ``toy2d-moons-cd`` (consistency distillation) and ``toy2d-moons-ct`` (consistency training),
  run with the ``consistency`` sampler.
"""
from __future__ import annotations

import importlib
import math
from typing import Callable, Dict, Union

import torch

from .analytic import GaussianMixture
from .parameterization import DiffusionModel
from .schedules import SCHEDULES, DiscreteVP, Schedule

__all__ = ["load", "load_diffusers", "available", "GMM_PRESETS", "make_schedule", "STUDENTS", "student_kind", "is_known"]


def _ring8(schedule: Schedule) -> GaussianMixture:
    """2-D: 8 isotropic Gaussians (std 0.3) evenly on a circle of radius 2."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(means, 0.3, schedule=schedule)


def _mix16d(schedule: Schedule) -> GaussianMixture:
    """16-D: 5 diagonal Gaussians with seeded means ~ N(0, 1) and stds in [0.2, 0.6], unequal weights."""
    g = torch.Generator().manual_seed(16)
    means = torch.randn(5, 16, generator=g, dtype=torch.float64)
    stds = 0.2 + 0.4 * torch.rand(5, 16, generator=g, dtype=torch.float64)
    return GaussianMixture(means, stds, torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1]), schedule=schedule)


def _image3x8x8(schedule: Schedule) -> GaussianMixture:
    """Image-shaped (3, 8, 8): 4 seeded smooth "images" in [-1, 1] as means, isotropic std 0.25."""
    g = torch.Generator().manual_seed(388)
    coarse = torch.rand(4, 3, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
    means = torch.nn.functional.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=True)
    return GaussianMixture(means, 0.25, schedule=schedule)


GMM_PRESETS: Dict[str, Callable[[Schedule], GaussianMixture]] = {
    "ring8": _ring8,
    "mix16d": _mix16d,
    "image3x8x8": _image3x8x8,
}


def make_schedule(schedule: Union[str, Schedule]) -> Schedule:
    """A Schedule instance from itself or a name in :data:`score_models.SCHEDULES`."""
    if isinstance(schedule, Schedule):
        return schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    return SCHEDULES[schedule]()


SHIPPED = ("toy2d-moons", "toy2d-swissroll", "toy2d-8gaussians", "toy2d-checkerboard", "digits-unet",
           "digits-unet-cond", "digits-unet-cfg", "digits-unet-cg")
#: Few-step students of the shipped teachers: progressive distillation to 16, 8, 4, 2 and 1 steps
#: (-pd<N>), consistency distillation (-cd) and consistency training without a teacher (-ct).
STUDENTS = tuple(f"{teacher}-pd{n}" for teacher in ("digits-unet", "toy2d-moons") for n in (16, 8, 4, 2, 1)) + (
    "digits-unet-cd", "toy2d-moons-cd", "toy2d-moons-ct")


def available() -> list[str]:
    """Loadable model names (plus ``python:<module>:<function>`` and ``diffusers:<dir>``)."""
    return [f"gmm:{name}" for name in GMM_PRESETS] + list(SHIPPED) + list(STUDENTS)


def _attach_data(model: DiffusionModel, sampler) -> DiffusionModel:
    model.sample_data = sampler  # reference data for the distribution metrics and FID
    return model


def _base_network(base: str) -> tuple:
    """(an untrained network of ``base``'s architecture, its schedule, sample shape and
    reference-data sampler) for a shipped diffusion model (toy2d-<dataset> or digits-unet).
    Students share their teacher's architecture, schedule and data."""
    from . import data
    from .nets import DigitsUNet, TimeMLP
    from .schedules import VPLinear

    if base.startswith("toy2d-"):
        dataset = base[len("toy2d-"):]
        net, schedule, shape = TimeMLP(), VPLinear(), (2,)

        def sample_data(n, generator=None, dtype=torch.float32, device="cpu"):
            return data.toy2d(dataset, n, generator).to(device=device, dtype=dtype)
    elif base == "digits-unet":
        net, schedule, shape = DigitsUNet(), DiscreteVP.linear(1000, 1e-4, 0.02), (1, 8, 8)
        test_images, _ = data.digits("test")

        def sample_data(n, generator=None, dtype=torch.float32, device="cpu"):
            # The held-out split itself (at most its 360 images): a fixed reference set.
            return test_images[:n].to(device=device, dtype=dtype)
    else:
        raise ValueError(f"no shipped architecture {base!r}")
    return net, schedule, shape, sample_data


def _load_trained(name: str, base: str) -> tuple:
    from . import shipped

    net, schedule, shape, sample_data = _base_network(base)
    net.load_state_dict(shipped.load_state(name))
    return net.eval().requires_grad_(False), schedule, shape, sample_data


def _load_toy2d(dataset: str) -> DiffusionModel:
    net, schedule, shape, sample_data = _load_trained(f"toy2d-{dataset}", f"toy2d-{dataset}")
    return _attach_data(DiffusionModel(net, schedule, prediction="eps", sample_shape=shape), sample_data)


def _load_digits(variant: str, scale: float) -> DiffusionModel:
    from . import shipped
    from .guidance import ClassifierFreeGuidance, ClassifierGuidance, cycle_labels
    from .nets import NULL_CLASS

    net, schedule, shape, sample_data = _load_trained("digits-unet", "digits-unet")
    base = DiffusionModel(net, schedule, prediction="eps", sample_shape=shape)
    if variant == "digits-unet":
        model = base
    elif variant == "digits-unet-cond":
        model = ClassifierFreeGuidance(base, 0.0, cycle_labels(), null_label=NULL_CLASS, batched=False)
    elif variant == "digits-unet-cfg":
        model = ClassifierFreeGuidance(base, scale, cycle_labels(), null_label=NULL_CLASS)
    else:
        model = ClassifierGuidance(base, shipped.load_classifier("digits-noisy-classifier"), scale, cycle_labels())
    return _attach_data(model, sample_data)


def _load_student(name: str) -> DiffusionModel:
    """A shipped few-step student; its card says what it is (see benchmarks/distill.py)."""
    from . import shipped
    from .distilled import ConsistencyModel, DistilledModel

    info = shipped.card(name)
    net, schedule, shape, sample_data = _load_trained(name, info["base"])
    if info["kind"] == "progressive_distillation":
        model = DistilledModel(net, schedule, info["steps_student"], info["grid"], prediction=info["prediction"],
                               sample_shape=shape, teacher=info["teacher"])
    else:
        model = ConsistencyModel(net, schedule, info["sigma_min"], info["sigma_data"], sample_shape=shape,
                                 teacher=info["teacher"], training=info["kind"].removeprefix("consistency_"))
    return _attach_data(model, sample_data)


def is_known(name: str) -> bool:
    """Whether ``name`` is a preset or shipped model (whose kind this module knows)."""
    kind, _, rest = name.partition(":")
    return (kind == "gmm" and rest in GMM_PRESETS) or name.partition("=")[0] in SHIPPED or name in STUDENTS


def student_kind(name: str) -> str | None:
    """"distilled" or "consistency" for a shipped student's name, else None (a teacher, or a
    model this zoo cannot tell without loading it)."""
    if name not in STUDENTS:
        return None
    return "consistency" if name.endswith(("-cd", "-ct")) else "distilled"


def _load_python(spec: str, schedule: Schedule) -> DiffusionModel:
    module_name, _, function = spec.rpartition(":")
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot load model factory 'python:{spec}' ({e}); expected python:<module>:<function>") from None
    model = factory(schedule)
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"python:{spec} returned {type(model).__name__}, not a DiffusionModel")
    return model


_DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


class _DiffusersNet(torch.nn.Module):
    """Calls a diffusers model as net(x, t, **cond) -> tensor."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        out = self.module(x, t, **cond)
        return out.sample if hasattr(out, "sample") else out[0]


def load_diffusers(source: str, device: Union[str, torch.device] = "cpu") -> DiffusionModel:
    """A DiffusionModel from a diffusers directory or hub id (see the module docstring)."""
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - diffusers is an optional extra
        raise ValueError("diffusers: models need the diffusers extra: pip install 'nfebench[diffusers]'") from e
    from pathlib import Path

    diffusers.utils.logging.set_verbosity_error()  # no advice to install accelerate on every load
    path = Path(source)
    local = path.is_dir()
    if not local and (source.startswith((".", "/", "~")) or path.suffix or not "/" in source):
        raise ValueError(f"diffusers model directory {source!r} does not exist")
    is_pipeline = (path / "model_index.json").is_file() if local else True
    model_dir, sched_dir = ("unet", "scheduler") if is_pipeline else (None, None)
    try:
        sched_kwargs = {"subfolder": sched_dir} if sched_dir else {}
        sched_config = diffusers.DDPMScheduler.load_config(source, **sched_kwargs)
        model_config = diffusers.UNet2DModel.load_config(source, **({"subfolder": model_dir} if model_dir else {}))
        cls = getattr(diffusers, model_config.get("_class_name", "UNet2DModel"))
        module = cls.from_pretrained(source, **({"subfolder": model_dir} if model_dir else {}))
    except (OSError, ValueError, EnvironmentError) as e:
        where = "directory" if local else "hub id (no network here? download it and pass the local directory)"
        raise ValueError(f"could not load diffusers model from {where} {source!r}: {e}") from None
    scheduler = diffusers.DDPMScheduler.from_config(sched_config)
    prediction = _DIFFUSERS_PREDICTIONS.get(sched_config.get("prediction_type", "epsilon"))
    if prediction is None:
        raise ValueError(f"unsupported prediction_type {sched_config.get('prediction_type')!r}; "
                         f"valid: {', '.join(_DIFFUSERS_PREDICTIONS)}")
    schedule = DiscreteVP(alphas_cumprod=scheduler.alphas_cumprod.to(torch.float64))
    in_ch = model_config.get("in_channels", 3)
    size = model_config.get("sample_size", 32)
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    learned = model_config.get("out_channels", in_ch) == 2 * in_ch
    module.eval().requires_grad_(False).to(device)
    return DiffusionModel(_DiffusersNet(module), schedule, prediction=prediction, sample_shape=(in_ch, *size),
                          learned_variance=learned)


def load(name: str, schedule: Union[str, Schedule, None] = None) -> DiffusionModel:
    """Load a named model (see the module docstring). ``schedule`` (a name or a Schedule; default
    vp_linear) applies to gmm: and python: models; shipped and diffusers models bring their own."""
    kind, _, rest = name.partition(":")
    if kind == "gmm" and rest in GMM_PRESETS:
        return GMM_PRESETS[rest](make_schedule(schedule or "vp_linear"))
    if kind == "python" and rest:
        return _load_python(rest, make_schedule(schedule or "vp_linear"))
    base_name, _, scale = name.partition("=")
    if schedule is not None and (kind == "diffusers" or base_name in SHIPPED or name in STUDENTS):
        raise ValueError(f"model {name!r} brings its own schedule; do not give schedule={schedule!r}")
    if kind == "diffusers" and rest:
        return load_diffusers(rest)
    if name in STUDENTS:
        return _load_student(name)
    if base_name in SHIPPED:
        if scale and base_name not in ("digits-unet-cfg", "digits-unet-cg"):
            raise ValueError(f"{base_name!r} takes no '=scale'; only digits-unet-cfg and digits-unet-cg do")
        try:
            w = float(scale) if scale else 1.0
        except ValueError:
            raise ValueError(f"guidance scale in {name!r} must be a number") from None
        if base_name.startswith("toy2d-"):
            return _load_toy2d(base_name[len("toy2d-"):])
        return _load_digits(base_name, w)
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(available())}, python:<module>:<function>, "
                     f"diffusers:<dir or hub id>")
