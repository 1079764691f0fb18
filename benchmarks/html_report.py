"""One self-contained HTML page per run: ``nfebench report RUN_DIR`` (and ``nfebench run``).

Everything is inside the file: CSS and a few lines of script (sortable tables) inline, plots
and sample grids as PNG data URIs, no fonts, scripts or styles from anywhere else, so the page
opens offline and can be mailed as one file. Contents: the best sampler per NFE with its grid
and schedule, per model the metric x NFE tables (sortable), the NFE and wall-time trade-off
plots with their Pareto front and the sample grid, the few-step students against their
teachers, the cells that diverged or failed with their messages, the protocol and the run's
time budget.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pandas as pd

from .budget import budget_table
from .report import (LOWER_IS_BETTER, best_series_rows, metric_columns, pivot, plot_file_name, plot_points,
                     render_plots, student_rows)
from .results import read_results, write_atomic

__all__ = ["html_report", "write_html_report", "budget_section", "REPORT_FILE"]

REPORT_FILE = "report.html"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
main{max-width:1320px;margin:0 auto;padding:0 24px 48px}
header{background:#1f3b57;color:#fff;padding:18px 24px}
header h1{margin:0 0 4px;font-size:22px} header p{margin:0;opacity:.85}
nav{background:#fff;border-bottom:1px solid #ddd;padding:8px 24px;position:sticky;top:0;z-index:2;display:flex;flex-wrap:wrap;gap:2px 14px}
nav a{color:#1f5f99;text-decoration:none;white-space:nowrap} nav a:hover{text-decoration:underline}
h2{margin:36px 0 10px;padding-bottom:4px;border-bottom:2px solid #1f3b57;font-size:19px}
h3{margin:22px 0 6px;font-size:16px} h4{margin:16px 0 4px;font-size:14px}
.note{color:#555;margin:4px 0 10px}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;background:#fff;margin:6px 0 14px;font-size:13px}
th,td{border:1px solid #d6d6d6;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#eef2f6;position:relative}
td.l,th.l{text-align:left}
table.sortable th{cursor:pointer;user-select:none} table.sortable th:after{content:" \\2195";color:#9aa}
table.sortable th.asc:after{content:" \\2191";color:#1f3b57} table.sortable th.desc:after{content:" \\2193";color:#1f3b57}
td.best{font-weight:700;background:#e3f4e1}
td.err{white-space:normal;text-align:left;max-width:640px;font-family:ui-monospace,monospace;font-size:12px}
tr.diverged td{background:#fff4e0} tr.failed td{background:#fde8e8}
figure{margin:8px 0 18px} figure img{max-width:100%;border:1px solid #ddd;background:#fff}
figcaption{color:#555;font-size:12.5px}
.bar{display:inline-block;height:11px;background:#3b78b0;vertical-align:middle}
.bar.sampling{background:#2e9b4f}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:6px 0 14px}
dl.kv dt{font-weight:600;color:#333} dl.kv dd{margin:0;word-break:break-word}
.ok{color:#2e7d32} .bad{color:#b3261e}
"""

# Click a header to sort by that column (numbers by value, text by name; empty cells last).
_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('thead th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = !th.classList.contains('asc');
      table.querySelectorAll('thead th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
      th.classList.add(asc ? 'asc' : 'desc');
      function key(row) {
        var cell = row.cells[col], v = cell.getAttribute('data-v');
        if (v === null) { return cell.textContent.trim(); }
        return v === '' ? null : parseFloat(v);
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return x === y ? 0 : (x === null ? 1 : -1); }
        var c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return str(v)
    v = float(v)
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def _num_cell(v: Any, best: bool = False) -> str:
    missing = v is None or (isinstance(v, float) and math.isnan(v))
    cls = ' class="best"' if best else ""
    return f'<td{cls} data-v="{"" if missing else repr(float(v))}">{_fmt(v)}</td>'


def _anchor(model: str) -> str:
    return "m-" + "".join(ch if ch.isalnum() else "-" for ch in model)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(headers: List[str], rows: List[str], sortable: bool = True, left: int = 1, cls: str = "") -> str:
    heads = "".join(f'<th{" class=l" if i < left else ""}>{_e(h)}</th>' for i, h in enumerate(headers))
    classes = " ".join(c for c in ("sortable" if sortable else "", cls) if c)
    return (f'<div class="scroll"><table class="{classes}"><thead><tr>{heads}</tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></div>")


def _series_info(df: pd.DataFrame) -> Dict[Tuple[str, str], Dict[str, Any]]:
    """(model, series) -> sampler, options, grid, model schedule."""
    info = {}
    for _, r in df.drop_duplicates(["model", "series"]).iterrows():
        try:
            options = json.loads(r["options"]) if r["options"] else {}
        except (TypeError, ValueError):
            options = {}
        info[(r["model"], r["series"])] = {"sampler": r["sampler"], "options": options,
                                           "grid": options.get("grid", "sampler default"),
                                           "schedule": r.get("schedule", "")}
    return info


def _best_section(df: pd.DataFrame) -> str:
    rows_by_model: Dict[str, List[Dict]] = {}
    for r in best_series_rows(df):
        rows_by_model.setdefault(r["model"], []).append(r)
    if not rows_by_model:
        return ""
    info = _series_info(df)
    out = ['<section id="best"><h2>Best sampler per NFE</h2><p class="note">For each model and NFE budget, the '
           'sampler series with the best headline metric (mean over seeds; lower is better), its time grid and '
           'options, and the runner-up.</p>']
    for model, rows in rows_by_model.items():
        body = []
        for r in rows:
            s = info.get((model, r["best"]), {})
            opts = {k: v for k, v in s.get("options", {}).items() if k != "grid"}
            second = "-" if r["runner_up"] is None else f"{_fmt(r['runner_up_value'])} ({r['runner_up']})"
            body.append(f'<tr><td data-v="{r["nfe"]}">{_e(r["nfe"])}</td><td class=l>{_e(r["best"])}</td>'
                        f'<td class=l>{_e(s.get("sampler", ""))}</td><td class=l>{_e(s.get("grid", ""))}</td>'
                        f'<td class=l>{_e(json.dumps(opts, sort_keys=True) if opts else "")}</td>'
                        f'<td class=l>{_e(s.get("schedule", ""))}</td>{_num_cell(r["value"])}'
                        f'<td class=l>{_e(second)}</td><td data-v="{r["compared"]}">{r["compared"]}</td></tr>')
        out.append(f'<h3><a href="#{_anchor(model)}">{_e(model)}</a> <span class="note">({_e(rows[0]["metric"])})'
                   f'</span></h3>')
        out.append(_table(["NFE", "best series", "sampler", "time grid", "other options", "noise schedule",
                           rows[0]["metric"], "runner-up", "series compared"], body, left=0))
    out.append("</section>")
    return "\n".join(out)


def _metric_table(df: pd.DataFrame, model: str, metric: str) -> str:
    table = pivot(df, model, metric)
    if table.empty:
        return ""
    timed = metric == "s_per_sample"
    best = table.min(axis=0) if (metric in LOWER_IS_BETTER or timed) else table.max(axis=0)
    body = []
    for series, values in table.iterrows():
        cells = "".join(_num_cell(values[c], best=not pd.isna(values[c]) and values[c] == best[c]) for c in table.columns)
        body.append(f"<tr><td class=l>{_e(series)}</td>{cells}</tr>")
    label = "seconds per sample" if timed else metric
    return (f'<h4>{_e(label)}</h4><p class="note">Rows: sampler series; columns: NFE budget; mean over seeds; '
            f'best per column highlighted. Click a header to sort.</p>'
            + _table(["series"] + [str(c) for c in table.columns], body))


def _model_section(df: pd.DataFrame, model: str, plots: Dict[Tuple[str, str], bytes], grid: Optional[bytes]) -> str:
    sub = df[df["model"] == model]
    counts = sub["status"].value_counts().to_dict()
    schedule = next((s for s in sub["schedule"] if isinstance(s, str) and s), "")
    out = [f'<section id="{_anchor(model)}"><h2>{_e(model)}</h2>',
           f'<p class="note">{len(sub)} cells ({", ".join(f"{v} {k}" for k, v in counts.items())}); '
           f'{sub["series"].nunique()} sampler series; noise schedule {_e(schedule or "-")}; '
           f'{int(sub["n_samples"].max())} samples per cell.</p>']
    for metric in metric_columns(df) + ["s_per_sample"]:
        out.append(_metric_table(df, model, metric))
        png = plots.get((model, metric))
        if png is not None:
            out.append(f'<figure>{_img(png, f"{model}: {metric} against NFE and wall time")}<figcaption>{_e(metric)} '
                       f'against counted NFE (left) and against wall time per cell (right; black: the Pareto front, '
                       f'the series-budgets no other beats in both time and {_e(metric)}).</figcaption></figure>')
    if grid is not None:
        out.append(f'<h4>Samples</h4><figure>{_img(grid, f"{model}: sample grid")}<figcaption>The same noise decoded by '
                   f'each sampler series (rows) at each NFE budget (columns).</figcaption></figure>')
    out.append("</section>")
    return "\n".join(out)


def _students_section(df: pd.DataFrame) -> str:
    rows = student_rows(df)
    if not rows:
        return ""
    body = []
    for r in rows:
        teacher = "-" if r["teacher_series"] is None else r["teacher_series"]
        better = "-" if r["student_better"] is None else ("yes" if r["student_better"] else "no")
        body.append(f'<tr><td class=l>{_e(r["student"])}</td><td class=l>{_e(r["teacher"])}</td>'
                    f'<td class=l>{_e(r["metric"])}</td><td data-v="{r["nfe"]}">{r["nfe"]}</td>{_num_cell(r["value"])}'
                    f'{_num_cell(r["teacher_value"])}<td class=l>{_e(teacher)}</td><td class=l>{better}</td>'
                    f'{_num_cell(r["converged_value"])}<td class=l>{_e(r["converged_series"])} @ '
                    f'{r["converged_nfe"]}</td>{_num_cell(r["gap"])}</tr>')
    return ('<section id="students"><h2>Few-step students against their teachers</h2><p class="note">At the '
            "student's NFE: the best teacher sampler at the same budget, and the gap to the teacher's converged "
            "quality (its best series at its largest budget).</p>"
            + _table(["student", "teacher", "metric", "NFE", "student", "best teacher", "teacher series",
                      "student better", "teacher converged", "converged series", "gap to converged"], body, left=3)
            + "</section>")


def _failures_section(df: pd.DataFrame) -> str:
    bad = df[df["status"] != "ok"]
    head = '<section id="failures"><h2>Cells that did not finish</h2>'
    if bad.empty:
        return head + '<p class="ok">Every cell finished (status ok).</p></section>'
    body = []
    for _, r in bad.iterrows():
        where = "" if pd.isna(r["diverged_at_nfe"]) else f"NFE {int(r['diverged_at_nfe'])}"
        body.append(f'<tr class="{_e(r["status"])}"><td class=l>{_e(r["model"])}</td><td class=l>{_e(r["series"])}</td>'
                    f'<td data-v="{r["nfe_budget"]}">{r["nfe_budget"]}</td><td data-v="{r["seed"]}">{r["seed"]}</td>'
                    f'<td class=l>{_e(r["status"])}</td><td class=l>{_e(where)}</td><td class="err">{_e(r["error"])}</td></tr>')
    return (head + f'<p class="bad">{len(bad)} of {len(df)} cells diverged or failed; the sweep went on.</p>'
            + _table(["model", "series", "NFE", "seed", "status", "first non-finite", "message"], body, left=2)
            + "</section>")


def _kv(pairs: List[Tuple[str, Any]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in pairs) + "</dl>"


def _protocol_section(meta: Dict[str, Any]) -> str:
    p = meta.get("protocol", {})
    out = ['<section id="protocol"><h2>Protocol</h2>']
    out.append(_kv([("samples per cell (default)", p.get("n_samples")), ("batch size", p.get("batch_size")),
                    ("seeds", p.get("seeds")), ("dtype", p.get("dtype")), ("device", meta.get("device")),
                    ("device name", meta.get("device_name")), ("torch threads", meta.get("torch_threads")),
                    ("processes (torchrun world)", meta.get("world_size")), ("git commit", meta.get("git_commit")),
                    ("config hash", meta.get("config_hash")), ("command", " ".join(meta.get("argv", []))),
                    ("noise", p.get("noise")), ("solver error", p.get("solver_error")),
                    ("distribution reference", p.get("distribution_reference")), ("timing", p.get("timing"))]))
    models = p.get("models", {})
    if models:
        body = [f'<tr><td class=l>{_e(k)}</td><td>{_e(v.get("n_samples"))}</td>'
                f'<td class=l>{_e(v.get("reference", {}).get("extractor", "-"))}</td>'
                f'<td class=l>{_e(json.dumps(v.get("reference", {}), sort_keys=True))}</td></tr>' for k, v in models.items()]
        out.append("<h3>Per model</h3>" + _table(["model", "samples", "feature extractor", "reference set"], body))
    versions = meta.get("versions", {})
    if versions:
        out.append("<h3>Versions</h3>" + _kv(sorted(versions.items())))
    skipped = meta.get("skipped", [])
    if skipped:
        out.append(f"<h3>Budgets a sampler cannot honour ({len(skipped)}, skipped)</h3><ul>"
                   + "".join(f"<li>{_e(s)}</li>" for s in skipped) + "</ul>")
    out.append("</section>")
    return "\n".join(out)


def budget_section(meta: Dict[str, Any], report_seconds: Optional[float]) -> str:
    """The page's time budget section from metadata's ``time_budget``; ``report_seconds``: time
    already spent on the report, added to its phase."""
    budget = meta.get("time_budget")
    head = '<section id="budget"><h2>Time budget</h2>'
    if not budget:
        return head + '<p class="note">This run directory records no time budget.</p></section>'
    phases = dict(budget.get("phases", {}))
    if report_seconds is not None:
        phases["report"] = phases.get("report", 0.0) + report_seconds
    jobs = int(budget.get("jobs", 1))
    elapsed = float(budget["elapsed_s"])
    available = elapsed * jobs
    rows = budget_table(phases, available)
    body = []
    for r in rows:
        width = 0 if math.isnan(r["share"]) else max(0.0, min(1.0, r["share"])) * 300
        bar_cls = "bar sampling" if r["phase"] in ("network_forwards", "sampler_loop") else "bar"
        body.append(f'<tr><td class=l>{_e(r["phase"])}</td><td class=l>{_e(r["covers"])}</td>'
                    f'{_num_cell(r["seconds"])}<td data-v="{r["share"]!r}">{r["share"]:.1%}</td>'
                    f'<td class=l><span class="{bar_cls}" style="width:{width:.1f}px"></span></td></tr>')
    share = budget.get("sampling_share", float("nan"))
    threads = budget.get("torch_threads_per_process")
    summary = (f'{elapsed:.1f} s elapsed{f" x {jobs} processes" if jobs > 1 else ""}'
               f'{f" ({threads} torch threads each)" if threads else ""} for {budget.get("cells_run")} '
               f'cells; the cells\' sampling (their summed wall_s, {float(budget.get("cells_sampling_s", 0)):.1f} s) '
               f'is {share:.1%} of it.')
    return (head + f'<p>{_e(summary)}</p><p class="note">{_e(budget.get("scope", ""))}. Each phase counts its own '
            f'time (a nested phase is not counted twice); "other" is what no phase covers.</p>'
            + _table(["phase", "covers", "seconds", "share", ""], body, left=2) + "</section>")


def html_report(df: pd.DataFrame, meta: Dict[str, Any], plots: Optional[List[Tuple[str, str, bytes]]] = None,
                grids: Optional[List[Tuple[str, bytes]]] = None, title: Optional[str] = None,
                report_seconds: Optional[float] = None) -> str:
    """The page as text. ``plots``: (model, metric, PNG) from :func:`benchmarks.report.render_plots`
    (rendered here when None); ``grids``: (model, PNG) sample grids; ``report_seconds``: time
    already spent on this report, added to the budget's ``report`` phase."""
    if plots is None:
        plots = render_plots(df)
    plot_map = {(m, k): png for m, k, png in plots}
    grid_map = dict(grids or [])
    name = meta.get("config", {}).get("name", "run")
    title = title or f"nfebench: {name}"
    models = list(dict.fromkeys(df["model"]))
    counts = df["status"].value_counts().to_dict()
    elapsed = meta.get("time_budget", {}).get("elapsed_s")
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sub = (f"{len(df)} cells ({', '.join(f'{v} {k}' for k, v in counts.items())}) over {len(models)} models and "
           f"{df['series'].nunique()} sampler series" + (f"; {elapsed:.0f} s" if elapsed else "")
           + f"; commit {str(meta.get('git_commit', 'unknown'))[:12]}; report written {when}")
    nav = ['<a href="#best">best per NFE</a>'] + [f'<a href="#{_anchor(m)}">{_e(m)}</a>' for m in models]
    nav += ['<a href="#students">students</a>', '<a href="#failures">failures</a>', '<a href="#protocol">protocol</a>',
            '<a href="#budget">time budget</a>']
    body = [_best_section(df)] + [_model_section(df, m, plot_map, grid_map.get(m)) for m in models]
    body += [_students_section(df), _failures_section(df), _protocol_section(meta), budget_section(meta, report_seconds)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{_e(title)}</h1><p>{_e(sub)}</p></header><nav>{''.join(nav)}</nav><main>"
            + "\n".join(b for b in body if b) + f"</main><script>{_SCRIPT}</script></body></html>\n")


def write_html_report(run_dir: Path, out: Optional[Path] = None, df: Optional[pd.DataFrame] = None,
                      plots: Optional[List[Tuple[str, str, bytes]]] = None,
                      grids: Optional[List[Tuple[str, bytes]]] = None, report_seconds: Optional[float] = None) -> Path:
    """Write the page for ``run_dir`` (default ``RUN_DIR/report.html``). Plots are the ones given,
    else the run's PNGs where present, else rendered; grids likewise."""
    from .sample_grids import grid_file_name, render_sample_grids

    run_dir = Path(run_dir)
    csv, meta_path = run_dir / "results.csv", run_dir / "metadata.json"
    if not csv.is_file() or not meta_path.is_file():
        raise ValueError(f"{str(run_dir)!r} is not a run directory (it needs results.csv and metadata.json)")
    df = read_results(csv) if df is None else df
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise ValueError(f"{str(meta_path)!r} is not valid JSON: {e}") from None
    if plots is None:
        plots = _stored_plots(run_dir, df)
    if grids is None:
        stored = {m: run_dir / grid_file_name(m) for m in dict.fromkeys(df["model"])}
        grids = ([(m, p.read_bytes()) for m, p in stored.items() if p.is_file()]
                 or render_sample_grids(run_dir, df))
    out = Path(out) if out else run_dir / REPORT_FILE
    write_atomic(out, html_report(df, meta, plots, grids, report_seconds=report_seconds))
    return out


def _stored_plots(run_dir: Path, df: pd.DataFrame) -> Optional[List[Tuple[str, str, bytes]]]:
    """The run's plot PNGs when every one is there and newer than results.csv, else None (render)."""
    newest = (run_dir / "results.csv").stat().st_mtime
    found = []
    for model in dict.fromkeys(df[df["status"] == "ok"]["model"]):
        sub = df[(df["model"] == model) & (df["status"] == "ok")]
        for metric in metric_columns(df):
            if plot_points(sub, metric) is None:
                continue
            path = run_dir / plot_file_name(model, metric)
            if not path.is_file() or path.stat().st_mtime < newest:
                return None
            found.append((model, metric, path.read_bytes()))
    return found
