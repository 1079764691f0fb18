"""Trainers of few-step students: progressive distillation (Salimans & Ho 2022) and consistency
distillation / consistency training (Song, Dhariwal, Chen & Sutskever 2023).

Both start the student from the teacher's weights (same architecture, same network inputs) and
reuse the Adam + warm-up/cosine + EMA loop of :mod:`benchmarks.train`. All targets are computed
in float64-derived per-sample coefficients of the teacher's schedule; nothing here is specific to
one model: ``data_fn(generator, n)`` draws training data.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from score_models.distilled import ConsistencyModel, DistilledModel
from score_models.parameterization import DiffusionModel, per_sample
from solvers.grids import nested_times, spaced_times

__all__ = ["progressive_distillation", "distillation_target", "consistency_distillation", "consistency_sigmas",
           "ct_schedule", "PD_WEIGHTINGS"]

DataFn = Callable[[torch.Generator, int], torch.Tensor]
#: x-space loss weights of Salimans & Ho 2022, sec. 4: max(SNR, 1) ("truncated SNR") or SNR + 1.
PD_WEIGHTINGS = ("truncated_snr", "snr_plus_one")


def _ddim_step(model: DiffusionModel, z: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step t -> s (per-sample times): alpha_s x0 + sigma_s eps."""
    x0, eps = model.x0_and_eps(z, t)
    sched = model.schedule
    return per_sample(sched.alpha(s), z) * x0 + per_sample(sched.sigma(s), z) * eps


def distillation_target(teacher: DiffusionModel, z: torch.Tensor, t: torch.Tensor, t_mid: torch.Tensor,
                        t_next: torch.Tensor) -> torch.Tensor:
    """The x-target of Salimans & Ho 2022, Algorithm 2: run two teacher DDIM steps
    z_t -> z_t' -> z_t'', then solve the student's one DDIM step t -> t'' for the x that lands on z_t'':

        x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t).
    """
    sched = teacher.schedule
    z_next = _ddim_step(teacher, _ddim_step(teacher, z, t, t_mid), t_mid, t_next)
    ratio = per_sample(sched.sigma(t_next) / sched.sigma(t), z)
    return (z_next - ratio * z) / (per_sample(sched.alpha(t_next), z) - ratio * per_sample(sched.alpha(t), z))


def progressive_distillation(teacher: DiffusionModel, student_steps: int, data_fn: DataFn, *, grid: str = "uniform",
                             train_steps: int = 2000, batch_size: int = 128, lr: float = 3e-4, ema: float = 0.999,
                             weighting: str = "truncated_snr", seed: int = 0, quiet: bool = True,
                             teacher_name: Optional[str] = None) -> Tuple[DistilledModel, Dict[str, Any]]:
    """One round of progressive distillation (Salimans & Ho 2022, Algorithm 2): a v-prediction
    student, initialised from the teacher's weights, learns to take in one DDIM step on the
    ``student_steps``-step nested grid what the teacher takes in two on the 2x finer grid.

    The teacher is any DiffusionModel (sampled with DDIM there) or a DistilledModel with exactly
    2 x student_steps steps (the previous round). Returns the EMA student and training info.
    """
    from benchmarks.train import _fit_diffusion

    if weighting not in PD_WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(PD_WEIGHTINGS)}")
    if isinstance(teacher, DistilledModel) and (teacher.steps != 2 * student_steps or teacher.grid != grid):
        raise ValueError(f"a {student_steps}-step student needs a {2 * student_steps}-step teacher on the {grid} "
                         f"grid, got {teacher!r}")
    if not isinstance(teacher.net, nn.Module):
        raise ValueError("progressive distillation needs a teacher whose network is a torch Module (its weights "
                         "initialise the student)")
    sched = teacher.schedule
    student_times = nested_times(sched, student_steps, grid)
    teacher_times = nested_times(sched, 2 * student_steps, grid)
    net = copy.deepcopy(teacher.net).train().requires_grad_(True)
    student = DistilledModel(net, sched, student_steps, grid, prediction="v", sample_shape=teacher.sample_shape)

    def batch_fn(g: torch.Generator):
        x0 = data_fn(g, batch_size)
        i = torch.randint(0, student_steps, (batch_size,), generator=g)
        t, t_mid, t_next = student_times[i], teacher_times[2 * i + 1], student_times[i + 1]
        eps = torch.randn(x0.shape, generator=g)
        z = per_sample(sched.alpha(t), x0) * x0 + per_sample(sched.sigma(t), x0) * eps
        with torch.no_grad():
            target = distillation_target(teacher, z, t, t_mid, t_next)
        snr = per_sample(sched.alpha(t) ** 2 / sched.sigma(t) ** 2, x0)
        weight = snr.clamp(min=1.0) if weighting == "truncated_snr" else snr + 1.0
        return z, t, target, weight

    def loss_fn(_net, z, t, target, weight):
        return (weight * (student.x0(z, t) - target) ** 2).mean()

    ema_net, loss = _fit_diffusion(net, batch_fn, loss_fn, train_steps, lr, ema, seed,
                                   f"distill {2 * student_steps}->{student_steps}", quiet, ema_warmup=True)
    ema_net.eval().requires_grad_(False)
    result = DistilledModel(ema_net, sched, student_steps, grid, prediction="v", sample_shape=teacher.sample_shape,
                            teacher=teacher_name)
    info = {"kind": "progressive_distillation", "teacher": teacher_name, "steps_student": student_steps,
            "steps_teacher": 2 * student_steps, "grid": grid, "prediction": "v", "final_loss": loss,
            "settings": dict(train_steps=train_steps, batch_size=batch_size, lr=lr, ema=ema, weighting=weighting,
                             init="teacher weights", teacher_sampler="DDIM (eta = 0)",
                             ema_warmup="min(ema, (1 + k)/(10 + k))")}
    return result, info


# --- consistency models -------------------------------------------------------------------------
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


def _heun_step(teacher: DiffusionModel, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One Heun step of the PF-ODE dx~/dsigma~ = (x~ - D(x~, sigma~))/sigma~ (Karras et al. 2022,
    Algorithm 1), per-sample sigma~ -> sigma_next > 0."""
    s, s_next = per_sample(sigma, x), per_sample(sigma_next, x)
    d = (x - teacher.denoiser(x, sigma)) / s
    x_euler = x + (s_next - s) * d
    d_next = (x_euler - teacher.denoiser(x_euler, sigma_next)) / s_next
    return x + (s_next - s) * 0.5 * (d + d_next)


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
    from benchmarks.train import _fit_diffusion

    sigma_min = float(schedule.sigma_tilde(torch.tensor(schedule.t_min, dtype=torch.float64)))
    net.train().requires_grad_(True)
    online = ConsistencyModel(net, schedule, sigma_min, sigma_data, sample_shape)
    target_net = copy.deepcopy(net).requires_grad_(False)
    target = ConsistencyModel(target_net, schedule, sigma_min, sigma_data, sample_shape)
    sigma_cache: Dict[int, torch.Tensor] = {}
    state = {"mu": mu}

    def levels(step: int) -> torch.Tensor:
        n = n_levels
        if teacher is None:
            n, state["mu"] = ct_schedule(step, train_steps, s1=ct_s1)
        if n not in sigma_cache:
            sigma_cache[n] = consistency_sigmas(schedule, n, rho)
        return sigma_cache[n]

    step_counter = {"k": 0}

    def batch_fn(g: torch.Generator):
        sigmas = levels(step_counter["k"])
        x0 = data_fn(g, batch_size)
        n = torch.randint(0, len(sigmas) - 1, (batch_size,), generator=g)
        sigma, sigma_next = sigmas[n + 1], sigmas[n]  # sigma_{n+1} > sigma_n
        z = torch.randn(x0.shape, generator=g)
        x_noisy = x0 + per_sample(sigma, x0) * z
        with torch.no_grad():
            if teacher is None:
                x_earlier = x0 + per_sample(sigma_next, x0) * z
            else:
                x_earlier = _heun_step(teacher, x_noisy, sigma, sigma_next)
            goal = target.denoiser(x_earlier, sigma_next)
        return x_noisy, sigma, goal

    def loss_fn(_net, x_noisy, sigma, goal):
        return (online.denoiser(x_noisy, sigma) - goal).pow(2).mean()

    def update_target(step: int) -> None:
        step_counter["k"] = step + 1
        with torch.no_grad():
            for p_target, p in zip(target_net.parameters(), net.parameters()):
                p_target.mul_(state["mu"]).add_(p, alpha=1 - state["mu"])

    kind = "distillation" if teacher is not None else "training"
    ema_net, loss = _fit_diffusion(net, batch_fn, loss_fn, train_steps, lr, ema, seed, f"consistency {kind}", quiet,
                                   after_step=update_target, ema_warmup=True)
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
