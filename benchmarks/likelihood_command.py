"""``nfebench likelihood MODEL --input X.pt [--rtol R] [--divergence exact|hutchinson] [--out result.json]``:
log-likelihoods of the points in X.pt under the model's probability-flow ODE
(score_models.log_likelihood), or with ``--bits-per-dim`` score_sde's bits/dim of 8-bit images,
as JSON with what the evaluation cost. Everything is checked before anything is computed; bad
input exits 2 and writes nothing."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict

if TYPE_CHECKING:
    import torch

__all__ = ["add_parser", "likelihood_record", "load_points"]


def load_points(path: str) -> torch.Tensor:
    """The tensor saved in ``path`` (torch.save), read with weights_only=True (no code runs)."""
    import torch

    if not Path(path).is_file():
        raise ValueError(f"--input {path!r} is not a file")
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused, truncated file, not a torch file
        raise ValueError(f"--input {path!r} is not a tensor saved by torch.save ({type(error).__name__})") from None
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"--input {path!r} holds a {type(value).__name__}, not a tensor [B, *sample_shape]")
    return value


def likelihood_record(model_name: str, schedule: str | None, points: torch.Tensor, rtol: float, atol: float,
                      divergence: str, n_probes: int, seed: int, bits: bool,
                      data_range: tuple[float, float] = (-1.0, 1.0)) -> Dict[str, Any]:
    """Load the model, evaluate and return the JSON record."""
    import torch

    from score_models import bits_per_dim, log_likelihood, zoo

    model = zoo.load(model_name, schedule=schedule)
    generator = torch.Generator().manual_seed(seed)
    options = dict(rtol=rtol, atol=atol, divergence=divergence, n_probes=n_probes, generator=generator)
    record: Dict[str, Any] = {"model": model_name, "schedule": model.schedule.name, "n": int(points.shape[0]) if points.dim() else 0,
                              "rtol": rtol, "atol": atol, "divergence": divergence,
                              "n_probes": n_probes if divergence == "hutchinson" else None, "seed": seed}
    dims = math.prod(points.shape[1:]) if points.dim() > 1 else 0
    if bits:
        bpd, stats = bits_per_dim(model, points, data_range=data_range, **options)
        record.update(data_range=list(data_range), bits_per_dim=float(bpd.mean()), bits_per_dim_se=float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else None,
                      per_sample_bits_per_dim=bpd.tolist())
    else:
        if points.is_floating_point() and points.dtype != torch.float64:
            points = points.to(torch.float32)
        log_p, stats = log_likelihood(model, points, **options)
        record.update(nll=-float(log_p.mean()), nll_per_dim=-float(log_p.mean()) / dims,
                      nll_se=float(log_p.std() / math.sqrt(len(log_p))) if len(log_p) > 1 else None,
                      log_likelihood=log_p.tolist())
    record["cost"] = {k: stats[k] for k in ("nfe", "network_passes", "vjps", "seconds")}
    return record


def _cmd_likelihood(args: argparse.Namespace) -> int:
    from .results import write_atomic

    out = Path(args.out) if args.out else None
    if out is not None and not out.parent.is_dir():
        raise ValueError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist")
    if out is not None and out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a directory; give a file name")
    for name in ("rtol", "atol"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name} must be a finite number > 0, got {value!r}")
    if args.data_range is not None:
        if not args.bits_per_dim:
            raise ValueError("--data-range applies to --bits-per-dim only (the images' range in the model's data space)")
        lo, hi = args.data_range
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"--data-range must be LOW HIGH with finite HIGH > LOW, got {lo!r} {hi!r}")
    points = load_points(args.input)
    record = likelihood_record(args.model, args.schedule, points, args.rtol,
                               args.rtol if args.atol is None else args.atol, args.divergence, args.n_probes,
                               args.seed, args.bits_per_dim, tuple(args.data_range or (-1.0, 1.0)))
    text = json.dumps(record, indent=2) + "\n"
    if out is None:
        print(text, end="")
    else:
        write_atomic(out, text)
        figure = (f"{record['bits_per_dim']:.4f} bits/dim" if args.bits_per_dim
                  else f"NLL {record['nll']:.4f} nats per sample")
        print(f"{out}: {figure} over {record['n']} points ({record['cost']['nfe']} network evaluations, "
              f"{record['cost']['seconds']:.2f} s)")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``nfebench likelihood`` on the CLI's subparsers (importing nothing heavy)."""
    cmd = sub.add_parser("likelihood", help="PF-ODE log-likelihood (or bits/dim) of points saved in a .pt file (JSON)")
    cmd.add_argument("model", help="a model name (nfebench list), e.g. gmm:ring8 or digits-unet")
    cmd.add_argument("--input", required=True, help="a tensor [B, *sample_shape] saved by torch.save "
                     "(with --bits-per-dim: uint8 images 0..255 or floats in [0, 1])")
    cmd.add_argument("--schedule", help="schedule of a gmm: or python: model (default vp_linear)")
    cmd.add_argument("--rtol", type=float, default=1e-5)
    cmd.add_argument("--atol", type=float, help="default: --rtol")
    cmd.add_argument("--divergence", default="exact", help="exact or hutchinson")
    cmd.add_argument("--n-probes", type=int, default=1, help="Hutchinson probes per point")
    cmd.add_argument("--seed", type=int, default=0, help="seeds the probes and the dequantisation")
    cmd.add_argument("--bits-per-dim", action="store_true",
                     help="score_sde's bits/dim of 8-bit images scaled to the model's data range (uniform dequantisation)")
    cmd.add_argument("--data-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                     help="with --bits-per-dim: the model's data range the images are scaled to (default -1 1)")
    cmd.add_argument("--out", help="write the JSON here (default: print it)")
    cmd.set_defaults(func=_cmd_likelihood)
