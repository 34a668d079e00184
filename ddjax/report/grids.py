"""A grid of a set's images with each tile's class name under it, as a matplotlib ``Figure``."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

MAX_TILES = 100
COLUMNS = 10
PAD = 0.08          # gap between tiles, in tiles
NAME_CHARS = 14


def pick_tiles(names: list[str] | None, count: int, max_tiles: int = MAX_TILES) -> list[int]:
    """Which images to show: all of them up to ``max_tiles``, else the first few of each class
    (in class order of first appearance), as evenly as ``max_tiles`` allows."""
    if count <= max_tiles:
        return list(range(count))
    if not names:
        return list(range(max_tiles))
    by_class: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_class.setdefault(name, []).append(i)
    per_class = max(1, max_tiles // len(by_class))
    return [i for indices in by_class.values() for i in indices[:per_class]][:max_tiles]


def labelled_grid(images01: np.ndarray, names: list[str] | None, title: str,
                  max_tiles: int = MAX_TILES) -> Figure:
    """Tiles row-major, ``COLUMNS`` per row, the class name under each."""
    images = np.clip(np.asarray(images01, np.float32), 0.0, 1.0)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    shown = pick_tiles(names, len(images), max_tiles)
    columns = min(COLUMNS, len(shown))
    rows = math.ceil(len(shown) / columns)
    tile = 1.15                                     # inches per tile
    label = 0.22 if names else 0.0                  # inches for the name under a tile
    fig = Figure(figsize=(columns * tile + 0.3, rows * (tile + label) + 0.6), layout="constrained")
    height, width = images.shape[1:3]
    gap_h, gap_w = int(round(PAD * height)), int(round(PAD * width))
    cell_h = height + gap_h + int(round(label / tile * height))
    cell_w = width + gap_w
    canvas = np.ones((rows * cell_h, columns * cell_w, 3), np.float32)
    ax = fig.subplots()
    for slot, i in enumerate(shown):
        top, left = (slot // columns) * cell_h, (slot % columns) * cell_w
        canvas[top:top + height, left:left + width] = images[i]
    ax.imshow(canvas, interpolation="nearest" if height < 96 else "antialiased")
    if names:
        for slot, i in enumerate(shown):
            top, left = (slot // columns) * cell_h, (slot % columns) * cell_w
            name = str(names[i])
            if len(name) > NAME_CHARS:
                name = name[:NAME_CHARS - 1] + "…"
            ax.text(left + width / 2, top + height + 1, name, ha="center", va="top", fontsize=7)
    ax.set_axis_off()
    count = (f"{len(shown)} of {len(images)} images shown" if len(shown) < len(images)
             else f"{len(images)} images")
    ax.set_title(f"{title} ({count})", fontsize=10)
    return fig
