"""Trainers of the shipped base models: toy2d MLP eps-networks (VP linear schedule), the digits
classifier (also the FID feature extractor), the time-conditioned noisy classifier (classifier
guidance) and the class-conditional digits UNet with label dropout (DDPM linear schedule).
Each returns (EMA network, card information)."""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from score_models.data import digits, toy2d
from score_models.nets import NULL_CLASS, DigitsClassifier, DigitsUNet, TimeMLP
from score_models.schedules import DiscreteVP, VPLinear

from .loop import fit

__all__ = ["train_toy2d", "train_classifier", "train_digits_unet"]


def train_toy2d(dataset: str, steps: int, seed: int, quiet: bool) -> tuple[nn.Module, Dict[str, Any]]:
    torch.manual_seed(seed)
    sched = VPLinear()
    net = TimeMLP()
    batch = 1024

    def batch_fn(g):
        x0 = toy2d(dataset, batch, g)
        t = sched.t_min + (1 - sched.t_min) * torch.rand(batch, generator=g, dtype=torch.float64)
        eps = torch.randn(batch, 2, generator=g)
        a, s = sched.alpha(t).float()[:, None], sched.sigma(t).float()[:, None]
        return a * x0 + s * eps, t.float(), eps

    loss_fn = lambda net, x, t, eps: (net(x, t) - eps).pow(2).mean()
    ema, loss = fit(net, batch_fn, loss_fn, steps, 2e-3, 0.999, seed, f"toy2d-{dataset}", quiet)
    settings = dict(batch_size=batch, lr=2e-3, ema=0.999, schedule="vp_linear", prediction="eps",
                    t_sampling="uniform in [t_min, 1]")
    return ema, {"final_loss": loss, "settings": settings}


def train_classifier(time_conditioned: bool, steps: int, seed: int, quiet: bool) -> tuple[nn.Module, Dict[str, Any]]:
    torch.manual_seed(seed)
    x_train, y_train = digits("train")
    sched = DiscreteVP.linear()
    net = DigitsClassifier(time_conditioned=time_conditioned)
    batch = 128

    def batch_fn(g):
        idx = torch.randint(0, len(x_train), (batch,), generator=g)
        x, y = x_train[idx], y_train[idx]
        # one-pixel random shifts: the 8x8 digits are tiny, this is the only augmentation
        shift = torch.randint(-1, 2, (2,), generator=g).tolist()
        x = torch.roll(x, shifts=shift, dims=(2, 3))
        if not time_conditioned:
            return x, None, y
        t = torch.randint(0, 1000, (batch,), generator=g).double()
        eps = torch.randn(x.shape, generator=g)
        a, s = sched.alpha(t).float()[:, None, None, None], sched.sigma(t).float()[:, None, None, None]
        return a * x + s * eps, t.float(), y

    loss_fn = lambda net, x, t, y: nn.functional.cross_entropy(net(x, t), y)
    ema, loss = fit(net, batch_fn, loss_fn, steps, 2e-3, 0.995, seed,
                               "digits-noisy-classifier" if time_conditioned else "digits-classifier", quiet)
    x_test, y_test = digits("test")
    with torch.no_grad():
        if time_conditioned:
            acc = {}
            for t in (0, 250, 500, 750):
                tt = torch.full((len(x_test),), float(t), dtype=torch.float64)
                xt = sched.alpha(tt).float()[:, None, None, None] * x_test + sched.sigma(tt).float()[:, None, None, None] * \
                    torch.randn(x_test.shape, generator=torch.Generator().manual_seed(t))
                acc[f"test_accuracy_t{t}"] = float((ema(xt, tt.float()).argmax(1) == y_test).float().mean())
            metrics = acc
        else:
            metrics = {"test_accuracy": float((ema(x_test).argmax(1) == y_test).float().mean())}
    settings = dict(batch_size=batch, lr=2e-3, ema=0.995, augmentation="random 1-pixel roll",
                    **({"schedule": "ddpm_linear 1000", "t_sampling": "uniform integer"} if time_conditioned else {}))
    return ema, {"final_loss": loss, "settings": settings, **metrics}


def train_digits_unet(steps: int, seed: int, quiet: bool) -> tuple[nn.Module, Dict[str, Any]]:
    torch.manual_seed(seed)
    x_train, y_train = digits("train")
    sched = DiscreteVP.linear()
    net = DigitsUNet()
    batch, p_uncond = 128, 0.2

    def batch_fn(g):
        idx = torch.randint(0, len(x_train), (batch,), generator=g)
        x0, y = x_train[idx], y_train[idx].clone()
        y[torch.rand(batch, generator=g) < p_uncond] = NULL_CLASS  # label dropout for CFG
        t = torch.randint(0, 1000, (batch,), generator=g).double()
        eps = torch.randn(x0.shape, generator=g)
        a, s = sched.alpha(t).float()[:, None, None, None], sched.sigma(t).float()[:, None, None, None]
        return a * x0 + s * eps, t.float(), y, eps

    loss_fn = lambda net, x, t, y, eps: (net(x, t, class_labels=y) - eps).pow(2).mean()
    ema, loss = fit(net, batch_fn, loss_fn, steps, 1e-3, 0.999, seed, "digits-unet", quiet)
    settings = dict(batch_size=batch, lr=1e-3, ema=0.999, label_dropout=p_uncond, schedule="ddpm_linear 1000",
                    prediction="eps", t_sampling="uniform integer 0..999")
    return ema, {"final_loss": loss, "settings": settings}
