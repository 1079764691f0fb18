"""``nfebench``: run sweeps, list what exists, plot and compare results.

Exit codes: 0 success, 1 regression found by ``compare``, 2 bad input (nothing written).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

__all__ = ["main"]


def _cmd_run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    from contextlib import nullcontext

    from .budget import BUDGET, phase
    from .parallel import Workers

    BUDGET.reset()
    # With --jobs the same worker processes run the cells and then render the plots. They start
    # first and read the config themselves, so they import and load the models while this
    # process does the same and checks the run.
    workers = Workers(("path", args.config), args.jobs).start() if args.jobs > 1 else None
    with workers if workers is not None else nullcontext():
        with phase("startup"):
            from .config import load_config
            from .report import markdown_report
            from .results import write_atomic
            from .sweep import run_sweep

            cfg = load_config(args.config)
        out = Path(args.out) if args.out else Path("runs") / cfg.name
        progress = not args.quiet and sys.stderr.isatty()

        def write_report(df, title: str) -> str:
            meta = json.loads((out / "metadata.json").read_text())
            report = markdown_report(df, title=title, protocol=meta["protocol"])
            write_atomic(out / "results.md", report)
            return report

        try:
            df = run_sweep(cfg, out, resume=args.resume or args.extend, progress=progress, extend=args.extend,
                           jobs=args.jobs, workers=workers)
        except KeyboardInterrupt:
            if workers is not None:
                workers.close(abort=True)
            # Every finished row is already in results.csv; report those and stop with 128 + SIGINT.
            csv = out / "results.csv"
            if csv.is_file() and (out / "metadata.json").is_file():
                from .results import read_results

                df = read_results(csv)
                write_report(df, f"nfebench: {cfg.name} (interrupted)")
                print(f"nfebench: interrupted; {len(df)} finished cells kept in {csv} and reported in "
                      f"{out / 'results.md'} (continue with --resume)", file=sys.stderr)
            else:
                print("nfebench: interrupted before any cell finished", file=sys.stderr)
            return 130
        from .run_outputs import write_run_outputs

        reports = []

        def markdown() -> None:  # written while the workers render the plots
            with phase("report"):
                reports.append(write_report(df, f"nfebench: {cfg.name}"))
        written = write_run_outputs(out, df, start, html=not args.no_html, workers=workers, meanwhile=markdown)
    if not args.quiet:
        print(reports[0])
        print(f"{len(df)} cells in {time.perf_counter() - start:.1f} s -> {out}/results.csv, results.md, "
              f"metadata.json, {written}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .html_report import write_html_report

    print(write_html_report(Path(args.run_dir), Path(args.out) if args.out else None))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from score_models import SCHEDULES, zoo
    from solvers import catalogue

    from .metrics import METRICS

    if args.readme:
        changed = catalogue.update_readme(Path(args.readme))
        print(f"{args.readme}: sampler table {'updated' if changed else 'already up to date'}")
        return 0
    if args.markdown:
        print(catalogue.markdown_table())
        return 0
    print("samplers (N = steps, to_zero = the grid ends at sigma = 0):")
    print("\n".join(catalogue.sampler_lines()))
    print("grids (grid=; every sampler with grid options takes them):")
    print("\n".join(catalogue.grid_lines()))
    print("models:\n  " + "\n  ".join(zoo.available()))
    print("  gmm:<preset> and python:<module>:<function> take a schedule; diffusers:<dir> loads a saved\n"
          "  pipeline, and its scheduler config (timestep_spacing, steps_offset, the last step, the start\n"
          "  noise) becomes every sampler's default grid, as solvers.from_diffusers maps it")
    print("schedules:\n  " + ", ".join(SCHEDULES))
    print("metrics:\n  " + ", ".join(sorted(METRICS)))
    return 0


def _read_table(path: str):
    import pandas as pd

    from .results import TEXT_COLUMNS, read_results

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"results file {path!r} does not exist")
    df = read_results(p)
    missing = {"model", "series", "nfe_budget", "seed", "status", "error", "nfe", "wall_s", "s_per_sample"} - set(df.columns)
    if missing:
        raise ValueError(f"{path!r} is not an nfebench results table (missing columns {sorted(missing)})")
    for column in df.columns:
        if column not in TEXT_COLUMNS and not pd.api.types.is_numeric_dtype(df[column]):
            numbers = pd.to_numeric(df[column], errors="coerce")
            bad = df[column][numbers.isna() & ~df[column].astype(str).str.strip().str.lower().isin(["", "nan"])]
            if len(bad):
                raise ValueError(f"{path!r}: column {column!r} holds a non-numeric value {bad.iloc[0]!r}")
            df[column] = numbers
    return df


def _cmd_plot(args: argparse.Namespace) -> int:
    from .report import write_plots

    df = _read_table(args.results)
    out = Path(args.out) if args.out else Path(args.results).parent
    for p in write_plots(df, out, x_axis=args.x_axis):
        print(p)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .report import compare

    problems = compare(_read_table(args.baseline), _read_table(args.new), tolerance=args.tolerance,
                       abs_tolerance=args.abs_tolerance, time_tolerance=args.time_tolerance,
                       min_time=args.min_time)
    for p in problems:
        print(f"REGRESSION {p}")
    print(f"{len(problems)} regressed cell(s)" if problems else "no regressions")
    return 1 if problems else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    card = train(args.model, steps=args.steps, seed=args.seed, out_dir=args.out, quiet=args.quiet,
                 evaluate=not args.no_eval, overwrite_shipped=args.overwrite_shipped)
    print(json.dumps(card, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nfebench", description="Benchmark diffusion samplers across NFE budgets.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a sweep (the embedded default when no CONFIG is given)")
    run.add_argument("config", nargs="?", help="TOML sweep config")
    run.add_argument("--out", help="run directory (default runs/<config name>)")
    run.add_argument("--resume", action="store_true", help="continue a run, skipping finished cells")
    run.add_argument("--extend", action="store_true",
                     help="resume a run directory written by another config, adding this config's cells")
    run.add_argument("--quiet", action="store_true", help="no progress bars, no table")
    run.add_argument("--jobs", type=int, default=1, metavar="K",
                     help="run independent cells in K worker processes (rows identical to one process; default 1)")
    run.add_argument("--no-html", action="store_true", help="skip report.html (plots and sample grids are still written)")
    run.set_defaults(func=_cmd_run)
    lst = sub.add_parser("list", help="samplers, models, schedules and metrics")
    lst.add_argument("--markdown", action="store_true", help="print the README's sampler table")
    lst.add_argument("--readme", metavar="README", help="rewrite the sampler table in this file")
    lst.set_defaults(func=_cmd_list)
    plot = sub.add_parser("plot", help="trade-off plots from a results.csv")
    plot.add_argument("results")
    plot.add_argument("--out", help="directory for the PNGs (default: beside the CSV)")
    plot.add_argument("--x-axis", choices=["nfe", "sequential_depth"], default="nfe",
                      help="the left plot's x-axis: counted NFE or sequential depth (network calls in sequence)")
    plot.set_defaults(func=_cmd_plot)
    rep = sub.add_parser("report", help="one self-contained HTML page for a run directory")
    rep.add_argument("run_dir", help="a run directory (results.csv and metadata.json)")
    rep.add_argument("--out", help="the HTML file (default RUN_DIR/report.html)")
    rep.set_defaults(func=_cmd_report)
    cmp_ = sub.add_parser("compare", help="exit 1 when NEW regresses against BASELINE")
    cmp_.add_argument("baseline")
    cmp_.add_argument("new")
    cmp_.add_argument("--tolerance", type=float, default=0.05, help="relative tolerance on quality metrics (default 0.05)")
    cmp_.add_argument("--abs-tolerance", type=float, default=1e-9, help="absolute slack on quality metrics")
    cmp_.add_argument("--time-tolerance", type=float, default=2.0, help="allowed s_per_sample ratio (default 2.0)")
    cmp_.add_argument("--min-time", type=float, default=0.05,
                      help="cells whose baseline wall time is below this many seconds are not time-gated (default 0.05)")
    cmp_.set_defaults(func=_cmd_compare)
    tr = sub.add_parser("train", help="train a shipped model from its seed (writes checkpoint + JSON card)")
    tr.add_argument("model", help="a shipped model: toy2d-<data>, digits-unet, the digits classifiers, the students "
                                  "(<teacher>-pd<N>, -cd, -ct) and rectified flows (-rf, -rf2); an unknown name "
                                  "lists them all")
    tr.add_argument("--steps", type=int, help="optimiser steps (default: the shipped model's)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", help="directory for the checkpoint and card (default: ./trained); load the result "
                                  "with zoo.load(name, weights_dir=DIR)")
    tr.add_argument("--overwrite-shipped", action="store_true",
                    help="write into the installed package's shipped/ directory, replacing the shipped checkpoint")
    tr.add_argument("--no-eval", action="store_true", help="skip the quality figures on the card")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=_cmd_train)
    from .grid_command import add_parser as add_grid_parser

    add_grid_parser(sub)
    from .invert_command import add_parser as add_invert_parser
    from .likelihood_command import add_parser as add_likelihood_parser

    add_invert_parser(sub)
    add_likelihood_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileExistsError) as e:  # bad input: a clear message and exit code 2
        print(f"nfebench: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:  # a file the user named cannot be written or read
        where = f" {e.filename!r}" if e.filename else ""
        print(f"nfebench: error:{where} {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nfebench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
