"""Solvers of the reverse-time SDE dx = [f x - g^2 score] dt + g dw_bar (Song et al. 2021, eq. 6)."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from score_models.parameterization import DiffusionModel

from ..noise import randn_like
from ..registry import register

__all__ = ["euler_maruyama"]

Brownian = Callable[[float, float], torch.Tensor]


@register("euler_maruyama", order=None, order_note="stochastic (strong order 1/2 on a shared Brownian path)",
          stochastic=True, nfe="N", nfe_note="a final step onto sigma = 0 is a denoising step",
          paper="Song et al. 2021, sec. 4.2 and appendix", default_grid="uniform")
def euler_maruyama(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *,
                   brownian: Optional[Brownian] = None,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Euler-Maruyama on the reverse SDE; optional shared Brownian path (``brownian=``).

    In the schedule's time t (strong order 1/2):

    x_{i+1} = x_i + [f(t_i) x_i - g(t_i)^2 score(x_i, t_i)] (t_{i+1} - t_i) + g(t_i) dW_i,
    dW_i ~ N(0, t_i - t_{i+1}). A step onto sigma = 0 is the Tweedie denoising step
    x = E[x0 | x_{t_i}] (score-SDE's "noise removal"), one NFE and no noise.

    ``brownian(tau0, tau1)``, if given, supplies W(tau1) - W(tau0) in reversed time tau = -t
    (e.g. a ``torchsde.BrownianInterval`` over [-t_max, -t_min]), so that runs with different
    step counts share one Brownian path (strong-error studies; exact agreement with
    ``torchsde.sdeint(ReverseSDE(model), ...)``). Otherwise dW is drawn from ``generator``.
    """
    sched = model.schedule
    ts = times.tolist()
    f, g2, sigmas = sched.f(times).tolist(), sched.g2(times).tolist(), sched.sigma(times).tolist()
    x = x_T
    for i in range(len(ts) - 1):
        if sigmas[i + 1] == 0:
            x = model.x0(x, times[i])
            continue
        dt = ts[i + 1] - ts[i]
        drift = f[i] * x - g2[i] * model.score(x, times[i])
        dw = brownian(-ts[i], -ts[i + 1]) if brownian is not None else math.sqrt(-dt) * randn_like(x, generator)
        x = x + drift * dt + math.sqrt(g2[i]) * dw
    return x
