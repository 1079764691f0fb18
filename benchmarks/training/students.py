"""Trainers of the shipped few-step students of a teacher (toy2d-moons, digits-unet): each
progressive-distillation round and consistency distillation / training, with their data and
settings. A teacher is read from the training output directory when it was trained there."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Dict

import torch
from torch import nn

from score_models import shipped, zoo
from score_models.data import digits, toy2d

from .consistency import consistency_distillation
from .distillation import progressive_distillation

__all__ = ["train_distilled", "train_consistency"]


def _training_data(base: str) -> Callable[[torch.Generator, int], torch.Tensor]:
    """data_fn(generator, n) drawing the teacher's training data (digits: the train split)."""
    if base == "digits-unet":
        x_train, _ = digits("train")
        return lambda g, n: x_train[torch.randint(0, len(x_train), (n,), generator=g)]
    dataset = base[len("toy2d-"):]
    return lambda g, n: toy2d(dataset, n, g)


#: Per teacher family: batch size, learning rate and EMA of the students' training.
_STUDENT_SETTINGS = {"digits-unet": dict(batch_size=128, lr=3e-4, ema=0.999),
                     "toy2d-moons": dict(batch_size=1024, lr=3e-4, ema=0.999)}


def _teacher(name: str, weights: Path):
    """A teacher from the training output directory when it was trained there, else the shipped one."""
    return zoo.load(name, weights_dir=shipped.directory_for(name, weights))


def train_distilled(base: str, student_steps: int, steps: int, seed: int, quiet: bool,
                    weights: Path) -> tuple[nn.Module, Dict[str, Any]]:
    teacher_name = base if student_steps == 16 else f"{base}-pd{2 * student_steps}"
    torch.manual_seed(seed)
    model, info = progressive_distillation(_teacher(teacher_name, weights), student_steps, _training_data(base),
                                           train_steps=steps, seed=seed, quiet=quiet, teacher_name=teacher_name,
                                           **_STUDENT_SETTINGS[base])
    return model.net, {"base": base, **info}


def train_consistency(base: str, distill: bool, steps: int, seed: int, quiet: bool,
                      weights: Path) -> tuple[nn.Module, Dict[str, Any]]:
    torch.manual_seed(seed)
    teacher = _teacher(base, weights)
    data_fn = _training_data(base)
    # sigma_data: the training data's standard deviation (EDM's c_skip/c_out constant).
    sigma_data = float(data_fn(torch.Generator().manual_seed(seed), 4096).std())
    # CD starts from the teacher's weights; CT (no teacher) from a fresh network of its architecture.
    net = copy.deepcopy(teacher.net) if distill else type(teacher.net)()
    model, info = consistency_distillation(net, teacher.schedule, data_fn, teacher=teacher if distill else None,
                                           sigma_data=sigma_data, train_steps=steps, seed=seed, quiet=quiet,
                                           teacher_name=base if distill else None, sample_shape=teacher.sample_shape,
                                           **_STUDENT_SETTINGS[base])
    return model.net, {"base": base, **info}
