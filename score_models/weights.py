"""Reading weights files without running code from them.

Every weights file nfebench reads (shipped and trained checkpoints, diffusers model directories,
feature-extractor weights, cached reference features) goes through :func:`load_tensors`:
``.safetensors`` files through safetensors, anything else through ``torch.load(weights_only=True)``,
which unpickles tensors and plain containers only. A file that holds other Python objects is
refused with a :class:`ValueError` naming it; it is never retried with full unpickling, since a
crafted pickle runs arbitrary code as it loads.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict, Union

import torch

__all__ = ["load_tensors", "load_state_dict_into", "one_line_error"]

PathLike = Union[str, Path]


def load_tensors(path: PathLike) -> Any:
    """The tensors in ``path`` (a state dict, or a tensor), loaded on the CPU without executing
    anything the file contains. ValueError for a missing, unreadable or code-carrying file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{str(path)!r} is not a readable safetensors file ({one_line_error(e)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own message suggests retrying with weights_only=False: exactly what must not
        # happen, so it is never shown; only the unpickler's own complaint is kept.
        if "Unsupported global" not in str(e):
            detail = str(e).partition("WeightsUnpickler error:")[2].strip().splitlines()
            raise ValueError(f"{str(path)!r} is not a readable PyTorch checkpoint "
                             f"({detail[0] if detail else 'unpickling failed'})") from None
        raise ValueError(f"refused to load {str(path)!r}: it holds Python objects other than tensors, and "
                         f"unpickling those can run code; nfebench reads only tensor checkpoints "
                         f"(state dicts saved with torch.save, or .safetensors)") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise ValueError(f"{str(path)!r} is not a readable PyTorch checkpoint ({one_line_error(e)})") from None


def load_state_dict_into(module: torch.nn.Module, source: PathLike | Dict[str, torch.Tensor],
                         where: str | None = None) -> torch.nn.Module:
    """Load a state dict (a weights file, or tensors already read by :func:`load_tensors`) into
    ``module`` strictly, with errors that name the file (``where``, for tensors)."""
    state = load_tensors(source) if isinstance(source, (str, Path)) else source
    where = where or str(source)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where!r} does not hold a state dict (a mapping of names to tensors)")
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{where!r} does not fit {type(module).__name__}: {one_line_error(e)}") from None
    return module


def one_line_error(error: BaseException, limit: int = 300) -> str:
    """The error's message on one line, shortened; never torch's advice about weights_only."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines or any("weights_only" in line for line in lines):
        return type(error).__name__
    text = "; ".join(lines)
    return text if len(text) <= limit else text[:limit - 3] + "..."
