"""Images as a person looks at them: a PNG grid (NumPy and Pillow only, so the client can use it too)."""
import io
import math
from typing import Optional

import numpy as np


def png_grid(images: np.ndarray, columns: Optional[int] = None) -> bytes:
    """Images (N, H, W, C) with values in [0, 1] tiled into one PNG with 2-pixel white gaps, `columns` wide
    (default: a square)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images (N, H, W, 1 or 3); got shape {images.shape}")
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.ones((rows * (height + 2) + 2, columns * (width + 2) + 2, channels), np.float32)
    for i, image in enumerate(images):
        top, left = 2 + (i // columns) * (height + 2), 2 + (i % columns) * (width + 2)
        grid[top:top + height, left:left + width] = image
    pixels = np.round(grid * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()
