"""nfebench samplers behind k-diffusion's sampler signature: :func:`as_kdiffusion`.

    sample_heun = solvers.as_kdiffusion("heun", s_churn=0.0)
    x0 = sample_heun(model, x, sigmas, extra_args={"cond": c}, callback=cb, disable=True)

k-diffusion's ``sample_*(model, x, sigmas, extra_args=None, callback=None, disable=None)`` takes a
denoiser ``model(x, sigma * s_in, **extra_args)``, the noisy start ``x`` at ``sigmas[0]`` and the
decreasing noise levels (ending at 0 to denoise). The wrapper turns the denoiser into an
EDM-schedule model (:func:`score_models.denoiser.from_denoiser`) and the sigmas into its grid, so
the sampler runs unchanged, with its network calls counted.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch

from score_models.denoiser import from_denoiser

from .registry import get
from .sampling import sample

__all__ = ["as_kdiffusion"]


def as_kdiffusion(name: str, **options: Any) -> Callable[..., torch.Tensor]:
    """A function with k-diffusion's sampler signature running nfebench's sampler ``name`` with
    ``options`` (validated now) on the sigmas it is given.

    ``callback``, if given, is called after every denoiser evaluation with k-diffusion's keys
    (x, i, sigma, sigma_hat, denoised; i counts evaluations, not steps, since nfebench samplers do
    not expose their steps). ``disable`` (k-diffusion's progress bar) is accepted and ignored.
    Stochastic samplers draw from ``generator`` if given, else from a generator seeded from
    torch's global RNG (as k-diffusion draws from it).
    """
    spec = get(name)
    grid_set = sorted(set(options) & {"grid", "spacing"})
    if grid_set:
        raise ValueError(f"as_kdiffusion takes its grid from the sigmas it is called with; drop {grid_set}")
    spec.check_options(options)
    if spec.adaptive or not spec.grid_options:
        raise ValueError(f"{name} does not run on a given grid of sigmas; as_kdiffusion needs a fixed-step sampler")

    def sampler(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
                extra_args: Optional[Dict[str, Any]] = None, callback: Optional[Callable[[dict], None]] = None,
                disable: Optional[bool] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        extra_args = dict(extra_args or {})
        levels = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
        positive = levels[levels > 0]
        if positive.numel() == 0:
            raise ValueError("sigmas must hold at least one positive noise level")
        calls = [0]

        def denoiser(x_in: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            denoised = model(x_in, sigma.to(x_in.dtype), **extra_args)
            if callback is not None:
                level = float(sigma.flatten()[0])
                callback({"x": x_in, "i": calls[0], "sigma": level, "sigma_hat": level, "denoised": denoised})
            calls[0] += 1
            return denoised

        wrapped = from_denoiser(denoiser, float(positive.min()), float(levels[0]))
        wrapped.cache_times = False
        if generator is None and spec.is_stochastic(options):
            generator = torch.Generator(device=x.device).manual_seed(int(torch.randint(0, 2 ** 62, (1,))))
        return sample(name, wrapped, x / float(levels[0]), grid=levels, generator=generator, **options)

    sampler.__name__ = f"sample_{name}"
    sampler.__doc__ = f"nfebench's {name} ({spec.summary}) with k-diffusion's sampler signature."
    return sampler
