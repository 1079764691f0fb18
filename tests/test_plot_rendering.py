"""The trade-off plots' cheaper drawing looks as matplotlib's own: tick labels, minor ticks with
their grid lines, and the legend drawn once per series set and pasted."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullLocator

from benchmarks.palette import series_styles
from benchmarks.report import (FRONT_STYLE, GRID_ALPHA, MINOR_SUBS, PLOT_SIZE, _legend_pixels, _log_ticks,
                               _minor_ticks, render_plot)


def _log_axes(x_range, y_range):
    fig = Figure(figsize=(4, 3), dpi=96)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(x_range, y_range)
    ax.set_xscale("log")
    ax.set_yscale("log")
    return fig, ax


def _labels(ax, formatter_class):
    """{tick location: label} of both axes' major and minor ticks as drawn."""
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_locator(LogLocator(10, subs=MINOR_SUBS))
        axis.set_major_formatter(formatter_class(10))
        axis.set_minor_formatter(formatter_class(10))
    ax.figure.canvas.draw()
    return {(axis.axis_name, tick.get_loc()): tick.label1.get_text()
            for axis in (ax.xaxis, ax.yaxis) for tick in axis._update_ticks()}


def test_log_tick_labels_are_matplotlibs_in_plain_text():
    plain = _log_ticks()[1]
    for x_range, y_range in (([1e-3, 30], [0.02, 500]), ([0.15, 0.9], [1.5e-4, 3e-3])):
        ours = _labels(_log_axes(x_range, y_range)[1], plain)
        theirs = _labels(_log_axes(x_range, y_range)[1], LogFormatterSciNotation)
        assert ours.keys() == theirs.keys()
        assert [k for k, v in ours.items() if v] == [k for k, v in theirs.items() if v]  # the same ticks labelled
        assert all("$" not in label for label in ours.values())
    assert ours[("x", 0.2)] == "2×10⁻¹" and ours[("y", 1e-3)] == "10⁻³"


def test_minor_ticks_drawn_as_lines_give_matplotlibs_pixels():
    def pixels(x_range, y_range, cheap):
        fig, ax = _log_axes(x_range, y_range)
        for axis in (ax.xaxis, ax.yaxis):
            locator = LogLocator(10, subs=MINOR_SUBS, numticks=12)
            _minor_ticks(axis, locator) if cheap else axis.set_minor_locator(locator)
        ax.grid(True, which="both", alpha=GRID_ALPHA)
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba()).copy(), ax

    wide, ax = pixels([1e-3, 30], [0.02, 500], cheap=True)
    assert isinstance(ax.xaxis.get_minor_locator(), NullLocator)  # drawn as lines
    assert np.array_equal(wide, pixels([1e-3, 30], [0.02, 500], cheap=False)[0])
    # Under two powers of ten matplotlib labels minor ticks: its ticks are kept.
    narrow, ax = pixels([0.15, 0.9], [0.02, 500], cheap=True)
    assert isinstance(ax.xaxis.get_minor_locator(), LogLocator)
    assert isinstance(ax.yaxis.get_minor_locator(), NullLocator)
    assert np.array_equal(narrow, pixels([0.15, 0.9], [0.02, 500], cheap=False)[0])


def test_the_pasted_legend_is_the_one_matplotlib_draws_and_the_plot_does_not_depend_on_the_cache():
    names = ["euler(grid=edm)", "heun(grid=edm)", "ddim", "dpm_solver++(2M)", "unipc(grid=logsnr)"]
    styles = series_styles(names)

    def figure_with(legend):
        fig = Figure(figsize=PLOT_SIZE, dpi=96)
        FigureCanvasAgg(fig)
        ax = fig.add_axes((0.1, 0.6, 0.8, 0.3))  # above the legend's band
        for name in names:
            ax.plot([1, 2], [1, 2], label=name, **dict(styles[name], ms=4))
        (front,) = ax.plot([1, 2], [2, 1], **FRONT_STYLE)
        if legend:
            handles, labels = ax.get_legend_handles_labels()
            fig.legend(handles + [front], labels + ["Pareto front (right)"], loc="lower center", ncol=4,
                       fontsize=7, frameon=False)
        else:
            fig.figimage(*_legend_pixels(tuple((n, tuple(styles[n].items())) for n in names), 96), origin="upper")
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba()).astype(int)

    drawn, pasted = figure_with(legend=True), figure_with(legend=False)
    assert (drawn[:, :, :3] < 250).any(axis=2)[-60:].any()  # the band holds the legend
    assert np.abs(drawn - pasted).max() <= 1  # 8-bit rounding of the alpha blend, no more

    data = pd.DataFrame({"series": np.repeat(names, 3), "nfe_budget": np.tile([2, 4, 8], 5),
                         "nfe": np.tile([2, 4, 8], 5), "wall_s": np.arange(1, 16) / 100,
                         "mmd": np.geomspace(1, 1e-3, 15)})
    job = ("m", "mmd", data, styles, 96, "nfe")
    _legend_pixels.cache_clear()
    first = render_plot(job)
    assert _legend_pixels.cache_info().misses == 1 and render_plot(job) == first
