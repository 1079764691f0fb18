"""Tables of the optimised-grid sweeps (benchmarks/configs/grids-*.toml) for results/grids and the
README: quality per sampler x grid x NFE with each optimised grid's cost beside it, the exact
grid's gain over EDM rho = 7, the share of that gain each optimiser recovers, and digits FD with
the best optimised against the best fixed grid.

    python -m benchmarks.grid_tables [--results results/grids] [--readme README.md]

Reads <results>/{mixtures,moons,digits}/results.csv and metadata.json (whichever exist), writes
<results>/tables.md, and with --readme rewrites the README between its grid-table markers."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd

from .readme_section import replace_section
from .results import read_results, write_atomic

__all__ = ["load_sweep", "build_tables", "main"]

FIXED = ("uniform", "edm", "logsnr")
OPTIMIZED = ("gits", "ays", "dp")
SWEEPS = {"mixtures": "solver_error", "moons": "sliced_wasserstein", "digits": "fid"}
START, END = "<!-- grid-tables:start -->", "<!-- grid-tables:end -->"


def _grid_of(series: str) -> str:
    """'dpm_solver++(2M)[optimized:gits]' or 'euler(grid=optimized:gits)' -> 'gits'."""
    for token in ("[", "grid="):
        if token in series:
            name = series.split(token, 1)[1].rstrip("])")
            return name.split(":", 1)[1] if name.startswith("optimized:") else name
    return "?"


def _sampler_of(series: str) -> str:
    return series.split("[", 1)[0] if "[" in series else series.split("(grid=", 1)[0]


def load_sweep(run_dir: Path, metric: str) -> Optional[pd.DataFrame]:
    """One row per model x sampler x grid x NFE with the metric and, for optimised grids, the
    optimiser's network evaluations and seconds (from metadata.json)."""
    csv = run_dir / "results.csv"
    if not csv.is_file():
        return None
    df = read_results(csv)
    df = df[df["status"] == "ok"].copy()
    df["grid"] = df["series"].map(_grid_of)
    df["sampler_label"] = df["series"].map(_sampler_of)
    df["value"] = df[metric].astype(float)
    cost = {}
    meta = json.loads((run_dir / "metadata.json").read_text()) if (run_dir / "metadata.json").is_file() else {}
    for g in meta.get("optimized_grids", []):
        cost[(g["model"], g["series"], g["nfe"])] = g["cost"]
    df["opt_nfe"] = [cost.get((m, s, n), {}).get("optimizer_nfe", math.nan)
                     for m, s, n in zip(df["model"], df["series"], df["nfe_budget"])]
    df["opt_seconds"] = [cost.get((m, s, n), {}).get("optimizer_seconds", math.nan)
                         for m, s, n in zip(df["model"], df["series"], df["nfe_budget"])]
    return df[["model", "sampler_label", "grid", "nfe_budget", "value", "opt_nfe", "opt_seconds"]]


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}g}"


def _markdown(df: pd.DataFrame) -> str:
    """A GitHub table of the frame's cells as text (missing cells '-')."""
    if not len(df):
        return "(none)"
    cells = [[("-" if isinstance(v, float) and math.isnan(v) else str(v)) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def _quality_table(df: pd.DataFrame, model: str, metric: str) -> str:
    """Rows sampler x grid, columns NFE: the metric, with '(optimiser NFE, s)' for optimised grids."""
    sub = df[df["model"] == model]
    order = [g for g in FIXED + OPTIMIZED + ("exact",) if g in set(sub["grid"])]
    rows = []
    for sampler in dict.fromkeys(sub["sampler_label"]):
        for grid in order:
            cells = sub[(sub["sampler_label"] == sampler) & (sub["grid"] == grid)].set_index("nfe_budget")
            if not len(cells):
                continue
            row = {"sampler": sampler, "grid": grid}
            for nfe in sorted(sub["nfe_budget"].unique()):
                if nfe in cells.index:
                    c = cells.loc[nfe]
                    text = _fmt(c["value"])
                    if not math.isnan(c["opt_nfe"]):
                        text += f" ({int(c['opt_nfe'])}, {c['opt_seconds']:.1f}s)"
                    row[f"NFE {nfe}"] = text
            rows.append(row)
    return f"**{model}** ({metric}; optimised grids: value (optimiser NFE, seconds))\n\n" + _markdown(pd.DataFrame(rows))


def _exact_gain(df: pd.DataFrame, nfe: int = 5) -> pd.DataFrame:
    """Per sampler and mixture: EDM rho = 7 error / exact-grid error at ``nfe``."""
    rows = []
    for sampler in dict.fromkeys(df["sampler_label"]):
        row = {"sampler": sampler}
        for model in dict.fromkeys(df["model"]):
            cell = df[(df["model"] == model) & (df["sampler_label"] == sampler) & (df["nfe_budget"] == nfe)]
            v = cell.set_index("grid")["value"]
            if "edm" in v and "exact" in v:
                row[model] = f"{v['edm'] / v['exact']:.2f}x"
        rows.append(row)
    return pd.DataFrame(rows)


#: A mixture enters the share of a sampler x NFE only where the exact grid beats EDM rho = 7 by
#: this factor at least: below it the share divides by a gain within the noise.
MIN_EXACT_GAIN = 1.05


def _shares(df: pd.DataFrame) -> pd.DataFrame:
    """Per sampler x NFE and method: the median over the mixtures of (e_edm - e_method) /
    (e_edm - e_exact) (1 = the exact grid's whole gain, 0 = none, < 0 worse than EDM rho = 7;
    above 1 where a method beats the exact grid on the sweep's noise, which is not the noise the
    grids were optimised on), and in brackets how many mixtures entered it."""
    rows = []
    for sampler in dict.fromkeys(df["sampler_label"]):
        for nfe in sorted(df["nfe_budget"].unique()):
            row = {"sampler": sampler, "NFE": nfe}
            for method in OPTIMIZED:
                shares = []
                for model in dict.fromkeys(df["model"]):
                    v = df[(df["model"] == model) & (df["sampler_label"] == sampler)
                           & (df["nfe_budget"] == nfe)].set_index("grid")["value"]
                    if {"edm", "exact", method} <= set(v.index) and v["edm"] >= MIN_EXACT_GAIN * v["exact"]:
                        shares.append((v["edm"] - v[method]) / (v["edm"] - v["exact"]))
                row[method] = f"{_fmt(float(pd.Series(shares).median()), 2)} ({len(shares)})" if shares else "-"
            rows.append(row)
    return pd.DataFrame(rows)


def _best_vs_fixed(df: pd.DataFrame, nfes=(4, 5, 6, 8, 10)) -> pd.DataFrame:
    """Per sampler and NFE: the best fixed grid and the best optimised grid (lower is better);
    an NFE the sweep did not run is left out."""
    rows = []
    for sampler in dict.fromkeys(df["sampler_label"]):
        for nfe in nfes:
            v = df[(df["sampler_label"] == sampler) & (df["nfe_budget"] == nfe)].set_index("grid")["value"]
            fixed = v[[g for g in FIXED if g in v.index]]
            opt = v[[g for g in OPTIMIZED if g in v.index]]
            if not len(fixed) or not len(opt):
                continue
            rows.append({"sampler": sampler, "NFE": nfe, "best fixed": f"{_fmt(fixed.min())} ({fixed.idxmin()})",
                         "best optimised": f"{_fmt(opt.min())} ({opt.idxmin()})",
                         "ratio": f"{fixed.min() / opt.min():.2f}x"})
    return pd.DataFrame(rows)


def _cost(frames: Dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Optimiser cost per sweep and method: per grid (median, max) and over the sweep (total), in
    network calls counted by the model's wrapper and seconds."""
    rows = []
    for name, df in frames.items():
        for method in OPTIMIZED + ("exact",):
            sub = df[(df["grid"] == method) & df["opt_nfe"].notna()]
            if len(sub):
                rows.append({"sweep": name, "method": method, "grids": len(sub),
                             "median NFE": int(sub["opt_nfe"].median()), "max NFE": int(sub["opt_nfe"].max()),
                             "total NFE": int(sub["opt_nfe"].sum()), "median s": f"{sub['opt_seconds'].median():.1f}",
                             "max s": f"{sub['opt_seconds'].max():.1f}", "total s": f"{sub['opt_seconds'].sum():.0f}"})
    return pd.DataFrame(rows)


def build_tables(results: Path) -> tuple[str, str]:
    """(the full tables for results/grids/tables.md, the README section)."""
    frames = {name: df for name, metric in SWEEPS.items()
              if (df := load_sweep(results / name, metric)) is not None}
    summary: List[str] = []
    full: List[str] = ["# Optimised time grids: all tables", "",
                       "Generated by `python -m benchmarks.grid_tables` from the sweeps of benchmarks/configs/grids-*.toml.", ""]
    if "mixtures" in frames:
        mix = frames["mixtures"]
        summary += ["**Exact-optimal grid vs EDM rho = 7 at 5 NFE** (endpoint error of the EDM grid / of the exact "
                    "grid, per mixture):", "", _markdown(_exact_gain(mix)), "",
                    "**Share of the exact grid's gain over EDM rho = 7 that each optimiser recovers** (median over the "
                    "mixtures of (e_edm - e_method) / (e_edm - e_exact); 1 = all of it, 0 = none, negative = worse "
                    f"than EDM; in brackets the mixtures where the exact grid beats EDM by >= {MIN_EXACT_GAIN}x):", "", _markdown(_shares(mix)), ""]
    if "digits" in frames:
        summary += ["**digits-unet, FD (digits-classifier features): best optimised vs best fixed grid**:", "",
                    _markdown(_best_vs_fixed(frames["digits"])), ""]
    if "moons" in frames:
        summary += ["**toy2d-moons, sliced W2: best optimised vs best fixed grid**:", "",
                    _markdown(_best_vs_fixed(frames["moons"], nfes=(4, 5, 6, 8, 10))), ""]
    if frames:
        summary += ["**What the optimisation cost** (per grid and per sweep; network calls counted by the model's "
                    "wrapper, each on a batch; the AYS schedule is computed once per model and counted in its first "
                    "grid, so its median is 0 and its total is the cost):", "",
                    _markdown(_cost(frames)), ""]
    for name, df in frames.items():
        full += [f"## {name}", ""]
        for model in dict.fromkeys(df["model"]):
            full += [_quality_table(df, model, SWEEPS[name]), ""]
    return "\n".join(full + ["## Summary", ""] + summary), "\n".join(summary)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grid_tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results/grids")
    parser.add_argument("--readme", help="rewrite this README's section between the grid-table markers")
    args = parser.parse_args(argv)
    results = Path(args.results)
    full, summary = build_tables(results)
    write_atomic(results / "tables.md", full + "\n")
    print(f"{results / 'tables.md'} written")
    if args.readme:
        readme = Path(args.readme)
        replace_section(readme, START, END, summary)
        print(f"{readme}: grid tables updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
