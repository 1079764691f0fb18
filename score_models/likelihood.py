"""Exact log-likelihoods from the probability-flow ODE (Song et al. 2021, sec. 4.3 and app. D.2).

Along a PF-ODE trajectory x(t), dx/dt = v(x, t), the log-density changes by the divergence
(instantaneous change of variables; Chen et al. 2018, thm. 1):

    log p_{t0}(x(t0)) = log p_T(x(T)) + int_{t0}^{T} div_x v(x(t), t) dt,

so one solve of the augmented ODE d(x, delta)/dt = (v, div v) from the data end t0 = t_min up
to T = t_max, started at (x, 0), gives the log-likelihood log N(x(T); 0, prior_std^2 I) +
delta(T). The divergence is computed exactly (one vector-Jacobian product per dimension) or by
Hutchinson's estimator div v ~ eps^T (dv/dx) eps with probes eps fixed over the solve
(Hutchinson 1989; Grathwohl et al. 2019; score_sde's convention).

``bits_per_dim`` turns image likelihoods into score_sde's bits/dim with uniform dequantisation.
"""
from __future__ import annotations

import math
import time
from typing import Dict, Tuple

import torch
from torchdiffeq import odeint

from .parameterization import DiffusionModel

__all__ = ["log_likelihood", "bits_per_dim", "dequantize_images", "DIVERGENCES", "PROBES"]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
_ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
#: vector-Jacobian products done at once in the exact divergence (rows of the batched backward)
EXACT_CHUNK = 64


def _check_input(model: DiffusionModel, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor [B, *sample_shape], got {type(x).__name__}"
                         f"{'' if not isinstance(x, torch.Tensor) else ' of ' + str(x.dtype)}")
    shape = model.sample_shape
    if x.dim() < 2 or x.shape[0] == 0 or (shape is not None and tuple(x.shape[1:]) != tuple(shape)):
        want = f"[B, {', '.join(map(str, shape))}]" if shape is not None else "[B, *sample_shape] with B >= 1"
        raise ValueError(f"x has shape {tuple(x.shape)}; the model needs {want}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")


def _divergence_exact(drift: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i d drift_i / d x_i per sample: D vector-Jacobian products with unit vectors, batched
    over the batch (samples are independent) and EXACT_CHUNK dimensions at a time."""
    b, d = x.shape[0], x[0].numel()
    total = torch.zeros(b, dtype=torch.float64, device=x.device)
    for start in range(0, d, EXACT_CHUNK):
        idx = torch.arange(start, min(start + EXACT_CHUNK, d), device=x.device)
        units = torch.zeros(idx.numel(), b, d, dtype=drift.dtype, device=x.device)
        units[torch.arange(idx.numel()), :, idx] = 1.0
        (rows,) = torch.autograd.grad(drift, x, grad_outputs=units.reshape(idx.numel(), *drift.shape),
                                      retain_graph=True, is_grads_batched=True)
        rows = rows.reshape(idx.numel(), b, d)
        total += rows[torch.arange(idx.numel()), :, idx].to(torch.float64).sum(0)
    return total


def _divergence_hutchinson(drift: torch.Tensor, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """mean over probes of eps^T (d drift / d x) eps per sample (probes: [P, B, *shape])."""
    (vjp,) = torch.autograd.grad(drift, x, grad_outputs=probes.to(drift.dtype), retain_graph=False,
                                 is_grads_batched=True)
    return (vjp * probes).to(torch.float64).flatten(2).sum(-1).mean(0)


def log_likelihood(model: DiffusionModel, x: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5,
                   divergence: str = "exact", n_probes: int = 1, generator: torch.Generator | None = None,
                   method: str = "dopri5", probe: str = "rademacher") -> Tuple[torch.Tensor, Dict]:
    """log p(x) in nats per sample under the model's probability-flow ODE.

    Solves the augmented ODE (state, log-density change) with ``torchdiffeq.odeint`` (``method``,
    ``rtol``/``atol``) from the schedule's data end ``t_min`` to ``t_max`` and adds the prior's
    log-density there, N(0, prior_std_at(t_max)^2 I). As in score_sde, the data are placed at
    t_min (where the network is still defined), so the figure is the log-density of the model's
    marginal at t_min; for a Gaussian mixture that is ``log_prob(x, t_min)`` up to the prior
    mismatch log N(x_T) - log p_T(x_T) at t_max.

    Args:
        x: [B, *sample_shape] data points (finite).
        divergence: ``exact`` (autograd, one vector-Jacobian product per dimension: D backward
            passes per drift evaluation, done EXACT_CHUNK at a time) or ``hutchinson``
            (``n_probes`` probes per sample, ``rademacher`` or ``gaussian``, drawn once from
            ``generator`` and fixed over the solve; unbiased, with its own variance).
    Returns:
        (log-likelihoods [B] float64 on x's device, stats) with stats ``nfe`` (network
        evaluations, counted by the model: one per drift evaluation, each a forward pass over
        the batch), ``network_passes``, ``vjps`` (vector-Jacobian products per sample: backward
        passes, not counted in nfe), ``seconds``, ``latent`` (the state at t_max, float64) and
        ``prior_log_prob`` / ``delta_log_prob`` (the two terms, [B]).
    """
    _check_input(model, x)
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; valid: {', '.join(PROBES)}")
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a whole number >= 1, got {n_probes!r}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {tol!r}")

    sched = model.schedule
    t0, t1 = float(sched.t_min), float(sched.t_max)
    net_dtype, device = x.dtype, x.device
    b, shape, d = x.shape[0], tuple(x.shape[1:]), x[0].numel()
    probes = None
    if divergence == "hutchinson":
        size = (n_probes, b) + shape
        if probe == "gaussian":
            probes = torch.randn(size, generator=generator, dtype=torch.float64)
        else:
            probes = torch.randint(0, 2, size, generator=generator, dtype=torch.float64) * 2 - 1
        probes = probes.to(device=device, dtype=net_dtype)
    vjps = 0

    def augmented(t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        nonlocal vjps
        with torch.enable_grad():
            xt = state[: b * d].reshape((b,) + shape).to(net_dtype).detach().requires_grad_(True)
            drift = model.ode_drift(xt, t)
            if probes is None:
                div = _divergence_exact(drift, xt)
                vjps += d
            else:
                div = _divergence_hutchinson(drift, xt, probes)
                vjps += n_probes
        return torch.cat([drift.detach().to(torch.float64).reshape(-1), div.detach()])

    nfe0, passes0 = model.nfe, model.network_passes
    start = time.perf_counter()
    with torch.inference_mode(False):
        state0 = torch.cat([x.detach().to(torch.float64).reshape(-1), torch.zeros(b, dtype=torch.float64, device=device)])
        times = torch.tensor([t0, t1], dtype=torch.float64, device=device)
        # step_t: land on t_max instead of stepping past it (the network is undefined beyond).
        options = {"step_t": times} if method in _ADAPTIVE else None
        end = odeint(augmented, state0, times, rtol=rtol, atol=atol, method=method, options=options)[-1]
    seconds = time.perf_counter() - start
    latent = end[: b * d].reshape((b,) + shape)
    delta = end[b * d:]
    prior_std = float(sched.prior_std_at(t1))
    prior = -0.5 * (latent / prior_std).pow(2).flatten(1).sum(1) - d * (math.log(prior_std) + 0.5 * math.log(2 * math.pi))
    stats = {"nfe": model.nfe - nfe0, "network_passes": model.network_passes - passes0, "vjps": vjps,
             "seconds": seconds, "latent": latent, "prior_log_prob": prior, "delta_log_prob": delta}
    return prior + delta, stats


def dequantize_images(images: torch.Tensor, data_range: Tuple[float, float] = (-1.0, 1.0), dequantize: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """8-bit images -> the model's data space, as score_sde: pixel levels k in 0..255 (uint8, or
    floats in [0, 1] read as k = round(255 x)), u ~ U[0, 1) per pixel from ``generator``
    (``dequantize=False``: u = 1/2, the cell's centre), x = (k + u) / 256 in [0, 1), then
    x_model = lo + (hi - lo) x. Returns float64 [B, *shape]."""
    if not isinstance(images, torch.Tensor) or images.dim() < 2:
        raise ValueError(f"images must be a tensor [B, *shape], got {type(images).__name__}")
    if images.dtype == torch.uint8:
        levels = images.to(torch.float64)
    elif images.is_floating_point():
        if not bool(torch.isfinite(images).all()) or float(images.min()) < 0 or float(images.max()) > 1:
            raise ValueError("float images must be finite and in [0, 1] (or pass uint8 levels 0..255)")
        levels = torch.round(images.to(torch.float64) * 255)
    else:
        raise ValueError(f"images must be uint8 (0..255) or float in [0, 1], got {images.dtype}")
    lo, hi = (float(v) for v in data_range)
    if not hi > lo:
        raise ValueError(f"data_range must be (low, high) with high > low, got {data_range!r}")
    noise = torch.rand(levels.shape, generator=generator, dtype=torch.float64).to(levels.device) if dequantize else 0.5
    return lo + (hi - lo) * (levels + noise) / 256.0


def bits_per_dim(model: DiffusionModel, images: torch.Tensor, data_range: Tuple[float, float] = (-1.0, 1.0),
                 dequantize: bool = True, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, **options) -> Tuple[torch.Tensor, Dict]:
    """Bits per dimension of 8-bit images under the model, score_sde's convention.

    The images are dequantised and scaled to the model's data range (:func:`dequantize_images`;
    the shipped digits model's range is [-1, 1]) and scored by :func:`log_likelihood`
    (``options``: rtol, atol, divergence, ...; x is cast to ``dtype``, the network's). With
    x01 = (k + u)/256 and x_model = lo + s x01 (s = hi - lo), the densities relate by
    p_01(x01) = s^D p_model(x_model), and the probability of the 256-level pixel values k is
    P(k) = int over the cell of width 1/256 of p_01 >= 256^-D exp(E_u log p_01((k + u)/256))
    (Jensen; Theis et al. 2016). Hence, per image of D = prod(shape) dimensions,

        bpd = -log P(k) / (D ln 2) <= -(log p_model(x_model) + D ln s) / (D ln 2) + log2(256)
            = -log p_model(x_model) / (D ln 2) - log2(s) + 8,

    i.e. score_sde's offset 7 for data in [-1, 1] (s = 2) and 8 for data in [0, 1]. One draw of
    u per image gives an unbiased estimate of this bound.

    Returns (bits/dim [B] float64, stats of :func:`log_likelihood`).
    """
    x = dequantize_images(images, data_range, dequantize, generator)
    lo, hi = (float(v) for v in data_range)
    log_p, stats = log_likelihood(model, x.to(dtype), generator=generator, **options)
    dims = x[0].numel()
    bpd = -log_p / (dims * math.log(2)) - math.log2(hi - lo) + 8.0
    return bpd, stats
