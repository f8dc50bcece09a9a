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
import csv
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import musica_ref as m                                          # noqa: E402
from musica_ref import geometry, metrics                        # noqa: E402
from tools.trainer.data import FaceSet                          # noqa: E402


def predict_all(model, faces, method, ts, tf, batch, progress=True):
    """Predictions (n, N, 2), iterations (n,), multiply-adds (n,), last error estimate (n,), seconds/face."""
    n = len(faces)
    preds = np.zeros((n, faces.n_landmarks, 2))
    its, macs, est = np.zeros(n, int), np.zeros(n, int), np.zeros(n)
    t0 = time.perf_counter()
    compute = 0.0
    for k in range(0, n, batch):
        sel = range(k, min(n, k + batch))
        imgs = [faces.image(i) for i in sel]
        boxes = [faces.boxes[i] for i in sel]
        t = time.perf_counter()
        if method == "mean-shape":
            for i, box in zip(sel, boxes):
                fr = geometry.face_frame(box)
                preds[i] = geometry.level_to_image(geometry.initial_shape(model.mean_shape, fr), fr, 0)
        else:
            for i, r in zip(sel, model.predict_batch(imgs, boxes, ts=ts, tf=tf)):
                preds[i], its[i], macs[i], est[i] = r.landmarks, r.iterations, r.multiply_adds, r.errors[-1]
        compute += time.perf_counter() - t
        if progress:
            done = sel[-1] + 1
            rate = done / (time.perf_counter() - t0)
            bar = "#" * int(30 * done / n)
            print(f"\r[{bar:<30}] {done}/{n} faces, {rate:.0f} faces/s, ETA {(n - done) / rate:.0f} s",
                  end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return preds, its, macs, est, compute / n


def nanmean(x) -> float:
    """Mean over the non-NaN entries; NaN (no warning) when there are none."""
    x = np.asarray(x, np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else float("nan")


def summarise(faces, preds, gt_key="landmarks"):
    gt = faces.landmarks if gt_key == "landmarks" else faces.extra[gt_key]
    vis = faces.visible if gt_key == "landmarks" else np.ones(gt.shape[:2], bool)
    per = [metrics.face_nme(p, g, v) for p, g, v in zip(preds, gt, vis)]
    return {k: np.array([d[k] for d in per]) for k in ("box", "io", "ip")}


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
    preds, its, macs, est, sec = predict_all(model, faces, a.method, a.ts, a.tf, a.batch)
    nme = summarise(faces, preds)
    name = f"{a.method} ({Path(a.weights).name}{', int8 recurrent' if a.int8 else ''})" if a.method == "musica" \
        else "mean shape in the box"
    print(f"{name} on {Path(a.data).name}: {len(faces)} faces; {platform.processor() or platform.machine()}")
    print(f"  NME_box {nanmean(nme['box']) * 100:.3f}%   NME_io {nanmean(nme['io']) * 100:.3f}% "
          f"({np.sum(~np.isnan(nme['io']))} faces with both eye corners)   NME_ip {nanmean(nme['ip']) * 100:.3f}% "
          f"({np.sum(~np.isnan(nme['ip']))} faces)")
    io = nme["io"][~np.isnan(nme["io"])]
    print(f"  failure rate (NME_io > 10%) {nanmean(io > 0.10) * 100:.2f}%   CED area to 10%: NME_box "
          f"{metrics.ced_auc(nme['box']):.4f}, NME_io {metrics.ced_auc(nme['io']):.4f}")
    if a.method == "musica":
        print(f"  mean iterations {its.mean():.3f}, mean multiply-adds {macs.mean() / 1e6:.2f} M, "
              f"{sec * 1e3:.1f} ms/face (batches of {a.batch})")
    if faces.pose is not None:
        bins = metrics.yaw_bin(faces.pose[:, 1])
        parts = [f"[{lo:.0f},{min(hi, 90):.0f}{')' if hi < 90 else ']'} {nanmean(nme['box'][bins == k]) * 100:.3f}% (n={np.sum(bins == k)})"
                 for k, (lo, hi) in enumerate(metrics.YAW_BINS)]
        print("  NME_box by |yaw|: " + ", ".join(parts))
        if "landmarks_3dmm" in faces.extra:
            n3 = summarise(faces, preds, "landmarks_3dmm")["box"]
            means = [nanmean(n3[bins == k]) for k in range(3)]
            print(f"  3DDFA protocol (3DMM ground truth, own-box NME): " +
                  ", ".join(f"{x * 100:.3f}%" for x in means) + f", balanced mean {np.mean(means) * 100:.3f}%")
    if a.csv:
        with open(a.csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "nme_box", "nme_io", "nme_ip", "iterations", "multiply_adds", "estimate"]
                       + (["yaw"] if faces.pose is not None else []))
            for i in range(len(faces)):
                w.writerow([i, f"{nme['box'][i]:.6f}", f"{nme['io'][i]:.6f}", f"{nme['ip'][i]:.6f}", its[i],
                            macs[i], f"{est[i]:.6f}"] + ([f"{faces.pose[i, 1]:.2f}"] if faces.pose is not None else []))
    if a.ced:
        from tools.plot import line_chart
        series = []
        for k in ("box", "io"):
            t, c = metrics.ced_curve(nme[k])
            series.append((f"NME_{k} (area {metrics.ced_auc(nme[k]):.3f})", t * 100, c))
        line_chart(a.ced, series, title=f"CED: {name}, {Path(a.data).name}", xlabel="NME (%)",
                   ylabel="fraction of faces", ylim=(0, 1))


if __name__ == "__main__":
    main()
