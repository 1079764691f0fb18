"""Readable tables and trade-off plots from a results table, and the regression comparison."""
from __future__ import annotations

import functools
import io
import math
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from .results import KEY_COLUMNS, RESULT_COLUMNS, safe_file_name, write_bytes_atomic

__all__ = ["metric_columns", "markdown_report", "render_plots", "plot_jobs", "render_plot", "plot_points", "write_plots",
           "plot_file_name", "compare",
           "student_table", "student_rows", "best_series_rows", "pivot", "markdown_pivot", "LOWER_IS_BETTER"]

#: metrics where lower is better (all current ones); the report marks the minimum per column
LOWER_IS_BETTER = {"solver_error", "sliced_wasserstein", "mmd", "fid", "kid", "fd", "kid_mean", "inversion_error",
                   "reconstruction_error"}


def metric_columns(df: pd.DataFrame) -> List[str]:
    """Quality columns (spread columns such as kid_std are kept in the CSV, not tabled)."""
    return [c for c in df.columns if c not in RESULT_COLUMNS and not c.endswith("_std")]


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def pivot(df: pd.DataFrame, model: str, metric: str) -> pd.DataFrame:
    """series x NFE budget -> mean metric over seeds (ok rows only)."""
    sub = df[(df["model"] == model) & (df["status"] == "ok")]
    if sub.empty or sub[metric].isna().all():
        return pd.DataFrame()
    table = sub.pivot_table(index="series", columns="nfe_budget", values=metric, aggfunc="mean")
    return table.dropna(how="all")


def markdown_report(df: pd.DataFrame, title: str = "nfebench results", protocol: Optional[Dict] = None) -> str:
    """One pivot per (model, metric), best value per NFE column in bold, then time and failures."""
    out = io.StringIO()
    out.write(f"# {title}\n\n")
    if protocol:
        out.write("Protocol: " + ", ".join(f"{k}={v}" for k, v in protocol.items() if k in
                                            ("n_samples", "batch_size", "seeds", "dtype", "reference")) + ". "
                  "Per-model overrides (n_samples, reference set, extractor) are in metadata.json.\n\n")
    out.write(best_series_table(df))
    for model in dict.fromkeys(df["model"]):
        out.write(f"## {model}\n\n")
        for metric in metric_columns(df) + ["s_per_sample"]:
            out.write(markdown_pivot(df, model, metric))
    students = student_table(df)
    if students:
        out.write(students)
    bad = df[df["status"] != "ok"]
    if not bad.empty:
        out.write("## Cells that did not finish\n\n| model | series | nfe_budget | seed | status | where | error |\n|---|---|---|---|---|---|---|\n")
        for _, r in bad.iterrows():
            where = "" if pd.isna(r["diverged_at_nfe"]) else f"NFE {int(r['diverged_at_nfe'])}"
            out.write(f"| {r['model']} | {r['series']} | {r['nfe_budget']} | {r['seed']} | {r['status']} | {where} | {r['error']} |\n")
        out.write("\n")
    return out.getvalue()


def markdown_pivot(df: pd.DataFrame, model: str, metric: str) -> str:
    """One model's series x NFE table of one metric, best per column in bold ('' when empty)."""
    table = pivot(df, model, metric)
    if table.empty:
        return ""
    out = io.StringIO()
    label = "seconds per sample" if metric == "s_per_sample" else metric
    out.write(f"**{label}** (rows: sampler series, columns: NFE budget"
              f"{'' if metric == 's_per_sample' else '; best per column in bold'})\n\n")
    cols = list(table.columns)
    out.write("| series | " + " | ".join(str(c) for c in cols) + " |\n")
    out.write("|---|" + "---|" * len(cols) + "\n")
    best = table.min(axis=0) if metric in LOWER_IS_BETTER else table.max(axis=0)
    for series, values in table.iterrows():
        cells = []
        for c in cols:
            v = values[c]
            s = _fmt(v)
            if metric != "s_per_sample" and not (isinstance(v, float) and math.isnan(v)) and v == best[c]:
                s = f"**{s}**"
            cells.append(s)
        out.write(f"| {series} | " + " | ".join(cells) + " |\n")
    out.write("\n")
    return out.getvalue()


#: The metric a model's "best series" is judged by: the first one the run measured for it.
HEADLINE_METRICS = ("solver_error", "fid", "fd", "sliced_wasserstein", "mmd")


def best_series_rows(df: pd.DataFrame) -> List[Dict]:
    """For each model and NFE budget, the series (sampler, options and grid) with the best
    headline metric and the runner-up: model, metric, nfe, best, value, runner_up,
    runner_up_value, compared."""
    rows = []
    for model in dict.fromkeys(df["model"]):
        for metric in [m for m in HEADLINE_METRICS if m in df.columns]:
            table = pivot(df, model, metric)
            if table.empty or len(table) < 2:
                continue
            for nfe in table.columns:
                ranked = table[nfe].dropna().sort_values()
                if ranked.empty:
                    continue
                rows.append({"model": model, "metric": metric, "nfe": nfe, "best": ranked.index[0],
                             "value": ranked.iloc[0], "runner_up": ranked.index[1] if len(ranked) > 1 else None,
                             "runner_up_value": ranked.iloc[1] if len(ranked) > 1 else math.nan,
                             "compared": len(ranked)})
            break
    return rows


def best_series_table(df: pd.DataFrame) -> str:
    """Markdown of :func:`best_series_rows`, so the answer to "which sampler and grid at this
    budget" is one lookup."""
    rows = []
    for r in best_series_rows(df):
        second = "-" if r["runner_up"] is None else f"{_fmt(r['runner_up_value'])} ({r['runner_up']})"
        rows.append(f"| {r['model']} | {r['metric']} | {r['nfe']} | {r['best']} | {_fmt(r['value'])} | {second} | "
                    f"{r['compared']} |")
    if not rows:
        return ""
    return ("## Best series per NFE\n\n| model | metric | NFE | best series | value | runner-up | series compared |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n")


def student_rows(df: pd.DataFrame) -> List[Dict]:
    """Each few-step student (a shipped distilled or consistency model) against its teacher in
    the same results: at the student's NFE, the best teacher series at that budget, and the
    teacher's converged value (its best series at its largest budget) with the gap."""
    from score_models import zoo

    ok = df[df["status"] == "ok"]
    rows = []
    for student in dict.fromkeys(ok["model"]):
        teacher = zoo.base_teacher(student)
        if teacher is None:
            continue
        # The headline metric only: FID when the run has it for this pair, else sliced W2.
        pairs = [(m, pivot(ok, student, m), pivot(ok, teacher, m)) for m in ("fid", "sliced_wasserstein")
                 if m in df.columns]
        for metric, mine, theirs in [p for p in pairs if not p[1].empty and not p[2].empty][:1]:
            top = max(theirs.columns)
            converged_series, converged = theirs[top].idxmin(), theirs[top].min()
            for series, values in mine.iterrows():
                for nfe, value in values.dropna().items():
                    teacher_series, teacher_value = None, math.nan
                    if nfe in theirs.columns and theirs[nfe].notna().any():
                        teacher_series, teacher_value = theirs[nfe].idxmin(), theirs[nfe].min()
                    rows.append({"student": student, "teacher": teacher, "metric": metric, "nfe": nfe,
                                 "series": series, "value": value, "teacher_series": teacher_series,
                                 "teacher_value": teacher_value,
                                 "student_better": None if teacher_series is None else bool(value < teacher_value),
                                 "converged_series": converged_series, "converged_nfe": top,
                                 "converged_value": converged, "gap": value - converged})
    return rows


def student_table(df: pd.DataFrame) -> str:
    """Markdown of :func:`student_rows`."""
    rows = []
    for r in student_rows(df):
        teacher_cell = "-" if r["teacher_series"] is None else f"{_fmt(r['teacher_value'])} ({r['teacher_series']})"
        wins = "-" if r["student_better"] is None else ("yes" if r["student_better"] else "no")
        rows.append(f"| {r['student']} | {r['teacher']} | {r['metric']} | {r['nfe']} | {_fmt(r['value'])} | "
                    f"{teacher_cell} | {wins} | {_fmt(r['converged_value'])} ({r['converged_series']} @ "
                    f"{r['converged_nfe']}) | {_fmt(r['gap'])} |")
    if not rows:
        return ""
    return ("## Few-step students against their teachers\n\n"
            "At the student's NFE: the best teacher sampler at the same budget, and the gap to the teacher's "
            "converged quality (its best series at its largest budget).\n\n"
            "| student | teacher | metric | NFE | student | best teacher at this NFE | student better | "
            "teacher converged | gap to converged |\n|---|---|---|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n\n")


def _pareto(points: np.ndarray) -> np.ndarray:
    """Indices of points (cost, error) not dominated by any other (lower is better in both)."""
    order = np.lexsort((points[:, 1], points[:, 0]))
    front, best = [], math.inf
    for i in order:
        if points[i, 1] < best:
            front.append(i)
            best = points[i, 1]
    return np.array(front, dtype=int)


#: What the left plot's x-axis can count: total network evaluations, or the network calls made
#: one after another (below NFE for parallel-in-time samplers and batched guidance).
X_AXES = {"nfe": "NFE (counted)", "sequential_depth": "sequential depth (network calls in sequence)"}


def plot_points(sub: pd.DataFrame, metric: str) -> Optional[pd.DataFrame]:
    """The rows of one model's finished cells that its ``metric`` plot draws (positive values:
    the axes are logarithmic), or None where there is no trade-off to draw: fewer than two
    (series, NFE) points, as for a few-step student run at one budget (its value is in the
    table beside the plot)."""
    data = sub[sub[metric] > 0] if metric in sub else sub.iloc[:0]
    return data if len(data[["series", "nfe_budget"]].drop_duplicates()) >= 2 else None


def render_plots(df: pd.DataFrame, dpi: int = 96, x_axis: str = "nfe") -> List[Tuple[str, str, bytes]]:
    """Per model and metric: metric vs counted NFE (or ``x_axis="sequential_depth"``; log-log)
    and metric vs wall time with the Pareto front across samplers, as (model, metric, PNG bytes).
    Every series keeps one style (colour, marker, line) in all plots of the run
    (:func:`benchmarks.palette.series_styles`). One :func:`render_plot` per :func:`plot_jobs`
    job (which worker processes can share out)."""
    return [render_plot(job) for job in plot_jobs(df, dpi, x_axis)]


def plot_jobs(df: pd.DataFrame, dpi: int = 96, x_axis: str = "nfe") -> List[Tuple]:
    """One job per plot for :func:`render_plot`: (model, metric, its plot points, the run's
    series styles, dpi, x-axis), in model order and then metric order."""
    if x_axis not in X_AXES:
        raise ValueError(f"unknown x-axis {x_axis!r}; valid: {', '.join(X_AXES)}")
    if x_axis not in df.columns:
        raise ValueError(f"the results have no {x_axis!r} column (written by runs since it was added); use nfe")
    from .palette import series_styles

    ok = df[df["status"] == "ok"]
    styles = series_styles(list(df["series"]))
    jobs = []
    for model in dict.fromkeys(ok["model"]):
        sub = ok[ok["model"] == model]
        for metric in metric_columns(df):
            data = plot_points(sub, metric)
            if data is not None:
                jobs.append((model, metric, data, styles, dpi, x_axis))
    return jobs


#: Superscript digits and minus, for tick labels such as 10⁻² without mathtext.
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


@functools.lru_cache(maxsize=None)
def _log_ticks():
    """The log axes' locator and formatter classes (made on first use: matplotlib is imported
    only by the processes that plot)."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator

    class InViewLogLocator(LogLocator):
        """LogLocator's ticks inside the view only. LogLocator adds a decade or more either side
        and the axis makes a tick (five artists) for every location, drawn or not."""

        def __call__(self):
            vmin, vmax = sorted(self.axis.get_view_interval())
            locs = super().__call__()
            # A little slack: the axis decides what is drawn, this only drops what cannot be.
            return locs[(locs >= vmin * (1 - 1e-6)) & (locs <= vmax * (1 + 1e-6))]

    class PlainLogFormatter(LogFormatterSciNotation):
        """LogFormatterSciNotation's labels on the same ticks, as plain text with unicode
        superscripts (10⁻², 2×10⁻¹): its mathtext labels went through a pyparsing parse each
        (an eighth of a fresh process's plotting time) and a slower way of drawing text."""

        def __call__(self, x, pos=None):
            label = super().__call__(x, pos)
            math_text = re.fullmatch(r"\$\\mathdefault\{(.*)\}\$", label)
            if math_text is None:
                return label
            text = re.sub(r"\^\{(-?\d+)\}", lambda m: m.group(1).translate(_SUPERSCRIPT), math_text.group(1))
            return text.replace(r"\times", "×")

    return InViewLogLocator, PlainLogFormatter


#: Minor ticks of the log axes at 2 and 5 times each power of ten only (a third less drawing).
MINOR_SUBS = (2.0, 5.0)


def render_plot(job: Tuple) -> Tuple[str, str, bytes]:
    """One plot of :func:`plot_jobs` as (model, metric, PNG bytes)."""
    model, metric, data, styles, dpi, x_axis = job
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    in_view_locator, plain_formatter = _log_ticks()
    fig, (ax_nfe, ax_time) = plt.subplots(1, 2, figsize=(13, 5.2))
    # One groupby for every series (sorted by series, then NFE): one per series took 7% of the
    # plotting time.
    means = data.groupby(["series", "nfe_budget"])[list(dict.fromkeys([x_axis, metric, "wall_s"]))].mean()
    in_series = means.index.get_level_values("series")
    for series in dict.fromkeys(data["series"]):
        g = means[in_series == series].sort_values(x_axis, kind="stable")
        style = dict(styles[series], ms=4)
        ax_nfe.plot(g[x_axis].to_numpy(), g[metric].to_numpy(), label=series, **style)
        ax_time.plot(g["wall_s"].to_numpy(), g[metric].to_numpy(), alpha=0.75, **{**style, "linestyle": ":"})
    front = means.iloc[_pareto(means[["wall_s", metric]].to_numpy(dtype=float))]
    (front_line,) = ax_time.plot(front["wall_s"], front[metric], color="black", lw=1.5, drawstyle="steps-post")
    for ax, xlabel in ((ax_nfe, X_AXES[x_axis]), (ax_time, "wall time per cell (s)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(in_view_locator(base=10))
            axis.set_major_formatter(plain_formatter(base=10))
            axis.set_minor_formatter(plain_formatter(base=10))
            axis.set_minor_locator(in_view_locator(base=10, subs=MINOR_SUBS, numticks=12))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax_nfe.get_legend_handles_labels()
    handles.append(front_line)
    labels.append("Pareto front (right)")
    rows = math.ceil(len(labels) / 4)
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(f"{model}: {metric}")
    # Fixed margins (what tight_layout chose for these plots): tight_layout measured every
    # tick label again and took half of the plotting time.
    fig.subplots_adjust(left=0.06, right=0.988, top=0.9, bottom=0.035 * rows + 0.137, wspace=0.16)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return model, metric, buf.getvalue()


def plot_file_name(model: str, metric: str) -> str:
    return f"{safe_file_name(f'{model}_{metric}', keep='-_.')}.png"


def write_plots(df: pd.DataFrame, out_dir: Path, rendered: Optional[List[Tuple[str, str, bytes]]] = None,
                x_axis: str = "nfe") -> List[Path]:
    """The trade-off plots (:func:`render_plots`, or the ones given) as PNG files, written
    atomically; returns their paths. Plots against sequential depth get a ``_depth`` suffix."""
    written = []
    suffix = "" if x_axis == "nfe" else "_depth"
    for model, metric, png in render_plots(df, x_axis=x_axis) if rendered is None else rendered:
        path = Path(out_dir) / plot_file_name(model, metric + suffix)
        write_bytes_atomic(path, png)
        written.append(path)
    return written


def compare(baseline: pd.DataFrame, new: pd.DataFrame, tolerance: float = 0.05, abs_tolerance: float = 1e-9,
            time_tolerance: float = 2.0, min_time: float = 0.05) -> List[str]:
    """Regressed cells of ``new`` against ``baseline``, one message each.

    A cell regresses when it is missing, when its status leaves ``ok``, when a lower-is-better
    metric exceeds baseline + tolerance * |baseline| + abs_tolerance, or when s_per_sample exceeds
    baseline * time_tolerance. Cells whose baseline wall time is under ``min_time`` seconds are
    not time-gated: at that scale timer and scheduler noise dominate.
    """
    merged = baseline.merge(new, on=KEY_COLUMNS, how="left", suffixes=("_base", "_new"), indicator=True)
    problems = []
    for _, r in merged.iterrows():
        cell = f"{r['model']} | {r['series']} | nfe={r['nfe_budget']} | seed={r['seed']}"
        if r["_merge"] == "left_only":
            problems.append(f"{cell}: missing from the new results")
            continue
        if r["status_base"] == "ok" and r["status_new"] != "ok":
            problems.append(f"{cell}: status {r['status_new']} ({r['error_new']})")
            continue
        for metric in metric_columns(baseline):
            if metric not in new.columns:
                problems.append(f"{cell}: metric {metric} missing from the new results")
                continue
            b, n = r[f"{metric}_base"], r[f"{metric}_new"]
            if pd.isna(b):
                continue
            if pd.isna(n) or n > b + tolerance * abs(b) + abs_tolerance:
                problems.append(f"{cell}: {metric} {_fmt(n)} vs baseline {_fmt(b)} (tolerance {tolerance:.0%})")
        b, n = r["s_per_sample_base"], r["s_per_sample_new"]
        timed = not pd.isna(r["wall_s_base"]) and r["wall_s_base"] >= min_time
        if timed and not pd.isna(b) and not pd.isna(n) and b > 0 and n / b > time_tolerance:
            problems.append(f"{cell}: time {n / b:.2f}x baseline (tolerance {time_tolerance:.2f}x)")
    return problems
