"""Score-based stochastic samplers: predictor-corrector (Song et al. 2021) and annealed
Langevin dynamics (Song & Ermon 2019)."""
from __future__ import annotations

import math
from typing import Optional

import torch

from score_models.parameterization import DiffusionModel

from ..noise import randn_like
from ..options import above, at_least, one_of
from ..registry import register

__all__ = ["pc", "langevin", "PREDICTORS", "CORRECTORS"]

PREDICTORS = ("reverse_diffusion", "euler_maruyama", "none")
CORRECTORS = ("langevin", "none")
NORMS = ("batch", "sample")


def _langevin_step_size(score: torch.Tensor, z: torch.Tensor, snr: float, alpha: float, norm: str):
    """2 alpha (snr ||z|| / ||score||)^2 (Song et al. 2021, Algorithm 4/5); norms averaged over the
    batch as score-SDE does (``norm="batch"``) or per sample (``"sample"``)."""
    g = score.reshape(score.shape[0], -1).norm(dim=-1)
    n = z.reshape(z.shape[0], -1).norm(dim=-1)
    if norm == "batch":
        return 2 * alpha * (snr * n.mean() / g.mean()) ** 2
    return (2 * alpha * (snr * n / g) ** 2).reshape((-1,) + (1,) * (score.dim() - 1))


@register("pc", order=None, order_note="stochastic: tested on the distribution it samples", stochastic=True,
          nfe="(N - 1 if to_zero else N) * max((predictor != 'none') + (n_corrector if corrector != 'none' else 0), 1)"
              " + (1 if to_zero else 0)",
          nfe_note="predictor + n_corrector evaluations per step; the step onto sigma = 0 is one denoising evaluation",
          paper="Song et al. 2021 (score-SDE), Algorithms 2-5", default_grid="uniform",
          variants=({"predictor": "euler_maruyama", "n_corrector": 2}, {"predictor": "none"}, {"corrector": "none"}),
          checks={"predictor": one_of(*PREDICTORS), "corrector": one_of(*CORRECTORS), "norm": one_of(*NORMS),
                  "snr": above(0.0), "n_corrector": at_least(0)},
          requires={"predictor != 'none' or (corrector != 'none' and n_corrector >= 1)":
                    "predictor='none' needs a corrector with n_corrector >= 1"})
def pc(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, predictor: str = "reverse_diffusion",
       corrector: str = "langevin", snr: float = 0.16, n_corrector: int = 1, norm: str = "batch",
       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Score-SDE predictor-corrector sampling: a reverse-SDE predictor, then Langevin correctors.

    Song et al. 2021, Algorithm 2: each step t -> s runs the
    predictor, then ``n_corrector`` Langevin corrector steps at s with the signal-to-noise step
    size rule (Algorithms 4/5; snr = 0.16 is score-SDE's VE setting; for VP it used 0.01 with the
    reverse-diffusion predictor). Predictors: ``reverse_diffusion`` (x_s = (2 - a) x_t + G^2 score +
    G z with a = alpha_t/alpha_s, G^2 = sigma_t^2 - a^2 sigma_s^2, the discretised reverse SDE of
    their eq. 46), ``euler_maruyama``, ``none`` (corrector only). The step onto sigma = 0 is the
    denoising step x = E[x0 | x_t] (score-SDE's "noise removal").
    """
    sched = model.schedule
    ts = times.tolist()
    alphas, sigmas = sched.alpha(times).tolist(), sched.sigma(times).tolist()
    f, g2 = sched.f(times).tolist(), sched.g2(times).tolist()
    x = x_T
    for i in range(len(ts) - 1):
        if sigmas[i + 1] == 0:
            x = model.x0(x, times[i])
            break
        # Predictor, t_i -> t_{i+1}.
        if predictor == "reverse_diffusion":
            a = alphas[i] / alphas[i + 1]
            big_g2 = sigmas[i] ** 2 - a**2 * sigmas[i + 1] ** 2
            x = (2 - a) * x + big_g2 * model.score(x, times[i]) + math.sqrt(big_g2) * randn_like(x, generator)
        elif predictor == "euler_maruyama":
            dt = ts[i + 1] - ts[i]
            x = x + (f[i] * x - g2[i] * model.score(x, times[i])) * dt + math.sqrt(-g2[i] * dt) * randn_like(x, generator)
        # Corrector: Langevin MCMC at t_{i+1}.
        if corrector == "langevin":
            alpha_i = float(sched.corrector_alpha(times[i + 1]))
            for _ in range(n_corrector):
                score = model.score(x, times[i + 1])
                z = randn_like(x, generator)
                step = _langevin_step_size(score, z, snr, alpha_i, norm)
                x = x + step * score + torch.sqrt(2 * torch.as_tensor(step)) * z
    return x


@register("langevin", order=None, order_note="stochastic: tested on the distribution it samples", stochastic=True,
          nfe="N * steps_per_level + (1 if to_zero else steps_per_level)",
          nfe_note="steps_per_level at each noise level; a grid ending at sigma = 0 adds one denoising evaluation",
          paper="Song & Ermon 2019 (NCSN), Algorithm 1", default_grid="logsnr",
          checks={"steps_per_level": at_least(1), "step_lr": above(0.0)})
def langevin(model: DiffusionModel, x_T: torch.Tensor, times: torch.Tensor, *, steps_per_level: int = 10,
             step_lr: float = 2e-5, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Annealed Langevin dynamics over the grid's noise levels, ``steps_per_level`` steps each.

    Song & Ermon 2019, Algorithm 1, over the noise levels of the
    grid (by default geometric in sigma~): at level sigma_i, with a_i = step_lr sigma_i^2 / sigma_L^2,
    ``steps_per_level`` times x~ <- x~ + (a_i/2) score~(x~) + sqrt(a_i) z, in the scaled space
    (score~ = alpha score). A grid ending at sigma = 0 adds the denoising step x = D(x~, sigma_L)
    (Tweedie; Jolicoeur-Martineau et al. 2021, NCSNv2's final denoising).
    """
    sched = model.schedule
    ends_at_data = bool(times[-1] == sched.t_data)
    levels = times[:-1] if ends_at_data else times
    sig, alphas = sched.sigma_tilde(levels).tolist(), sched.alpha(levels).tolist()
    x = x_T / alphas[0]
    for i, t in enumerate(levels):
        a_i = step_lr * sig[i] ** 2 / sig[-1] ** 2
        for _ in range(steps_per_level):
            score = alphas[i] * model.score(alphas[i] * x, t)
            x = x + 0.5 * a_i * score + math.sqrt(a_i) * randn_like(x, generator)
    if ends_at_data:
        return model.x0(alphas[-1] * x, levels[-1])
    return alphas[-1] * x
