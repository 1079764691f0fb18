"""FID and KID: nfebench's own feature extractors or torch-fidelity's (weights handed over as
tensors), reference features cached on disk, and the metric values by torch-fidelity's formulas,
computed here with the reference side once per model (see :func:`frechet_distance` and
:func:`kid_from_reference`)."""
from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from score_models.parameterization import DiffusionModel
from score_models.weights import load_tensors, one_line_error

from ..budget import phase
from ..extractors import OWN_EXTRACTORS
from ..results import write_bytes_atomic
from .base import REFERENCE_SEED, CellInfo, Metric, register_metric
from .distances import exact_data, offdiagonal_sum

__all__ = ["FID", "KID", "frechet_distance", "frechet_reference", "kid_reference", "kid_from_reference",
           "to_uint8_images", "make_extractor", "cache_dir", "is_image_model",
           "INCEPTION_ENV", "CACHE_ENV"]

INCEPTION_ENV = "NFEBENCH_INCEPTION_WEIGHTS"
CACHE_ENV = "NFEBENCH_CACHE"


def feature_statistics(features: torch.Tensor) -> Dict[str, Any]:
    """Mean and covariance of a feature set in float64, as torch-fidelity's FID takes them: the
    numpy calls of its fid_features_to_statistics (equal to it bit for bit, tested), made here so
    that a run need not import torch-fidelity, which takes over a second in every process."""
    f = features.detach().double().cpu().numpy()
    return {"mu": np.mean(f, axis=0), "sigma": np.cov(f, rowvar=False)}


def frechet_reference(statistics: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The reference side of :func:`frechet_distance`, computed once per reference set: from
    :func:`feature_statistics`, the mean, covariance and its trace as float64 tensors, and the
    covariance's symmetric positive semidefinite square root (eigh; eigenvalues round-off below 0
    taken as 0)."""
    mu = torch.as_tensor(statistics["mu"], dtype=torch.float64).reshape(-1)
    sigma = torch.as_tensor(statistics["sigma"], dtype=torch.float64).reshape(len(mu), len(mu))
    w, v = torch.linalg.eigh(sigma)
    return {"mu": mu, "sigma": sigma, "trace": sigma.diagonal().sum(), "sqrt_sigma": (v * w.clamp_min(0).sqrt()) @ v.T}


def frechet_distance(features_a: torch.Tensor, features_b: Optional[torch.Tensor],
                     statistics_b: Optional[Dict[str, Any]] = None) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N, D]:
    |mu_a - mu_b|^2 + tr S_a + tr S_b - 2 tr (S_a S_b)^(1/2) (torch-fidelity's formula, the same
    value to round-off). ``statistics_b``: features_b's :func:`feature_statistics` or, to do the
    reference side once for many calls, its :func:`frechet_reference`.

    Not torch-fidelity's fid_statistics_to_metric, which takes the eigenvalues of the
    non-symmetric product S_a S_b with a general eigensolver in numpy (OpenBLAS threads, outside
    torch's thread setting) on every call. The eigenvalues of S_a S_b = S_a R R, R = S_b^(1/2)
    the symmetric root, are those of R S_a R (AB and BA have the same eigenvalues), which is
    symmetric positive semidefinite: tr (S_a S_b)^(1/2) = sum_i sqrt(lambda_i(R S_a R)). So R
    is found once per reference (eigh, :func:`frechet_reference`) and each call costs the
    covariance of features_a, two d x d matmuls and a symmetric eigvalsh, in torch float64;
    eigenvalues that round-off makes slightly negative count as 0 (torch-fidelity takes the real
    part of their complex root, also 0)."""
    if statistics_b is None:
        statistics_b = feature_statistics(features_b)
    reference = statistics_b if "sqrt_sigma" in statistics_b else frechet_reference(statistics_b)
    x = features_a.detach().to(device="cpu", dtype=torch.float64)
    if x.dim() != 2 or x.shape[1] != len(reference["mu"]):
        raise ValueError(f"frechet_distance needs features [N, {len(reference['mu'])}], got {tuple(x.shape)}")
    mu = x.mean(0)
    centred = x - mu
    sigma = centred.T @ centred / (len(x) - 1)
    root = reference["sqrt_sigma"]
    m = root @ sigma @ root
    eigenvalues = torch.linalg.eigvalsh((m + m.T) / 2)
    diff = mu - reference["mu"]
    return float(diff @ diff + sigma.diagonal().sum() + reference["trace"] - 2 * eigenvalues.clamp_min(0).sqrt().sum())


def _cubic_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch-fidelity's KID kernel (its defaults): k(a, b) = (a.b / d + 1)^3."""
    k = torch.mm(a, b.T).mul_(1.0 / a.shape[1]).add_(1)
    return k.pow_(3)


def kid_reference(y: torch.Tensor) -> Dict[str, Any]:
    """The reference side of :func:`kid_from_reference`: y and the mean of k(y, y') over distinct
    pairs (computed once per reference set)."""
    y = y.detach().to(device="cpu", dtype=torch.float64)
    m = len(y)
    return {"y": y, "kyy_term": offdiagonal_sum(m, lambda rows, cols: _cubic_kernel(y[rows], y[cols])) / (m * (m - 1))}


def kid_from_reference(x: torch.Tensor, reference: Dict[str, Any]) -> float:
    """KID of feature sets x and y of the same size m, one subset covering both: the unbiased
    MMD^2 of torch-fidelity's kid_features_to_metric with kid_subsets=1, kid_subset_size=m
    (kernel: its default cubic polynomial; its subset is a permutation of each set, which the
    value does not depend on), the same to round-off:
    sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2.
    Ours to compute the y-y term once per reference set (:func:`kid_reference`), in torch float64
    (torch's thread setting; torch-fidelity's numpy matmuls take OpenBLAS's own threads)."""
    x = x.detach().to(device="cpu", dtype=torch.float64)
    y = reference["y"]
    if x.shape != y.shape:
        raise ValueError(f"kid_from_reference needs feature sets of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    m = len(x)
    kxx_sum = offdiagonal_sum(m, lambda rows, cols: _cubic_kernel(x[rows], x[cols]))
    return float(kxx_sum / (m * (m - 1)) + reference["kyy_term"] - 2 * _cubic_kernel(x, y).sum() / (m * m))


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


def usable_extractors() -> list:
    """The extractor names a config may give: the ones whose weights nfebench reads itself
    (its own read their weights path as tensors)."""
    return sorted(set(_HANDED_OVER) | set(OWN_EXTRACTORS))


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
    """(name, feature layer, extractor) from [run.reference] (extractor, weights): one of
    nfebench's own (built without importing torch-fidelity) or a torch-fidelity one."""
    import importlib
    from unittest import mock

    name = reference.get("extractor", "inception-v3-compat")
    weights = reference.get("weights") or (os.environ.get(INCEPTION_ENV) if name.startswith("inception") else None)
    if name in OWN_EXTRACTORS:
        if weights and not Path(weights).is_file():
            raise ValueError(f"feature extractor weights {weights!r} do not exist")
        own = OWN_EXTRACTORS[name]
        return name, own.LAYER, own(str(weights) if weights else None).requires_grad_(False).eval().to(device)

    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor

    usable = usable_extractors()
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        raise ValueError(f"unknown feature extractor {name!r}; valid: {', '.join(usable)}")
    if name not in usable:
        raise ValueError(f"feature extractor {name!r} would load its weights with full unpickling; nfebench supports "
                         f"{', '.join(usable)}")
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    kwargs: Dict[str, Any] = {"verbose": False}
    if weights and not Path(weights).is_file():
        raise ValueError(f"feature extractor weights {weights!r} do not exist")
    layer = cls.get_default_feature_layer_for_metric("fid")
    state_dict = load_tensors(weights) if weights else None
    module = importlib.import_module(_HANDED_OVER[name])
    try:
        with mock.patch.object(module, "load_state_dict_from_url", _download_hook(state_dict)):
            extractor = create_feature_extractor(name, [layer], cuda=device.type == "cuda", **kwargs)
    except Exception as e:
        # one_line_error never passes on torch's advice to retry with weights_only=False
        if weights:
            raise ValueError(f"feature extractor weights {weights!r} do not fit {name!r} "
                             f"({type(e).__name__}: {one_line_error(e)})") from None
        raise RuntimeError(
            f"could not load the weights of feature extractor {name!r} ({type(e).__name__}: {one_line_error(e)}). "
            f"This machine may "
            f"be offline: download them once (for inception-v3-compat: "
            f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth) "
            f"and give the path as [run.reference] weights = \"PATH\" or in ${INCEPTION_ENV}") from None
    return name, layer, extractor


def _extract(extractor: Any, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    feats = []
    device = next(iter(extractor.parameters()), torch.empty(0)).device
    with phase("feature_extraction"), torch.inference_mode():
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
        self.extractor_key = key
        self.extractor_name, self.layer, self.extractor = cell.cache[key]

    def update(self, batch_index: int, noise: torch.Tensor, samples: torch.Tensor) -> None:
        if not self.applies:
            return
        # FID and KID of a cell see the same batch one after the other: extract it once. The
        # slot holds the batch itself, so the identity test cannot match a recycled tensor.
        last = self.cell.cache.get("last_batch_features")
        if last is None or last[0] is not samples or last[1] != self.extractor_key:
            last = (samples, self.extractor_key, _extract(self.extractor, to_uint8_images(samples)))
            self.cell.cache["last_batch_features"] = last
        self.features.append(last[2])

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
            buffer = io.BytesIO()
            torch.save(feats, buffer)
            write_bytes_atomic(path, buffer.getvalue())
        cell.cache[key] = feats
        return feats


@register_metric("fid")
class FID(_FeatureDistance):
    columns = ("fid",)

    def result(self) -> Dict[str, float]:
        if not self.applies:
            return {"fid": math.nan}
        x = torch.cat(self.features)
        n = int(self.cell.reference.get("n_data", len(x)))
        key = ("reference_statistics", self.cell.model_key, self.extractor_name, self.layer, n)
        if key not in self.cell.cache:  # the reference side once per model, not per cell
            self.cell.cache[key] = frechet_reference(feature_statistics(self.reference_features(n)))
        return {"fid": frechet_distance(x, None, self.cell.cache[key])}


@register_metric("kid")
class KID(_FeatureDistance):
    columns = ("kid", "kid_std")

    def result(self) -> Dict[str, float]:
        if not self.applies:
            return {"kid": math.nan, "kid_std": math.nan}
        x = torch.cat(self.features)
        n = int(self.cell.reference.get("n_data", len(x)))
        ref = self.reference_features(n)
        subset = min(1000, len(x), len(ref))
        if 2 <= len(x) == len(ref) <= 1000:
            # One subset is both whole sets (the sweep's case, n_data = n_samples): the same value
            # as torch-fidelity's with the reference side once per model; its std of one value is 0.
            key = ("kid_reference", self.cell.model_key, self.extractor_name, self.layer, n)
            if key not in self.cell.cache:
                self.cell.cache[key] = kid_reference(ref)
            return {"kid": kid_from_reference(x, self.cell.cache[key]), "kid_std": 0.0}
        # 100 subsets of 1000 (torch-fidelity's defaults); when a subset is the whole set every
        # subset is the same, so one suffices. Kernel: torch-fidelity's default cubic polynomial.
        subsets = 1 if subset == min(len(x), len(ref)) else 100
        from torch_fidelity.metric_kid import kid_features_to_metric  # only this path needs torch-fidelity

        value = kid_features_to_metric(x, ref, kid_subsets=subsets, kid_subset_size=subset, verbose=False,
                                       rng_seed=REFERENCE_SEED % 2**31)
        return {"kid": value["kernel_inception_distance_mean"], "kid_std": value["kernel_inception_distance_std"]}
