"""Tracking against detection on every frame, on moving-face sequences made from real photos at run time.

    pip install ".[detect,compare]"
    python tools/track_bench.py --data ../shared/data/test_aflw2000.h5 [--faces 12] [--frames 40] \
        [--model musica19] [--exit-ts 0.0448] [--detect-every 10]

Each sequence is one test face (its photo and 68 ground-truth points) moved frame by frame by a smooth,
known motion: translation, scale and in-plane rotation along sines, a slow brightness change and sensor
noise (sigma 4 grey levels); the ground truth moves with the image. Only faces dlib's detector finds in the
first frame are used. Nothing is saved. Methods, on the same frames:

- detect + predict: dlib's detector and predict_image (refine 1) on every frame;
- tracker: musica_ref.Tracker (the box from the previous frame's landmarks), smoothing on, and off; with
  --exit-ts also with early exit at that Ts (e.g. musica19's validation operating point, 0.0448);
- dlib: dlib's detector and its ERT 68-point shape predictor on every frame (`compare` extra).

Reported per method: NME_box over the frames with a face (% of sqrt(w h) of the ground truth's tight box),
frames with no face near the truth (lost) and how many times the face was found again after them, mean
iterations and multiply-adds per frame, milliseconds per frame (detection, landmarks, total) on 1 and 2
threads, and per face (the median frame with one face, less the detector's time). Then, on still faces
with sensor noise only, the jitter: how far the landmarks move from one frame to the next (root mean
square over landmarks and frames, % of the box, from the sixth frame on), for the tracker with and without
smoothing and for predict on the fixed true box; and on faces moving at a constant speed, the smoother's
lag (frames). Prints the machine.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools.numba_cache import use_keyed_cache  # noqa: E402

use_keyed_cache()

import numba                                                    # noqa: E402

import musica_ref as m                                          # noqa: E402
from musica_ref import geometry                                 # noqa: E402
from musica_ref.data import FaceSet                             # noqa: E402
from musica_ref.detect import DlibDetector                      # noqa: E402
from musica_ref.track import SHAPE_BETA, SHAPE_MIN_CUTOFF, SMOOTH_BETA, SMOOTH_MIN_CUTOFF  # noqa: E402
from tools.time_predict import machine                          # noqa: E402
from tools.trainer.data import apply_affine, warp_affine        # noqa: E402

NOISE = 4.0               # sensor noise, grey levels
LOST = 0.5                # a frame's face is lost if its landmarks' mean error exceeds this fraction of the box


def motion(k, n, size, kind):
    """The 2x3 affine of frame k of n about the face's centre (at the origin): 'move' (translation, scale,
    rotation along sines), 'still' (none), 'slide' (constant speed, size / 60 px a frame)."""
    if kind == "still":
        return np.array([[1.0, 0, 0], [0, 1.0, 0]])
    if kind == "slide":
        return np.array([[1.0, 0, size / 60 * k], [0, 1.0, 0]])
    ph = 2 * math.pi * k / n
    s = 1 + 0.12 * math.sin(ph)
    r = math.radians(10) * math.sin(1.3 * ph)
    tx, ty = 0.15 * size * math.sin(ph), 0.10 * size * math.sin(2 * ph)
    c, si = s * math.cos(r), s * math.sin(r)
    return np.array([[c, -si, tx], [si, c, ty]])


def sequence(image, gt, n, kind, rng):
    """(frames (n, H, W, 3) uint8, ground truth (n, 68, 2)) of one face."""
    box = geometry.tight_box(gt)
    size = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
    centre = gt.mean(0)
    frames, truths = [], []
    for k in range(n):
        M = motion(k, n, size, kind)
        A = np.hstack([M[:, :2], (M[:, :2] @ -centre + centre + M[:, 2])[:, None]])     # about the centre
        f = warp_affine(image, A, image.shape[:2])
        f = f * (1 + 0.15 * math.sin(2 * math.pi * k / n)) + rng.normal(0, NOISE, f.shape)
        frames.append(np.clip(f, 0, 255).astype(np.uint8))
        truths.append(apply_affine(A, gt))
    return frames, truths


def nme(pred, gt):
    b = geometry.tight_box(gt)
    return float(np.mean(np.linalg.norm(pred - gt, axis=1)) / math.sqrt((b[2] - b[0]) * (b[3] - b[1])))


class Timed:
    """A detector callable that adds up its own time."""

    def __init__(self, det):
        self.det, self.seconds = det, 0.0

    def __call__(self, image):
        t = time.perf_counter()
        out = self.det(image)
        self.seconds += time.perf_counter() - t
        return out


def closest(results, gt):
    """The result nearest the ground truth, or None when none is within LOST."""
    best = min(results, key=lambda r: nme(r.landmarks, gt), default=None)
    return best if best is not None and nme(best.landmarks, gt) <= LOST else None


def smooth_args(args):
    """The Tracker's smoother settings from the command line."""
    return {"min_cutoff": args.min_cutoff, "beta": args.beta, "shape_min_cutoff": args.shape_min_cutoff,
            "shape_beta": args.shape_beta}


def run_method(name, seqs, model, args, dlib_parts):
    """One method over every sequence: dict of totals."""
    tot = {"nme": [], "lost": 0, "recovered": 0, "frames": 0, "iterations": 0, "macs": 0, "detect_s": 0.0,
           "total_s": 0.0, "per_face_s": [], "faces": 0, "one_iteration": 0}
    ts = args.exit_ts if name.endswith("early exit") else args.ts
    for frames, truths in seqs:
        det = Timed(DlibDetector())
        tracker = None
        if name.startswith("tracker"):
            tracker = m.Tracker(model, ts=ts, detector=det, detect_every=args.detect_every,
                                smoothing=name != "tracker, no smoothing", **smooth_args(args))
        lost = False
        for frame, gt in zip(frames, truths):
            t0, d0 = time.perf_counter(), det.seconds
            if tracker is not None:
                results = tracker.update(frame)
            elif name == "detect + predict":
                results = model.predict_image(frame, ts=ts, detector=det)
            else:                                           # dlib: detector and ERT
                dlib, predictor = dlib_parts
                faces = m.detect_faces(frame, detector=det)
                results = []
                for f in faces:
                    x0, y0, x1, y1 = (int(round(v)) for v in f.box)
                    shape = predictor(frame, dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
                    results.append(m.Result(np.array([[p.x, p.y] for p in shape.parts()], float), np.zeros(1),
                                            0, False, 0, np.zeros((1, 68, 2))))
            dt = time.perf_counter() - t0
            tot["total_s"] += dt
            if len(results) == 1:                     # one face: the frame's time less the detector's
                tot["per_face_s"].append(dt - (det.seconds - d0))
            tot["frames"] += 1
            r = closest(results, gt)
            if r is None:
                tot["lost"] += 1
                lost = True
                continue
            tot["recovered"] += lost                  # found again after lost frames
            lost = False
            tot["nme"].append(nme(r.landmarks, gt))
            tot["iterations"] += sum(x.iterations for x in results)
            tot["macs"] += sum(x.multiply_adds for x in results)
            tot["faces"] += len(results)
            tot["one_iteration"] += sum(x.iterations == 1 for x in results)
        tot["detect_s"] += det.seconds
    return tot


def jitter(seqs, model, args):
    """Root mean square of the landmarks' frame-to-frame movement, % of the box, per method (frames 5 on)."""
    out = {"tracker, smoothing": [], "tracker, no smoothing": [], "predict on the fixed true box": []}
    for frames, truths in seqs:
        b = geometry.tight_box(truths[0])
        size = math.sqrt((b[2] - b[0]) * (b[3] - b[1]))
        for name in out:
            if name.startswith("tracker"):
                tr = m.Tracker(model, ts=args.ts, detector=DlibDetector(), detect_every=0,
                               smoothing=name == "tracker, smoothing", **smooth_args(args))
                pts = [tr.update(f) for f in frames]
                pts = [closest(r, g) for r, g in zip(pts, truths)]
                if any(p is None for p in pts):
                    continue
                pts = np.stack([p.landmarks for p in pts])
            else:
                pts = np.stack([model.predict(f, b, ts=args.ts).landmarks for f in frames])
            step = np.linalg.norm(np.diff(pts[5:], axis=0), axis=2)            # (frames - 6, 68)
            out[name].append(100 * math.sqrt(np.mean(step ** 2)) / size)
    return {k: float(np.mean(v)) if v else float("nan") for k, v in out.items()}


def lag(seqs, model, args):
    """The smoothed landmarks' mean offset behind the unsmoothed ones along the motion, in frames."""
    lags = []
    for frames, truths in seqs:
        b = geometry.tight_box(truths[0])
        speed = math.sqrt((b[2] - b[0]) * (b[3] - b[1])) / 60                # px a frame (motion 'slide')
        a = m.Tracker(model, ts=args.ts, detector=DlibDetector(), detect_every=0, smoothing=True,
                      **smooth_args(args))
        r = m.Tracker(model, ts=args.ts, detector=DlibDetector(), detect_every=0, smoothing=False)
        for k, f in enumerate(frames):
            sa, sr = a.update(f), r.update(f)
            if k >= 10 and len(sa) == 1 and len(sr) == 1:
                lags.append((sr[0].landmarks[:, 0].mean() - sa[0].landmarks[:, 0].mean()) / speed)
    return float(np.mean(lags)) if lags else float("nan")


def profile(seq, model, args, rounds=5):
    """Print where the time of a tracked face goes (cProfile, own time per call, 1 thread)."""
    import cProfile
    import pstats
    frames, truths = seq
    numba.set_num_threads(1)
    box = geometry.tight_box(truths[0])
    tracker = m.Tracker(model, ts=args.ts, detector=lambda im: [box], detect_every=0, **smooth_args(args))
    tracker.update(frames[0])
    for f in frames[1:]:                                         # compiled and warm before profiling
        tracker.update(f)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(rounds):
        for f in frames:
            tracker.update(f)
    prof.disable()
    calls = rounds * len(frames)
    stats = pstats.Stats(prof).stats
    total = sum(v[2] for v in stats.values())
    print(f"one tracked face ({args.model}, {np.ptp(truths[0], axis=0).round().tolist()} px), 1 thread, cProfile, "
          f"{calls} frames: {1e3 * total / calls:.2f} ms a frame (with cProfile's own cost); own time per frame:")
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:12]
    for (file, line, name), v in rows:
        print(f"  {1e3 * v[2] / calls:6.3f} ms  {Path(file).name}:{name}")
    print(f"machine: {machine()}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="an annotated set with 68 points (test_aflw2000.h5)")
    ap.add_argument("--model", default="musica19")
    ap.add_argument("--faces", type=int, default=12)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--ts", type=float, default=0.0, help="early exit threshold (fraction) of every method")
    ap.add_argument("--exit-ts", type=float, help="also a tracker row with this early exit threshold")
    ap.add_argument("--detect-every", type=int, default=10)
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--no-dlib-ert", action="store_true", help="leave out dlib's ERT (no compare extra)")
    ap.add_argument("--tracker-only", action="store_true", help="only the tracker's rows (to tune the smoother)")
    ap.add_argument("--min-cutoff", type=float, default=SMOOTH_MIN_CUTOFF, help="the pose smoother's (Hz)")
    ap.add_argument("--beta", type=float, default=SMOOTH_BETA, help="the pose smoother's (per face size a second)")
    ap.add_argument("--profile", action="store_true",
                    help="only where a tracked face's time goes: cProfile of the tracker on one sequence, 1 thread")
    ap.add_argument("--shape-min-cutoff", type=float, default=SHAPE_MIN_CUTOFF, help="the shape smoother's (Hz)")
    ap.add_argument("--shape-beta", type=float, default=SHAPE_BETA, help="the shape smoother's")
    a = ap.parse_args(argv)
    model = m.MuSiCa.load(a.model, recurrent="int8" if a.int8 else "stored")
    faces = FaceSet(a.data)
    rng = np.random.default_rng(0)
    probe = DlibDetector()
    picked = [i for i in rng.permutation(len(faces))[:8 * a.faces] if probe(faces.image(int(i)))][:a.faces]
    moving = [sequence(faces.image(int(i)), faces.landmarks[int(i)], a.frames, "move", rng) for i in picked]
    if a.profile:
        return profile(moving[0], model, a)
    dlib_parts = None
    methods = ["tracker", "tracker, no smoothing"] if a.tracker_only else \
        ["detect + predict", "tracker", "tracker, no smoothing"]
    if a.exit_ts is not None:
        methods.insert(methods.index("tracker") + 1, "tracker, early exit")
    if not (a.no_dlib_ert or a.tracker_only):
        from tools.compare_dlib import dlib_model
        dlib_parts = dlib_model()
        methods.append("dlib detector + ERT")
    model.predict(moving[0][0][0], geometry.tight_box(moving[0][1][0]))           # compiled before timing
    rows = {}
    for threads in (1,) if a.tracker_only else (1, 2):
        numba.set_num_threads(threads)
        for name in methods:
            rows[name, threads] = run_method(name, moving, model, a, dlib_parts)
    n = sum(len(f) for f, _ in moving)
    print(f"{len(moving)} sequences of {a.frames} frames ({n} frames) from {Path(a.data).name}; model {a.model}"
          f"{' (int8)' if a.int8 else ''}, ts {a.ts:g}, detection every {a.detect_every} frames when tracking; "
          f"smoother: pose min_cutoff {a.min_cutoff:g} Hz, beta {a.beta:g}; shape {a.shape_min_cutoff:g} Hz, "
          f"{a.shape_beta:g}")
    if a.exit_ts is not None:
        print(f"tracker, early exit: Ts = {a.exit_ts:g}")
    print("| method | NME_box % | frames lost (found again after) | iterations / frame | "
          "faces done after 1 iteration | "
          "M multiply-adds / frame | ms / frame, 1 thread: detection, landmarks, total | 2 threads: total | "
          "frames / s (2 threads) | ms per face, landmarks, 1 thread (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in methods:
        r1, r2 = rows[name, 1], rows.get((name, 2), rows[name, 1])
        det_ms, tot_ms = 1e3 * r1["detect_s"] / n, 1e3 * r1["total_s"] / n
        one = f"{100 * r1['one_iteration'] / r1['faces']:.0f}%" if r1["faces"] and r1["macs"] else ""
        print(f"| {name} | {100 * np.mean(r1['nme']):.3f} | {r1['lost']} ({r1['recovered']}) | "
              f"{r1['iterations'] / n:.2f} | {one} | "
              f"{r1['macs'] / n / 1e6:.1f} | {det_ms:.1f}, {tot_ms - det_ms:.1f}, {tot_ms:.1f} | "
              f"{1e3 * r2['total_s'] / n:.1f} | {n / r2['total_s']:.1f} | "
              f"{1e3 * np.median(r1['per_face_s']):.2f} |")
    still = [sequence(faces.image(int(i)), faces.landmarks[int(i)], a.frames, "still", rng) for i in picked]
    j = jitter(still, model, a)
    print("jitter on still faces with sensor noise (sigma 4), % of the box: " +
          ", ".join(f"{k} {v:.3f}" for k, v in j.items()))
    slide = [sequence(faces.image(int(i)), faces.landmarks[int(i)], a.frames, "slide", rng) for i in picked]
    print(f"lag of the smoothed landmarks on faces moving at a constant speed (1/60 of the box a frame): "
          f"{lag(slide, model, a):.2f} frames")
    numba.set_num_threads(1)
    print(f"machine: {machine()} (the table: 1 and 2 threads, as its columns say)")


if __name__ == "__main__":
    main()
