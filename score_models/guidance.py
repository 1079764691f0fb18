"""Guidance as DiffusionModel wrappers, so every sampler can use it unchanged.

Counting convention: ``nfe`` counts evaluations of the guided model, what a sampler's budget
limits (one per step for Euler, two for Heun, ...). ``network_passes`` counts the underlying
network's work in units of one pass over the batch: classifier-free guidance costs 2 per guided
evaluation (conditional + null), batched into one forward call of twice the batch by default;
classifier guidance costs 1 diffusion pass plus ``classifier_passes`` (one forward + backward
of the classifier each).
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import nn

from .parameterization import DiffusionModel, per_sample, split
from .schedules import as_time

__all__ = ["ClassifierFreeGuidance", "ClassifierGuidance", "cycle_labels"]

LabelSource = Union[torch.Tensor, Callable[[int, torch.device], torch.Tensor]]


def cycle_labels(num_classes: int = 10) -> Callable[[int, torch.device], torch.Tensor]:
    """Labels 0, 1, ..., num_classes-1, 0, 1, ... for a batch: balanced classes in any batch."""
    return lambda n, device: torch.arange(n, device=device) % num_classes


def _labels(source: LabelSource, n: int, device: torch.device) -> torch.Tensor:
    labels = source(n, device) if callable(source) else source.to(device)
    if labels.shape != (n,):
        raise ValueError(f"guidance needs one label per sample: got {tuple(labels.shape)} for a batch of {n}")
    return labels


class ClassifierFreeGuidance(DiffusionModel):
    """Ho & Salimans 2022, eq. 6: out = (1 + w) out(x, t, y) - w out(x, t, null).

    The combination has weights summing to 1, so it is the same in every parameterisation (each
    is affine in the network output given x and t). ``batched`` runs conditional and null inputs
    as one forward call of twice the batch.
    """

    def __init__(self, model: DiffusionModel, scale: float, labels: LabelSource, null_label: int = 10,
                 batched: bool = True, label_key: str = "class_labels"):
        if scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}")
        self.base, self.scale, self.labels, self.null_label = model, float(scale), labels, null_label
        self.batched, self.label_key = batched, label_key
        super().__init__(self._guided, model.schedule, model.prediction, sample_shape=model.sample_shape)
        self.net_time_dtype = model.net_time_dtype

    def _guided(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        y = _labels(self.labels, x.shape[0], x.device)
        null = torch.full_like(y, self.null_label)
        net = self.base.net
        if self.batched:
            out = net(torch.cat([x, x]), torch.cat([t, t]), **{self.label_key: torch.cat([y, null])}, **cond)
            out_c, out_u = out.chunk(2)
        else:
            out_c = net(x, t, **{self.label_key: y}, **cond)
            out_u = net(x, t, **{self.label_key: null}, **cond)
        return out_c + self.scale * (out_c - out_u)

    def raw(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        out = super().raw(x, t, **cond)
        # super() counted the conditional pass; the null branch is the second, and unbatched it
        # is a second network call made after the first.
        self._counter.passes += self._counter.stacked
        if not self.batched:
            self._counter.depth += 1
        return out

    def to(self, device) -> "ClassifierFreeGuidance":
        self.base.to(device)
        return self


class ClassifierGuidance(DiffusionModel):
    """Dhariwal & Nichol 2021, Algorithm 2 in eps form: eps~ = eps - w sigma grad_x log p(y | x_t, t),
    with a time-conditioned classifier ``classifier(x, t) -> logits`` on noised inputs."""

    def __init__(self, model: DiffusionModel, classifier: nn.Module, scale: float, labels: LabelSource,
                 label_key: Optional[str] = None):
        if scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}")
        self.base, self.classifier, self.scale, self.labels = model, classifier, float(scale), labels
        self.classifier_passes = 0
        super().__init__(self._guided_eps, model.schedule, "eps", sample_shape=model.sample_shape)
        self.net_time_dtype = model.net_time_dtype

    def _guided_eps(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        tt = as_time(t)
        # The base network is called directly: this wrapper's own counter records the evaluation.
        c = self.base.coefficients(t, x, derivatives=self.base.prediction == "flow")
        _, eps = split(self.base.prediction, self.base.net(x, t, **cond), x, c)
        y = _labels(self.labels, x.shape[0], x.device)
        # Samplers may run under inference_mode; the classifier's gradient needs autograd.
        with torch.inference_mode(False), torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)  # clones are normal tensors, usable by autograd
            log_probs = torch.log_softmax(self.classifier(xg, t.detach().clone()), dim=-1)
            picked = log_probs.gather(1, y.detach().clone().view(-1, 1))
            grad, = torch.autograd.grad(picked.sum(), xg)
        self.classifier_passes += 1
        sigma = per_sample(self.schedule.sigma(tt), x)
        return eps - self.scale * sigma * grad.to(eps.dtype)

    def to(self, device) -> "ClassifierGuidance":
        self.base.to(device)
        self.classifier.to(device)
        return self
