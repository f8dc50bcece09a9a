"""Drawing a result on its image with Pillow: box, landmarks of every iteration, error estimates."""
from __future__ import annotations

import numpy as np

# one colour per iteration (coarse -> fine), the last one drawn on top
_COLOURS = [(255, 170, 0), (0, 200, 255), (0, 255, 0)]


def draw_result(image, box, result):
    """A PIL image: `image` (H, W, 3) with the face box, the landmarks after every iteration run
    (orange, cyan, green) and the error estimate of each iteration written above the box."""
    from PIL import Image, ImageDraw
    arr = np.asarray(image)
    if arr.dtype != np.uint8:                      # float or 16-bit: stretch to 0..255 for display
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / (hi - lo if hi > lo else 1.0) * 255).astype(np.uint8)
    im = Image.fromarray(arr).convert("RGB")
    dr = ImageDraw.Draw(im)
    x0, y0, x1, y1 = [float(v) for v in box]
    lw = max(1, int(round(max(x1 - x0, y1 - y0) / 150)))
    dr.rectangle([x0, y0, x1, y1], outline=(255, 0, 0), width=lw)
    r = max(1.5, max(x1 - x0, y1 - y0) / 120)
    for it, pts in enumerate(result.history):
        col = _COLOURS[min(it, len(_COLOURS) - 1)]
        for x, y in pts:
            dr.ellipse([x - r, y - r, x + r, y + r], fill=col)
    label = "  ".join(f"E{i}={e * 100:.2f}%" for i, e in enumerate(result.errors))
    if result.failed:
        label += "  FAILED"
    dr.text((x0, max(0.0, y0 - 12)), label, fill=(255, 255, 0))
    return im
