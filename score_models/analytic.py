"""Gaussian mixtures: diffusion models whose every prediction, density and PF-ODE solution is
known exactly, for any schedule. They are the suite's ground truth.

Data x0 ~ sum_k w_k N(mu_k, diag(s_k^2)). Under x_t = alpha x0 + sigma eps each component stays
Gaussian, N(alpha mu_k, alpha^2 s_k^2 + sigma^2), so with responsibilities r_k(x, t):

    E[eps | x_t]  = sigma sum_k r_k (x - alpha mu_k) / v_k,          v_k = alpha^2 s_k^2 + sigma^2
    E[x0  | x_t]  = sum_k r_k (mu_k + alpha s_k^2 (x - alpha mu_k) / v_k)
    score         = -sum_k r_k (x - alpha mu_k) / v_k

(Gaussian conditioning; e.g. Karras et al. 2022, appendix B.3 for the denoiser of a mixture).
All of it is computed in float64 whatever the state's dtype.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .parameterization import Coefficients, DiffusionModel, combine
from .schedules import Schedule, TimeLike, as_time

__all__ = ["GaussianMixture"]


class _ExactMixtureNet(torch.nn.Module):
    """The "network" of a GaussianMixture: the exact prediction of the requested kind."""

    def __init__(self, mixture: "GaussianMixture"):
        super().__init__()
        self.mixture = mixture

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = self.mixture
        x0, eps = m.exact_x0_and_eps(x, t)
        c = Coefficients(m.schedule, t, x0, derivatives=m.prediction == "flow")
        return combine(m.prediction, x0, eps, c).to(x.dtype)


class GaussianMixture(DiffusionModel):
    """A DiffusionModel whose predictions are the exact posterior expectations of a Gaussian
    mixture under ``schedule``.

    Args:
        means: [K, *shape] component means (shape is the sample shape: (D,) or (C, H, W)).
        stds: [K] (isotropic components) or [K, *shape] (diagonal) standard deviations, > 0.
        weights: [K] mixture weights (normalised here).
        schedule: any :class:`~score_models.schedules.Schedule`.
        prediction: which kind of output the exact "network" returns (default x0); the
            choice only exercises the wrapper's conversions, every kind is exact.
    """

    def __init__(
        self,
        means: torch.Tensor | Sequence,
        stds: torch.Tensor | Sequence | float,
        weights: torch.Tensor | Sequence | None = None,
        *,
        schedule: Schedule,
        prediction: str = "x0",
    ):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() < 2:
            raise ValueError(f"means must be [K, *shape], got shape {tuple(means.shape)}")
        k = means.shape[0]
        self.sample_shape = tuple(means.shape[1:])
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.dim() == 0:
            stds = stds.expand(k)
        if stds.shape == (k,):
            stds = stds.reshape((k,) + (1,) * len(self.sample_shape)).expand_as(means)
        if stds.shape != means.shape:
            raise ValueError(f"stds must be a scalar, [K] or [K, *shape]; got {tuple(stds.shape)} for means {tuple(means.shape)}")
        if not bool((stds > 0).all()):
            raise ValueError("component stds must be > 0 (the PF-ODE needs a density at t = 0)")
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be {k} positive numbers, got {weights.tolist()}")
        self.weights = weights / weights.sum()
        self.means = means.reshape(k, -1)  # [K, D]
        self.variances = (stds**2).reshape(k, -1).contiguous()  # [K, D]
        super().__init__(_ExactMixtureNet(self), schedule, prediction, sample_shape=self.sample_shape)
        # The exact "network" takes its time in float64, not cast down to the state's dtype.
        self.net_time_dtype = torch.float64

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    # --- exact quantities ----------------------------------------------------------------
    def _components(self, x: torch.Tensor, t: TimeLike):
        """Per-component terms at time t (see :meth:`_terms`)."""
        b = x.shape[0]
        tt = as_time(t)
        tt = tt.expand(b) if tt.dim() == 0 else tt
        alpha = self.schedule.alpha(tt).reshape(b, 1, 1).to(x.device)
        sigma = self.schedule.sigma(tt).reshape(b, 1, 1).to(x.device)
        return self._terms(x, alpha, sigma)

    def _terms(self, x: torch.Tensor, alpha: torch.Tensor | float, sigma: torch.Tensor | float):
        """Flattened float64 state, alpha and sigma, per-component terms of x = alpha x0 + sigma eps:
        means, variances, marginal variances v_k, x - alpha mu_k and log w_k N(x; alpha mu_k, v_k)."""
        xf = x.to(torch.float64).reshape(x.shape[0], 1, -1)  # [B, 1, D] (differentiable: log_prob's gradient is the score)
        mu = self.means.to(xf.device).unsqueeze(0)  # [1, K, D]
        var = self.variances.to(xf.device).unsqueeze(0)
        v = alpha**2 * var + sigma**2  # [B, K, D] marginal variance of each component
        diff = xf - alpha * mu
        log_comp = -0.5 * ((diff**2 / v) + torch.log(2 * math.pi * v)).sum(-1)  # [B, K]
        log_joint = torch.log(self.weights.to(xf.device)) + log_comp
        return xf, alpha, sigma, mu, var, v, diff, log_joint

    @staticmethod
    def _score(v: torch.Tensor, diff: torch.Tensor, log_joint: torch.Tensor) -> torch.Tensor:
        """-sum_k r_k (x - alpha mu_k) / v_k, flattened [B, D]."""
        r = torch.softmax(log_joint, dim=-1).unsqueeze(-1)
        return -(r * diff / v).sum(1)

    def exact_x0_and_eps(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[x0 | x_t], E[eps | x_t]) in float64, shaped like x. Does not count as an NFE."""
        tt = as_time(t).reshape(-1)
        if bool((tt == tt[0]).all()):  # one time for the whole batch, as every sampler step has
            return self._x0_and_eps_at(x, float(self.schedule.alpha(tt[0])), float(self.schedule.sigma(tt[0])))
        _, alpha, sigma, mu, var, v, diff, log_joint = self._components(x, t)
        r = torch.softmax(log_joint, dim=-1).unsqueeze(-1)  # [B, K, 1]
        resid = diff / v
        eps = sigma.squeeze(1) * (r * resid).sum(1)
        x0 = (r * (mu + alpha * var * resid)).sum(1)
        return x0.reshape(x.shape), eps.reshape(x.shape)

    def _x0_and_eps_at(self, x: torch.Tensor, alpha: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`exact_x0_and_eps` at one (alpha, sigma) for the whole batch, the sums over the
        dimensions multiplied out into [B, D] x [D, K] products: five times faster than the
        [B, K, D] terms at 192-D, equal to them to round-off (about 1e-14)."""
        xf = x.to(torch.float64).reshape(x.shape[0], -1)  # [B, D]
        mu, var = self.means.to(xf.device), self.variances.to(xf.device)  # [K, D]
        v = alpha**2 * var + sigma**2
        inv_v = 1.0 / v
        mu_inv_v = mu * inv_v
        # sum_d (x_d - alpha mu_kd)^2 / v_kd = x^2 . 1/v_k - 2 alpha x . mu_k/v_k + alpha^2 mu_k^2 . 1/v_k
        quadratic = (xf * xf) @ inv_v.T - 2 * alpha * (xf @ mu_inv_v.T) + (alpha**2 * mu * mu_inv_v).sum(-1)
        log_joint = torch.log(self.weights.to(xf.device)) - 0.5 * (quadratic + torch.log(2 * math.pi * v).sum(-1))
        r = torch.softmax(log_joint, dim=-1)  # [B, K]
        x0 = r @ mu + alpha * xf * (r @ (var * inv_v)) - alpha**2 * (r @ (var * mu_inv_v))
        eps = sigma * (xf * (r @ inv_v) - alpha * (r @ mu_inv_v))
        return x0.reshape(x.shape), eps.reshape(x.shape)

    def exact_score(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """grad_x log p_t(x) in float64 (no NFE counted)."""
        _, _, _, _, _, v, diff, log_joint = self._components(x, t)
        return self._score(v, diff, log_joint).reshape(x.shape)

    def log_prob(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """Exact log-density of the noised marginal p_t at x (float64, shape [B])."""
        return torch.logsumexp(self._components(x, t)[-1], dim=-1)

    def sample_data(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> torch.Tensor:
        """n exact samples of the data distribution x0 ~ p_0, shape [n, *sample_shape]."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + self.variances[k].sqrt() * z
        return x.reshape((n,) + self.sample_shape).to(device=device, dtype=dtype)

    def data_mean(self) -> torch.Tensor:
        """Exact mean of p_0, flattened [D]."""
        return (self.weights[:, None] * self.means).sum(0)

    def data_covariance(self) -> torch.Tensor:
        """Exact covariance of p_0, flattened [D, D]."""
        mean = self.data_mean()
        second = sum(w * (torch.diag(v) + torch.outer(m, m)) for w, m, v in zip(self.weights, self.means, self.variances))
        return second - torch.outer(mean, mean)

    # --- the true PF-ODE endpoint --------------------------------------------------------
    def _scaled_drift(self, sigma_tilde: float, x_tilde: np.ndarray) -> np.ndarray:
        """dx~/dsigma~ = -sigma~ grad log p(x~; sigma~) = sigma~ sum_k r_k (x~ - mu_k)/(s_k^2 + sigma~^2).

        Written through the score, it is finite at sigma~ = 0 (the mixture has a density there).
        The scaled marginal is the mixture at alpha = 1, sigma = sigma~.
        """
        x = torch.from_numpy(x_tilde).reshape(-1, self.dim)
        _, _, _, _, _, v, diff, log_joint = self._terms(x, 1.0, sigma_tilde)
        return (-sigma_tilde * self._score(v, diff, log_joint)).numpy().ravel()

    def exact_ode_solution(self, x_start: torch.Tensor, t_start: TimeLike | None = None, t_end: TimeLike | None = None,
                           rtol: float = 1e-11, atol: float = 1e-11) -> torch.Tensor:
        """Solve this mixture's probability-flow ODE from x_start at t_start to t_end.

        Integrated in the scaled space (x~ = x/alpha, sigma~ = sigma/alpha; Karras et al. 2022,
        eq. 4) with scipy's DOP853 at rtol = atol = 1e-11, where the ODE is the same for every
        affine schedule. Defaults: t_start = schedule.t_max, t_end = schedule.t_data (sigma = 0).
        Returns the endpoint in the schedule's x-space, same dtype/device as x_start.
        """
        sched = self.schedule
        t_start = sched.t_max if t_start is None else t_start
        t_end = sched.t_data if t_end is None else t_end
        s0, s1 = float(sched.sigma_tilde(t_start)), float(sched.sigma_tilde(t_end))
        a0, a1 = float(sched.alpha(t_start)), float(sched.alpha(t_end))
        y0 = (x_start.detach().cpu().to(torch.float64).reshape(-1) / a0).numpy()
        if s0 == s1:
            y1 = y0
        else:
            sol = solve_ivp(self._scaled_drift, (s0, s1), y0, method="DOP853", rtol=rtol, atol=atol, t_eval=[s1])
            if not sol.success:
                raise RuntimeError(f"reference PF-ODE solve failed: {sol.message}")
            y1 = sol.y[:, -1]
        out = torch.from_numpy(a1 * y1).reshape(x_start.shape)
        return out.to(device=x_start.device, dtype=x_start.dtype)

    def exact_encoding(self, x0: torch.Tensor, t_end: TimeLike | None = None, t_start: TimeLike | None = None
                       ) -> torch.Tensor:
        """The exact inversion of data points: this mixture's PF-ODE run forward in time from ``x0``
        at ``t_start`` (default the schedule's t_data, sigma = 0) up to ``t_end`` (default t_max),
        returned in standard-normal units x_T / prior_std_at(t_end): the noise that
        :func:`solvers.sample` maps back to x0 and that :func:`solvers.invert` approximates."""
        sched = self.schedule
        t_end = sched.t_max if t_end is None else t_end
        t_start = sched.t_data if t_start is None else t_start
        x_T = self.exact_ode_solution(x0, t_start=t_start, t_end=t_end)
        return x_T / sched.prior_std_at(float(t_end))

    def __repr__(self) -> str:
        k, d = self.means.shape
        return f"GaussianMixture(K={k}, shape={self.sample_shape}, schedule={self.schedule!r})"
