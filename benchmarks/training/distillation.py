"""Progressive distillation (Salimans & Ho 2022): a student learns to take in one DDIM step what
its teacher takes in two. Targets are computed from float64 per-sample coefficients of the
teacher's schedule; ``data_fn(generator, n)`` draws training data."""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from score_models.distilled import DistilledModel, nested_times
from score_models.parameterization import DiffusionModel, per_sample
from solvers.samplers.ddim import ddim_step

from .loop import fit

__all__ = ["progressive_distillation", "distillation_target", "PD_WEIGHTINGS", "DataFn"]

DataFn = Callable[[torch.Generator, int], torch.Tensor]
#: x-space loss weights of Salimans & Ho 2022, sec. 4: max(SNR, 1) ("truncated SNR") or SNR + 1.
PD_WEIGHTINGS = ("truncated_snr", "snr_plus_one")


def distillation_target(teacher: DiffusionModel, z: torch.Tensor, t: torch.Tensor, t_mid: torch.Tensor,
                        t_next: torch.Tensor) -> torch.Tensor:
    """The x-target of Salimans & Ho 2022, Algorithm 2: run two teacher DDIM steps
    z_t -> z_t' -> z_t'', then solve the student's one DDIM step t -> t'' for the x that lands on z_t'':

        x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t).
    """
    sched = teacher.schedule

    def step(x: torch.Tensor, now: torch.Tensor, then: torch.Tensor) -> torch.Tensor:
        return ddim_step(teacher, x, now, per_sample(sched.alpha(then), x), per_sample(sched.sigma(then), x))

    z_next = step(step(z, t, t_mid), t_mid, t_next)
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

    ema_net, loss = fit(net, batch_fn, loss_fn, train_steps, lr, ema, seed,
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
