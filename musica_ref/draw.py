"""Drawing results on their image with Pillow: each face's box, its landmarks joined as contours (jaw, brows,
nose, eyes, lips), the earlier iterations faint beneath the last one, and its error estimates, at a size that
scales with the face."""
from __future__ import annotations

import numpy as np

from .io import stretch_to_uint8

# the landmark groups drawn as lines: (first, last + 1, closed) per scheme (300W 68 points, WFLW 98 points)
CONTOURS = {
    68: [(0, 17, False), (17, 22, False), (22, 27, False), (27, 31, False), (31, 36, False),
         (36, 42, True), (42, 48, True), (48, 60, True), (60, 68, True)],
    98: [(0, 33, False), (33, 42, True), (42, 51, True), (51, 55, False), (55, 60, False),
         (60, 68, True), (68, 76, True), (76, 88, True), (88, 96, True)],
}
FINAL = (40, 255, 80)                          # the last iteration run
EARLIER = [(255, 160, 0), (0, 190, 255)]       # iterations before it, coarse to fine
BOX_OK, BOX_FAILED = (255, 255, 255), (255, 60, 60)


def _as_display(image) -> np.ndarray:
    """image as uint8 for display: (H, W) or (H, W, 3|4) as they are; float or 16-bit stretched to 0..255."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return arr if arr.dtype == np.uint8 else stretch_to_uint8(arr)


def _font(size):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:                          # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def draw_results(image, results):
    """A PIL RGB image: `image` ((H, W), (H, W, 1|3|4), any dtype) with every Result of `results` drawn on
    it. Sizes follow each face's box: lines about 1/150 of its longer side, points 1/100."""
    from PIL import Image, ImageDraw
    im = Image.fromarray(_as_display(image))
    if im.mode != "RGB":                       # (convert copies even an RGB image)
        im = im.convert("RGB")
    dr = ImageDraw.Draw(im)
    for r in results:
        box = r.box if r.box is not None else _tight(r.landmarks)
        x0, y0, x1, y1 = [float(v) for v in box]
        side = max(x1 - x0, y1 - y0, 1.0)
        lw = max(1, int(round(side / 150)))
        dr.rectangle([x0, y0, x1, y1], outline=BOX_FAILED if r.failed else BOX_OK, width=lw)
        for it, pts in enumerate(r.history[:-1]):          # earlier iterations: small points
            rad = max(1.0, side / 220)
            col = EARLIER[min(it, len(EARLIER) - 1)]
            for x, y in pts:
                dr.ellipse([x - rad, y - rad, x + rad, y + rad], fill=col)
        pts = r.landmarks
        for a, b, closed in CONTOURS.get(len(pts), []):
            line = [tuple(p) for p in pts[a:b]] + ([tuple(pts[a])] if closed else [])
            dr.line(line, fill=FINAL, width=lw, joint="curve")
        rad = max(1.5, side / 100)
        for x, y in pts:
            dr.ellipse([x - rad, y - rad, x + rad, y + rad], fill=FINAL)
        label = "E " + " ".join(f"{e * 100:.1f}%" for e in r.errors) + ("  FAILED" if r.failed else "")
        if r.score is not None:
            label = f"face {r.score:.2f}  " + label
        font = _font(max(10, int(side / 10)))
        tx, ty = x0, y0 - font.size * 1.3 if y0 - font.size * 1.3 >= 0 else y1 + 2
        bb = dr.textbbox((tx, ty), label, font=font)
        dr.rectangle([bb[0] - 2, bb[1] - 2, bb[2] + 2, bb[3] + 2], fill=(0, 0, 0))
        dr.text((tx, ty), label, fill=BOX_FAILED if r.failed else (255, 255, 255), font=font)
    return im


def _tight(points):
    p = np.asarray(points)
    return (*p.min(0), *p.max(0))
