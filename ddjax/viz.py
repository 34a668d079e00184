"""PNG grids of image sets, so a distilled set (or any sample of data) can be looked at."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image


def image_grid(images_NHWC: np.ndarray, *, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile images into one uint8 HWC array, row-major, with ``pad`` black pixels between tiles.

    ``images_NHWC`` is uint8, or float in [0, 1] (clipped), with 1 or 3 channels.
    """
    images = np.asarray(images_NHWC)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, H, W, 1|3), got {images.shape}")
    if images.dtype != np.uint8:
        images = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.zeros((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), np.uint8)
    for i, image in enumerate(images):
        top = pad + (i // columns) * (height + pad)
        left = pad + (i % columns) * (width + pad)
        grid[top:top + height, left:left + width] = image
    return grid


def save_image_grid(images_NHWC: np.ndarray, path: str | Path, *, columns: int | None = None,
                    scale: int = 1) -> Path:
    """Write ``image_grid`` as a PNG, enlarged ``scale`` times (nearest) for small images."""
    grid = image_grid(images_NHWC, columns=columns)
    picture = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
