"""Fitted convergence orders against the exact PF-ODE solution of a Gaussian mixture.

    python -m benchmarks.convergence            # prints the table of fitted orders

The endpoint error of a deterministic sampler from noise x_T is compared with the exact
solution from the *same* x_T (GaussianMixture.exact_ode_solution); the order is minus the
least-squares slope of log(error) against log(counted NFE).
"""
from __future__ import annotations

import argparse
from typing import Iterable, Sequence

import numpy as np
import torch

import solvers
from score_models import zoo
from score_models.analytic import GaussianMixture

__all__ = ["endpoint_errors", "fitted_order", "order_table"]


def endpoint_errors(name: str, model: GaussianMixture, noise: torch.Tensor, budgets: Iterable[int],
                    **options) -> tuple[list[int], list[float]]:
    """(counted NFE, RMS endpoint error per dimension) for each budget."""
    sched = model.schedule
    to_zero = solvers.get(name).ends_at_data(options)
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


#: sampler -> (budgets in the asymptotic regime, options) used by the order table and the tests
ORDER_CASES = {
    "euler": ([32, 64, 128, 256], {"grid": "edm", "to_zero": False}),
    "heun": ([32, 64, 128, 256], {"grid": "edm", "to_zero": False}),
}


def order_table(models: Sequence[str] = ("gmm:mix16d", "gmm:image3x8x8"),
                schedules: Sequence[str] = ("vp_linear", "edm", "ve", "rectified_flow"),
                n_samples: int = 64, seed: int = 0) -> list[dict]:
    rows = []
    for model_name in models:
        for schedule in schedules:
            model = zoo.load(model_name, schedule=schedule)
            noise = torch.randn((n_samples,) + model.sample_shape, generator=torch.Generator().manual_seed(seed),
                                dtype=torch.float64)
            for sampler, (budgets, options) in ORDER_CASES.items():
                nfes, errors = endpoint_errors(sampler, model, noise, budgets, **options)
                rows.append(dict(model=model_name, schedule=schedule, sampler=sampler, nfe=nfes,
                                 errors=errors, order=fitted_order(nfes, errors),
                                 expected=solvers.get(sampler).order))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args(argv)
    print(f"{'model':<16} {'schedule':<15} {'sampler':<8} {'order':>6} {'expected':>8}  errors at NFE")
    for r in order_table(n_samples=args.samples):
        errs = "  ".join(f"{n}:{e:.2e}" for n, e in zip(r["nfe"], r["errors"]))
        print(f"{r['model']:<16} {r['schedule']:<15} {r['sampler']:<8} {r['order']:6.2f} {r['expected']:8}  {errs}")


if __name__ == "__main__":
    main()
