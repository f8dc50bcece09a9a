"""How much a model's accuracy depends on the face box it is given: NME_box on a face set for each box
convention, beside the tight box's on the same faces, overall and by |yaw| bin.

    python tools/evaluate_boxes.py --weights musica68 --data ../shared/data/test_aflw2000.h5

Conventions (w, h: the sides of the tight box of the ground-truth points):
    tight       the tight box of the ground-truth points (what the models were first trained on)
    dlib        dlib's HOG detector's box as it comes, on the faces it finds (the detection that overlaps the
                tight box most, if their IoU is at least 0.25)
    square1.2   a square of side 1.2 max(w, h), its centre moved up 0.10 h (a typical detector box)
    square1.4   a square of side 1.4 max(w, h), its centre moved up 0.15 h (a loose detector box)
    shrunk0.85  the tight box shrunk to 0.85 of its sides about its centre (a detector cutting the jaw)
The ratio column divides a row's NME_box by the tight box's on the same faces. NME_box is the mean point
error over sqrt(w h) of the tight box, in %. --refine k runs each face k more times on the box of its own
landmarks (MuSiCa.predict's refine).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import musica_ref as m                                          # noqa: E402
from musica_ref import metrics                                  # noqa: E402
from musica_ref.data import FaceSet                             # noqa: E402


def _around(box, side_w, side_h, up):
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - up * (y1 - y0)
    return (cx - side_w / 2, cy - side_h / 2, cx + side_w / 2, cy + side_h / 2)


def _square(scale, up):
    return lambda b: _around(b, scale * max(b[2] - b[0], b[3] - b[1]), scale * max(b[2] - b[0], b[3] - b[1]), up)


SYNTHETIC = {
    "tight": lambda b: tuple(b),
    "square1.2": _square(1.2, 0.10),
    "square1.4": _square(1.4, 0.15),
    "shrunk0.85": lambda b: _around(b, 0.85 * (b[2] - b[0]), 0.85 * (b[3] - b[1]), 0.0),
}
MIN_IOU = 0.25


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detector_boxes(faces, detector=None, progress=True):
    """Per face: the detected box that overlaps its tight box most (IoU >= MIN_IOU), or None. Also the mean
    seconds of detection per image."""
    out, t = [], 0.0
    for i in range(len(faces)):
        t0 = time.perf_counter()
        found = m.detect_faces(faces.image(i), detector=detector)
        t += time.perf_counter() - t0
        best = max(found, key=lambda f: iou(f.box, faces.boxes[i]), default=None)
        out.append(best.box if best is not None and iou(best.box, faces.boxes[i]) >= MIN_IOU else None)
        if progress and (i + 1) % 50 == 0:
            print(f"\rdetecting: {i + 1}/{len(faces)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return out, t / max(len(faces), 1)


def nme_box(model, faces, boxes, refine=0, batch=32):
    """NME_box (n,) of the faces whose box is not None (NaN for the others)."""
    idx = [i for i, b in enumerate(boxes) if b is not None]
    nme = np.full(len(faces), np.nan)
    for k in range(0, len(idx), batch):
        sel = idx[k:k + batch]
        res = model.predict_batch([faces.image(i) for i in sel], [boxes[i] for i in sel], refine=refine)
        for i, r in zip(sel, res):
            nme[i] = metrics.face_nme(r.landmarks, faces.landmarks[i], faces.visible[i])["box"]
    return nme


def table(model, faces, conventions, refine=0):
    """Rows (name, faces, NME_box (n,), NME_box of the tight box on the same faces (n,))."""
    tight = nme_box(model, faces, [tuple(b) for b in faces.boxes], refine)
    rows = []
    for name, boxes in conventions.items():
        nme = tight if name == "tight" else nme_box(model, faces, boxes, refine)
        rows.append((name, nme, np.where(np.isnan(nme), np.nan, tight)))
    return rows


def format_rows(rows, bins=None) -> str:
    head = f"{'box':<11} {'faces':>5} {'NME_box':>8} {'tight':>7} {'ratio':>6} {'>10%':>6}"
    if bins is not None:
        head += "".join(f" {name:>17}" for name in ("|yaw| [0,30)", "[30,60)", "[60,90]"))
    lines = [head]
    for name, nme, tight in rows:
        ok = ~np.isnan(nme)
        line = (f"{name:<11} {ok.sum():>5} {np.mean(nme[ok]) * 100:>8.3f} {np.mean(tight[ok]) * 100:>7.3f} "
                f"{np.mean(nme[ok]) / np.mean(tight[ok]):>6.3f} {np.mean(nme[ok] > 0.10) * 100:>5.1f}%")
        if bins is not None:
            for k in range(3):
                sel = ok & (bins == k)
                line += (f" {np.mean(nme[sel]) * 100:>7.3f} ({np.mean(nme[sel]) / np.mean(tight[sel]):.3f})"
                         if sel.any() else f" {'-':>17}")
        lines.append(line)
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", default=["musica68"], help="model names or weights files")
    ap.add_argument("--data", required=True, help="HDF5 set (../shared/data layout) or 300W-style folder")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--refine", type=int, default=0)
    ap.add_argument("--no-dlib", action="store_true", help="leave out the dlib detector row")
    a = ap.parse_args(argv)
    faces = FaceSet(a.data, a.limit)
    conventions = {name: [f(b) for b in faces.boxes] for name, f in SYNTHETIC.items()}
    det_s = None
    if not a.no_dlib:
        conventions["dlib"], det_s = detector_boxes(faces)
        conventions = {k: conventions[k] for k in ("tight", "dlib", "square1.2", "square1.4", "shrunk0.85")}
    bins = metrics.yaw_bin(faces.pose[:, 1]) if faces.pose is not None else None
    print(f"{Path(a.data).name}: {len(faces)} faces; NME_box in % of sqrt(w h) of the tight box; "
          f"by |yaw|: NME_box (ratio to the tight box on the same faces)" if bins is not None else
          f"{Path(a.data).name}: {len(faces)} faces; NME_box in % of sqrt(w h) of the tight box")
    if det_s is not None:
        rel = np.array([((d[2] - d[0]) / (t[2] - t[0]), (d[3] - d[1]) / (t[3] - t[1]),
                         ((d[0] + d[2]) - (t[0] + t[2])) / 2 / (t[2] - t[0]),
                         ((d[1] + d[3]) - (t[1] + t[3])) / 2 / (t[3] - t[1]))
                        for d, t in zip(conventions["dlib"], faces.boxes) if d is not None])
        q = np.percentile(rel, [10, 50, 90], axis=0) if len(rel) else np.full((3, 4), np.nan)
        print(f"dlib detector: {len(rel)} faces found, {det_s * 1e3:.1f} ms per image; its box against the "
              f"tight box (10th / 50th / 90th percentile): width {'/'.join(f'{v:.2f}' for v in q[:, 0])} w, "
              f"height {'/'.join(f'{v:.2f}' for v in q[:, 1])} h, centre moved "
              f"{'/'.join(f'{v:+.2f}' for v in q[:, 2])} w, {'/'.join(f'{v:+.2f}' for v in q[:, 3])} h")
    for w in a.weights:
        model = m.MuSiCa.load(w)
        t0 = time.perf_counter()
        rows = table(model, faces, conventions, a.refine)
        print(f"\n{w}{f', refine={a.refine}' if a.refine else ''} ({time.perf_counter() - t0:.0f} s)")
        print(format_rows(rows, bins))
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
