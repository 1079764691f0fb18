"""Vector fields of a DiffusionModel in the call conventions of torchdiffeq and torchsde."""
from __future__ import annotations

from typing import Any

import torch

from .parameterization import DiffusionModel, per_sample
from .schedules import as_time

__all__ = ["ProbabilityFlowODE", "ScaledProbabilityFlowODE", "ReverseSDE", "NFEBudgetExceeded"]


class NFEBudgetExceeded(RuntimeError):
    """An adaptive solver needed more network evaluations than its cap allowed."""


class ProbabilityFlowODE(torch.nn.Module):
    """dx/dt = f(t) x - g(t)^2 score(x, t) / 2 (Song et al. 2021, eq. 13), as ``f(t, x)`` for
    ``torchdiffeq.odeint`` (integrate from t_max down to t_min).

    Pass ``options={"step_t": ts}`` to odeint's adaptive solvers: by default they step past the
    last time and interpolate back, which would evaluate the network below t_min.
    """

    def __init__(self, model: DiffusionModel, **cond: Any):
        super().__init__()
        self.model = model.with_condition(**cond) if cond else model

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.model.ode_drift(x, t)


class ScaledProbabilityFlowODE(torch.nn.Module):
    """The same ODE in the scaled space, dx~/dsigma~ = (x~ - D(x~, sigma~)) / sigma~
    (Karras et al. 2022, eq. 4 with s = 1), as ``f(sigma~, x~)`` for torchdiffeq.

    Identical for every affine schedule; sigma~ must stay > 0. Counts accepted and rejected
    adaptive steps through torchdiffeq's step callbacks. With ``max_nfe`` it raises
    :class:`NFEBudgetExceeded` instead of making evaluation number max_nfe + 1.
    """

    def __init__(self, model: DiffusionModel, max_nfe: int | None = None, **cond: Any):
        super().__init__()
        self.model = model.with_condition(**cond) if cond else model
        self.max_nfe = max_nfe
        self._nfe_at_start = model.nfe
        self.accepted_steps = 0
        self.rejected_steps = 0

    def forward(self, sigma_tilde: torch.Tensor, x_tilde: torch.Tensor) -> torch.Tensor:
        if self.max_nfe is not None and self.model.nfe - self._nfe_at_start >= self.max_nfe:
            raise NFEBudgetExceeded(
                f"adaptive solve needs more than {self.max_nfe} network evaluations "
                f"({self.accepted_steps} steps accepted, {self.rejected_steps} rejected, "
                f"stopped at sigma~={float(sigma_tilde):.4g}); raise nfe or loosen rtol/atol")
        return (x_tilde - self.model.denoiser(x_tilde, sigma_tilde)) / float(sigma_tilde)

    def callback_accept_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.accepted_steps += 1

    def callback_reject_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.rejected_steps += 1


class ReverseSDE(torch.nn.Module):
    """The reverse-time SDE dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dw_bar
    (Anderson 1982; Song et al. 2021, eq. 6), for ``torchsde.sdeint`` (Ito, diagonal noise).

    torchsde needs increasing times, so this SDE runs in tau = -t: integrate over
    ts = -t (from -t_max up to -t_min). Then dx = -[f x - g^2 score] dtau + g dW_tau.
    """

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, model: DiffusionModel, **cond: Any):
        super().__init__()
        self.model = model.with_condition(**cond) if cond else model

    def f(self, tau: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = -as_time(tau)
        sched = self.model.schedule
        drift = per_sample(sched.f(t), x) * x - per_sample(sched.g2(t), x) * self.model.score(x, t)
        return -drift

    def g(self, tau: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = -as_time(tau)
        return torch.full_like(x, float(self.model.schedule.g2(t).sqrt()))
