"""Two checks behind the inversion tables' odd-looking rows (``python -m benchmarks.inversion_checks``).

1. On toy2d-moons the inversion error of the high-order samplers seems to stop near 3e-3 at
   64-100 NFE. Is that float32? The check inverts the same data points with the network in
   float32 and in float64 against a float64 rk45 inversion at rtol 1e-9, at 25-200 NFE, and
   prints how far the learned denoiser misses clean data at the grid's smallest sigma: a
   learned D(x, sigma) that does not tend to x makes the drift (x - D)/sigma near the data
   network error rather than smooth signal.
2. On mix16d (EDM) the reconstruction error is erratic in NFE while the inversion error falls
   cleanly. The check prints the per-point distribution: the median against the RMS, and how
   many points carry the RMS (points near a boundary between modes, where the noise-to-data map
   is steep and a small latent error moves the point to another mode).
"""
from __future__ import annotations

import argparse

import torch

import solvers
from score_models import zoo

from .metrics.inversion import _rms

__all__ = ["float_precision_check", "reconstruction_tail_check"]


def float_precision_check(n_points: int = 256, nfes=(25, 64, 100, 200)) -> None:
    model32 = zoo.load("toy2d-moons")
    model64 = zoo.load("toy2d-moons")
    model64.net.to(torch.float64)
    sched = model32.schedule
    x0 = model32.sample_data(n_points, generator=torch.Generator().manual_seed(0)).to(torch.float32)
    with torch.inference_mode():
        residual = _rms(model32.x0(x0 * float(sched.alpha(sched.t_min)), float(sched.t_min)), x0)
        print(f"toy2d-moons: RMS of D(x, t_min) - x on data points at sigma~ = {float(sched.sigma_tilde(sched.t_min)):.4g}:"
              f" {residual:.3g}")
        reference = solvers.invert("rk45", model64, x0.double(), nfe=None, rtol=1e-9, atol=1e-9)
        loose = solvers.invert("rk45", model32, x0, nfe=None, rtol=1e-6, atol=1e-6)
        print(f"  the sweeps' reference (rk45, float32, rtol 1e-6) against rk45 float64 rtol 1e-9: {_rms(loose, reference):.3g}")
        for name, options in (("dpm_solver", {"order": 3}), ("deis", {})):
            for nfe in nfes:
                z32 = solvers.invert(name, model32, x0, nfe=nfe, **options)
                z64 = solvers.invert(name, model64, x0.double(), nfe=nfe, **options)
                print(f"  {name} {options or ''} NFE {nfe}: inversion error float32 {_rms(z32, reference):.3g}, "
                      f"float64 {_rms(z64, reference):.3g}")


def reconstruction_tail_check(n_points: int = 256) -> None:
    model = zoo.load("gmm:mix16d", schedule="edm")
    x0 = model.sample_data(n_points, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    print(f"gmm:mix16d@edm, {n_points} data points: per-point RMS of x0 against its round trip")
    for name, options, nfe in (("deis", {}, 100), ("unipc", {}, 100), ("dpm_solver", {"order": 3}, 64),
                               ("euler", {}, 100)):
        encoding = solvers.encode(name, model, x0, nfe=nfe, **options)
        per_point = (solvers.decode(name, model, encoding, nfe=nfe, **options) - x0).pow(2).mean(1).sqrt()
        median, p99 = torch.quantile(per_point, torch.tensor([0.5, 0.99], dtype=torch.float64)).tolist()
        worst = per_point.sort(descending=True).values
        share = float(worst[:3].pow(2).sum() / per_point.pow(2).sum())
        print(f"  {name} {options or ''} NFE {nfe}: RMS {float(per_point.pow(2).mean().sqrt()):.3g}, median {median:.3g}, "
              f"99th percentile {p99:.3g}, max {float(worst[0]):.3g}; the worst 3 points hold {share:.0%} of the squared error")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=256)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    float_precision_check(args.points)
    reconstruction_tail_check(args.points)


if __name__ == "__main__":
    main()
