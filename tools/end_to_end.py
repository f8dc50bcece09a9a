"""Photo to landmarks with no ground-truth box anywhere: dlib's face detector finds the faces, then each model
(and dlib's own ERT shape predictor, from the same boxes) places the landmarks. Reports the faces found,
NME_box by |yaw| bin on those faces, and milliseconds per image for detection and for landmarks.

    pip install ".[detect,compare]"
    python tools/end_to_end.py --data ../shared/data/test_aflw2000.h5

A face counts as found when a detection overlaps its annotated tight box with IoU >= 0.25 (the annotation
only decides which detection is the annotated face, for scoring); that detection's box, as it comes, is what
every predictor gets; the models run as `predict_image` runs them (refine=DETECTED_REFINE unless --refine
says otherwise). Times are one image at a time in one process, on whatever cores the machine has: run
it on an otherwise idle machine.
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
from tools.compare_dlib import dlib_model                       # noqa: E402
from tools.evaluate_boxes import detector_boxes                 # noqa: E402
from musica_ref.data import FaceSet                             # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", nargs="+", default=["musica19", "musica34", "musica68"])
    ap.add_argument("--limit", type=int)
    ap.add_argument("--refine", type=int, default=m.model.DETECTED_REFINE)
    a = ap.parse_args(argv)
    faces = FaceSet(a.data, a.limit)
    boxes, det_s = detector_boxes(faces)
    found = [i for i, b in enumerate(boxes) if b is not None]
    dlib, sp = dlib_model()
    systems = []
    for w in a.weights:
        model = m.MuSiCa.load(w)
        model.predict(faces.image(found[0]), boxes[found[0]], refine=a.refine)      # compile or load the cache
        preds, t = {}, 0.0
        for i in found:
            img = faces.image(i)
            t0 = time.perf_counter()
            preds[i] = model.predict(img, boxes[i], refine=a.refine).landmarks
            t += time.perf_counter() - t0
        systems.append((f"{Path(w).stem}" + (f", refine={a.refine}" if a.refine else ""), preds, t / len(found)))
    preds, t = {}, 0.0
    for i in found:
        img = faces.image(i)
        b = boxes[i]
        rect = dlib.rectangle(int(round(b[0])), int(round(b[1])), int(round(b[2])) - 1, int(round(b[3])) - 1)
        t0 = time.perf_counter()
        s = sp(img, rect)
        t += time.perf_counter() - t0
        preds[i] = np.array([(p.x, p.y) for p in s.parts()], np.float64)
    systems.append(("dlib ERT", preds, t / len(found)))
    bins = metrics.yaw_bin(faces.pose[found, 1]) if faces.pose is not None else None
    print(f"{Path(a.data).name}: {len(faces)} faces; dlib's detector found {len(found)} "
          f"({len(found) / len(faces) * 100:.1f}%), {det_s * 1e3:.1f} ms per image")
    head = f"{'landmarks from the detector box':<32} {'NME_box %':>9} {'>10%':>6}"
    if bins is not None:
        head += "".join(f" {name + ' (n=' + str(np.sum(bins == k)) + ')':>19}"
                        for k, name in enumerate(("[0,30)", "[30,60)", "[60,90]")))
    print(head + f" {'ms/face':>8}")
    for name, preds, t in systems:
        nme = np.array([metrics.face_nme(preds[i], faces.landmarks[i], faces.visible[i])["box"] for i in found])
        line = f"{name:<32} {nme.mean() * 100:>9.3f} {np.mean(nme > 0.10) * 100:>5.1f}%"
        if bins is not None:
            line += "".join(f" {nme[bins == k].mean() * 100:>19.3f}" if np.any(bins == k) else f" {'-':>19}"
                            for k in range(3))
        print(line + f" {t * 1e3:>8.2f}")
    print(f"one image at a time, single process; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
