"""Draw the shipped example images (no photograph, no data set):

- `examples/face.png`: a cartoon face, the input of the golden files and benchmarks. Its face box is
  FACE_BOX = (92, 112, 228, 236): the tight box of where the 68 landmarks belong (eyebrows to chin).
- `examples/two-faces.png`: two drawn faces laid out on the models' mean shape, with shading, ears, neck and
  shoulders, so that dlib's face detector finds both: the README's first command runs on it.

    python tools/make_example.py
"""
import sys
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


ROOT = Path(__file__).resolve().parent.parent
# (box, skin, hair) of each face of two-faces.png: box = where the mean shape is laid (its longer side = 142 px
# of the box frame), skin and hair colours
TWO_FACES = [((60, 110, 200, 250), (214, 170, 140), (60, 40, 28)),
             ((300, 90, 420, 210), (180, 130, 100), (30, 25, 20))]


def _draw_face(d, shade, mean_shape, box, skin, hair):
    """One face on the mean shape (68 points, box frame) laid into `box`; its skin outline also into the
    mask `shade` (for the shading)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    P = mean_shape * (max(w, h) / 142.0) + np.array([x0, y0])
    cx = (x0 + x1) / 2
    pt = lambda a: [tuple(p) for p in a]                                             # noqa: E731
    dark = tuple(int(c * 0.7) for c in skin)
    d.rectangle([cx - 0.28 * w, y1 - 0.1 * h, cx + 0.28 * w, y1 + 0.5 * h], fill=tuple(int(c * 0.8) for c in skin))
    d.chord([cx - w, y1 + 0.35 * h, cx + w, y1 + 1.6 * h], 180, 360, fill=(70, 90, 140))   # shoulders
    for ex in (x0 - 0.04 * w, x1 + 0.04 * w):                                          # ears
        d.ellipse([ex - 0.07 * w, y0 + 0.25 * h, ex + 0.07 * w, y0 + 0.6 * h], fill=tuple(int(c * 0.9) for c in skin))
    top = [(cx + 0.5 * w * np.cos(t), y0 + 0.05 * h - 0.45 * h * np.sin(t)) for t in np.linspace(0, np.pi, 30)]
    head = pt(P[0:17]) + top                                                         # jaw, then the forehead
    d.polygon(head, fill=skin)
    shade.polygon(head, fill=255)
    d.chord([x0 - 0.06 * w, y0 - 0.55 * h, x1 + 0.06 * w, y0 + 0.35 * h], 180, 360, fill=hair)
    for a, b in ((17, 22), (22, 27)):                                                # brows
        d.line(pt(P[a:b]), fill=hair, width=max(2, int(0.07 * h)))
    for a in (36, 42):                                                               # eyes in their sockets
        e = P[a:a + 6]
        c = e.mean(0)
        d.ellipse([c[0] - 0.16 * w, c[1] - 0.09 * h, c[0] + 0.16 * w, c[1] + 0.08 * h], fill=dark)
        d.polygon(pt(e), fill=(245, 245, 245))
        r = 0.045 * h
        d.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=(50, 35, 25))
    d.line(pt(P[27:31]), fill=dark, width=max(2, int(0.03 * w)))                      # nose
    d.polygon(pt(P[31:36]) + [tuple(P[30])], fill=dark)
    mc = P[48:68].mean(0)
    lips = (P[48:60] - mc) * 1.3 + mc
    d.polygon(pt(lips), fill=(150, 60, 60))
    d.line([tuple(lips[0]), tuple(lips[6])], fill=(90, 30, 30), width=max(1, int(0.02 * h)))


def make_two_faces(size=(480, 320)) -> Image.Image:
    sys.path.insert(0, str(ROOT))
    from musica_ref import load_weights
    from musica_ref.models import model_path
    mean_shape = load_weights(model_path("musica19")).mean_shape
    rng = np.random.default_rng(7)
    W, H = size
    im = Image.fromarray(rng.normal(128, 10, (H, W, 3)).clip(0, 255).astype(np.uint8))
    mask = Image.new("L", size, 0)
    d, shade = ImageDraw.Draw(im), ImageDraw.Draw(mask)
    for box, skin, hair in TWO_FACES:
        _draw_face(d, shade, mean_shape, box, skin, hair)
    a = np.asarray(im).astype(np.float64)
    fac = np.ones((H, W))
    xs = np.arange(W)
    for (x0, _, x1, _), _, _ in TWO_FACES:                   # skin darker towards the sides of each face
        near = (xs >= x0 - 0.2 * (x1 - x0)) & (xs <= x1 + 0.2 * (x1 - x0))
        fac[:, near] = 1 - 0.35 * np.clip(np.abs(xs[near] - (x0 + x1) / 2) / (0.6 * (x1 - x0)), 0, 1) ** 2
    m = np.asarray(mask) > 0
    a[m] *= fac[m][:, None]
    return Image.fromarray(a.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))


if __name__ == "__main__":
    for name, im in (("face.png", make_face()), ("two-faces.png", make_two_faces())):
        out = ROOT / "examples" / name
        im.save(out, optimize=True)
        print(f"wrote {out} ({out.stat().st_size} bytes)")
