"""Training of the shipped models: ``nfebench train <model>`` reproduces each checkpoint from a
seed on the CPU and writes a JSON card beside it (data, split, schedule, prediction, steps, seed,
final loss, quality figures, package versions).

Training is not benchmarking: this package holds the optimisation loop (:mod:`.loop`), the base
models' trainers (:mod:`.base_models`), progressive distillation (:mod:`.distillation`),
consistency distillation and training (:mod:`.consistency`), the students' settings
(:mod:`.students`) and the figures on each card (:mod:`.quality`). Train the classifier before
the UNet (the UNet's card reports the classifier's accuracy on its samples) and each student
after its teacher (``TRAINABLE`` is in that order).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from score_models import shipped
from score_models.data import DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, TOY2D, digits

from ..provenance import package_versions
from ..rundir import ensure_writable_directory
from .base_models import train_classifier, train_digits_unet, train_toy2d
from .consistency import consistency_distillation, consistency_sigmas, ct_schedule
from .distillation import PD_WEIGHTINGS, distillation_target, progressive_distillation
from .flows import train_rectified_flow, train_reflow
from .quality import digits_unet_quality, flow_quality, student_quality, toy2d_quality
from .students import train_consistency, train_distilled

__all__ = ["TRAINABLE", "Trainable", "train", "DEFAULT_OUT", "ensure_writable_directory", "progressive_distillation",
           "distillation_target", "consistency_distillation", "consistency_sigmas", "ct_schedule", "PD_WEIGHTINGS",
           "digits_unet_quality", "student_quality"]

#: Where ``nfebench train`` writes when no directory is given (relative to the working directory).
DEFAULT_OUT = Path("trained")
_TOY_DATA = "toy2d:{} (generated, seeded; score_models.data)"
_DIGITS_DATA = "sklearn digits"
KINDS = ("diffusion", "classifier", "student", "flow")


@dataclass(frozen=True)
class Trainable:
    """A model ``nfebench train`` can reproduce: its default optimiser steps, its data (for the
    card), its kind and ``fit(steps, seed, quiet, out_dir) -> (network, card information)``."""

    steps: int
    data: str
    kind: str
    fit: Callable[[int, int, bool, Path], tuple]

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.steps < 1:
            raise ValueError(f"invalid trainable: kind {self.kind!r} (valid: {', '.join(KINDS)}), steps {self.steps}")


def _ignore_out_dir(fn: Callable[..., tuple]) -> Callable[[int, int, bool, Path], tuple]:
    """A base model's trainer needs no teacher, so no output directory to read one from."""
    return lambda steps, seed, quiet, out_dir: fn(steps, seed, quiet)


TRAINABLE: Dict[str, Trainable] = {
    **{f"toy2d-{d}": Trainable(6000, _TOY_DATA.format(d), "diffusion", _ignore_out_dir(functools.partial(train_toy2d, d)))
       for d in TOY2D},
    "digits-classifier": Trainable(3000, _DIGITS_DATA, "classifier",
                                   _ignore_out_dir(functools.partial(train_classifier, False))),
    "digits-noisy-classifier": Trainable(6000, _DIGITS_DATA, "classifier",
                                         _ignore_out_dir(functools.partial(train_classifier, True))),
    "digits-unet": Trainable(12000, _DIGITS_DATA, "diffusion", _ignore_out_dir(train_digits_unet)),
    # Students, in dependency order (each -pd<N> is distilled from -pd<2N>, -pd16 from the teacher
    # sampled with DDIM at 32 steps).
    **{f"{base}-pd{n}": Trainable(steps, data, "student", functools.partial(train_distilled, base, n))
       for base, steps, data in (("digits-unet", 3000, _DIGITS_DATA), ("toy2d-moons", 2000, _TOY_DATA.format("moons")))
       for n in (16, 8, 4, 2, 1)},
    "digits-unet-cd": Trainable(4000, _DIGITS_DATA, "student", functools.partial(train_consistency, "digits-unet", True)),
    "toy2d-moons-cd": Trainable(4000, _TOY_DATA.format("moons"), "student",
                                functools.partial(train_consistency, "toy2d-moons", True)),
    "toy2d-moons-ct": Trainable(8000, _TOY_DATA.format("moons"), "student",
                                functools.partial(train_consistency, "toy2d-moons", False)),
    # Rectified flows: 1-RF on the data, then reflow (2-RF) from its ODE's pairs.
    "toy2d-moons-rf": Trainable(6000, _TOY_DATA.format("moons"), "flow", functools.partial(train_rectified_flow, "toy2d-moons-rf")),
    "toy2d-moons-rf2": Trainable(3000, _TOY_DATA.format("moons"), "flow", functools.partial(train_reflow, "toy2d-moons-rf2")),
    "digits-rf": Trainable(10000, _DIGITS_DATA, "flow", functools.partial(train_rectified_flow, "digits-rf")),
    "digits-rf2": Trainable(3000, _DIGITS_DATA, "flow", functools.partial(train_reflow, "digits-rf2")),
}


def train(name: str, steps: Optional[int] = None, seed: int = 0, out_dir: Optional[Path] = None,
          quiet: bool = False, evaluate: bool = True, overwrite_shipped: bool = False) -> Dict[str, Any]:
    """Train a shipped model, write ``<name>.pt`` (state dict) and ``<name>.json`` (its card) into
    ``out_dir`` (default ``trained/``). Writing into the package's shipped/ directory, which
    replaces a shipped checkpoint, needs ``overwrite_shipped=True``. A student's teacher is read
    from ``out_dir`` when it was trained there, else from the package."""
    if name not in TRAINABLE:
        raise ValueError(f"unknown trainable model {name!r}; valid: {', '.join(TRAINABLE)}")
    spec = TRAINABLE[name]
    steps = spec.steps if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if overwrite_shipped:
        if out_dir is not None and Path(out_dir).resolve() != shipped.DIRECTORY:
            raise ValueError(f"give --out or --overwrite-shipped, not both (--out {str(out_dir)!r})")
        out_dir = shipped.DIRECTORY
    out_dir = Path(out_dir) if out_dir is not None else DEFAULT_OUT
    if out_dir.resolve() == shipped.DIRECTORY and not overwrite_shipped:
        raise ValueError(f"{str(out_dir)!r} is the package's shipped/ directory; pass --overwrite-shipped to replace "
                         f"a shipped checkpoint")
    ensure_writable_directory(out_dir)
    start = time.perf_counter()
    net, info = spec.fit(steps, seed, quiet, out_dir)
    seconds = time.perf_counter() - start
    card = {"name": name, "data": spec.data, "seed": seed, "steps": steps, "train_seconds": round(seconds, 1),
            "torch_threads": torch.get_num_threads(), "versions": package_versions("scikit-learn"),
            "parameters": sum(p.numel() for p in net.parameters()), **info}
    if name.startswith("digits"):
        card["split"] = {"method": "sklearn train_test_split, stratified", "test_size": DIGITS_TEST_FRACTION,
                         "random_state": DIGITS_SPLIT_SEED, "train": len(digits("train")[1]),
                         "test": len(digits("test")[1])}
    shipped.save(net, card, out_dir)
    if evaluate:
        if spec.kind == "diffusion" and name.startswith("toy2d"):
            card["quality"] = toy2d_quality(name, out_dir)
        elif name == "digits-unet":
            card["quality"] = digits_unet_quality(weights=out_dir)
        elif spec.kind == "student":
            card["quality"] = student_quality(name, weights=out_dir)
        elif spec.kind == "flow":
            card["quality"] = flow_quality(name, weights=out_dir)
        shipped.save(net, card, out_dir)
    return card
