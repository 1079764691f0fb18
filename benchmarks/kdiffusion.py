"""Side by side with k-diffusion's ``sampling.py``: the reference for the samplers diffusers lacks.

    python -m benchmarks.kdiffusion --wheel k_diffusion-0.1.1.post1-py3-none-any.whl

k-diffusion is not a dependency (installing it pins numpy below 2). Its ``sampling.py`` and the
``utils.py`` it imports load straight from the wheel (``pip download --no-deps k-diffusion``),
found through ``--wheel``, the ``NFEBENCH_K_DIFFUSION_WHEEL`` environment variable, or
downloaded once by :func:`download_wheel` into ``~/.cache/nfebench`` (the tests do this); they need
only torch, scipy, torchsde, torchdiffeq, tqdm, PIL, safetensors and torchvision.

Both sides get the same model, noise and noise levels: k-diffusion works on x~ = x/alpha against
sigma~ = sigma/alpha with a denoiser D(x~, sigma~), which is exactly nfebench's scaled space, so
:func:`denoiser` hands it the model's x0-prediction there (one counted evaluation per call).
Stochastic samplers get a ``noise_sampler`` that draws from the same generator in the same order
as nfebench's sampler, so they too must agree to round-off.
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

import solvers
from score_models import zoo
from score_models.parameterization import DiffusionModel
from solvers.noise import randn_like
from solvers.samplers.ancestral import scaled_denoiser
from solvers.samplers.dpmpp_sde import brownian_entropy

__all__ = ["WHEEL_VARIABLE", "K_DIFFUSION_VERSION", "download_wheel", "load_sampling", "denoiser", "KCase", "CASES", "run_case", "parity_table"]

WHEEL_VARIABLE = "NFEBENCH_K_DIFFUSION_WHEEL"
#: The release compared against (the last on PyPI; its sampling.py has the 13 samplers named here).
K_DIFFUSION_VERSION = "0.1.1.post1"
_PACKAGE = "_k_diffusion_reference"
_CACHE = Path.home() / ".cache" / "nfebench"


def download_wheel(directory: Path = _CACHE) -> Optional[str]:
    """The k-diffusion wheel in ``directory``, fetched with pip (no dependencies) if missing;
    None when pip cannot reach the package index."""
    wheel = directory / f"k_diffusion-{K_DIFFUSION_VERSION}-py3-none-any.whl"
    if not wheel.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                               f"k-diffusion=={K_DIFFUSION_VERSION}", "-d", str(directory)],
                              capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            return None
    return str(wheel)


def load_sampling(wheel: Optional[str] = None) -> types.ModuleType:
    """k-diffusion's ``sampling`` module, imported from the wheel without k-diffusion's package
    ``__init__`` (which pulls in its training stack). ValueError naming the variable if unset."""
    wheel = wheel or os.environ.get(WHEEL_VARIABLE)
    if not wheel or not Path(wheel).is_file():
        raise ValueError(f"k-diffusion wheel not found ({WHEEL_VARIABLE}={wheel!r}); get it with "
                         f"`pip download --no-deps k-diffusion` and set {WHEEL_VARIABLE} to the .whl file")
    if _PACKAGE not in sys.modules:
        package = types.ModuleType(_PACKAGE)
        package.__path__ = [str(Path(wheel).resolve() / "k_diffusion")]  # zipimport reads inside the wheel
        sys.modules[_PACKAGE] = package
    return importlib.import_module(f"{_PACKAGE}.sampling")


def denoiser(model: DiffusionModel) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """D(x~, sigma~) as k-diffusion calls it (sigma~ one value per sample, all equal)."""
    at_level = scaled_denoiser(model)

    def denoise(x_tilde: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        return at_level(x_tilde, float(sigma.reshape(-1)[0]))

    return denoise


@dataclass(frozen=True)
class KCase:
    """One k-diffusion sampler call and the nfebench sampler call that should equal it."""

    k_name: str  # k-diffusion's function, without ``sample_``
    sampler: str  # nfebench sampler or alias
    options: Dict[str, Any] = field(default_factory=dict)
    k_kwargs: Dict[str, Any] = field(default_factory=dict)
    noise_sampler: bool = False  # pass a noise_sampler drawing from the shared generator
    brownian: bool = False  # pass k-diffusion a BrownianTreeNoiseSampler seeded as ours


CASES: List[KCase] = [
    KCase("euler", "euler"),
    KCase("heun", "heun"),
    KCase("dpmpp_2m", "dpmpp_2m"),
    KCase("euler_ancestral", "euler_ancestral", noise_sampler=True),
    KCase("euler_ancestral", "euler_ancestral", {"eta": 0.5, "s_noise": 0.7}, {"eta": 0.5, "s_noise": 0.7},
          noise_sampler=True),
    KCase("dpm_2", "dpm_2"),
    KCase("dpm_2_ancestral", "dpm_2_ancestral", noise_sampler=True),
    KCase("dpmpp_2s_ancestral", "dpmpp_2s_ancestral", noise_sampler=True),
    KCase("dpmpp_2m_sde", "dpmpp_2m_sde", noise_sampler=True),
    KCase("dpmpp_2m_sde", "dpmpp_2m_sde_heun", k_kwargs={"solver_type": "heun"}, noise_sampler=True),
    KCase("dpmpp_3m_sde", "dpmpp_3m_sde", noise_sampler=True),
    KCase("dpmpp_sde", "dpmpp_sde", {"eta": 0.0}, {"eta": 0.0}, noise_sampler=True),
    KCase("dpmpp_sde", "dpmpp_sde", {"noise_sampler": "brownian"}, brownian=True),
    KCase("dpmpp_2m_sde", "dpmpp_2m_sde", {"noise_sampler": "brownian"}, brownian=True),
    KCase("dpmpp_3m_sde", "dpmpp_3m_sde", {"noise_sampler": "brownian"}, brownian=True),
    KCase("lms", "lms"),
    KCase("lms", "lms", {"order": 2}, {"order": 2}),
    KCase("dpmpp_2m_sde", "res_multistep", {}, {"eta": 0.0, "solver_type": "heun"}),
    KCase("euler_ancestral", "er_sde", {"solver_type": "reverse_time_sde", "eta": 1.0, "max_stage": 1}, {"eta": 1.0},
          noise_sampler=True),
]


def run_case(case: KCase, model: DiffusionModel, noise: torch.Tensor, nfe: int, seed: int = 0,
             wheel: Optional[str] = None, grid: str = "karras") -> Dict[str, Any]:
    """Run one case both ways on the same grid; max |ours - theirs| relative to max |theirs| and
    the evaluations each made."""
    sampling = load_sampling(wheel)
    options = {"grid": grid, **case.options}
    spec = solvers.get(case.sampler)
    stats: Dict[str, Any] = {}
    ours = solvers.sample(case.sampler, model, noise, nfe=nfe, generator=torch.Generator().manual_seed(seed),
                          stats=stats, **options)
    times, _ = solvers.sampling.plan_times(spec, model, nfe, spec.with_fixed(dict(options)))
    schedule = model.schedule
    sigmas = schedule.sigma_tilde(times).to(noise.dtype)
    x_tilde = schedule.prior_std_at(float(times[0])) * noise / float(schedule.alpha(times[0]))
    kwargs = dict(case.k_kwargs)
    generator = torch.Generator().manual_seed(seed)
    if case.noise_sampler:
        kwargs["noise_sampler"] = lambda sigma, sigma_next: randn_like(x_tilde, generator)
    if case.brownian:
        positive = sigmas[sigmas > 0]
        # the tree's seed as our samplers draw it from their generator
        entropy = brownian_entropy(torch.Generator().manual_seed(seed))
        kwargs["noise_sampler"] = sampling.BrownianTreeNoiseSampler(x_tilde, positive.min(), positive.max(),
                                                                    seed=entropy)
    start = model.nfe
    with torch.no_grad():
        theirs_tilde = getattr(sampling, f"sample_{case.k_name}")(denoiser(model), x_tilde, sigmas, disable=True, **kwargs)
    theirs = float(schedule.alpha(times[-1])) * theirs_tilde
    scale = float(theirs.abs().max())
    return {"k_name": case.k_name, "sampler": case.sampler, "options": case.options,
            "max_rel_diff": float((ours - theirs).abs().max()) / scale,
            "nfe_ours": stats["nfe"], "nfe_theirs": model.nfe - start}


def parity_table(model_name: str = "gmm:mix16d", schedule: str = "edm", nfe: int = 10, n: int = 64,
                 cases: Sequence[KCase] = tuple(CASES), wheel: Optional[str] = None) -> List[Dict[str, Any]]:
    model = zoo.load(model_name, schedule=schedule)
    noise = torch.randn((n,) + tuple(model.sample_shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return [run_case(case, model, noise, nfe, wheel=wheel) for case in cases]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", default=None, help=f"the k-diffusion wheel (default: ${WHEEL_VARIABLE})")
    parser.add_argument("--model", default="gmm:mix16d")
    parser.add_argument("--schedule", default="edm")
    parser.add_argument("--nfe", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"{'k-diffusion':<22} {'nfebench':<30} {'max rel diff':>12} {'NFE ours':>8} {'NFE theirs':>10}")
    for r in parity_table(args.model, args.schedule, args.nfe, wheel=args.wheel):
        ours = r["sampler"] + "".join(f" {k}={v}" for k, v in r["options"].items())
        print(f"{r['k_name']:<22} {ours:<30} {r['max_rel_diff']:12.2e} {r['nfe_ours']:8d} {r['nfe_theirs']:10d}")


if __name__ == "__main__":
    main()
