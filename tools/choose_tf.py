"""Choose a model's default failure threshold Tf on the validation set, store it in the weights file, and
measure what it flags: real faces (tight and detector-style boxes) and boxes that hold no face.

    python tools/choose_tf.py --weights runs/musica68.h5 --val ../shared/data/val_merl_aflw.h5 \
        --test ../shared/data/test_aflw2000.h5 --write

Rule: Tf = the QUANTILE (default 0.97) quantile of the last iteration's error estimate E over the validation
faces given their tight boxes, rounded up to 4 decimals: it flags about 3% of validation faces, the share of
real faces the project accepts to flag, so that as many non-face boxes as possible are flagged. The test set
only measures. Non-face boxes: for each test image, a square of the face's size placed where it overlaps the
face box by less than 10% of its area (the image's background, hair, shoulders), and synthetic textures
(noise, gradients, stripes, checkerboards, blocks, flat colour, smooth random fields) with a box in the middle.
--write stores Tf as the file's default_tf (the file is rewritten through a temporary file; its tensors and
provenance are unchanged).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import musica_ref as m                                          # noqa: E402
from musica_ref import metrics                                  # noqa: E402
from musica_ref.data import FaceSet                             # noqa: E402


def last_errors(model, images, boxes, batch=32) -> np.ndarray:
    """The last iteration's error estimate E of every (image, box), all iterations run."""
    out = []
    for k in range(0, len(boxes), batch):
        out += [r.errors[-1] for r in model.predict_batch(images[k:k + batch], boxes[k:k + batch], tf=math.inf)]
    return np.asarray(out)


def background_boxes(faces, rng, tries=50):
    """(image, box) pairs: per face, a square of the face box's longer side inside the image, overlapping the
    face box by less than 10% of its own area (none where no such place is found)."""
    pairs = []
    for i in range(len(faces)):
        img = faces.image(i)
        H, W = img.shape[:2]
        b = faces.boxes[i]
        s = max(b[2] - b[0], b[3] - b[1])
        if s >= min(H, W):
            continue
        for _ in range(tries):
            x0, y0 = rng.uniform(0, W - s), rng.uniform(0, H - s)
            ix = max(0.0, min(x0 + s, b[2]) - max(x0, b[0]))
            iy = max(0.0, min(y0 + s, b[3]) - max(y0, b[1]))
            if ix * iy < 0.1 * s * s:
                pairs.append((img, (x0, y0, x0 + s, y0 + s)))
                break
    return pairs


def textures(n, rng, size=200):
    """n synthetic texture images (size, size, 3) uint8 of 7 kinds, and the box in their middle."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for k in range(n):
        kind = k % 7
        if kind == 0:
            t = rng.uniform(0, 255, (size, size, 3))                                    # white noise
        elif kind == 1:
            a = rng.uniform(0, 2 * np.pi)
            t = (np.cos(a) * xx + np.sin(a) * yy)[:, :, None] * rng.uniform(50, 255, 3)   # gradient
        elif kind == 2:
            f = rng.uniform(3, 20)
            t = (np.sin(2 * np.pi * f * (xx + rng.uniform(-1, 1) * yy)) > 0)[:, :, None] * rng.uniform(50, 255, 3)
        elif kind == 3:
            c = int(rng.integers(5, 40))
            t = (((np.arange(size)[:, None] // c) + (np.arange(size)[None] // c)) % 2)[:, :, None] * 255.0
            t = np.repeat(t, 3, 2)
        elif kind == 4:
            c = int(rng.integers(10, 50))
            t = np.kron(rng.uniform(0, 255, (size // c + 1, size // c + 1, 3)), np.ones((c, c, 1)))[:size, :size]
        elif kind == 5:
            t = np.ones((size, size, 3)) * rng.uniform(0, 255, 3)                          # flat colour
        else:
            low = rng.normal(0, 1, (8, 8, 3))                                              # smooth random field
            t = np.kron(low, np.ones((size // 8, size // 8, 1)))
            from scipy.ndimage import gaussian_filter
            t = gaussian_filter(t, (size / 16, size / 16, 0))
            t = (t - t.min()) / (np.ptp(t) + 1e-9) * 255
        out.append(np.clip(t, 0, 255).astype(np.uint8))
    m0 = size * 0.2
    return out, (m0, m0, size - m0, size - m0)


def write_default_tf(path, tf, how=None):
    """Store tf as the default_tf of the weights file at `path` (rewritten through a temporary file), and
    `how` it was chosen as its provenance entry default_tf_rule."""
    import h5py
    w = m.load_weights(path)
    if how:
        w.provenance["default_tf_rule"] = how
    with h5py.File(path, "r") as f:
        dtype = f["iteration_0/recurrent/weight"].dtype
    tmp = str(path) + ".tmp"
    m.save_weights(tmp, dataclasses.replace(w, default_tf=float(tf)), dtype=dtype)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="a model name or weights file")
    ap.add_argument("--val", required=True, help="the validation set Tf is chosen on")
    ap.add_argument("--test", help="the set to measure on (faces, and non-face boxes in its images)")
    ap.add_argument("--quantile", type=float, default=0.97)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--textures", type=int, default=700)
    ap.add_argument("--write", action="store_true", help="store Tf in the weights file")
    a = ap.parse_args(argv)
    model = m.MuSiCa.load(a.weights)
    val = FaceSet(a.val, a.limit)
    e_val = last_errors(model, [val.image(i) for i in range(len(val))], [tuple(b) for b in val.boxes])
    tf = math.ceil(float(np.quantile(e_val, a.quantile)) * 1e4) / 1e4
    print(f"{a.weights}: Tf = {tf:.4f} ({tf * 100:.2f}% of the eye-corner distance), the {a.quantile} quantile "
          f"of E on {len(val)} validation faces ({np.mean(e_val > tf) * 100:.2f}% of them flagged)")
    if a.test:
        test = FaceSet(a.test, a.limit)
        imgs = [test.image(i) for i in range(len(test))]
        e = last_errors(model, imgs, [tuple(b) for b in test.boxes])
        res = model.predict_batch(imgs, [tuple(b) for b in test.boxes], tf=math.inf)
        nme = np.array([metrics.face_nme(r.landmarks, g, v)["box"]
                        for r, g, v in zip(res, test.landmarks, test.visible)])
        flag = e > tf
        print(f"test faces, tight boxes: {flag.mean() * 100:.2f}% flagged ({flag.sum()} of {len(flag)}); "
              f"NME_box of the flagged {np.mean(nme[flag]) * 100 if flag.any() else float('nan'):.2f}% against "
              f"{np.mean(nme[~flag]) * 100:.2f}% of the others")
        rng = np.random.default_rng(0)
        bg = background_boxes(test, rng)
        e_bg = last_errors(model, [p[0] for p in bg], [p[1] for p in bg])
        tex, box = textures(a.textures, rng)
        e_tex = last_errors(model, tex, [box] * len(tex))
        print(f"non-face boxes flagged: background {np.mean(e_bg > tf) * 100:.1f}% of {len(bg)}, textures "
              f"{np.mean(e_tex > tf) * 100:.1f}% of {len(tex)}, together "
              f"{np.mean(np.concatenate([e_bg, e_tex]) > tf) * 100:.1f}%")
    if a.write:
        write_default_tf(m.models.resolve_model(a.weights), tf,
                         f"the {a.quantile} quantile of the last error estimate on {Path(a.val).name} "
                         f"({len(val)} faces, tight boxes; tools/choose_tf.py)")
        print(f"wrote default_tf = {tf:.4f} into {a.weights}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
