"""``nfebench invert MODEL --sampler S --nfe N --input X.pt --out NOISE.pt``: data points to the
noise a deterministic sampler maps to them (solvers.invert), saved with torch.save. The input is
read with ``torch.load(weights_only=True)`` and checked before anything runs; bad input exits 2
and writes nothing (the output is written atomically)."""
from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "load_data_points"]


def load_data_points(path: Path) -> Any:
    """The tensor saved at ``path`` (ValueError when the file is not a saved tensor)."""
    import pickle

    import torch

    if not path.is_file():
        raise ValueError(f"--input {str(path)!r} is not a file")
    try:
        x0 = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise ValueError(f"--input {str(path)!r} is not a tensor saved with torch.save ({' '.join(str(e).split())[:120]})")
    if not isinstance(x0, torch.Tensor):
        raise ValueError(f"--input {str(path)!r} holds a {type(x0).__name__}, not a tensor")
    return x0


def _cmd_invert(args: argparse.Namespace) -> int:
    import torch

    import solvers
    from score_models import zoo
    from score_models.analytic import GaussianMixture

    from .grid_command import parse_assignments
    from .results import write_bytes_atomic

    out = Path(args.out)
    if not out.parent.is_dir():
        raise ValueError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist")
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a directory; give a file name")
    x0 = load_data_points(Path(args.input))
    model = zoo.load(args.model, schedule=args.schedule)
    options = parse_assignments(args.option, "--option")
    if x0.is_floating_point():
        # The exact mixtures run in float64, the shipped networks in float32.
        x0 = x0.to(torch.float64 if isinstance(model, GaussianMixture) else torch.float32)
    stats: dict = {}
    with torch.inference_mode():
        noise = solvers.invert(args.sampler, model, x0, nfe=args.nfe, stats=stats, **options)
    buffer = io.BytesIO()
    torch.save(noise.cpu(), buffer)
    write_bytes_atomic(out, buffer.getvalue())
    print(f"{out}: {noise.shape[0]} latents by inverting {args.sampler} at {stats['nfe']} NFE "
          f"({stats['n_steps']} steps)")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``nfebench invert`` on the CLI's subparsers (importing nothing heavy)."""
    inv = sub.add_parser("invert", help="data points to the noise a deterministic sampler maps to them (torch.save)")
    inv.add_argument("model", help="a model name (nfebench list), e.g. gmm:ring8 or digits-unet")
    inv.add_argument("--sampler", required=True, help="a deterministic sampler (stochastic ones are refused)")
    inv.add_argument("--nfe", required=True, type=int)
    inv.add_argument("--input", required=True, help="a tensor [batch, *sample_shape] saved with torch.save")
    inv.add_argument("--out", required=True, help="where to torch.save the noise (standard-normal units)")
    inv.add_argument("--schedule", help="schedule of a gmm: or python: model (default vp_linear)")
    inv.add_argument("--option", action="append", metavar="KEY=VALUE", help="a sampler option (repeatable)")
    inv.set_defaults(func=_cmd_invert)
