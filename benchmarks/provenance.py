"""Where a result came from: package versions, the git commit and the run's metadata.json."""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Dict, List

import torch

__all__ = ["package_versions", "git_commit", "config_hash", "metadata"]


def package_versions(*extra: str) -> Dict[str, str]:
    """Versions of Python, torch, numpy and the ``extra`` distributions ("unknown" when absent)."""
    versions = {"python": platform.python_version()}
    for name in ("torch", "numpy", *extra):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def git_commit() -> str:
    """The commit of the checkout this package runs from, or "unknown" (an installed wheel)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def model_fingerprint(model: Any) -> str:
    """A digest of what a model computes with: its network's parameters, or the tensors that
    define a closed-form model (an exact mixture's weights, means and covariances), and its
    schedule. Equal fingerprints give equal outputs for equal inputs on the same device."""
    owner = getattr(model, "base", model)
    digest = hashlib.sha256(repr(getattr(owner, "schedule", "")).encode())
    net = getattr(owner, "net", None)
    if isinstance(net, torch.nn.Module):
        tensors = sorted(net.state_dict().items())
    else:
        tensors = sorted((k, v) for k, v in vars(owner).items() if isinstance(v, torch.Tensor))
    for name, tensor in tensors:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def config_hash(config: Dict[str, Any]) -> str:
    """A stable hash of a config (as SweepConfig.to_dict() gives it); kept in metadata.json so a
    resume can tell whether the same config wrote a run directory."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def metadata(cfg: Any, device: torch.device, skipped: List[str], world_size: int = 1) -> Dict[str, Any]:
    """The contents of a run's metadata.json: config, versions, commit, device and protocol."""
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "config": cfg.to_dict(),
        "config_hash": config_hash(cfg.to_dict()),
        "versions": package_versions("scipy", "pandas", "torchdiffeq", "nfebench"),
        "git_commit": git_commit(),
        "device": str(device),
        "device_name": device_name,
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size,
        "distributed_backend": (torch.distributed.get_backend() if torch.distributed.is_available()
                                and torch.distributed.is_initialized() else None),
        "protocol": {
            "n_samples": cfg.n_samples, "batch_size": cfg.batch_size, "seeds": cfg.seeds, "dtype": cfg.dtype,
            "reference": cfg.reference,
            "models": {m.key: {"n_samples": m.n_samples or cfg.n_samples,
                               "reference": {**cfg.reference, **dict(m.reference)}} for m in cfg.models},
            "noise": "per batch: torch.Generator seeded seed*1000003 + 2*batch (noise) and +1 (sampler steps)",
            "solver_error": "RMS per dimension vs the exact PF-ODE endpoint from the same noise "
                            "(GaussianMixture: scipy DOP853 rtol=atol=1e-11; other models: rk45 at reference rtol)",
            "distribution_reference": "exact data samples of the GaussianMixture, same n, fixed seed",
            "timing": "warm-up call, median of 3 forward passes (forward_s, once per model and batch shape), "
                      "then the whole sampling run",
        },
        "skipped": skipped,
        "argv": sys.argv,
    }
