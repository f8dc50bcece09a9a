"""MuSiCa beside dlib's ERT shape predictor (the classic CPU landmark predictor), measured by the same
evaluation code on the same faces, in one run, with the time per face of each.

    pip install dlib-bin face-recognition-models        # optional extra ("compare" in setup.py)
    python tools/compare_dlib.py --weights weights/musica68.h5 --data ../shared/data/test_aflw2000.h5 \
        --fit ../shared/data/train_merl_aflw.h5

dlib's 68-point model was trained on boxes from dlib's HOG face detector, which sit differently on the face
than our tight landmark boxes. So dlib is reported twice: given our tight box as it is, and given the box
mapped to a dlib-style box by a fixed transform (centre shift and side scale relative to the tight box),
fitted by median on training faces where dlib's detector finds the face.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import musica_ref as m                                          # noqa: E402
from musica_ref import metrics                                  # noqa: E402
from musica_ref.evaluate import face_nmes, nanmean             # noqa: E402
from musica_ref.data import FaceSet                             # noqa: E402


def dlib_model():
    import dlib
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        raise SystemExit("pip install face-recognition-models (it carries dlib's 68-point model file)")
    path = os.path.join(spec.submodule_search_locations[0], "models", "shape_predictor_68_face_landmarks.dat")
    return dlib, dlib.shape_predictor(path)


def fit_box_map(dlib, faces: FaceSet, n: int):
    """Median (dx, dy, sw, sh): dlib box centre = tight centre + (dx w, dy h), sides = (sw w, sh h)."""
    det = dlib.get_frontal_face_detector()
    rows = []
    for i in range(min(n, len(faces))):
        img = faces.image(i)
        tb = faces.boxes[i]
        for r in det(img, 1):                            # upsample once: the training crops are small
            cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
            w, h = tb[2] - tb[0], tb[3] - tb[1]
            tcx, tcy = (tb[0] + tb[2]) / 2, (tb[1] + tb[3]) / 2
            if abs(cx - tcx) < 0.3 * w and abs(cy - tcy) < 0.3 * h:
                rows.append(((cx - tcx) / w, (cy - tcy) / h, r.width() / w, r.height() / h))
    if not rows:
        raise SystemExit("dlib's detector found no face to fit the box map on")
    return np.median(np.asarray(rows), axis=0), len(rows)


def map_box(box, t):
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = (box[0] + box[2]) / 2 + t[0] * w, (box[1] + box[3]) / 2 + t[1] * h
    return (cx - t[2] * w / 2, cy - t[3] * h / 2, cx + t[2] * w / 2, cy + t[3] * h / 2)


def run_dlib(dlib, sp, faces, boxes):
    preds, t = np.zeros((len(faces), 68, 2)), 0.0
    for i in range(len(faces)):
        img = faces.image(i)
        b = boxes[i]
        rect = dlib.rectangle(int(round(b[0])), int(round(b[1])), int(round(b[2])), int(round(b[3])))
        t0 = time.perf_counter()
        s = sp(img, rect)
        t += time.perf_counter() - t0
        preds[i] = [(p.x, p.y) for p in s.parts()]
    return preds, t / len(faces)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--fit", required=True, help="training set to fit the box map on")
    ap.add_argument("--fit-faces", type=int, default=2000)
    ap.add_argument("--limit", type=int)
    a = ap.parse_args(argv)
    dlib, sp = dlib_model()
    t_map, n_fit = fit_box_map(dlib, FaceSet(a.fit, a.fit_faces), a.fit_faces)
    faces = FaceSet(a.data, a.limit)
    systems = []
    for w in a.weights:
        model = m.MuSiCa.load(w)
        model.predict(faces.image(0), faces.boxes[0])                     # compile / load the cache
        preds, t = np.zeros((len(faces), 68, 2)), 0.0
        for i in range(len(faces)):
            t0 = time.perf_counter()
            preds[i] = model.predict(faces.image(i), faces.boxes[i]).landmarks
            t += time.perf_counter() - t0
        systems.append((f"{model.weights.variant.name} (tight box)", preds, t / len(faces)))
    p, t = run_dlib(dlib, sp, faces, faces.boxes)
    systems.append(("dlib ERT (tight box)", p, t))
    p, t = run_dlib(dlib, sp, faces, [map_box(b, t_map) for b in faces.boxes])
    systems.append(("dlib ERT (dlib-style box)", p, t))
    bins = metrics.yaw_bin(faces.pose[:, 1]) if faces.pose is not None else None
    print(f"{Path(a.data).name}: {len(faces)} faces. Box map fitted on {n_fit} detections: centre shift "
          f"({t_map[0]:+.3f} w, {t_map[1]:+.3f} h), sides ({t_map[2]:.3f} w, {t_map[3]:.3f} h)")
    head = f"{'system':<28} {'NME_box %':>9} {'NME_io %':>8}"
    if bins is not None:
        head += f" {'[0,30)':>7} {'[30,60)':>7} {'[60,90]':>7} {'3DDFA bal.':>10}"
    print(head + f" {'ms/face':>8}")
    for name, preds, t in systems:
        n = face_nmes(preds, faces.landmarks, faces.visible)
        line = f"{name:<28} {nanmean(n['box']) * 100:>9.3f} {nanmean(n['io']) * 100:>8.3f}"
        if bins is not None:
            line += "".join(f" {nanmean(n['box'][bins == k]) * 100:>7.3f}" for k in range(3))
            if "landmarks_3dmm" in faces.extra:
                n3 = face_nmes(preds, faces.extra["landmarks_3dmm"], np.ones(faces.landmarks.shape[:2], bool))["box"]
                line += f" {np.mean([nanmean(n3[bins == k]) for k in range(3)]) * 100:>10.3f}"
        print(line + f" {t * 1e3:>8.2f}")
    import platform
    print(f"one face at a time, single process; {platform.machine()}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
