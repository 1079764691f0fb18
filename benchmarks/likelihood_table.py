"""PF-ODE likelihood tables: the error against the exact answer on the Gaussian mixtures vs the
solver tolerance (with the NFE each evaluation cost), and the digits model's bits/dim on its test
split.

    python -m benchmarks.likelihood_table mixtures --out results/likelihood
    python -m benchmarks.likelihood_table digits --out results/likelihood

Writes <part>.csv and <part>.md into --out.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pandas as pd
import torch

from benchmarks.metrics.nll import exact_ode_log_likelihood
from score_models import bits_per_dim, data, log_likelihood, zoo

__all__ = ["mixture_table", "digits_table"]

RTOLS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
MIXTURES = (("ring8", "vp_linear"), ("ring8", "edm"), ("mix16d", "vp_linear"), ("mix16d", "edm"))
N_POINTS = 64
SEED = 0


def mixture_table(n_points: int = N_POINTS) -> pd.DataFrame:
    """One row per mixture, schedule, divergence and rtol (= atol): NFE per evaluation (all points
    in one batch), the error in nats per sample against the exact PF-ODE likelihood (mean
    absolute; mean signed with its standard error), and the gap to the data's own log-density
    log p_{t_min}(x) that the prior mismatch at t_max leaves."""
    rows = []
    for preset, schedule in MIXTURES:
        mixture = zoo.load(f"gmm:{preset}", schedule=schedule)
        x = mixture.sample_data(n_points, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
        exact = exact_ode_log_likelihood(mixture, x)
        data_log_p = mixture.log_prob(x, mixture.schedule.t_min)
        for divergence in ("exact", "hutchinson"):
            for rtol in RTOLS:
                log_p, stats = log_likelihood(mixture, x, rtol=rtol, atol=rtol, divergence=divergence,
                                              generator=torch.Generator().manual_seed(SEED + 1))
                error = log_p - exact
                rows.append({
                    "model": f"gmm:{preset}", "schedule": schedule, "dim": mixture.dim, "divergence": divergence,
                    "rtol": rtol, "nfe": stats["nfe"], "vjps": stats["vjps"], "seconds": round(stats["seconds"], 3),
                    "nll": -float(log_p.mean()), "exact_nll": -float(exact.mean()),
                    "mean_abs_error": float(error.abs().mean()), "mean_error": float(error.mean()),
                    "mean_error_se": float(error.std() / math.sqrt(n_points)),
                    "prior_gap": float((exact - data_log_p).mean()),
                })
    return pd.DataFrame(rows)


def digits_table(n_images: int = 256, exact_images: int = 4, rtol: float = 1e-5) -> pd.DataFrame:
    """digits-unet's bits/dim on the first n_images of its test split at rtol = atol: Hutchinson
    (one Rademacher probe per image, mean and standard error over images), and on the first
    exact_images with the exact divergence beside Hutchinson on the same images, for the cost."""
    model = zoo.load("digits-unet")
    images = (data.digits("test")[0] + 1) / 2  # [-1, 1] -> [0, 1]: pixel / 16, read as 8-bit levels
    rows = []
    for divergence, n in (("hutchinson", n_images), ("hutchinson", exact_images), ("exact", exact_images)):
        start = time.perf_counter()
        bpd, stats = bits_per_dim(model, images[:n], generator=torch.Generator().manual_seed(SEED), rtol=rtol,
                                  atol=rtol, divergence=divergence)
        rows.append({"model": "digits-unet", "split": "test", "images": n, "divergence": divergence, "rtol": rtol,
                     "bits_per_dim": float(bpd.mean()), "se": float(bpd.std() / math.sqrt(n)),
                     "nfe": stats["nfe"], "vjps_per_evaluation": stats["vjps"] // max(stats["nfe"], 1),
                     "wall_seconds": round(time.perf_counter() - start, 1),
                     "threads": torch.get_num_threads()})
    return pd.DataFrame(rows)


def _markdown(frame: pd.DataFrame) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"
        return str(value)
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("mixtures", "digits"))
    parser.add_argument("--out", required=True, help="directory for <part>.csv and <part>.md")
    parser.add_argument("--images", type=int, default=256, help="digits: test images scored with Hutchinson")
    parser.add_argument("--exact-images", type=int, default=4, help="digits: test images scored exactly too")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame = mixture_table() if args.part == "mixtures" else digits_table(args.images, args.exact_images)
    frame.to_csv(out / f"{args.part}.csv", index=False)
    (out / f"{args.part}.md").write_text(_markdown(frame))
    print(_markdown(frame))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
