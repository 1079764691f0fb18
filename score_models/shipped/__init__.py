"""Checkpoints of the shipped models (package data) and the code that saves and loads them.

Each ``<name>.pt`` holds a state dict (loaded with ``weights_only=True``); ``<name>.json`` is its
card. ``nfebench train <name>`` writes both.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn

DIRECTORY = Path(__file__).resolve().parent

__all__ = ["DIRECTORY", "save", "card", "load_state", "load_classifier", "available"]


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
    return json.loads(path.read_text())


def load_state(name: str, directory: Path = DIRECTORY) -> Dict[str, torch.Tensor]:
    path = Path(directory) / f"{name}.pt"
    if not path.is_file():
        raise ValueError(f"no checkpoint for {name!r} in {directory}; available: {', '.join(available()) or 'none'} "
                         f"(train it with: nfebench train {name})")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_classifier(name: str = "digits-classifier", directory: Path = DIRECTORY) -> nn.Module:
    """The digits classifier (or the noisy one) in eval mode."""
    from ..nets import DigitsClassifier

    net = DigitsClassifier(time_conditioned=name == "digits-noisy-classifier")
    net.load_state_dict(load_state(name, directory))
    return net.eval().requires_grad_(False)
