"""Rectified flows (Liu, Gong & Liu 2022, "Flow Straight and Fast"): 1-rectified flow by
conditional flow matching on the data, and reflow (2-rectified flow) on (noise, sample) pairs
drawn with the 1-rectified flow's ODE.

Both regress the network on the velocity of the straight path x_t = (1 - t) x0 + t eps,
dx_t/dt = eps - x0, at t ~ U(0, 1) (Liu et al. 2022, eq. 1; in nfebench's terms the
``rectified_flow`` schedule with ``flow`` prediction). 1-RF pairs x0 (data) with independent
noise; reflow pairs each noise with the endpoint the 1-RF ODE maps it to, so the coupling is
deterministic and the paths it learns cross less: the trajectories straighten and Euler needs
fewer steps (Liu et al. 2022, sec. 2.2 and Theorem 3.7).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable, Dict

import torch
from torch import nn

from score_models import shipped, zoo
from score_models.data import digits, toy2d

from .loop import fit

__all__ = ["FLOW_SETTINGS", "train_rectified_flow", "train_reflow", "reflow_pairs"]

#: Per architecture: batch size, learning rate, EMA decay; the number of reflow pairs and the
#: tolerance of the adaptive ODE solve (Dormand-Prince, as Liu et al. 2022 generate them) that
#: draws them.
FLOW_SETTINGS: Dict[str, Dict[str, Any]] = {
    "toy2d-moons": dict(batch_size=1024, lr=2e-3, ema=0.999, reflow_pairs=10_000, reflow_tol=1e-4),
    "digits-unet": dict(batch_size=128, lr=1e-3, ema=0.999, reflow_pairs=4_000, reflow_tol=1e-4),
}


def _data_sampler(base: str) -> Callable[[torch.Generator, int], torch.Tensor]:
    """data_fn(generator, n): the base model's training data (digits: the train split)."""
    if base == "digits-unet":
        x_train, _ = digits("train")
        return lambda g, n: x_train[torch.randint(0, len(x_train), (n,), generator=g)]
    dataset = base[len("toy2d-"):]
    return lambda g, n: toy2d(dataset, n, g)


def _flow_matching(net: nn.Module, pairs_fn: Callable[[torch.Generator, int], tuple], settings: Dict[str, Any],
                   steps: int, seed: int, desc: str, quiet: bool) -> tuple:
    """Fit net(x_t, t) to eps - x0 on x_t = (1 - t) x0 + t eps; (x0, eps) from ``pairs_fn``."""
    batch = settings["batch_size"]

    def batch_fn(g):
        x0, eps = pairs_fn(g, batch)
        t = torch.rand(batch, generator=g)
        tb = t.view((-1,) + (1,) * (x0.dim() - 1))
        return (1 - tb) * x0 + tb * eps, t, eps - x0

    loss_fn = lambda net, x, t, velocity: (net(x, t) - velocity).pow(2).mean()
    return fit(net, batch_fn, loss_fn, steps, settings["lr"], settings["ema"], seed, desc, quiet)


def train_rectified_flow(name: str, steps: int, seed: int, quiet: bool, out_dir: Path) -> tuple[nn.Module, Dict[str, Any]]:
    """1-rectified flow ``name`` (in ``zoo.FLOWS``): independent (data, noise) pairs."""
    torch.manual_seed(seed)
    base = zoo.FLOWS[name][0]
    net, _, shape, _ = zoo.flow_network(name)
    data_fn, settings = _data_sampler(base), FLOW_SETTINGS[base]

    def pairs_fn(g, n):
        x0 = data_fn(g, n)
        return x0, torch.randn(x0.shape, generator=g)

    ema, loss = _flow_matching(net, pairs_fn, settings, steps, seed, name, quiet)
    return ema, {"base": base, "kind": "rectified_flow", "reflow_of": None, "final_loss": loss,
                 "settings": _card_settings(settings, reflow=False)}


def reflow_pairs(model, n: int, seed: int, tol: float, chunk: int = 5000) -> tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """(noise, the endpoint the model's probability-flow ODE maps it to, cost) for n seeded noise
    draws, solved with Dormand-Prince 5(4) at rtol = atol = ``tol``."""
    import solvers

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n,) + model.sample_shape, generator=g)
    start, nfe = time.perf_counter(), 0
    with torch.inference_mode():
        ends = []
        for part in noise.split(chunk):
            stats: Dict[str, Any] = {}
            ends.append(solvers.sample("rk45", model, part, nfe=10_000, rtol=tol, atol=tol, stats=stats))
            nfe += stats["nfe"]
    cost = {"pairs": n, "solver": f"rk45 rtol=atol={tol}", "network_evaluations": nfe,
            "seconds": round(time.perf_counter() - start, 1)}
    return noise, torch.cat(ends), cost


def train_reflow(name: str, steps: int, seed: int, quiet: bool, out_dir: Path) -> tuple[nn.Module, Dict[str, Any]]:
    """2-rectified flow ``name``: pairs from its 1-RF model's ODE (read from the training output
    directory when it was trained there), the network initialised from the 1-RF weights as in
    Liu et al. 2022 (sec. 5)."""
    torch.manual_seed(seed)
    base, teacher_name = zoo.FLOWS[name]
    settings = FLOW_SETTINGS[base]
    teacher = zoo.load(teacher_name, weights_dir=shipped.directory_for(teacher_name, out_dir))
    noise, ends, cost = reflow_pairs(teacher, settings["reflow_pairs"], seed + 1, settings["reflow_tol"])
    if not bool(torch.isfinite(ends).all()):
        raise RuntimeError(f"{teacher_name}'s ODE produced non-finite reflow pairs")
    net = copy.deepcopy(teacher.net).requires_grad_(True).train()

    def pairs_fn(g, n):
        idx = torch.randint(0, len(noise), (n,), generator=g)
        return ends[idx], noise[idx]

    ema, loss = _flow_matching(net, pairs_fn, settings, steps, seed, name, quiet)
    return ema, {"base": base, "kind": "reflow", "reflow_of": teacher_name, "final_loss": loss,
                 "pair_generation": cost, "settings": _card_settings(settings, reflow=True)}


def _card_settings(settings: Dict[str, Any], reflow: bool) -> Dict[str, Any]:
    card = dict(batch_size=settings["batch_size"], lr=settings["lr"], ema=settings["ema"], schedule="rectified_flow",
                prediction="flow", path="x_t = (1 - t) x0 + t eps", t_sampling="uniform in [0, 1]")
    if reflow:
        card.update(reflow_pairs=settings["reflow_pairs"], initialised_from="the 1-RF weights")
    return card
