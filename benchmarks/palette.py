"""Series styles that tell every series of a plot apart.

Colours are picked greedily in CIELAB (each new colour the farthest, by Euclidean distance
Delta E 1976, from all picked so far, among sRGB colours dark enough to read on white), in the
spirit of Glasbey et al. 2007 ("Colour displays for categorical images"). A series keeps its
style in every plot of a run (styles follow the run's series order), and past the palette's
length the marker and line style change as well, so no two series share all three.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["distinct_colours", "series_styles", "delta_e", "MARKERS", "LINESTYLES"]

MARKERS = "osD^v<>pP*Xh"
LINESTYLES = ("-", "--", "-.", ":")
PALETTE_SIZE = 32


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (..., 3) -> CIELAB (D65)."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def delta_e(a: Sequence[float], b: Sequence[float]) -> float:
    """CIE76 colour difference between two sRGB colours given in [0, 1]."""
    lab = _srgb_to_lab(np.array([a, b], dtype=float))
    return float(np.linalg.norm(lab[0] - lab[1]))


@lru_cache(maxsize=None)
def distinct_colours(n: int = PALETTE_SIZE) -> List[Tuple[float, float, float]]:
    """``n`` colours, each as far in CIELAB from the earlier ones as the candidates allow;
    lightness capped at 80 so that a thin line stays visible on white."""
    levels = np.linspace(0.0, 1.0, 16)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    lab = _srgb_to_lab(grid)
    usable = (lab[:, 0] <= 80) & (lab[:, 0] >= 20)
    grid, lab = grid[usable], lab[usable]
    start = int(np.argmin(np.linalg.norm(grid - np.array([0.12, 0.47, 0.71]), axis=1)))  # a familiar first blue
    picked = [start]
    nearest = np.linalg.norm(lab - lab[start], axis=1)
    while len(picked) < n:
        nxt = int(np.argmax(nearest))
        picked.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[nxt], axis=1))
    return [tuple(float(c) for c in grid[i]) for i in picked]


def series_styles(series: Sequence[str]) -> Dict[str, Dict[str, object]]:
    """matplotlib keyword styles (color, marker, linestyle) for each series, in the given order."""
    colours = distinct_colours()
    styles = {}
    for k, name in enumerate(dict.fromkeys(series)):
        lap = k // len(colours)
        styles[name] = {"color": colours[k % len(colours)], "marker": MARKERS[(k + lap) % len(MARKERS)],
                        "linestyle": LINESTYLES[lap % len(LINESTYLES)]}
    return styles
