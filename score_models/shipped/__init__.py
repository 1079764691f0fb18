"""Checkpoints of the shipped models (package data) and the code that saves and loads them.

Each ``<name>.pt`` holds a state dict (read by :func:`score_models.weights.load_tensors`, which
never unpickles anything but tensors); ``<name>.json`` is its card. ``nfebench train <name>``
writes both (into a directory of the user's; ``--overwrite-shipped`` writes here). Every loader
takes ``directory``: a directory of trained checkpoints in place of this package's.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn

from ..weights import load_state_dict_into, load_tensors

DIRECTORY = Path(__file__).resolve().parent

__all__ = ["DIRECTORY", "save", "card", "checkpoint_path", "load_state", "load_into", "load_classifier", "available",
           "directory_for"]


def available() -> list[str]:
    """Names of the checkpoints present."""
    return sorted(p.stem for p in DIRECTORY.glob("*.pt"))


def save(net: nn.Module, card_data: Dict[str, Any], directory: Path = DIRECTORY) -> None:
    """Write the state dict and the card atomically (temporary file, then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = card_data["name"]
    for suffix, write in ((".pt", lambda p: torch.save({k: v.detach().cpu().float() for k, v in net.state_dict().items()}, p)),
                          (".json", lambda p: p.write_text(json.dumps(card_data, indent=2) + "\n"))):
        path = directory / f"{name}{suffix}"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write(tmp)
        os.replace(tmp, path)


def card(name: str, directory: Path = DIRECTORY) -> Dict[str, Any]:
    path = _existing(name, ".json", "card", directory)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"card {str(path)!r} is not valid JSON ({e})") from None


def _existing(name: str, suffix: str, what: str, directory: Path) -> Path:
    """``directory/<name><suffix>``; ValueError naming what the directory holds when it is missing."""
    path = Path(directory) / f"{name}{suffix}"
    if not path.is_file():
        there = sorted(p.stem for p in Path(directory).glob(f"*{suffix}")) if Path(directory).is_dir() else []
        raise ValueError(f"no {what} for {name!r} in {directory}; available there: {', '.join(there) or 'none'} "
                         f"(train it with: nfebench train {name})")
    return path


def checkpoint_path(name: str, directory: Path = DIRECTORY) -> Path:
    """``directory/<name>.pt``; ValueError naming what is there when it is missing."""
    return _existing(name, ".pt", "checkpoint", directory)


def directory_for(name: str, trained: Path | None) -> Path:
    """Where to read ``name`` from: a training output directory when it holds that checkpoint
    (trained there), else this package's."""
    return Path(trained) if trained is not None and (Path(trained) / f"{name}.pt").is_file() else DIRECTORY


def load_state(name: str, directory: Path = DIRECTORY) -> Dict[str, torch.Tensor]:
    return load_tensors(checkpoint_path(name, directory))


def load_into(net: nn.Module, name: str, directory: Path = DIRECTORY, path: Path | None = None) -> nn.Module:
    """``net`` with the checkpoint ``name`` (or the weights file ``path``) loaded, in eval mode,
    without gradients."""
    source = path if path is not None else checkpoint_path(name, directory)
    return load_state_dict_into(net, source).eval().requires_grad_(False)


def load_classifier(name: str = "digits-classifier", directory: Path = DIRECTORY, path: Path | None = None) -> nn.Module:
    """The digits classifier (or the noisy one) in eval mode, from ``directory/<name>.pt`` or from
    the weights file ``path``."""
    from ..nets import DigitsClassifier

    return load_into(DigitsClassifier(time_conditioned=name == "digits-noisy-classifier"), name, directory, path)
