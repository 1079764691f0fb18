"""report.html as a person sees it: self-contained, complete, sortable, rendered by Chromium with
no console errors; sample grids from the same noise; distinct series colours."""
import html.parser
import itertools
import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import solvers
from benchmarks.cli import main
from benchmarks.palette import delta_e, distinct_colours, series_styles
from benchmarks.report import metric_columns, pivot, plot_points, student_rows
from benchmarks.results import read_results
from benchmarks.sweep.cells import batch_generator
from benchmarks.sweep.execute import PREVIEW_DIR, preview_file_name
from score_models import zoo

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CONFIG = """
[run]
name = "report-test"
nfe = [2, 4]
seeds = [0]
n_samples = 24
batch_size = 24
device = "cpu"
dtype = "float32"
metrics = ["solver_error", "sliced_wasserstein", "fid"]
reference = { extractor = "pixels", rtol = 1e-2 }  # a loose rk45 reference: cheap

[[models]]
name = "gmm:ring8"
schedule = "vp_linear"

[[models]]
name = "gmm:image3x8x8"
schedule = "ddpm_linear"

[[models]]
name = "toy2d-moons"

[[models]]
name = "toy2d-moons-cd"
nfe = [2]

[[models]]
name = "python:engine_models:exploding"

[[models]]
name = "python:engine_models:broken"

[[samplers]]
sampler = "euler"
options = { grid = "edm" }

[[samplers]]
sampler = "ddim"
options = { grid = "quadratic" }

[[samplers]]
sampler = "consistency"
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    sys.path.insert(0, str(HERE))  # python:engine_models:...
    root = tmp_path_factory.mktemp("report")
    (root / "run.toml").write_text(CONFIG)
    assert main(["run", str(root / "run.toml"), "--out", str(root / "run"), "--quiet"]) == 0
    return root / "run"


class _Page(html.parser.HTMLParser):
    """Tags with their attributes, and the text of each section."""

    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(path):
    page = _Page()
    page.feed(path.read_text())
    return page, " ".join(page.text)


def expected_tables(df):
    """(model, metric) pairs the page must table: every metric column with values, and time."""
    return [(m, k) for m in dict.fromkeys(df["model"]) for k in metric_columns(df) + ["s_per_sample"]
            if not pivot(df, m, k).empty]


def test_the_page_is_self_contained(run_dir):
    page, _ = parse(run_dir / "report.html")
    tags = [t for t, _ in page.tags]
    assert "link" not in tags and "iframe" not in tags
    assert "style" in tags
    for tag, attrs in page.tags:
        for name in ("src", "href", "srcset", "action"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith(("#", "data:image/png;base64,")), f"<{tag} {name}={value[:60]}>"
    assert all("src" not in attrs for tag, attrs in page.tags if tag == "script")
    assert "url(" not in (run_dir / "report.html").read_text().split("</style>")[0]


def test_the_page_holds_every_table_plot_grid_failure_and_the_protocol(run_dir):
    df = read_results(run_dir / "results.csv")
    meta = json.loads((run_dir / "metadata.json").read_text())
    page, text = parse(run_dir / "report.html")
    images = [a for t, a in page.tags if t == "img"]
    alts = {a["alt"] for a in images}
    ok = df[df["status"] == "ok"]
    plotted = 0
    for model, metric in expected_tables(df):
        if metric != "s_per_sample":
            # a plot wherever there are two (series, NFE) points to trade off, none for a single point
            drawn = plot_points(ok[ok["model"] == model], metric) is not None
            assert (f"{model}: {metric} against NFE and wall time" in alts) == drawn
            plotted += drawn
    assert 0 < plotted < len([k for k in expected_tables(df) if k[1] != "s_per_sample"])
    # sample grids: the image-shaped model and the 2-D models (the diverged/failed ones left none)
    for model in ("gmm:image3x8x8@ddpm_linear", "gmm:ring8@vp_linear", "toy2d-moons", "toy2d-moons-cd"):
        assert f"{model}: sample grid" in alts
        assert (run_dir / f"samples_{model.replace(':', '_').replace('@', '_')}.png").is_file()
    sortable = [a for t, a in page.tags if t == "table" and "sortable" in a.get("class", "")]
    n_best = len({r for r in df["model"] if len(pivot(df, r, "solver_error")) >= 2 or
                  len(pivot(df, r, "fid")) >= 2 or len(pivot(df, r, "sliced_wasserstein")) >= 2})
    # metric tables + best-per-NFE tables + students + failures + per-model protocol + budget
    assert len(sortable) == len(expected_tables(df)) + n_best + 4
    # students against their teacher
    assert student_rows(df) and "Few-step students against their teachers" in text
    # the cells that did not finish, with their messages
    assert "network exploded on purpose" in text and "non-finite samples" in text
    assert {"diverged", "failed"} <= set(df["status"])
    # protocol: n, seeds, reference set, extractor, dtype, device, versions, git commit
    for value in (meta["git_commit"], meta["versions"]["torch"], meta["device"], "pixels", "float32"):
        assert str(value) in text
    # time budget: every recorded phase is a row
    for name in meta["time_budget"]["phases"]:
        assert name in text
    for name in ("network_forwards", "sampler_loop", "reference_solutions", "feature_extraction", "result_writing",
                 "plotting", "report", "metric:fid"):
        assert name in meta["time_budget"]["phases"]


def test_sample_grid_previews_are_the_cells_own_samples_from_the_same_noise(run_dir):
    model = zoo.load("gmm:image3x8x8", schedule="ddpm_linear")
    noise = torch.randn((24,) + model.sample_shape, generator=batch_generator(0, 0, 0))
    for series, sampler, options in (("euler(grid=edm)", "euler", {"grid": "edm"}),
                                     ("ddim(grid=quadratic)", "ddim", {"grid": "quadratic"})):
        stored = torch.load(run_dir / PREVIEW_DIR / preview_file_name(("gmm:image3x8x8@ddpm_linear", series, 4, 0)),
                            weights_only=True)
        again = solvers.sample(sampler, model, noise, nfe=4, generator=batch_generator(0, 0, 1), **options)
        assert torch.equal(stored, again[:len(stored)].float())


def test_report_command_writes_the_page_and_rejects_a_non_run(run_dir, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.html")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_series_colours_are_far_apart_and_every_style_differs():
    colours = distinct_colours()
    assert min(delta_e(a, b) for a, b in itertools.combinations(colours, 2)) > 25
    # tab20's light/dark pairs (the old palette) are much closer: the bound is not trivial
    import matplotlib.pyplot as plt

    tab20 = plt.get_cmap("tab20").colors
    assert min(delta_e(a, b) for a, b in itertools.combinations(tab20, 2)) < 25
    styles = series_styles([f"s{i}" for i in range(100)])
    triples = {(s["color"], s["marker"], s["linestyle"]) for s in styles.values()}
    assert len(triples) == 100


def _chromium_or_skip():
    from chromium_cdp import find_chromium

    path = find_chromium()
    if path is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    return path


def test_chromium_renders_the_page_with_no_console_errors(run_dir, tmp_path):
    """Opens report.html in headless Chromium: no console errors or exceptions, no request
    leaves the file, every table and image renders, a header click sorts, and a screenshot is
    saved (to $NFEBENCH_REPORT_SCREENSHOT as well when set: the README's docs/report.png)."""
    from chromium_cdp import Browser

    df = read_results(run_dir / "results.csv")
    page, _ = parse(run_dir / "report.html")
    n_tables = sum(1 for t, _ in page.tags if t == "table")
    n_images = sum(1 for t, _ in page.tags if t == "img")
    with Browser(_chromium_or_skip()) as browser:
        browser.open((run_dir / "report.html").resolve().as_uri())
        assert browser.exceptions == []
        assert [m for m in browser.console if m["level"] in ("error", "warning")] == []
        assert all(url.startswith(("file:", "data:")) for url in browser.requests), browser.requests
        rendered = browser.evaluate("""(() => ({
            tables: document.querySelectorAll('table').length,
            visible: Array.from(document.querySelectorAll('table')).filter(t => t.getBoundingClientRect().height > 0).length,
            images: Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]),
        }))()""")
        assert rendered["tables"] == rendered["visible"] == n_tables > 0
        assert len(rendered["images"]) == n_images > 0
        broken = [alt for alt, complete, w, h in rendered["images"] if not (complete and w > 0 and h > 0)]
        assert broken == []
        # Sorting: click the first NFE column of the first metric table twice (ascending, descending).
        values = browser.evaluate("""(() => {
            const table = document.querySelector('section[id^="m-"] table.sortable');
            const th = table.tHead.rows[0].cells[1];
            const read = () => Array.from(table.tBodies[0].rows).map(r => r.cells[1].getAttribute('data-v'));
            th.click(); const up = read(); th.click(); const down = read();
            return {up: up, down: down};
        })()""")
        numbers = lambda xs: [float(x) for x in xs if x]
        assert numbers(values["up"]) == sorted(numbers(values["up"]))
        assert numbers(values["down"]) == sorted(numbers(values["down"]), reverse=True)
        assert browser.exceptions == []
        shot = tmp_path / "report.png"
        browser.screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        target = os.environ.get("NFEBENCH_REPORT_SCREENSHOT")
        if target:
            shutil.copyfile(shot, target)
    assert len(df) > 0
