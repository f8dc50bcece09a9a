"""Evaluate a model on an annotated face set: NME_box, NME_io, NME_ip, failure rate (NME_io > 10%), CED area
up to 10%, the |yaw| split when the set has poses, and (AFLW2000-3D) the 3DDFA protocol on its 3DMM ground
truth; per-face results to CSV, the CED curve to PNG.

    python tools/evaluate.py --weights weights/musica19.h5 --data ../shared/data/test_aflw2000.h5 \
        --csv runs/test19.csv --ced runs/test19-ced.png

--method mean-shape evaluates the trivial baseline: the weights' mean shape placed in the box, no network.
The face box is the set's box (the tight box of the visible ground-truth points). Thresholds default to
Ts = 0 (every iteration) and Tf = inf.
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import musica_ref as m                                          # noqa: E402
from musica_ref import geometry, metrics                        # noqa: E402
from musica_ref.data import FaceSet                             # noqa: E402
from musica_ref.evaluate import Evaluation, evaluate, face_nmes, nanmean  # noqa: E402


def mean_shape_evaluation(model, faces) -> Evaluation:
    """The trivial baseline: the weights' mean shape placed in each face's box, no network."""
    preds = np.stack([geometry.level_to_image(geometry.initial_shape(model.mean_shape, fr), fr, 0)
                      for fr in (geometry.face_frame(b) for b in faces.boxes)])
    n = len(faces)
    return Evaluation(faces, preds, face_nmes(preds, faces.landmarks, faces.visible), np.zeros(n, int),
                      np.zeros(n, np.int64), np.full(n, np.nan), np.zeros(n, bool), 0.0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True, help="HDF5 set (../shared/data layout) or 300W-style folder")
    ap.add_argument("--method", choices=["musica", "mean-shape"], default="musica")
    ap.add_argument("--ts", type=float, default=0.0)
    ap.add_argument("--tf", type=float, default=math.inf)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--int8", action="store_true", help="recurrent layers stored as int8 (musica_ref/quantize.py)")
    ap.add_argument("--csv", help="per-face results")
    ap.add_argument("--ced", help="CED curve PNG")
    a = ap.parse_args(argv)
    model = m.MuSiCa.load(a.weights, recurrent="int8" if a.int8 else "stored")
    faces = FaceSet(a.data, a.limit)
    if a.method == "musica":
        ev = evaluate(model, faces, a.ts, a.tf, a.batch, progress=True)
        name = f"musica ({Path(a.weights).name}{', int8 recurrent' if a.int8 else ''})"
        lines = ev.lines()
    else:
        ev = mean_shape_evaluation(model, faces)
        name = "mean shape in the box"
        lines = [ln for ln in ev.lines() if "mean iterations" not in ln]
    print(f"{name} on {Path(a.data).name}: {len(faces)} faces; {platform.processor() or platform.machine()}")
    print("\n".join(lines))
    if faces.pose is not None and "landmarks_3dmm" in faces.extra:
        bins = metrics.yaw_bin(faces.pose[:, 1])
        n3 = face_nmes(ev.predictions, faces.extra["landmarks_3dmm"], np.ones(faces.landmarks.shape[:2], bool))["box"]
        means = [nanmean(n3[bins == k]) for k in range(3)]
        print("  3DDFA protocol (3DMM ground truth, own-box NME): " +
              ", ".join(f"{x * 100:.3f}%" for x in means) + f", balanced mean {np.mean(means) * 100:.3f}%")
    if a.csv:
        ev.write_csv(a.csv)
    if a.ced:
        from tools.plot import line_chart
        series = []
        for k in ("box", "io"):
            t, c = metrics.ced_curve(ev.nme[k])
            series.append((f"NME_{k} (area {metrics.ced_auc(ev.nme[k]):.3f})", t * 100, c))
        line_chart(a.ced, series, title=f"CED: {name}, {Path(a.data).name}", xlabel="NME (%)",
                   ylabel="fraction of faces", ylim=(0, 1))


if __name__ == "__main__":
    main()
