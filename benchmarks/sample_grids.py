"""Sample grids: what each sampler draws at each NFE, from the same noise.

A sweep keeps the first samples of every cell's first batch (``previews/`` in the run directory,
see :meth:`benchmarks.sweep.execute.RunContext.save_preview`); the noise of that batch is the
same for every sampler of a model (seeded by seed and batch only). One PNG per model: rows are
sampler series, columns NFE budgets; an image-shaped model shows its first images decoded, a 2-D
model a scatter of its samples (blue) over exact data points (grey). Cells that did not finish
are marked with their status.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch

from .results import safe_file_name, write_bytes_atomic
from .sweep.execute import PREVIEW_DIR, preview_data_file_name, preview_file_name

__all__ = ["render_sample_grids", "grid_jobs", "render_grid", "drawn_grids", "write_sample_grids", "grid_file_name"]

IMAGE_PX = 28  # an image's side in the grid, at least (small images are enlarged by whole pixels)
SCATTER_PX = 96
GAP = 3
BACKGROUND, EMPTY = (255, 255, 255), (236, 236, 236)
DATA_GREY, SAMPLE_BLUE = (185, 185, 185), (31, 119, 180)


def grid_file_name(model: str) -> str:
    return f"samples_{safe_file_name(model, keep='-_.')}.png"


def _load(path: Path) -> Optional[torch.Tensor]:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _image_tile(images: torch.Tensor) -> np.ndarray:
    """Up to 4 images [k, C, H, W] in [-1, 1] as one 2 x 2 RGB tile."""
    imgs = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if imgs.shape[1] == 1:
        imgs = imgs.expand(-1, 3, -1, -1)
    scale = max(1, -(-IMAGE_PX // imgs.shape[-1]))
    imgs = imgs.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3).permute(0, 2, 3, 1).numpy()
    h, w = imgs.shape[1:3]
    tile = np.full((2 * h + 1, 2 * w + 1, 3), 255, dtype=np.uint8)
    for k, img in enumerate(imgs[:4]):
        r, c = divmod(k, 2)
        tile[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = img
    return tile


def _dots(tile: np.ndarray, points: torch.Tensor, extent: Tuple[float, float, float, float],
          colour: Tuple[int, int, int]) -> None:
    """Points (n, 2) drawn into a square tile as 2x2 dots; outside = not drawn."""
    x0, x1, y0, y1 = extent
    p = points.double().numpy()
    p = p[np.isfinite(p).all(axis=1)]
    col = ((p[:, 0] - x0) / (x1 - x0) * (SCATTER_PX - 2)).astype(int)
    row = ((y1 - p[:, 1]) / (y1 - y0) * (SCATTER_PX - 2)).astype(int)
    inside = (col >= 0) & (col < SCATTER_PX - 1) & (row >= 0) & (row < SCATTER_PX - 1)
    tile[row[inside, None] + (0, 0, 1, 1), col[inside, None] + (0, 1, 0, 1)] = colour  # the four pixels at once


def _scatter_background(data: Optional[torch.Tensor], extent: Tuple[float, float, float, float]) -> np.ndarray:
    """A scatter tile's data dots (grey), the same under every cell of a model: drawn once."""
    tile = np.full((SCATTER_PX, SCATTER_PX, 3), 255, dtype=np.uint8)
    if data is not None:
        _dots(tile, data, extent, DATA_GREY)
    return tile


def _scatter_tile(points: torch.Tensor, background: np.ndarray, extent: Tuple[float, float, float, float]
                  ) -> np.ndarray:
    """Points (n, 2) drawn as 2x2 dots (blue) over the data's background in a framed square tile."""
    tile = background.copy()
    _dots(tile, points, extent, SAMPLE_BLUE)
    tile[[0, -1], :] = 200
    tile[:, [0, -1]] = 200
    return tile


def _extent(data: Optional[torch.Tensor], previews: List[torch.Tensor]) -> Tuple[float, float, float, float]:
    # Without data, the samples' central 95% (a diverging sampler's outliers must not set the scale).
    ref = (data if data is not None else torch.cat(previews)).double().numpy()
    ref = ref[np.isfinite(ref).all(axis=1)]
    q = 0.5 if data is not None else 2.5
    lo, hi = np.percentile(ref, q, axis=0), np.percentile(ref, 100 - q, axis=0)
    centre, half = (lo + hi) / 2, max(hi - lo) / 2 * 1.25 + 1e-9
    return centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _compose(model: str, seed: int, rows: List[str], columns: List[int], tiles: Dict[Tuple[str, int], object],
             caption: str) -> bytes:
    """Tiles (an RGB array, or a status word) under NFE headers, beside series labels, as PNG."""
    from PIL import Image, ImageDraw

    font, small = _font(13), _font(11)
    arrays = [t for t in tiles.values() if isinstance(t, np.ndarray)]
    th, tw = arrays[0].shape[:2] if arrays else (SCATTER_PX, SCATTER_PX)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 12 + max(probe.textlength(r, font=font) for r in rows)
    top = 58
    width = int(label_w + len(columns) * (tw + GAP) + GAP)
    height = int(top + len(rows) * (th + GAP) + GAP)
    image = Image.new("RGB", (max(width, int(probe.textlength(caption, font=small)) + 12), height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((6, 4), f"{model} (seed {seed})", fill=(0, 0, 0), font=font)
    draw.text((6, 20), caption, fill=(60, 60, 60), font=small)
    draw.text((6, top - 18), "series \\ NFE", fill=(90, 90, 90), font=small)
    for j, nfe in enumerate(columns):
        x = label_w + GAP + j * (tw + GAP)
        draw.text((x + tw / 2 - probe.textlength(str(nfe), font=font) / 2, top - 20), str(nfe), fill=(0, 0, 0),
                  font=font)
    for i, series in enumerate(rows):
        y = top + GAP + i * (th + GAP)
        draw.text((6, y + th / 2 - 7), series, fill=(0, 0, 0), font=font)
        for j, nfe in enumerate(columns):
            x = int(label_w + GAP + j * (tw + GAP))
            tile = tiles.get((series, nfe))
            if isinstance(tile, np.ndarray):
                image.paste(Image.fromarray(tile), (x, y))
            else:
                draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=EMPTY)
                if tile:
                    draw.text((x + 4, y + th / 2 - 6), str(tile), fill=(160, 30, 30), font=small)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def render_sample_grids(run_dir: Path, df: pd.DataFrame) -> List[Tuple[str, bytes]]:
    """(model, PNG bytes) for each model whose cells left previews in ``run_dir``: one
    :func:`render_grid` per :func:`grid_jobs` job (which worker processes can share out)."""
    return drawn_grids([render_grid(job) for job in grid_jobs(run_dir, df)])


def drawn_grids(rendered: List[Tuple[str, Optional[bytes]]]) -> List[Tuple[str, bytes]]:
    """The :func:`render_grid` results that are grids (a model whose previews are missing gives none)."""
    return [(model, png) for model, png in rendered if png is not None]


def grid_jobs(run_dir: Path, df: pd.DataFrame) -> List[Tuple[Path, str, pd.DataFrame]]:
    """One job per model for :func:`render_grid` (none when the run kept no previews)."""
    folder = Path(run_dir) / PREVIEW_DIR
    if not folder.is_dir():
        return []
    return [(folder, model, df[df["model"] == model]) for model in dict.fromkeys(df["model"])]


def render_grid(job: Tuple[Path, str, pd.DataFrame]) -> Tuple[str, Optional[bytes]]:
    """One model's grid (None when its cells left no previews)."""
    folder, model, sub = job
    seed = int(sub["seed"].min())
    sub = sub[sub["seed"] == seed]
    rows = list(dict.fromkeys(sub["series"]))
    columns = sorted(int(n) for n in sub["nfe_budget"].unique())
    previews: Dict[Tuple[str, int], torch.Tensor] = {}
    status: Dict[Tuple[str, int], str] = {}
    # The columns zipped: iterrows built a Series per row, a tenth of a grid's time.
    for cell_model, series, nfe, cell_status in zip(sub["model"], sub["series"], sub["nfe_budget"], sub["status"]):
        key = (series, int(nfe))
        if cell_status != "ok":
            status[key] = str(cell_status)
            continue
        tensor = _load(folder / preview_file_name((cell_model, series, int(nfe), seed)))
        if tensor is not None:
            previews[key] = tensor
    if not previews:
        return model, None
    first = next(iter(previews.values()))
    if first.dim() == 4:
        tiles: Dict[Tuple[str, int], object] = {k: _image_tile(v) for k, v in previews.items()}
        caption = f"the first {min(4, len(first))} samples from the same noise; rows sampler series, columns NFE"
    else:
        data = _load(folder / preview_data_file_name(model))
        extent = _extent(data, list(previews.values()))
        background = _scatter_background(data, extent)
        tiles = {k: _scatter_tile(v, background, extent) for k, v in previews.items()}
        caption = (f"{len(first)} samples (blue) from the same noise over exact data (grey); rows sampler "
                   f"series, columns NFE")
    tiles.update(status)
    return model, _compose(model, seed, rows, columns, tiles, caption)


def write_sample_grids(run_dir: Path, df: pd.DataFrame,
                       rendered: Optional[List[Tuple[str, bytes]]] = None) -> List[Path]:
    """The grids (:func:`render_sample_grids`, or the ones given) as PNGs in the run directory."""
    written = []
    for model, png in render_sample_grids(run_dir, df) if rendered is None else rendered:
        path = Path(run_dir) / grid_file_name(model)
        write_bytes_atomic(path, png)
        written.append(path)
    return written
