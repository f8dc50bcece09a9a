"""Evaluating a model on an annotated face set (docs/model.md §10): NME_box, NME_io and NME_ip per face, their
means, the failure rate (NME_io > 10%), the cumulative error distribution and its area up to 10%, the split by
|yaw| when the set has poses, and what the model said (iterations, multiply-adds, error estimate, failed).
`musica-ref evaluate MODEL DATA` runs it; tools/evaluate.py adds the trivial baseline, the 3DDFA protocol and
the CED figure. The face box is the set's own (musica_ref.data)."""
from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import metrics
from .data import FaceSet
from .errors import InputError

# NME_io above this is a failure (the 300W convention)
FAILURE_NME = 0.10


def nanmean(x) -> float:
    """Mean over the non-NaN entries; NaN (no warning) when there are none."""
    x = np.asarray(x, np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else float("nan")


@dataclass
class Evaluation:
    """Per face (n,): nme {"box", "io", "ip"} (NaN where a normaliser is undefined), iterations,
    multiply_adds, estimate (the last error estimate E), failed (the model's flag); predictions (n, N, 2);
    seconds_per_face (the model's calls only)."""
    faces: FaceSet
    predictions: np.ndarray
    nme: dict
    iterations: np.ndarray
    multiply_adds: np.ndarray
    estimate: np.ndarray
    failed: np.ndarray
    seconds_per_face: float

    def summary(self) -> dict:
        """The set's figures: mean NME per normaliser (fractions), failure rate, CED areas, flagged share,
        mean iterations and multiply-adds, and NME_box by |yaw| bin when the set has poses."""
        io = self.nme["io"][~np.isnan(self.nme["io"])]
        out = {"faces": len(self.faces), **{f"nme_{k}": nanmean(v) for k, v in self.nme.items()},
               "faces_with_io": int(len(io)), "failure_rate": nanmean(io > FAILURE_NME),
               "ced_auc_box": metrics.ced_auc(self.nme["box"]), "ced_auc_io": metrics.ced_auc(self.nme["io"]),
               "flagged": float(np.mean(self.failed)), "mean_iterations": float(np.mean(self.iterations)),
               "mean_multiply_adds": float(np.mean(self.multiply_adds)), "ms_per_face": 1e3 * self.seconds_per_face}
        if self.faces.pose is not None:
            bins = metrics.yaw_bin(self.faces.pose[:, 1])
            out["nme_box_by_yaw"] = [nanmean(self.nme["box"][bins == k]) for k in range(len(metrics.YAW_BINS))]
            out["faces_by_yaw"] = [int(np.sum(bins == k)) for k in range(len(metrics.YAW_BINS))]
        return out

    def lines(self) -> list[str]:
        """The summary as text, percentages with three decimals."""
        s = self.summary()
        out = [f"  NME_box {s['nme_box'] * 100:.3f}%   NME_io {s['nme_io'] * 100:.3f}% ({s['faces_with_io']} faces "
               f"with both eye corners)   NME_ip {s['nme_ip'] * 100:.3f}% ({int(np.sum(~np.isnan(self.nme['ip'])))} "
               f"faces)",
               f"  failure rate (NME_io > 10%) {s['failure_rate'] * 100:.2f}%   CED area to 10%: NME_box "
               f"{s['ced_auc_box']:.4f}, NME_io {s['ced_auc_io']:.4f}",
               f"  mean iterations {s['mean_iterations']:.3f}, mean multiply-adds {s['mean_multiply_adds'] / 1e6:.2f} M, "
               f"{s['ms_per_face']:.1f} ms/face; flagged as failed by the model: {s['flagged'] * 100:.2f}%"]
        if "nme_box_by_yaw" in s:
            parts = [f"[{lo:.0f},{min(hi, 90):.0f}{')' if hi < 90 else ']'} {v * 100:.3f}% (n={n})"
                     for (lo, hi), v, n in zip(metrics.YAW_BINS, s["nme_box_by_yaw"], s["faces_by_yaw"])]
            out.append("  NME_box by |yaw|: " + ", ".join(parts))
        return out

    def write_csv(self, path) -> None:
        """One row per face: index, name, the three NMEs, iterations, multiply-adds, estimate, failed (and yaw)."""
        pose = self.faces.pose
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "name", "nme_box", "nme_io", "nme_ip", "iterations", "multiply_adds", "estimate",
                        "failed"] + (["yaw"] if pose is not None else []))
            for i in range(len(self.faces)):
                w.writerow([i, self.faces.name(i), f"{self.nme['box'][i]:.6f}", f"{self.nme['io'][i]:.6f}",
                            f"{self.nme['ip'][i]:.6f}", int(self.iterations[i]), int(self.multiply_adds[i]),
                            f"{self.estimate[i]:.6f}", int(self.failed[i])]
                           + ([f"{pose[i, 1]:.2f}"] if pose is not None else []))

    def write_ced(self, path) -> None:
        """The cumulative error distributions as CSV: threshold, then the fraction of faces at or under it for
        NME_box and NME_io."""
        t, box = metrics.ced_curve(self.nme["box"])
        _, io = metrics.ced_curve(self.nme["io"])
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["threshold", "nme_box", "nme_io"])
            for row in zip(t, box, io):
                w.writerow([f"{v:.6f}" for v in row])


def face_nmes(predictions, gt, visible) -> dict:
    """{"box", "io", "ip"}: (n,) NME arrays of predictions (n, N, 2) against ground truth (n, N, 2)."""
    per = [metrics.face_nme(p, g, v) for p, g, v in zip(predictions, gt, visible)]
    return {k: np.array([d[k] for d in per]) for k in ("box", "io", "ip")}


def evaluate(model, faces: FaceSet, ts: float = 0.0, tf: float | None = None, batch: int = 32,
             progress: bool = False) -> Evaluation:
    """Run `model` on every face of `faces` from its own box, `batch` faces per call, and measure it.
    progress: a progress bar on standard error."""
    if faces.n_landmarks != model.n_landmarks:
        raise InputError(f"the face set has {faces.n_landmarks} landmarks a face, the model {model.n_landmarks}")
    n = len(faces)
    preds = np.zeros((n, faces.n_landmarks, 2))
    its, macs, est, failed = np.zeros(n, int), np.zeros(n, np.int64), np.zeros(n), np.zeros(n, bool)
    t0 = time.perf_counter()
    compute = 0.0
    for k in range(0, n, batch):
        sel = range(k, min(n, k + batch))
        imgs = [faces.image(i) for i in sel]
        t = time.perf_counter()
        results = model.predict_batch(imgs, [faces.boxes[i] for i in sel], ts=ts, tf=tf)
        compute += time.perf_counter() - t
        for i, r in zip(sel, results):
            preds[i], its[i], macs[i], est[i], failed[i] = (r.landmarks, r.iterations, r.multiply_adds,
                                                            r.errors[-1], r.failed)
        if progress:
            done = sel[-1] + 1
            rate = done / (time.perf_counter() - t0)
            print(f"\r[{'#' * int(30 * done / n):<30}] {done}/{n} faces, {rate:.0f} faces/s, "
                  f"ETA {(n - done) / rate:.0f} s", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return Evaluation(faces, preds, face_nmes(preds, faces.landmarks, faces.visible), its, macs, est, failed,
                      compute / n)
