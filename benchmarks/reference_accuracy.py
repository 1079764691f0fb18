"""How exact is a network's ``solver_error`` reference? (``python -m benchmarks.reference_accuracy``)

For a trained network there is no closed-form PF-ODE solution: ``solver_error`` compares with a
tight adaptive rk45 solve from the same noise (``[run.reference] rtol``, default 1e-6). This
solves the sweep's own first batch (seed 0, batch 0) at a ladder of tolerances and prints each
solve's network evaluations, seconds, and RMS distance to the tightest one, which estimates the
reference's own error: it should sit well below the smallest solver_error the sweep reports.
"""
from __future__ import annotations

import argparse
import time

import torch

import solvers
from score_models import zoo

from .sweep.cells import batch_generator

__all__ = ["reference_ladder"]


def reference_ladder(model_name: str, n_samples: int, rtols) -> None:
    model = zoo.load(model_name)
    noise = torch.randn((n_samples,) + model.sample_shape, generator=batch_generator(0, 0, 0))
    rtols = sorted(rtols, reverse=True)
    solutions = {}
    print(f"{model_name}, {n_samples} samples from the sweep's noise (seed 0, batch 0), rk45 to data, "
          f"{torch.get_num_threads()} torch threads")
    for rtol in rtols:
        stats: dict = {}
        began = time.perf_counter()
        with torch.inference_mode():
            solutions[rtol] = solvers.sample("rk45", model, noise, nfe=None, rtol=rtol, atol=rtol, to_zero=True,
                                             stats=stats).double()
        print(f"  rtol = atol = {rtol:g}: {stats['nfe']} NFE, {time.perf_counter() - began:.1f} s", flush=True)
    tightest = solutions[rtols[-1]]
    for rtol in rtols[:-1]:
        print(f"  RMS of rtol {rtol:g} against rtol {rtols[-1]:g}: {float((solutions[rtol] - tightest).pow(2).mean().sqrt()):.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits-unet")
    parser.add_argument("--n-samples", type=int, default=360, help="the default sweep's digits sample count")
    parser.add_argument("--rtols", type=float, nargs="+", default=[1e-5, 1e-6, 1e-7])
    args = parser.parse_args()
    reference_ladder(args.model, args.n_samples, args.rtols)


if __name__ == "__main__":
    main()
