"""Datasets the shipped models are trained on: 2-D toy distributions (generated, seeded) and
scikit-learn's 8x8 digits (1797 labelled images that ship with scikit-learn) on a fixed split."""
from __future__ import annotations

import functools
import math
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

__all__ = ["TOY2D", "toy2d", "digits", "DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION"]

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def _moons(n: int, g: torch.Generator) -> torch.Tensor:
    """Two interleaving half circles (as scikit-learn's make_moons), noise std 0.05, centred."""
    k = torch.randint(0, 2, (n,), generator=g)
    theta = torch.rand(n, generator=g) * math.pi
    x = torch.where(k == 0, torch.cos(theta), 1 - torch.cos(theta))
    y = torch.where(k == 0, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2, generator=g)
    return (pts - torch.tensor([0.5, 0.25])) * 1.5


def _swiss_roll(n: int, g: torch.Generator) -> torch.Tensor:
    """The 2-D swiss roll (t cos t, t sin t), t in [1.5 pi, 4.5 pi], scaled to about [-1.5, 1.5]."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 10.0
    return pts + 0.03 * torch.randn(n, 2, generator=g)


def _eight_gaussians(n: int, g: torch.Generator) -> torch.Tensor:
    """8 Gaussians (std 0.1) evenly on a circle of radius 1.5."""
    k = torch.randint(0, 8, (n,), generator=g).double()
    centres = 1.5 * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1)
    return (centres + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def _checkerboard(n: int, g: torch.Generator) -> torch.Tensor:
    """Uniform on the dark squares of a 4x4 checkerboard over [-2, 2]^2."""
    x = torch.rand(n, generator=g) * 4 - 2
    col = torch.floor(x).long() + 2
    row = torch.randint(0, 2, (n,), generator=g) * 2 + (col % 2)
    y = row.float() - 2 + torch.rand(n, generator=g)
    return torch.stack([x, y], 1)


TOY2D: Dict[str, Callable[[int, torch.Generator], torch.Tensor]] = {
    "moons": _moons,
    "swissroll": _swiss_roll,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
}


def toy2d(name: str, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """n samples [n, 2] (float32) of a named 2-D toy distribution."""
    if name not in TOY2D:
        raise ValueError(f"unknown toy2d dataset {name!r}; valid: {', '.join(TOY2D)}")
    return TOY2D[name](n, generator or torch.Generator().manual_seed(0)).float()


def digits(split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as ([N, 1, 8, 8] float32 in [-1, 1], [N] labels), on the fixed split
    train_test_split(test_size=0.2, random_state=0, stratify=labels). Read once per process (the
    first read imports scikit-learn: most of a second); each call returns its own copy."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"unknown split {split!r}; valid: train, test, all")
    images, labels = _digits_split(split)
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.copy())


@functools.lru_cache(maxsize=None)
def _digits_split(split: str) -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = d.images.astype(np.float32) / 8.0 - 1.0  # pixel values 0..16 -> [-1, 1]
    labels = d.target.astype(np.int64)
    if split != "all":
        tr_x, te_x, tr_y, te_y = train_test_split(images, labels, test_size=DIGITS_TEST_FRACTION,
                                                  random_state=DIGITS_SPLIT_SEED, stratify=labels)
        images, labels = (tr_x, tr_y) if split == "train" else (te_x, te_y)
    return images, labels
