"""Draw the shipped example image `examples/face.png`: a synthetic cartoon face (no photograph, no data set),
so that the README's first command has something to run on. Its face box is FACE_BOX = (92, 112, 228, 236):
the tight box of where the 68 landmarks belong (eyebrows to chin, jaw side to side), the kind of box the
models are trained with.

    python tools/make_example.py
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HEAD = (96, 72, 224, 232)          # where the drawing puts the head (not the face box)
FACE_BOX = (92, 112, 228, 236)     # the face box to give the model


def make_face(size=(320, 320)) -> Image.Image:
    rng = np.random.default_rng(7)
    bg = rng.normal(120, 12, (size[1], size[0], 3)).clip(0, 255).astype(np.uint8)   # textured wall
    im = Image.fromarray(bg)
    d = ImageDraw.Draw(im)
    x0, y0, x1, y1 = HEAD
    d.ellipse([x0 - 6, y0 - 20, x1 + 6, y1 + 4], fill=(224, 180, 150))                # head
    d.chord([x0 - 10, y0 - 34, x1 + 10, y0 + 60], 180, 360, fill=(70, 45, 30))       # hair
    for cx in (x0 + 36, x1 - 36):                                                    # eyes and brows
        d.ellipse([cx - 14, y0 + 62, cx + 14, y0 + 78], fill=(250, 250, 250))
        d.ellipse([cx - 6, y0 + 64, cx + 6, y0 + 76], fill=(60, 40, 20))
        d.line([cx - 16, y0 + 50, cx + 16, y0 + 46], fill=(70, 45, 30), width=4)
    cx = (x0 + x1) // 2
    d.polygon([(cx, y0 + 80), (cx - 12, y0 + 118), (cx + 12, y0 + 118)], fill=(205, 155, 125))  # nose
    d.chord([cx - 30, y0 + 122, cx + 30, y0 + 150], 0, 180, fill=(170, 60, 60))       # mouth
    return im.filter(ImageFilter.GaussianBlur(1.0))


if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "examples" / "face.png"
    make_face().save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size} bytes), face box {','.join(map(str, FACE_BOX))}")
