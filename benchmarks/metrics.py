"""Quality metrics, each a registered name. A metric streams: it sees each batch of (noise,
samples) as it is produced and answers with named columns at the end of the cell, so a cell of
50,000 samples never holds 50,000 images. Where a metric does not apply it answers NaN.

- ``solver_error``: RMS per dimension between the sampler's endpoint and the exact PF-ODE
  endpoint from the same noise (GaussianMixture.exact_ode_solution, DOP853 at 1e-11), or for
  any other model a tight rk45 solve (rtol = atol = [run.reference] rtol, default 1e-6) from
  the same noise. Deterministic samplers only.
- ``sliced_wasserstein``: sliced 2-Wasserstein distance between samples and exact data samples
  (128 fixed random directions; Rabin et al. 2011), the same n on both sides. Low-dimensional
  models: it keeps the cell's samples.
- ``mmd``: unbiased squared MMD, Gaussian kernel with bandwidth = median pairwise distance of
  the reference set (Gretton et al. 2012). Low-dimensional models.
- ``fid`` / ``kid``: Frechet distance (Heusel et al. 2017) and kernel distance (Binkowski et al.
  2018) in the feature space of a torch-fidelity extractor ([run.reference] extractor, default
  ``inception-v3-compat``), computed by torch-fidelity's own metric functions. Reference
  statistics are cached on disk keyed by dataset, split, extractor and n.
"""
from __future__ import annotations

import abc
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Type

import torch

import solvers
from score_models.analytic import GaussianMixture
from score_models.weights import load_tensors
from score_models.distilled import ConsistencyModel, DistilledModel
from score_models.parameterization import DiffusionModel

__all__ = ["METRICS", "CellInfo", "Metric", "register_metric", "sliced_wasserstein", "mmd_rbf", "to_uint8_images",
           "frechet_distance"]

REFERENCE_SEED = 2**31 - 1  # exact data samples for reference sets use their own stream


@dataclass
class CellInfo:
    """What a metric may know about the cell it measures."""

    model: DiffusionModel
    model_key: str
    sampler: str
    options: Dict[str, Any]
    seed: int
    n_samples: int
    device: torch.device
    reference: Dict[str, Any] = field(default_factory=dict)  # [run.reference] settings
    cache: Dict[Any, Any] = field(default_factory=dict)  # shared across the cells of a run


class Metric(abc.ABC):
    """Base class: ``update`` per batch (CPU or device tensors), ``result`` once."""

    columns: tuple = ()

    def __init__(self, cell: CellInfo):
        self.cell = cell

    @abc.abstractmethod
    def update(self, batch_index: int, noise: torch.Tensor, samples: torch.Tensor) -> None: ...

    @abc.abstractmethod
    def result(self) -> Dict[str, float]: ...


METRICS: Dict[str, Type[Metric]] = {}


def register_metric(name: str) -> Callable[[Type[Metric]], Type[Metric]]:
    def wrap(cls: Type[Metric]) -> Type[Metric]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = cls
        return cls
    return wrap


# --- exact solver error --------------------------------------------------------------------
@register_metric("solver_error")
class SolverError(Metric):
    columns = ("solver_error",)

    def __init__(self, cell: CellInfo):
        super().__init__(cell)
        # A few-step student is not sampled along its own PF-ODE, so that ODE's solution is no
        # reference for it (its quality shows in the distribution metrics).
        self.applies = not solvers.get(cell.sampler).is_stochastic(cell.options) and \
            not isinstance(cell.model, (DistilledModel, ConsistencyModel))
        self.sum_sq, self.count = 0.0, 0

    def _reference(self, batch_index: int, noise: torch.Tensor) -> torch.Tensor:
        """The true PF-ODE endpoint from this batch's noise over the sampler's time span (cached)."""
        cell = self.cell
        sched = cell.model.schedule
        to_zero = solvers.get(cell.sampler).ends_at_data(cell.options)
        t_max = float(cell.options.get("t_max", sched.t_max))
        t_end = sched.t_data if to_zero else float(cell.options.get("t_min", sched.t_min))
        rtol = float(cell.reference.get("rtol", 1e-6))
        key = ("ode_reference", cell.model_key, cell.seed, batch_index, noise.shape[0], t_max, t_end, rtol)
        if key not in cell.cache:
            if isinstance(cell.model, GaussianMixture):
                noise64 = noise.to(torch.float64)
                ref = cell.model.exact_ode_solution(sched.prior_std_at(t_max) * noise64, t_start=t_max, t_end=t_end)
            else:
                # Any other model: a tight adaptive solve of the same ODE from the same noise, in the
                # run's dtype and on its device (the network's own precision bounds this reference).
                span = {"t_max": t_max, "to_zero": to_zero, **({} if to_zero else {"t_min": t_end})}
                with torch.inference_mode():
                    ref = solvers.sample("rk45", cell.model, noise.to(cell.device), nfe=None, rtol=rtol, atol=rtol,
                                         **span)
            cell.cache[key] = ref.cpu()
        return cell.cache[key]

    def update(self, batch_index: int, noise: torch.Tensor, samples: torch.Tensor) -> None:
        if not self.applies:
            return
        diff = samples.detach().cpu().to(torch.float64) - self._reference(batch_index, noise.detach().cpu())
        self.sum_sq += float(diff.pow(2).sum())
        self.count += diff.numel()

    def result(self) -> Dict[str, float]:
        if not self.applies or self.count == 0:
            return {"solver_error": math.nan}
        return {"solver_error": math.sqrt(self.sum_sq / self.count)}


# --- distribution distances on low-dimensional models ----------------------------------------
def exact_data(cell: CellInfo, n: int) -> Optional[torch.Tensor]:
    """n exact data samples of the model (fixed seed, cached), or None when it has none."""
    if not hasattr(cell.model, "sample_data"):
        return None
    key = ("data", cell.model_key, n)
    if key not in cell.cache:
        g = torch.Generator().manual_seed(REFERENCE_SEED)
        cell.cache[key] = cell.model.sample_data(n, generator=g, dtype=torch.float64)
    return cell.cache[key]


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 128, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size samples (flattened)."""
    x, y = x.reshape(x.shape[0], -1).double(), y.reshape(y.shape[0], -1).double()
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs equal-size samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    dirs = torch.randn(x.shape[1], n_projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ dirs, dim=0)
    py, _ = torch.sort(y @ dirs, dim=0)
    return float(((px - py) ** 2).mean().sqrt())


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidth: Optional[float] = None) -> float:
    """Unbiased MMD^2 with k(a, b) = exp(-|a-b|^2 / (2 h^2)); h = median distance within y."""
    x, y = x.reshape(x.shape[0], -1).double(), y.reshape(y.shape[0], -1).double()
    dyy = torch.cdist(y, y)
    if bandwidth is None:
        bandwidth = float(dyy[torch.triu_indices(len(y), len(y), 1).unbind()].median())
    k = lambda d: torch.exp(-d.pow(2) / (2 * bandwidth**2))
    kxx, kyy, kxy = k(torch.cdist(x, x)), k(dyy), k(torch.cdist(x, y))
    n, m = len(x), len(y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())


class _SampleDistance(Metric):
    """Keeps the cell's samples and compares them with as many exact data samples."""

    distance: Callable[[torch.Tensor, torch.Tensor], float]

    def __init__(self, cell: CellInfo):
        super().__init__(cell)
        self.samples: List[torch.Tensor] = []

    def update(self, batch_index: int, noise: torch.Tensor, samples: torch.Tensor) -> None:
        self.samples.append(samples.detach().cpu().to(torch.float64))

    def result(self) -> Dict[str, float]:
        x = torch.cat(self.samples)
        data = exact_data(self.cell, int(self.cell.reference.get("n_data", len(x))))
        if data is None:
            return {self.columns[0]: math.nan}
        n = min(len(x), len(data))
        return {self.columns[0]: type(self).distance(x[:n], data[:n])}


@register_metric("sliced_wasserstein")
class SlicedWasserstein(_SampleDistance):
    columns = ("sliced_wasserstein",)
    distance = staticmethod(sliced_wasserstein)


@register_metric("mmd")
class MMD(_SampleDistance):
    columns = ("mmd",)
    distance = staticmethod(mmd_rbf)


# --- FID / KID through torch-fidelity -------------------------------------------------------
INCEPTION_ENV = "NFEBENCH_INCEPTION_WEIGHTS"
CACHE_ENV = "NFEBENCH_CACHE"


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (torch-fidelity's formula)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    value = fid_statistics_to_metric(fid_features_to_statistics(features_a.double().cpu()),
                                     fid_features_to_statistics(features_b.double().cpu()), verbose=False)
    return float(value["frechet_inception_distance"])


def to_uint8_images(x: torch.Tensor) -> torch.Tensor:
    """Samples in [-1, 1], [N, C, H, W] with C in {1, 3}, as uint8 RGB images (what the
    torch-fidelity extractors take). Single-channel images are repeated to 3 channels."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"FID/KID need image samples [N, 1 or 3, H, W], got shape {tuple(x.shape)}")
    img = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img


def cache_dir(reference: Dict[str, Any]) -> Path:
    root = reference.get("cache_dir") or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "nfebench"
    return Path(root)


#: torch-fidelity extractors whose weights nfebench reads itself and hands over as tensors (the
#: module-level download hook of each is given the tensors): torch-fidelity would unpickle a
#: weights path with weights_only=False, which runs any code a crafted file carries.
_HANDED_OVER = {"inception-v3-compat": "torch_fidelity.feature_extractor_inceptionv3"}
#: nfebench's own extractors (benchmarks/extractors.py) read their weights path safely themselves.
_OWN_EXTRACTORS = ("pixels", "digits-classifier")


def _download_hook(state_dict: Optional[Dict[str, torch.Tensor]]):
    """A stand-in for torch.hub.load_state_dict_from_url: the given tensors, or the download read
    back with weights_only=True."""
    def load(url: str, *args: Any, **kwargs: Any) -> Dict[str, torch.Tensor]:
        if state_dict is not None:
            return state_dict
        from torch.hub import load_state_dict_from_url

        return load_state_dict_from_url(url, progress=False, weights_only=True)
    return load


def make_extractor(reference: Dict[str, Any], device: torch.device):
    """A torch-fidelity feature extractor from [run.reference] (extractor, weights)."""
    import importlib
    from unittest import mock

    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor

    from . import extractors  # noqa: F401  (registers nfebench's own extractors)

    name = reference.get("extractor", "inception-v3-compat")
    usable = sorted(set(_HANDED_OVER) | set(_OWN_EXTRACTORS))
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        raise ValueError(f"unknown feature extractor {name!r}; valid: {', '.join(usable)}")
    if name not in usable:
        raise ValueError(f"feature extractor {name!r} would load its weights with full unpickling; nfebench supports "
                         f"{', '.join(usable)}")
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    kwargs: Dict[str, Any] = {"verbose": False}
    weights = reference.get("weights") or (os.environ.get(INCEPTION_ENV) if name.startswith("inception") else None)
    if weights and not Path(weights).is_file():
        raise ValueError(f"feature extractor weights {weights!r} do not exist")
    layer = cls.get_default_feature_layer_for_metric("fid")
    if name in _OWN_EXTRACTORS:
        if weights:
            kwargs["feature_extractor_weights_path"] = str(weights)
        return name, layer, create_feature_extractor(name, [layer], cuda=device.type == "cuda", **kwargs)
    state_dict = load_tensors(weights) if weights else None
    module = importlib.import_module(_HANDED_OVER[name])
    try:
        with mock.patch.object(module, "load_state_dict_from_url", _download_hook(state_dict)):
            extractor = create_feature_extractor(name, [layer], cuda=device.type == "cuda", **kwargs)
    except Exception as e:
        if weights:
            raise ValueError(f"feature extractor weights {weights!r} do not fit {name!r} "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        raise RuntimeError(
            f"could not load the weights of feature extractor {name!r} ({type(e).__name__}: {e}). This machine may "
            f"be offline: download them once (for inception-v3-compat: "
            f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth) "
            f"and give the path as [run.reference] weights = \"PATH\" or in ${INCEPTION_ENV}") from None
    return name, layer, extractor


def _extract(extractor: Any, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    feats = []
    device = next(iter(extractor.parameters()), torch.empty(0)).device
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            out = extractor(images[i:i + batch].to(device))
            feats.append(out[0].detach().double().cpu())
    return torch.cat(feats)


def is_image_model(model: DiffusionModel) -> bool:
    shape = model.sample_shape or ()
    return len(shape) == 3 and shape[0] in (1, 3)


class _FeatureDistance(Metric):
    """Streams each batch through the extractor, keeps only features. NaN for non-image models."""

    def __init__(self, cell: CellInfo):
        super().__init__(cell)
        self.features: List[torch.Tensor] = []
        self.applies = is_image_model(cell.model)
        if not self.applies:
            return
        key = ("extractor", cell.reference.get("extractor"), cell.reference.get("weights"), str(cell.device))
        if key not in cell.cache:
            cell.cache[key] = make_extractor(cell.reference, cell.device)
        self.extractor_name, self.layer, self.extractor = cell.cache[key]

    def update(self, batch_index: int, noise: torch.Tensor, samples: torch.Tensor) -> None:
        if self.applies:
            self.features.append(_extract(self.extractor, to_uint8_images(samples)))

    def reference_features(self, n: int) -> torch.Tensor:
        """Features of n exact data samples, cached in memory and on disk."""
        cell = self.cell
        ident = f"{cell.model_key}|exact-samples|seed={REFERENCE_SEED}|{self.extractor_name}:{self.layer}|n={n}"
        key = ("reference_features", ident)
        if key in cell.cache:
            return cell.cache[key]
        path = cache_dir(cell.reference) / f"features-{hashlib.sha256(ident.encode()).hexdigest()[:20]}.pt"
        if path.is_file():
            feats = load_tensors(path)
        else:
            data = exact_data(cell, n)
            if data is None:
                raise ValueError(f"model {cell.model_key!r} has no reference data for FID/KID")
            feats = torch.cat([_extract(self.extractor, to_uint8_images(data[i:i + 1024].float()))
                               for i in range(0, n, 1024)])
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            torch.save(feats, tmp)
            os.replace(tmp, path)
        cell.cache[key] = feats
        return feats


@register_metric("fid")
class FID(_FeatureDistance):
    columns = ("fid",)

    def result(self) -> Dict[str, float]:
        if not self.applies:
            return {"fid": math.nan}
        x = torch.cat(self.features)
        return {"fid": frechet_distance(x, self.reference_features(int(self.cell.reference.get("n_data", len(x)))))}


@register_metric("kid")
class KID(_FeatureDistance):
    columns = ("kid", "kid_std")

    def result(self) -> Dict[str, float]:
        from torch_fidelity.metric_kid import kid_features_to_metric

        if not self.applies:
            return {"kid": math.nan, "kid_std": math.nan}
        x = torch.cat(self.features)
        ref = self.reference_features(int(self.cell.reference.get("n_data", len(x))))
        subset = min(1000, len(x), len(ref))
        # 100 subsets of 1000 (torch-fidelity's defaults); when a subset is the whole set every
        # subset is the same, so one suffices. Kernel: torch-fidelity's default cubic polynomial.
        subsets = 1 if subset == min(len(x), len(ref)) else 100
        value = kid_features_to_metric(x, ref, kid_subsets=subsets, kid_subset_size=subset, verbose=False,
                                       rng_seed=REFERENCE_SEED % 2**31)
        return {"kid": value["kernel_inception_distance_mean"], "kid_std": value["kernel_inception_distance_std"]}
