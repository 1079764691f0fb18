"""Noise schedules x_t = alpha(t) x0 + sigma(t) eps, declared once and validated.

Every schedule gives alpha(t), sigma(t), their time derivatives, the half log-SNR
lambda(t) = log(alpha/sigma) and its inverse, the SDE coefficients
f(t) = d log(alpha)/dt and g(t)^2 = d sigma^2/dt - 2 f sigma^2 (Song et al. 2021, eq. 5 / Kingma
et al. 2021), its valid time range [t_min, t_max], the time ``t_data`` at which sigma = 0 (where
samplers that "denoise to zero" end), and ``prior_std`` (x_T = prior_std * noise).

All times are float64 tensors (or Python floats, converted); results are float64 tensors.
The network sees ``net_input(t)``, which is t itself: every schedule here is expressed in the
time units its networks are trained on (integer timesteps for DiscreteVP, as diffusers' UNets).
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Union

import torch

TimeLike = Union[float, torch.Tensor]

__all__ = [
    "Schedule",
    "VPLinear",
    "VPCosine",
    "DiscreteVP",
    "VE",
    "EDM",
    "RectifiedFlow",
    "SCHEDULES",
]


def as_time(t: TimeLike) -> torch.Tensor:
    """Times as float64 tensors on the CPU: time stays in float64 and is cast only at the network's input."""
    if isinstance(t, torch.Tensor):
        return t.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(t, dtype=torch.float64)


def _log_alpha_from_lambda(lam: torch.Tensor) -> torch.Tensor:
    # alpha^2 / sigma^2 = exp(2 lambda) with alpha^2 + sigma^2 = 1  =>  alpha^2 = sigmoid(2 lambda)
    return -0.5 * torch.nn.functional.softplus(-2.0 * lam)


class Schedule(abc.ABC):
    """Base class. Subclasses define alpha, sigma and their derivatives (float64 throughout).

    ``t_min``/``t_max`` bound the times a sampler may evaluate the network at; ``t_data`` is
    where sigma = 0 (may lie outside the network's range; never evaluated there).
    """

    name: str = "schedule"
    t_min: float
    t_max: float
    t_data: float
    prior_std: float
    variance_preserving: bool = False
    #: number of training timesteps of a discrete schedule (the network's time input is an
    #: integer timestep); None for continuous-time schedules
    num_train_timesteps: int | None = None

    # --- primitives every schedule defines ---------------------------------------------------
    @abc.abstractmethod
    def alpha(self, t: TimeLike) -> torch.Tensor: ...

    @abc.abstractmethod
    def sigma(self, t: TimeLike) -> torch.Tensor: ...

    @abc.abstractmethod
    def dalpha_dt(self, t: TimeLike) -> torch.Tensor: ...

    @abc.abstractmethod
    def dsigma_dt(self, t: TimeLike) -> torch.Tensor: ...

    @abc.abstractmethod
    def inverse_lambda(self, lam: TimeLike) -> torch.Tensor:
        """t such that lambda(t) = lam."""

    # --- derived quantities ----------------------------------------------------------------
    def lambda_(self, t: TimeLike) -> torch.Tensor:
        """Half log-SNR, lambda(t) = log(alpha(t) / sigma(t)) (Lu et al. 2022, DPM-Solver)."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def log_snr(self, t: TimeLike) -> torch.Tensor:
        """log(alpha^2 / sigma^2) = 2 lambda(t) (Kingma et al. 2021)."""
        return 2.0 * self.lambda_(t)

    def sigma_tilde(self, t: TimeLike) -> torch.Tensor:
        """Noise level of the scaled state x/alpha: sigma/alpha = exp(-lambda) (Karras et al. 2022)."""
        return self.sigma(t) / self.alpha(t)

    def t_from_sigma_tilde(self, sigma_tilde: TimeLike) -> torch.Tensor:
        """Inverse of :meth:`sigma_tilde`; sigma_tilde = 0 maps to ``t_data``."""
        s = as_time(sigma_tilde)
        t = self.inverse_lambda(-torch.log(s))
        return torch.where(s == 0, torch.full_like(t, self.t_data), t)

    def f(self, t: TimeLike) -> torch.Tensor:
        """Drift coefficient of the forward SDE dx = f(t) x dt + g(t) dw: f = d log(alpha)/dt."""
        return self.dalpha_dt(t) / self.alpha(t)

    def g2(self, t: TimeLike) -> torch.Tensor:
        """Squared diffusion coefficient g(t)^2 = d sigma^2/dt - 2 f(t) sigma^2."""
        sigma = self.sigma(t)
        return 2.0 * sigma * self.dsigma_dt(t) - 2.0 * self.f(t) * sigma**2

    def prior_std_at(self, t_start: float) -> float:
        """Scale of x at a start time t_start: x_T = prior_std_at(t_start) * noise. ``prior_std``
        for VP and rectified flow (the marginal stays ~ unit scale); sigma(t_start) for
        alpha = 1 schedules (VE, EDM), so starting below sigma_max stays consistent."""
        return self.prior_std

    def midpoint_time(self, t: TimeLike, s: TimeLike) -> torch.Tensor:
        """The time halfway from t to s. A step onto t_data = -inf (VE) is halved in sigma~."""
        t, s = as_time(t), as_time(s)
        if math.isinf(float(s)):
            return self.t_from_sigma_tilde(0.5 * self.sigma_tilde(t))
        return 0.5 * (t + s)

    def corrector_alpha(self, t: TimeLike) -> torch.Tensor:
        """score-SDE's alpha_i in the Langevin corrector's step size (Song et al. 2021,
        Algorithm 5): 1 - beta_i of one step of the discretised forward process for VP schedules,
        1 for the others (Algorithm 4)."""
        return torch.ones_like(as_time(t))

    def net_input(self, t: TimeLike) -> torch.Tensor:
        """The time value the network is called with (the schedule's own units)."""
        return as_time(t)

    def check_times(self, t: TimeLike, what: str = "time") -> None:
        """Raise ValueError when a time lies outside [t_min, t_max] (t_data also allowed)."""
        tt = as_time(t)
        ok = ((tt >= self.t_min - 1e-12) & (tt <= self.t_max + 1e-12)) | (tt == self.t_data)
        if not bool(ok.all()):
            bad = tt[~ok].flatten()[0].item()
            raise ValueError(
                f"{what} {bad!r} is outside {self.name}'s valid range "
                f"[t_min={self.t_min}, t_max={self.t_max}] (or t_data={self.t_data})"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    def describe(self) -> str:
        return f"t in [{self.t_min}, {self.t_max}]"


# ------------------------------------------------------------------------------------------
# Variance-preserving schedules
# ------------------------------------------------------------------------------------------
class _VPMixin:
    """sigma = sqrt(1 - alpha^2). A VP schedule defines log alpha(t), its derivative and its
    inverse; everything else follows here, in log space to keep precision near t = 0."""

    variance_preserving = True
    prior_std = 1.0
    #: time length of one step of the discretised forward process in corrector_alpha: score-SDE
    #: discretises continuous VP schedules with N = 1000 steps; a discrete schedule's step is 1
    discretisation_step = 1e-3

    def corrector_alpha(self, t: TimeLike) -> torch.Tensor:
        return 1.0 - self.g2(t) * self.discretisation_step

    def alpha(self, t: TimeLike) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def dalpha_dt(self, t: TimeLike) -> torch.Tensor:
        return self.dlog_alpha_dt(t) * self.alpha(t)

    def f(self, t: TimeLike) -> torch.Tensor:
        return self.dlog_alpha_dt(t)

    def sigma(self, t: TimeLike) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)) + 0.0)  # + 0.0: no -0.0 at t_data

    def dsigma_dt(self, t: TimeLike) -> torch.Tensor:
        return -self.alpha(t) * self.dalpha_dt(t) / self.sigma(t)

    def lambda_(self, t: TimeLike) -> torch.Tensor:
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))

    def inverse_lambda(self, lam: TimeLike) -> torch.Tensor:
        return self.t_from_log_alpha(_log_alpha_from_lambda(as_time(lam)))


@dataclass(repr=False)
class VPLinear(_VPMixin, Schedule):
    """Continuous VP SDE with linear beta(t) = beta_min + t (beta_max - beta_min), t in [eps, 1].

    Song et al. 2021 (score-SDE), eq. 11 and appendix B: log alpha(t) = -t^2 (b1-b0)/4 - t b0/2,
    f = -beta/2, g^2 = beta.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0
    name = "vp_linear"
    t_data = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.beta_min < self.beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}")
        if not 0 < self.t_min < self.t_max:
            raise ValueError(f"need 0 < t_min < t_max, got {self.t_min}, {self.t_max}")

    def beta(self, t: TimeLike) -> torch.Tensor:
        return self.beta_min + as_time(t) * (self.beta_max - self.beta_min)

    def log_alpha(self, t: TimeLike) -> torch.Tensor:
        t = as_time(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def dlog_alpha_dt(self, t: TimeLike) -> torch.Tensor:
        return -0.5 * self.beta(t)

    def g2(self, t: TimeLike) -> torch.Tensor:
        return self.beta(t)

    def t_from_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:
        # Solve (b1-b0)/4 t^2 + b0/2 t + log_alpha = 0 for the positive root.
        d = self.beta_max - self.beta_min
        return (-0.5 * self.beta_min + torch.sqrt(0.25 * self.beta_min**2 - d * log_alpha)) / (0.5 * d)

    def describe(self) -> str:
        return f"beta_min={self.beta_min}, beta_max={self.beta_max}, t in [{self.t_min}, {self.t_max}]"


@dataclass(repr=False)
class VPCosine(_VPMixin, Schedule):
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17), continuous in t in [t_min, t_max].

    alpha(t)^2 = cos^2(((t+s)/(1+s)) pi/2) / cos^2((s/(1+s)) pi/2), s = 0.008. alpha(1) = 0, so
    t_max defaults to 0.9946 as in DPM-Solver's continuous cosine schedule (Lu et al. 2022),
    which keeps lambda(t_max) finite.
    """

    s: float = 0.008
    t_min: float = 1e-3
    t_max: float = 0.9946
    name = "vp_cosine"
    t_data = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.t_min < self.t_max < 1:
            raise ValueError(f"need 0 < t_min < t_max < 1, got {self.t_min}, {self.t_max}")

    def _u(self, t: TimeLike) -> torch.Tensor:
        return (as_time(t) + self.s) / (1.0 + self.s) * (math.pi / 2)

    @property
    def _cos_u0(self) -> float:
        return math.cos(self.s / (1.0 + self.s) * math.pi / 2)

    def log_alpha(self, t: TimeLike) -> torch.Tensor:
        return torch.log(torch.cos(self._u(t)) / self._cos_u0)

    def dlog_alpha_dt(self, t: TimeLike) -> torch.Tensor:
        return -torch.tan(self._u(t)) * (math.pi / 2) / (1.0 + self.s)

    def t_from_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:
        u = torch.arccos(torch.exp(log_alpha) * self._cos_u0)
        return u * 2.0 / math.pi * (1.0 + self.s) - self.s

    def describe(self) -> str:
        return f"s={self.s}, t in [{self.t_min}, {self.t_max}]"


#: How DiscreteVP interpolates between its training timesteps: log alpha or sigma~ = sigma/alpha linear.
INTERPOLATIONS = ("log_alpha", "sigma")


class DiscreteVP(_VPMixin, Schedule):
    """DDPM's discrete schedule (Ho et al. 2020) over integer timesteps n = 0..N-1.

    abar_n = prod_{i<=n} (1 - beta_i); alpha_n = sqrt(abar_n). The network is called with the
    timestep itself (diffusers' UNet convention). For solvers that need continuous time, log
    alpha is interpolated piecewise-linearly in t (as DPM-Solver's discrete NoiseScheduleVP
    does), which makes lambda(t) monotone and invertible and f(t) piecewise constant.
    t_data = -1 carries abar = 1 (diffusers' ``set_alpha_to_one`` final step), so a sampler that
    ends at t_data lands on sigma = 0; the network is never called there.

    ``interpolation="sigma"`` interpolates sigma~ = sigma/alpha linearly between the timesteps
    instead, as diffusers' sigma-space schedulers (EulerDiscrete, HeunDiscrete, LMSDiscrete, ...)
    do at the fractional timesteps of their unrounded linspace spacing (``grid="uniform"`` from
    T-1 to 0 visits the same ones); off by default: f(t) is then not piecewise constant.

    ``round_net_input=True`` calls the network at the nearest training timestep of t, while the
    samplers' coefficients (alpha, sigma) stay at t itself: diffusers' DPMSolverMultistep,
    DPMSolverSinglestep and UniPCMultistep do this on Karras sigmas, which fall between timesteps.
    Off by default: the state at t is then read by a network as if at round(t).
    """

    name = "discrete_vp"
    t_data = -1.0
    discretisation_step = 1.0

    def __init__(self, *, betas: torch.Tensor | None = None, alphas_cumprod: torch.Tensor | None = None,
                 interpolation: str = "log_alpha", round_net_input: bool = False):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
        self.interpolation = interpolation
        self.round_net_input = bool(round_net_input)
        if (betas is None) == (alphas_cumprod is None):
            raise ValueError("DiscreteVP needs exactly one of betas= or alphas_cumprod=")
        if betas is not None:
            betas = torch.as_tensor(betas, dtype=torch.float64)
            if not bool(((betas > 0) & (betas < 1)).all()):
                raise ValueError("betas must lie in (0, 1)")
            alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if abar.numel() < 2:
            raise ValueError("DiscreteVP needs at least 2 timesteps")
        if not bool(((abar > 0) & (abar < 1)).all()) or not bool((abar[1:] < abar[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing within (0, 1)")
        self.alphas_cumprod = abar
        self.num_train_timesteps = abar.numel()
        self.t_min = 0.0
        self.t_max = float(self.num_train_timesteps - 1)
        # Knots at t = -1 (abar = 1), 0, 1, ..., N-1.
        self._knots_t = torch.arange(-1, self.num_train_timesteps, dtype=torch.float64)
        self._knots_log_alpha = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * torch.log(abar)])
        self._slopes = torch.diff(self._knots_log_alpha)
        self._knots_sigma_tilde = torch.sqrt(torch.expm1(-2.0 * self._knots_log_alpha))
        self._sigma_slopes = torch.diff(self._knots_sigma_tilde)

    @classmethod
    def linear(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "DiscreteVP":
        """DDPM's linear betas (Ho et al. 2020, sec. 4): linspace(beta_start, beta_end, N)."""
        return cls(betas=torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64))

    @classmethod
    def scaled_linear(cls, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> "DiscreteVP":
        """Latent-diffusion "scaled_linear" betas: linspace(sqrt(b0), sqrt(b1), N)^2."""
        b = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
        return cls(betas=b)

    @classmethod
    def cosine(cls, num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "DiscreteVP":
        """Nichol & Dhariwal 2021 cosine betas, clipped at max_beta (their eq. 17 and sec. 3.2)."""
        def abar(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        n = num_train_timesteps
        b = [min(1 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)]
        return cls(betas=torch.tensor(b, dtype=torch.float64))

    def midpoint_time(self, t: TimeLike, s: TimeLike) -> torch.Tensor:
        """Between two integer timesteps, the integer timestep t - floor((t - s)/2): the network
        was trained on integers (diffusers' PNDMScheduler does the same)."""
        t, s = as_time(t), as_time(s)
        if float(t).is_integer() and float(s).is_integer():
            return t - math.floor(float(t - s) / 2)
        return super().midpoint_time(t, s)

    def _segment(self, t: torch.Tensor) -> torch.Tensor:
        idx = torch.searchsorted(self._knots_t, t.contiguous(), right=True) - 1
        return idx.clamp(0, self._slopes.numel() - 1)

    def net_input(self, t: TimeLike) -> torch.Tensor:
        t = as_time(t)
        return torch.round(t) if self.round_net_input else t

    def _sigma_tilde_linear(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma~(t), d sigma~/dt) with sigma~ piecewise linear in t (interpolation="sigma")."""
        i = self._segment(t)
        return self._knots_sigma_tilde[i] + self._sigma_slopes[i] * (t - self._knots_t[i]), self._sigma_slopes[i]

    def log_alpha(self, t: TimeLike) -> torch.Tensor:
        t = as_time(t)
        if self.interpolation == "sigma":
            # alpha = 1/sqrt(1 + sigma~^2) on a VP schedule
            return -0.5 * torch.log1p(self._sigma_tilde_linear(t)[0] ** 2)
        i = self._segment(t)
        return self._knots_log_alpha[i] + self._slopes[i] * (t - self._knots_t[i])

    def dlog_alpha_dt(self, t: TimeLike) -> torch.Tensor:
        # Right derivative at the knots (log alpha, or sigma~, is piecewise linear).
        t = as_time(t)
        if self.interpolation == "sigma":
            sigma_tilde, slope = self._sigma_tilde_linear(t)
            return -sigma_tilde * slope / (1.0 + sigma_tilde ** 2)
        return self._slopes[self._segment(t)]

    def t_from_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:
        # log alpha decreases along the knots (sigma~ increases): interpolate on an increasing axis.
        if self.interpolation == "sigma":
            xs, ts = self._knots_sigma_tilde, self._knots_t
            values = torch.sqrt(torch.expm1(-2.0 * log_alpha.clamp(max=0.0))).clamp(max=float(xs[-1]))
        else:
            xs, ts = self._knots_log_alpha.flip(0), self._knots_t.flip(0)
            values = log_alpha.clamp(min=float(xs[0]), max=0.0)
        j = (torch.searchsorted(xs, values, right=True) - 1).clamp(0, xs.numel() - 2)
        w = (values - xs[j]) / (xs[j + 1] - xs[j])
        return ts[j] + w * (ts[j + 1] - ts[j])

    def describe(self) -> str:
        extra = (", sigma~ interpolated linearly" if self.interpolation == "sigma" else "") + (
            ", network at rounded timesteps" if self.round_net_input else "")
        return (f"{self.num_train_timesteps} steps, abar in [{self.alphas_cumprod[-1].item():.3g}, "
                f"{self.alphas_cumprod[0].item():.6g}]{extra}")


# ------------------------------------------------------------------------------------------
# alpha = 1 schedules and rectified flow
# ------------------------------------------------------------------------------------------
class _UnitAlphaMixin:
    """alpha = 1: f = 0, g^2 = d sigma^2/dt, and the prior scale at a start time is sigma there."""

    def alpha(self, t: TimeLike) -> torch.Tensor:
        return torch.ones_like(as_time(t))

    def dalpha_dt(self, t: TimeLike) -> torch.Tensor:
        return torch.zeros_like(as_time(t))

    def f(self, t: TimeLike) -> torch.Tensor:
        return torch.zeros_like(as_time(t))

    def g2(self, t: TimeLike) -> torch.Tensor:
        return 2.0 * self.sigma(t) * self.dsigma_dt(t)

    def prior_std_at(self, t_start: float) -> float:
        return float(self.sigma(t_start))


@dataclass(repr=False)
class VE(_UnitAlphaMixin, Schedule):
    """Variance-exploding SDE (Song et al. 2021, SMLD): alpha = 1,
    sigma(t) = sigma_min (sigma_max/sigma_min)^t, g^2 = 2 sigma^2 ln(sigma_max/sigma_min).

    sigma never reaches 0 for finite t, so t_data = -inf.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 1e-5
    t_max: float = 1.0
    name = "ve"
    t_data = -math.inf

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        self.prior_std = float(self.sigma(self.t_max))

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: TimeLike) -> torch.Tensor:
        return torch.exp(math.log(self.sigma_min) + as_time(t) * self._log_ratio)

    def dsigma_dt(self, t: TimeLike) -> torch.Tensor:
        return self.sigma(t) * self._log_ratio

    def inverse_lambda(self, lam: TimeLike) -> torch.Tensor:
        return (-as_time(lam) - math.log(self.sigma_min)) / self._log_ratio

    def describe(self) -> str:
        return f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}"


@dataclass(repr=False)
class EDM(_UnitAlphaMixin, Schedule):
    """Karras et al. 2022 (EDM): alpha = 1, sigma(t) = t, t in [sigma_min, sigma_max].

    The PF-ODE is dx/dt = (x - D(x, t)) / t (their eq. 4 with s = 1); f = 0, g^2 = 2t.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    name = "edm"
    t_data = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        self.t_min = float(self.sigma_min)
        self.t_max = float(self.sigma_max)
        self.prior_std = float(self.sigma_max)

    def sigma(self, t: TimeLike) -> torch.Tensor:
        return as_time(t).clone()

    def dsigma_dt(self, t: TimeLike) -> torch.Tensor:
        return torch.ones_like(as_time(t))

    def inverse_lambda(self, lam: TimeLike) -> torch.Tensor:
        return torch.exp(-as_time(lam))

    def describe(self) -> str:
        return f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}"


@dataclass(repr=False)
class RectifiedFlow(Schedule):
    """Rectified flow / flow matching (Liu et al. 2023; Lipman et al. 2023): alpha = 1-t, sigma = t.

    f = -1/(1-t), g^2 = 2t/(1-t). sigma/alpha is infinite at t = 1, so samplers that work in the
    scaled space start at t_max = 0.999 by default; x_T = noise there (prior_std = 1).
    ``t_max=1.0`` admits t = 1 (alpha = 0, pure noise), where diffusers' flow-matching schedulers
    start: only samplers whose update stays finite at alpha = 0 can start there (euler, ddim,
    heun with form="velocity"); the others return inf/NaN from sigma/alpha = inf.
    """

    t_min: float = 1e-3
    t_max: float = 0.999
    name = "rectified_flow"
    t_data = 0.0
    prior_std = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.t_min < self.t_max <= 1:
            raise ValueError(f"need 0 < t_min < t_max <= 1, got {self.t_min}, {self.t_max}")

    def alpha(self, t: TimeLike) -> torch.Tensor:
        return 1.0 - as_time(t)

    def dalpha_dt(self, t: TimeLike) -> torch.Tensor:
        return -torch.ones_like(as_time(t))

    def sigma(self, t: TimeLike) -> torch.Tensor:
        return as_time(t).clone()

    def dsigma_dt(self, t: TimeLike) -> torch.Tensor:
        return torch.ones_like(as_time(t))

    def f(self, t: TimeLike) -> torch.Tensor:
        return -1.0 / (1.0 - as_time(t))

    def g2(self, t: TimeLike) -> torch.Tensor:
        t = as_time(t)
        return 2.0 * t / (1.0 - t)

    def inverse_lambda(self, lam: TimeLike) -> torch.Tensor:
        # alpha/sigma = (1-t)/t = e^lam  =>  t = 1 / (1 + e^lam) = sigmoid(-lam)
        return torch.sigmoid(-as_time(lam))


#: Named constructors with the defaults from the papers (used by configs and ``nfebench list``).
SCHEDULES = {
    "vp_linear": VPLinear,
    "vp_cosine": VPCosine,
    "ddpm_linear": DiscreteVP.linear,
    "ve": VE,
    "edm": EDM,
    "rectified_flow": RectifiedFlow,
}
