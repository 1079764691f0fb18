"""The optimisation loop every nfebench trainer shares: Adam with a linear warm-up and cosine
decay, an exponential moving average (EMA) of the weights, a tqdm progress bar and a running loss."""
from __future__ import annotations

import copy
import math
from typing import Callable, Optional

import torch
from torch import nn

__all__ = ["fit", "cosine_lr", "ema_update"]


def progress(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=quiet, unit="step", mininterval=1.0)


def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.mul_(decay).add_(p, alpha=1 - decay)


def cosine_lr(step: int, total: int, base: float, warmup: int = 200) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def fit(net: nn.Module, batch_fn: Callable[[torch.Generator], tuple], loss_fn: Callable,
                   steps: int, lr: float, ema_decay: float, seed: int, desc: str, quiet: bool,
                   after_step: Optional[Callable[[int], None]] = None, ema_warmup: bool = False) -> tuple:
    """Adam with warm-up + cosine decay and an EMA copy; returns (ema net, final EMA loss).
    ``after_step(step)`` runs after each optimiser step (a consistency model's target update).
    ``ema_warmup``: decay min(ema_decay, (1 + k)/(10 + k)) at step k, so that a short fine-tune
    does not keep a sizeable share of its initial weights in the average (0.999^1000 = 37%)."""
    g = torch.Generator().manual_seed(seed)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    running = None
    bar = progress(steps, desc, quiet)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        loss = loss_fn(net, *batch_fn(g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, net, min(ema_decay, (1 + step) / (10 + step)) if ema_warmup else ema_decay)
        if after_step is not None:
            after_step(step)
        value = float(loss.detach())
        running = value if running is None else 0.99 * running + 0.01 * value
        bar.update(1)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
    bar.close()
    return ema, running
