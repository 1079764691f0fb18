"""Consistency distillation and consistency training (Song, Dhariwal, Chen & Sutskever 2023), in
the teacher's scaled space x~ = x/alpha, where every affine schedule's PF-ODE is EDM's."""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from score_models.distilled import ConsistencyModel
from score_models.parameterization import DiffusionModel, per_sample
from solvers.grids import spaced_times
from solvers.samplers.ode import heun_step

from .distillation import DataFn
from .loop import fit

__all__ = ["consistency_distillation", "consistency_sigmas", "ct_schedule"]


def consistency_sigmas(schedule, n: int, rho: float = 7.0) -> torch.Tensor:
    """The n noise levels sigma~ of consistency training, ascending from sigma~(t_min) to
    sigma~(t_max), spaced in sigma~^(1/rho) (Song et al. 2023, sec. 4 / Karras et al. 2022 eq. 5)."""
    times = spaced_times(schedule, n, "edm", schedule.t_max, schedule.t_min, rho)
    return schedule.sigma_tilde(times).flip(0)


def ct_schedule(k: int, total: int, s0: int = 2, s1: int = 150, mu0: float = 0.9) -> Tuple[int, float]:
    """(N(k), mu(k)) of consistency training (Song et al. 2023, Appendix C, CT):
    N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 and mu(k) = exp(s0 log(mu0) / N(k))."""
    n = math.ceil(math.sqrt(k / total * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1) + 1
    return n, math.exp(s0 * math.log(mu0) / n)


class _TargetNetwork:
    """The target network theta- of consistency training: its noise levels and EMA rate for the
    current optimiser step (fixed for CD; the paper's N(k), mu(k) for CT), and its update
    theta- <- mu theta- + (1 - mu) theta after each step."""

    def __init__(self, net: nn.Module, schedule, n_levels: int, mu: float, rho: float, curriculum: Optional[Tuple[int, int]]):
        self.net = copy.deepcopy(net).requires_grad_(False)
        self.schedule, self.n_levels, self.mu, self.rho = schedule, n_levels, mu, rho
        self.curriculum = curriculum  # (total steps, s1) of consistency training, None for CD
        self.step = 0
        self._sigmas: Dict[int, torch.Tensor] = {}

    def levels(self) -> torch.Tensor:
        """The ascending noise levels of this step (sets this step's mu for CT)."""
        n = self.n_levels
        if self.curriculum is not None:
            total, s1 = self.curriculum
            n, self.mu = ct_schedule(self.step, total, s1=s1)
        if n not in self._sigmas:
            self._sigmas[n] = consistency_sigmas(self.schedule, n, self.rho)
        return self._sigmas[n]

    def update(self, online: nn.Module, step: int) -> None:
        self.step = step + 1
        with torch.no_grad():
            for p_target, p in zip(self.net.parameters(), online.parameters()):
                p_target.mul_(self.mu).add_(p, alpha=1 - self.mu)


def consistency_distillation(net: nn.Module, schedule, data_fn: DataFn, *, teacher: Optional[DiffusionModel] = None,
                             sigma_data: float = 0.5, n_levels: int = 18, rho: float = 7.0, mu: float = 0.95,
                             ct_s1: int = 150, train_steps: int = 2000, batch_size: int = 128, lr: float = 2e-4,
                             ema: float = 0.999, seed: int = 0, quiet: bool = True, teacher_name: Optional[str] = None,
                             sample_shape: Optional[Tuple[int, ...]] = None) -> Tuple[ConsistencyModel, Dict[str, Any]]:
    """Consistency distillation (Song et al. 2023, Algorithm 2) with a ``teacher``, or consistency
    training (Algorithm 3) without one, in the teacher's scaled space x~ = x/alpha:

    n ~ U{1..N-1}, x~_{n+1} = x + sigma_{n+1} z; the earlier point x^_n is one teacher Heun step
    sigma_{n+1} -> sigma_n (CD) or x + sigma_n z with the same z (CT); the loss is
    || f_theta(x~_{n+1}, sigma_{n+1}) - f_theta-(x^_n, sigma_n) ||^2 with the target network
    theta- <- mu theta- + (1 - mu) theta after each step. CD uses N = ``n_levels`` and ``mu``; CT the
    paper's growing N(k) and mu(k) (:func:`ct_schedule`, s1 = ``ct_s1``). ``net`` is F_theta
    (trained in place); the returned model carries its EMA weights.
    """
    sigma_min = float(schedule.sigma_tilde(torch.tensor(schedule.t_min, dtype=torch.float64)))
    net.train().requires_grad_(True)
    online = ConsistencyModel(net, schedule, sigma_min, sigma_data, sample_shape)
    targets = _TargetNetwork(net, schedule, n_levels, mu, rho, None if teacher is not None else (train_steps, ct_s1))
    target = ConsistencyModel(targets.net, schedule, sigma_min, sigma_data, sample_shape)

    def batch_fn(g: torch.Generator):
        sigmas = targets.levels()
        x0 = data_fn(g, batch_size)
        n = torch.randint(0, len(sigmas) - 1, (batch_size,), generator=g)
        sigma, sigma_next = sigmas[n + 1], sigmas[n]  # sigma_{n+1} > sigma_n
        z = torch.randn(x0.shape, generator=g)
        x_noisy = x0 + per_sample(sigma, x0) * z
        with torch.no_grad():
            if teacher is None:
                x_earlier = x0 + per_sample(sigma_next, x0) * z
            else:  # one teacher Heun step sigma_{n+1} -> sigma_n
                x_earlier = heun_step(x_noisy, per_sample(sigma, x0), per_sample(sigma_next, x0),
                                      lambda y: teacher.denoiser(y, sigma), lambda y: teacher.denoiser(y, sigma_next))
            goal = target.denoiser(x_earlier, sigma_next)
        return x_noisy, sigma, goal

    def loss_fn(_net, x_noisy, sigma, goal):
        return (online.denoiser(x_noisy, sigma) - goal).pow(2).mean()

    kind = "distillation" if teacher is not None else "training"
    ema_net, loss = fit(net, batch_fn, loss_fn, train_steps, lr, ema, seed, f"consistency {kind}", quiet,
                        after_step=lambda step: targets.update(net, step), ema_warmup=True)
    ema_net.eval().requires_grad_(False)
    model = ConsistencyModel(ema_net, schedule, sigma_min, sigma_data, sample_shape, teacher=teacher_name,
                             training=kind)
    settings = dict(train_steps=train_steps, batch_size=batch_size, lr=lr, ema=ema, rho=rho, loss="squared l2",
                    ema_warmup="min(ema, (1 + k)/(10 + k))", sigma_data=sigma_data)
    if teacher is not None:
        settings.update(n_levels=n_levels, mu=mu, teacher_solver="Heun (Karras et al. 2022, Alg. 1)")
    else:
        settings.update(n_schedule=f"N(k), s0=2, s1={ct_s1}", mu_schedule="mu(k), mu0=0.9")
    info = {"kind": f"consistency_{kind}", "teacher": teacher_name, "sigma_min": sigma_min, "sigma_data": sigma_data,
            "final_loss": loss, "settings": settings}
    return model, info
