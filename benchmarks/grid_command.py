"""``nfebench grid MODEL --sampler S --nfe N --method M [--out grid.json]``: one optimised time
grid (solvers.optimize_grid) as JSON, with what it cost. Everything is checked before anything
is computed; bad input exits 2 and writes nothing."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List

__all__ = ["add_parser", "parse_assignments", "grid_record"]


def parse_assignments(pairs: List[str] | None, what: str) -> Dict[str, Any]:
    """KEY=VALUE pairs; VALUE read as JSON (numbers, true/false, quoted strings) or else as text."""
    out: Dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {pair!r} must look like KEY=VALUE")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def _check_settings(method: str, settings: Dict[str, Any]) -> None:
    """Each setting a keyword of the method's function, each value a number of the right kind."""
    import inspect

    from solvers.optimized_grids import METHODS

    fn, _ = METHODS[method]
    allowed = {name: p.default for name, p in inspect.signature(fn).parameters.items()
               if p.kind is p.KEYWORD_ONLY and name != "seed"}
    for key, value in settings.items():
        if key not in allowed:
            raise ValueError(f"unknown setting {key!r} for method {method!r}; valid: {', '.join(allowed)}")
        default = allowed[key]
        kind = int if isinstance(default, int) else float
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
            raise ValueError(f"setting {key}={value!r} for method {method!r} must be a positive "
                             f"{'integer' if kind is int else 'number'}")


def grid_record(model_name: str, schedule: str | None, sampler: str, nfe: int, method: str, seed: int,
                options: Dict[str, Any], settings: Dict[str, Any]) -> Dict[str, Any]:
    """Load the model, optimise the grid and return the JSON record (times, noise levels, cost)."""
    import solvers
    from score_models import zoo
    from solvers.optimized_grids import check_method

    model = zoo.load(model_name, schedule=schedule)
    check_method(model, sampler, nfe, method, options)
    _check_settings(method, settings)
    stats: Dict[str, Any] = {}
    times = solvers.optimize_grid(model, sampler, nfe, method, seed=seed, settings=settings, stats=stats,
                                  **options)
    cost = {k: stats.pop(k) for k in ("optimizer_nfe", "optimizer_seconds")}
    return {"model": model_name, "schedule": model.schedule.name, "sampler": sampler, "options": options,
            "nfe": nfe, "method": method, "seed": seed, "settings": settings, "times": times.tolist(),
            "sigmas": model.schedule.sigma_tilde(times).tolist(), "cost": cost, "info": stats}


def _cmd_grid(args: argparse.Namespace) -> int:
    from .results import write_atomic

    out = Path(args.out) if args.out else None
    if out is not None and not out.parent.is_dir():
        raise ValueError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist")
    if out is not None and out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a directory; give a file name")
    record = grid_record(args.model, args.schedule, args.sampler, args.nfe, args.method, args.seed,
                         parse_assignments(args.option, "--option"), parse_assignments(args.setting, "--setting"))
    text = json.dumps(record, indent=2) + "\n"
    if out is None:
        print(text, end="")
    else:
        write_atomic(out, text)
        print(f"{out}: {args.method} grid for {args.sampler} at {args.nfe} NFE ({record['cost']['optimizer_nfe']} "
              f"network evaluations, {record['cost']['optimizer_seconds']} s)")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``nfebench grid`` on the CLI's subparsers (importing nothing heavy: every command
    builds this parser)."""
    grid = sub.add_parser("grid", help="an optimised time grid for a model, sampler and NFE (JSON)")
    grid.add_argument("model", help="a model name (nfebench list), e.g. gmm:ring8 or toy2d-moons")
    grid.add_argument("--sampler", required=True)
    grid.add_argument("--nfe", required=True, type=int)
    grid.add_argument("--method", required=True, help="gits, ays, dp or exact (solvers.optimized_grids.METHODS; checked before anything runs)")
    grid.add_argument("--schedule", help="schedule of a gmm: or python: model (default vp_linear)")
    grid.add_argument("--seed", type=int, default=0)
    grid.add_argument("--option", action="append", metavar="KEY=VALUE", help="a sampler option (repeatable)")
    grid.add_argument("--setting", action="append", metavar="KEY=VALUE",
                      help="a method setting, e.g. fine_steps=40, n_samples=32 (repeatable)")
    grid.add_argument("--out", help="write the JSON here (default: print it)")
    grid.set_defaults(func=_cmd_grid)
