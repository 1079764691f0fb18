"""Tables of the inversion sweeps (benchmarks/configs/inversion-*.toml) for results/inversion:
inversion and round-trip (reconstruction) error vs NFE per sampler and model, and the fitted
orders of the inversion error on the exact mixtures beside the sampling orders the registry
declares.

    python -m benchmarks.inversion_table [--results results/inversion]

Reads <results>/{mixtures,moons,digits}/results.csv (whichever exist) and writes
<results>/tables.md. Two order fits: over the sweep's own cells (default grids ending at
sigma = 0, the four largest budgets), and under the registry's order conditions (16-D mixture,
EDM schedule, sigma 0.1 -> 2, 64-512 steps; benchmarks.convergence), which the script measures
itself for every invertible sampler and variant with a declared order."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

import pandas as pd
import torch

import solvers

from .convergence import ORDER_SPAN, ORDER_STEPS, fitted_order, order_cases
from .report import markdown_pivot
from .results import read_results, write_atomic

__all__ = ["sweep_orders", "controlled_orders", "build_tables", "main"]

SWEEPS = ("mixtures", "moons", "digits")
#: Budgets of the sweep's order fit: the four largest (the asymptotic end).
FIT_POINTS = 4


def _declared(row: pd.Series) -> Optional[float]:
    import json

    options = json.loads(row["options"]) if isinstance(row["options"], str) and row["options"] else {}
    return solvers.get(row["sampler"]).order_of(options)


def sweep_orders(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and series: the fitted order of inversion_error over counted NFE (largest
    budgets), with the declared sampling order."""
    rows = []
    for (model, series), cell in df[df["status"] == "ok"].groupby(["model", "series"]):
        cell = cell.sort_values("inversion_nfe").dropna(subset=["inversion_error"]).tail(FIT_POINTS)
        if len(cell) < 2:
            continue
        rows.append(dict(model=model, series=series, declared=_declared(cell.iloc[0]),
                         fitted=fitted_order(cell["inversion_nfe"].tolist(), cell["inversion_error"].tolist()),
                         nfe=f"{int(cell['inversion_nfe'].iloc[0])}-{int(cell['inversion_nfe'].iloc[-1])}"))
    return pd.DataFrame(rows)


def controlled_orders(n_points: int = 16, seed: int = 0) -> pd.DataFrame:
    """Fitted inversion orders under the registry's order conditions, against the exact encoding."""
    from score_models import zoo

    model = zoo.load("gmm:mix16d", schedule="edm")
    g = torch.Generator().manual_seed(seed)
    x = model.sample_data(n_points, generator=g, dtype=torch.float64)
    x = x + ORDER_SPAN["t_min"] * torch.randn(x.shape, generator=g, dtype=torch.float64)
    exact = model.exact_encoding(x, t_end=ORDER_SPAN["t_max"], t_start=ORDER_SPAN["t_min"])
    invertible = set(solvers.invertible_samplers())
    rows = []
    for name, options in order_cases():
        if name not in invertible:
            continue
        spec = solvers.get(name)
        nfes, errors = [], []
        for n in ORDER_STEPS:
            stats: dict = {}
            z = solvers.invert(name, model, x, nfe=spec.count(n, False, options), stats=stats, **ORDER_SPAN, **options)
            nfes.append(stats["nfe"])
            errors.append(float((z - exact).pow(2).mean().sqrt()))
        rows.append(dict(sampler=name, options=", ".join(f"{k}={v!r}" for k, v in options.items()),
                         declared=spec.order_of(options), fitted=fitted_order(nfes, errors),
                         errors=f"{errors[0]:.1e} at {nfes[0]} / {errors[-1]:.1e} at {nfes[-1]}"))
    return pd.DataFrame(rows)


def _order_table(orders: pd.DataFrame, keys: List[str], extra: str) -> str:
    lines = ["| " + " | ".join(keys) + f" | declared sampling order | fitted inversion order | {extra} |",
             "|" + "---|" * (len(keys) + 3)]
    for _, r in orders.iterrows():
        declared = "none" if r["declared"] is None or pd.isna(r["declared"]) else f"{r['declared']:g}"
        lines.append("| " + " | ".join(str(r[k]) for k in keys) + f" | {declared} | {r['fitted']:.2f} | "
                     f"{r['nfe' if extra == 'NFE fitted' else 'errors']} |")
    return "\n".join(lines) + "\n"


def build_tables(results: Path, with_controlled: bool = True) -> str:
    out = ["# Inversion round trips\n",
           "Real data points (the mixtures' samples, toy2d data, the digits test split) run to noise by each "
           "deterministic sampler at its NFE budget (`solvers.invert`, the sampler on its own grid reversed) and back. "
           "`inversion_error`: RMS per dimension of the latent (standard-normal units) against the exact encoding "
           "(mixtures) or a tight rk45 inversion (networks, rtol = atol = 1e-6). `reconstruction_error`: RMS of x0 "
           "against the round trip; EDICT and BDIA decode from their coupled state (their exact inverse). Columns: the "
           "NFE budget of each direction (EDICT spends 2 per step; the round trip costs about twice the budget).\n"]
    for sweep in SWEEPS:
        path = results / sweep / "results.csv"
        if not path.is_file():
            continue
        df = read_results(path)
        out.append(f"## {sweep}\n")
        for model in sorted(df["model"].unique()):
            out.append(f"### {model}\n")
            for metric in ("inversion_error", "reconstruction_error"):
                out.append(markdown_pivot(df, model, metric))
        if sweep == "mixtures":
            out.append("### Fitted orders of the inversion error (sweep cells, default grids to sigma = 0)\n")
            out.append(_order_table(sweep_orders(df), ["model", "series"], "NFE fitted"))
    if with_controlled:
        out.append("## Fitted inversion orders under the registry's order conditions\n")
        out.append("16-D mixture, EDM schedule, sigma 0.1 -> 2 (no step off sigma = 0), 64-512 steps, 16 points "
                   "against `GaussianMixture.exact_encoding`; the same conditions as the registry's sampling-order "
                   "test.\n")
        out.append(_order_table(controlled_orders(), ["sampler", "options"], "RMS error at the smallest / largest NFE"))
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results/inversion")
    parser.add_argument("--no-controlled", action="store_true", help="skip the controlled order measurement")
    args = parser.parse_args(argv)
    results = Path(args.results)
    text = build_tables(results, with_controlled=not args.no_controlled)
    write_atomic(results / "tables.md", text)
    print(f"wrote {results / 'tables.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
