"""Fitted convergence orders against the exact PF-ODE solution of a Gaussian mixture.

    python -m benchmarks.convergence            # prints the table of fitted orders

The endpoint error of a deterministic sampler from noise x_T is compared with the exact
solution from the *same* x_T (GaussianMixture.exact_ode_solution); the order is minus the
least-squares slope of log(error) against log(counted NFE). Every registered deterministic
sampler (and each variant it declares) is measured under one set of conditions and compared with
the order it declares (tests/test_registry.py asserts the match).
"""
from __future__ import annotations

import argparse
from typing import Iterable, Sequence

import numpy as np
import torch

import solvers
from score_models import zoo
from score_models.analytic import GaussianMixture

__all__ = ["endpoint_errors", "fitted_order", "order_cases", "measured_order", "ORDER_SPAN", "ORDER_STEPS"]


def endpoint_errors(name: str, model: GaussianMixture, noise: torch.Tensor, budgets: Iterable[int],
                    **options) -> tuple[list[int], list[float]]:
    """(counted NFE, RMS endpoint error per dimension) for each budget."""
    sched = model.schedule
    to_zero = solvers.get(name).ends_at_data(options, model)
    t_end = sched.t_data if to_zero else options.get("t_min", sched.t_min)
    t_max = options.get("t_max", sched.t_max)
    reference = model.exact_ode_solution(sched.prior_std_at(t_max) * noise, t_start=t_max, t_end=t_end)
    counted, errors = [], []
    for nfe in budgets:
        stats: dict = {}
        x = solvers.sample(name, model, noise, nfe=nfe, stats=stats, **options)
        counted.append(stats["nfe"])
        errors.append(float(((x - reference) ** 2).mean().sqrt()))
    return counted, errors


def fitted_order(nfes: Sequence[int], errors: Sequence[float]) -> float:
    """Minus the least-squares slope of log(error) against log(NFE)."""
    slope = np.polyfit(np.log(np.asarray(nfes, float)), np.log(np.asarray(errors, float)), 1)[0]
    return float(-slope)


#: Where every deterministic sampler's declared order is checked: the 16-D mixture on the EDM
#: schedule (sigma = t, so the default "uniform" grid is uniform in sigma~) over sigma in [0.1, 2],
#: which every method resolves asymptotically at 64-512 steps, ending at t_min (no final jump).
ORDER_MODEL, ORDER_SCHEDULE = "gmm:mix16d", "edm"
ORDER_SPAN = {"t_max": 2.0, "t_min": 0.1, "to_zero": False}
ORDER_STEPS = (64, 128, 256, 512)


def order_cases() -> list[tuple[str, dict]]:
    """(sampler, options) for every registered sampler and declared variant that has a
    convergence order, is deterministic and takes the span's grid options."""
    cases = []
    for name in solvers.available():
        spec = solvers.get(name)
        if spec.adaptive or spec.exclusive or not set(ORDER_SPAN) <= set(spec.grid_options):
            continue
        for variant in ({},) + spec.variants:
            if spec.order_of(variant) is not None and not spec.is_stochastic(variant):
                cases.append((name, dict(variant)))
    return cases


def measured_order(name: str, options: dict, n_samples: int = 64, seed: int = 0) -> dict:
    """The fitted order of one case under the conditions above, with its errors."""
    model = zoo.load(ORDER_MODEL, schedule=ORDER_SCHEDULE)
    noise = torch.randn((n_samples,) + model.sample_shape, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)
    spec = solvers.get(name)
    budgets = [spec.count(n, False, options) for n in ORDER_STEPS]
    nfes, errors = endpoint_errors(name, model, noise, budgets, **ORDER_SPAN, **options)
    return dict(sampler=name, options=options, nfe=nfes, errors=errors, order=fitted_order(nfes, errors),
                declared=spec.order_of(options))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args(argv)
    print(f"{ORDER_MODEL} on {ORDER_SCHEDULE}, {ORDER_SPAN}, steps {ORDER_STEPS}")
    print(f"{'sampler':<24} {'options':<44} {'fitted':>6} {'declared':>8}  errors at NFE")
    for name, options in order_cases():
        r = measured_order(name, options, n_samples=args.samples)
        errs = "  ".join(f"{n}:{e:.2e}" for n, e in zip(r["nfe"], r["errors"]))
        print(f"{name:<24} {str(options):<44} {r['order']:6.2f} {r['declared']!s:>8}  {errs}")


if __name__ == "__main__":
    main()
