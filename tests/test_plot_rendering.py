"""The trade-off plots' log tick labels: matplotlib's own (LogFormatterSciNotation) on the same
ticks, written in plain text with unicode superscripts instead of mathtext (cheaper to draw)."""
import matplotlib

matplotlib.use("Agg")

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, LogLocator

from benchmarks.report import MINOR_SUBS, _log_ticks


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
