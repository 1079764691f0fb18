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

DIRECTORY = Path(__file__).resolve().parent

from ..weights import load_state_dict_into, load_tensors

__all__ = ["DIRECTORY", "save", "card", "checkpoint_path", "load_state", "load_into", "load_classifier", "available"]


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
    path = Path(directory) / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no card for {name!r} in {directory}; available: {', '.join(available()) or 'none'} "
                         f"(train it with: nfebench train {name})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"card {str(path)!r} is not valid JSON ({e})") from None


def checkpoint_path(name: str, directory: Path = DIRECTORY) -> Path:
    """``directory/<name>.pt``; ValueError naming what is there when it is missing."""
    path = Path(directory) / f"{name}.pt"
    if not path.is_file():
        there = sorted(p.stem for p in Path(directory).glob("*.pt")) if Path(directory).is_dir() else []
        raise ValueError(f"no checkpoint for {name!r} in {directory}; available there: {', '.join(there) or 'none'} "
                         f"(train it with: nfebench train {name})")
    return path


def load_state(name: str, directory: Path = DIRECTORY) -> Dict[str, torch.Tensor]:
    return load_tensors(checkpoint_path(name, directory))


def load_into(net: nn.Module, name: str, directory: Path = DIRECTORY) -> nn.Module:
    """``net`` with the checkpoint ``name`` loaded, in eval mode, without gradients."""
    return load_state_dict_into(net, checkpoint_path(name, directory)).eval().requires_grad_(False)


def load_classifier(name: str = "digits-classifier", directory: Path = DIRECTORY, path: Path | None = None) -> nn.Module:
    """The digits classifier (or the noisy one) in eval mode, from ``directory/<name>.pt`` or from
    the weights file ``path``."""
    from ..nets import DigitsClassifier

    net = DigitsClassifier(time_conditioned=name == "digits-noisy-classifier")
    if path is not None:
        return load_state_dict_into(net, path).eval().requires_grad_(False)
    return load_into(net, name, directory)
