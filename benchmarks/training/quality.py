"""The quality figures written on a trained model's card (the sweeps of ``nfebench run`` are
the fuller comparison): sliced W2 for toy2d, classifier accuracy and FD for the digits UNet,
and a student's figure at its own NFE."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from score_models import shipped
from score_models.data import digits

__all__ = ["toy2d_quality", "digits_unet_quality", "student_quality", "flow_quality"]


def _classifier_features(weights: Optional[Path]):
    """x -> the digits classifier's penultimate features (float64), from the classifier trained
    into ``weights`` when it is there, else the shipped one."""
    classifier = shipped.load_classifier("digits-classifier", shipped.directory_for("digits-classifier", weights))
    return classifier, lambda x: classifier.features(x.clamp(-1, 1)).double()


def toy2d_quality(name: str, weights: Optional[Path] = None) -> Dict[str, float]:
    import solvers
    from benchmarks.metrics import sliced_wasserstein
    from score_models import zoo

    model = zoo.load(name, weights_dir=weights)
    n = 4000
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        x = solvers.sample("dpm_solver", model, noise, nfe=50)
    data = model.sample_data(n, generator=torch.Generator().manual_seed(2))
    floor = model.sample_data(n, generator=torch.Generator().manual_seed(3))
    return {"sliced_w2_dpm_solver_2m_50nfe": sliced_wasserstein(x, data), "sliced_w2_data_vs_data": sliced_wasserstein(floor, data)}


def digits_unet_quality(n_per_class: int = 100, seed: int = 0, weights: Optional[Path] = None) -> Dict[str, float]:
    """The card's figures: classifier accuracy on class-conditional 1000-step DDPM samples, FD
    (digits-classifier features) of unconditional samples vs the test split, and the FD between
    the train and test splits."""
    import solvers
    from benchmarks.metrics import frechet_distance
    from score_models import zoo

    classifier, f = _classifier_features(weights)
    model = zoo.load("digits-unet", weights_dir=weights)
    x_train, _ = digits("train")
    x_test, _ = digits("test")
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(n_per_class)
    with torch.inference_mode():
        cond = []
        for chunk in labels.split(500):
            noise = torch.randn((len(chunk), 1, 8, 8), generator=g)
            cond.append(solvers.sample("ddpm", model.with_condition(class_labels=chunk), noise, nfe=1000,
                                       spacing="leading", generator=g))
        cond = torch.cat(cond)
        accuracy = float((classifier(cond).argmax(1) == labels).float().mean())
        uncond = torch.cat([solvers.sample("ddpm", model, torch.randn((n, 1, 8, 8), generator=g), nfe=1000,
                                           spacing="leading", generator=g) for n in (500, 500, len(x_train) - 1000)])
        fd_samples = frechet_distance(f(uncond), f(x_test))
        fd_train_test = frechet_distance(f(x_train), f(x_test))
    return {"classifier_accuracy_on_conditional_samples": accuracy, "fd_unconditional_vs_test": fd_samples,
            "fd_train_vs_test": fd_train_test, "fd_ratio": fd_samples / fd_train_test,
            "protocol": f"DDPM ancestral, 1000 steps, fixed_small; {n_per_class} samples per class; "
                        f"{len(x_train)} unconditional samples vs the {len(x_test)}-image test split; "
                        f"features: digits-classifier penultimate layer"}


def student_quality(name: str, n: int = 2000, seed: int = 1, weights: Optional[Path] = None) -> Dict[str, Any]:
    """A card's quick figure: the student's samples at its own step count (consistency models at
    1, 2 and 4 NFE) against the reference data: sliced W2 (toy2d) or FD on digits-classifier
    features vs the test split (digits). The tables of ``nfebench run`` compare with the teacher."""
    import solvers
    from benchmarks.metrics import frechet_distance, sliced_wasserstein
    from score_models import zoo

    model = zoo.load(name, weights_dir=weights)
    kind = model.native_samplers[0]
    budgets = [model.steps] if kind == "distilled" else [1, 2, 4]
    digits_model = name.startswith("digits")
    f = _classifier_features(weights)[1] if digits_model else None
    reference = model.sample_data(n, generator=torch.Generator().manual_seed(seed + 1))
    out: Dict[str, Any] = {}
    with torch.inference_mode():
        for nfe in budgets:
            g = torch.Generator().manual_seed(seed)
            x = solvers.sample(kind, model, torch.randn((n,) + model.sample_shape, generator=g), nfe=nfe, generator=g)
            if digits_model:
                out[f"fd_vs_test_{nfe}nfe"] = frechet_distance(f(x), f(reference))
            else:
                out[f"sliced_w2_{nfe}nfe"] = sliced_wasserstein(x, reference)
    out["protocol"] = f"{kind} sampler, {n} samples, seed {seed}" + (
        "; features: digits-classifier penultimate layer, vs the 360-image test split" if digits_model else "")
    return out


def flow_quality(name: str, n: int = 2000, seed: int = 1, weights: Optional[Path] = None) -> Dict[str, Any]:
    """A rectified flow's card figures: Euler at 1, 2 and 4 NFE (where straight paths pay off)
    and a tight rk45 solve, judged as the diffusion models are (sliced W2 for toy2d, FD on
    digits-classifier features vs the test split for digits), and the straightness S(Z)."""
    import solvers
    from benchmarks.metrics import frechet_distance, sliced_wasserstein, straightness
    from score_models import zoo

    model = zoo.load(name, weights_dir=weights)
    digits_model = name.startswith("digits")
    f = _classifier_features(weights)[1] if digits_model else None
    reference = model.sample_data(n, generator=torch.Generator().manual_seed(seed + 1))
    out: Dict[str, Any] = {}
    with torch.inference_mode():
        noise = torch.randn((n,) + model.sample_shape, generator=torch.Generator().manual_seed(seed))
        for label, sampler, nfe, options in (("euler_1nfe", "euler", 1, {}), ("euler_2nfe", "euler", 2, {}),
                                             ("euler_4nfe", "euler", 4, {}),
                                             ("rk45", "rk45", 10_000, {"rtol": 1e-5, "atol": 1e-5})):
            x = solvers.sample(sampler, model, noise, nfe=nfe, grid="uniform", **options) if sampler == "euler" \
                else solvers.sample(sampler, model, noise, nfe=nfe, **options)
            if digits_model:
                out[f"fd_vs_test_{label}"] = frechet_distance(f(x), f(reference))
            else:
                out[f"sliced_w2_{label}"] = sliced_wasserstein(x, reference)
        out["straightness"] = straightness(model, noise[:1000])
    out["protocol"] = (f"{n} samples, seed {seed}; euler on the uniform grid in t; rk45 rtol=atol=1e-5; "
                       f"straightness: S(Z) per dimension over 1000 trajectories (128 Euler steps uniform in s)"
                       + ("; features: digits-classifier penultimate layer, vs the 360-image test split"
                          if digits_model else ""))
    return out
