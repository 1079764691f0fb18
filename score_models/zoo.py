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
  prediction type from its ``prediction_type``; the schedule argument is ignored. The
  scheduler's config (its class and timestep spacing) becomes the model's ``grid_defaults``
  (solvers.diffusers_mapping.pipeline_grid_defaults), so samplers visit its timesteps by default.

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
- Shipped rectified flows (flow prediction on the straight path x_t = (1 - t) x0 + t eps,
  schedule ``rectified_flow``; ``nfebench train`` reproduces them): ``toy2d-moons-rf`` and
  ``digits-rf`` (1-rectified flows: conditional flow matching on the data, the toy2d MLP and the
  digits UNet architectures) and their reflow students ``toy2d-moons-rf2`` and ``digits-rf2``
  (2-rectified flows: trained on (noise, sample) pairs of the 1-RF model's ODE). Every ODE sampler
  runs them unchanged.
"""
from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Callable, Dict, Union

import torch

from .analytic import GaussianMixture
from .parameterization import DiffusionModel
from .schedules import SCHEDULES, DiscreteVP, Schedule

__all__ = ["load", "load_diffusers", "available", "GMM_PRESETS", "make_schedule", "STUDENTS", "FLOWS", "flow_network",
           "base_teacher"]


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

#: Rectified flows: name -> (the shipped model whose architecture and data it shares, the 1-RF
#: model whose ODE produced its training pairs, or None for a 1-RF model trained on the data).
FLOWS: Dict[str, tuple] = {
    "toy2d-moons-rf": ("toy2d-moons", None),
    "toy2d-moons-rf2": ("toy2d-moons", "toy2d-moons-rf"),
    "digits-rf": ("digits-unet", None),
    "digits-rf2": ("digits-unet", "digits-rf"),
}


def available() -> list[str]:
    """Loadable model names (plus ``python:<module>:<function>`` and ``diffusers:<dir>``)."""
    return [f"gmm:{name}" for name in GMM_PRESETS] + list(SHIPPED) + list(STUDENTS) + list(FLOWS)


def _attach_data(model: DiffusionModel, sampler) -> DiffusionModel:
    model.sample_data = sampler  # reference data for the distribution metrics and FID
    return model


def _base_network(base: str, unit_time: bool = False) -> tuple:
    """(an untrained network of ``base``'s architecture, its schedule, sample shape and
    reference-data sampler) for a shipped diffusion model (toy2d-<dataset> or digits-unet).
    Students share their teacher's architecture, schedule and data. ``unit_time``: the network
    takes t in [0, 1] (a rectified flow's) instead of the digits UNet's timesteps 0..999."""
    from . import data
    from .nets import DigitsUNet, TimeMLP
    from .schedules import VPLinear

    if base.startswith("toy2d-"):
        dataset = base[len("toy2d-"):]
        net, schedule, shape = TimeMLP(), VPLinear(), (2,)

        def sample_data(n, generator=None, dtype=torch.float32, device="cpu"):
            return data.toy2d(dataset, n, generator).to(device=device, dtype=dtype)
    elif base == "digits-unet":
        net, schedule, shape = DigitsUNet(time_scale=1000.0 if unit_time else 1.0), DiscreteVP.linear(1000, 1e-4, 0.02), (1, 8, 8)

        def sample_data(n, generator=None, dtype=torch.float32, device="cpu"):
            # The held-out split itself (at most its 360 images): a fixed reference set, read
            # when first asked for, not when the model is loaded.
            return data.digits("test")[0][:n].to(device=device, dtype=dtype)
    else:
        raise ValueError(f"no shipped architecture {base!r}")
    return net, schedule, shape, sample_data


def _load_trained(name: str, base: str, weights_dir: Path) -> tuple:
    from . import shipped

    net, schedule, shape, sample_data = _base_network(base)
    return shipped.load_into(net, name, weights_dir), schedule, shape, sample_data


def _load_toy2d(dataset: str, weights_dir: Path) -> DiffusionModel:
    net, schedule, shape, sample_data = _load_trained(f"toy2d-{dataset}", f"toy2d-{dataset}", weights_dir)
    return _attach_data(DiffusionModel(net, schedule, prediction="eps", sample_shape=shape), sample_data)


def _load_digits(variant: str, scale: float, weights_dir: Path) -> DiffusionModel:
    from . import shipped
    from .guidance import ClassifierFreeGuidance, ClassifierGuidance, cycle_labels
    from .nets import NULL_CLASS

    net, schedule, shape, sample_data = _load_trained("digits-unet", "digits-unet", weights_dir)
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


def _load_student(name: str, weights_dir: Path) -> DiffusionModel:
    """A shipped few-step student; its card says what it is (see benchmarks/training/)."""
    from . import shipped
    from .distilled import ConsistencyModel, DistilledModel

    info = shipped.card(name, weights_dir)
    net, schedule, shape, sample_data = _load_trained(name, info["base"], weights_dir)
    if info["kind"] == "progressive_distillation":
        model = DistilledModel(net, schedule, info["steps_student"], info["grid"], prediction=info["prediction"],
                               sample_shape=shape, teacher=info["teacher"])
    else:
        model = ConsistencyModel(net, schedule, info["sigma_min"], info["sigma_data"], sample_shape=shape,
                                 teacher=info["teacher"], training=info["kind"].removeprefix("consistency_"))
    return _attach_data(model, sample_data)


def flow_network(name: str) -> tuple:
    """(an untrained network, the RectifiedFlow schedule, sample shape, reference-data sampler)
    of the rectified flow ``name`` in :data:`FLOWS`."""
    from .schedules import RectifiedFlow

    if name not in FLOWS:
        raise ValueError(f"unknown rectified flow {name!r}; valid: {', '.join(FLOWS)}")
    net, _, shape, sample_data = _base_network(FLOWS[name][0], unit_time=True)
    return net, RectifiedFlow(), shape, sample_data


def _load_flow(name: str, weights_dir: Path) -> DiffusionModel:
    from . import shipped

    net, schedule, shape, sample_data = flow_network(name)
    net = shipped.load_into(net, name, weights_dir)
    return _attach_data(DiffusionModel(net, schedule, prediction="flow", sample_shape=shape), sample_data)


def base_teacher(name: str) -> str | None:
    """The diffusion model a shipped student was distilled from (its card's ``base``), or None
    for anything that is not a shipped student."""
    if name not in STUDENTS:
        return None
    from . import shipped

    return shipped.card(name).get("base")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


def _load_python(spec: str, schedule: Schedule) -> DiffusionModel:
    module_name, _, function = spec.rpartition(":")
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except Exception as e:  # a syntax error or an import that raises in the user's module, too
        raise ValueError(f"cannot load model factory 'python:{spec}' ({type(e).__name__}: {_one_line(e)}); "
                         f"expected python:<module>:<function>") from None
    try:
        model = factory(schedule)
    except Exception as e:
        raise ValueError(f"model factory 'python:{spec}' raised {type(e).__name__}: {_one_line(e)}") from None
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


_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _diffusers_directory(source: str) -> Path:
    """A local directory for ``source``: itself, or a hub id already in the local Hugging Face
    cache (nothing is downloaded)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if source.startswith((".", "/", "~")) or path.suffix or "/" not in source:
        raise ValueError(f"diffusers model directory {source!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, local_files_only=True))
    except Exception:
        raise ValueError(f"diffusers model {source!r} is neither a directory nor a hub id in the local Hugging Face "
                         f"cache; this machine does not download: fetch it elsewhere and pass its directory") from None


def _diffusers_state_dict(model_dir: Path) -> Dict[str, torch.Tensor]:
    """The weights saved by diffusers' save_pretrained in ``model_dir`` (one file or a sharded
    index; safetensors preferred), read by :func:`score_models.weights.load_tensors`."""
    import json

    from .weights import load_tensors

    for name in _DIFFUSERS_WEIGHTS:
        index = model_dir / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
                raise ValueError(f"{str(index)!r} is not a diffusers weights index ({e})") from None
            state: Dict[str, torch.Tensor] = {}
            for shard in shards:
                if not isinstance(shard, str) or Path(shard).name != shard:
                    raise ValueError(f"{str(index)!r} names a shard outside its directory: {shard!r}")
                state.update(load_tensors(model_dir / shard))
            return state
        if (model_dir / name).is_file():
            return load_tensors(model_dir / name)
    raise ValueError(f"no weights in {str(model_dir)!r}; expected one of {', '.join(_DIFFUSERS_WEIGHTS)} "
                     f"(or a sharded .index.json)")


def load_diffusers(source: str, device: Union[str, torch.device] = "cpu") -> DiffusionModel:
    """A DiffusionModel from a diffusers directory or a locally cached hub id (see the module
    docstring). The network is built from its config and its weights are read without
    unpickling anything but tensors (diffusers' own from_pretrained is not used for that)."""
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - diffusers is an optional extra
        raise ValueError("diffusers: models need the diffusers extra: pip install 'nfebench[diffusers]'") from e
    from .weights import load_state_dict_into

    diffusers.utils.logging.set_verbosity_error()  # no advice to install accelerate on every load
    root = _diffusers_directory(source)
    is_pipeline = (root / "model_index.json").is_file()
    model_dir, sched_dir = (root / "unet", root / "scheduler") if is_pipeline else (root, root)
    try:
        sched_config = diffusers.DDPMScheduler.load_config(sched_dir)
        model_config = diffusers.UNet2DModel.load_config(model_dir)
    except (OSError, ValueError, EnvironmentError) as e:
        raise ValueError(f"could not load diffusers model from directory {source!r}: {e}") from None
    class_name = model_config.get("_class_name", "UNet2DModel")
    cls = getattr(diffusers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise ValueError(f"{source!r}: unknown diffusers model class {class_name!r}")
    module = cls.from_config(model_config)
    state = _diffusers_state_dict(model_dir)
    if hasattr(module, "_fix_state_dict_keys_on_load"):
        module._fix_state_dict_keys_on_load(state)  # renames old attention keys, as from_pretrained does
    module = load_state_dict_into(module, state, where=str(model_dir))
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
    model = DiffusionModel(_DiffusersNet(module), schedule, prediction=prediction, sample_shape=(in_ch, *size),
                           learned_variance=learned)
    # Sample "as diffusers would": the pipeline's scheduler config sets the grid every sampler
    # gets by default (its mapping lives with the samplers; imported here, when it is needed).
    from solvers.diffusers_mapping import pipeline_grid_defaults

    model.grid_defaults, model.grid_defaults_note = pipeline_grid_defaults(dict(sched_config))
    model.scheduler_class = sched_config.get("_class_name")
    return model


def load(name: str, schedule: Union[str, Schedule, None] = None,
         weights_dir: Union[str, Path, None] = None) -> DiffusionModel:
    """Load a named model (see the module docstring). ``schedule`` (a name or a Schedule; default
    vp_linear) applies to gmm: and python: models; shipped and diffusers models bring their own.
    ``weights_dir``: a directory of checkpoints written by ``nfebench train`` to load a shipped
    model's or student's own weights from, instead of the package's (a guidance classifier still
    comes from the package)."""
    kind, _, rest = name.partition(":")
    base_name, _, scale = name.partition("=")
    shipped_model = base_name in SHIPPED or name in STUDENTS or name in FLOWS
    if weights_dir is not None and not shipped_model:
        raise ValueError(f"weights_dir applies to shipped models and students, not to {name!r}")
    if kind == "gmm" and rest in GMM_PRESETS:
        return GMM_PRESETS[rest](make_schedule(schedule or "vp_linear"))
    if kind == "python" and rest:
        return _load_python(rest, make_schedule(schedule or "vp_linear"))
    if schedule is not None and (kind == "diffusers" or shipped_model):
        raise ValueError(f"model {name!r} brings its own schedule; do not give schedule={schedule!r}")
    if kind == "diffusers" and rest:
        return load_diffusers(rest)
    from . import shipped

    directory = Path(weights_dir) if weights_dir is not None else shipped.DIRECTORY
    if name in STUDENTS:
        return _load_student(name, directory)
    if name in FLOWS:
        return _load_flow(name, directory)
    if base_name in SHIPPED:
        if scale and base_name not in ("digits-unet-cfg", "digits-unet-cg"):
            raise ValueError(f"{base_name!r} takes no '=scale'; only digits-unet-cfg and digits-unet-cg do")
        try:
            w = float(scale) if scale else 1.0
        except ValueError:
            w = math.nan
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"guidance scale in {name!r} must be a finite number >= 0")
        if base_name.startswith("toy2d-"):
            return _load_toy2d(base_name[len("toy2d-"):], directory)
        return _load_digits(base_name, w, directory)
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(available())}, python:<module>:<function>, "
                     f"diffusers:<dir or hub id>")
