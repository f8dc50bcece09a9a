"""Tracking faces through the frames of a video: the landmarks of one frame give the next frame's face box
(the tight box of the landmarks, the box the models are most accurate from), so the face detector runs only
to start, to recover a face whose estimate says it failed, and every `detect_every` frames to pick up new
faces; a One Euro filter smooths each face's landmarks over time.

    tracker = Tracker(MuSiCa.load("musica19"))
    for frame in frames:                       # (H, W, 3) RGB arrays (or paths), in order
        for face in tracker.update(frame):     # one Result per tracked face, with its track_id
            face.track_id, face.landmarks
"""
from __future__ import annotations

import math

import numpy as np

from . import geometry
from .errors import InputError
from .io import as_rgb, image_or_path

# One Euro filter defaults for landmarks measured in face sizes (sqrt(w h) of the face's box) and seconds:
# a still face is smoothed with a 1 Hz cutoff; a face moving at one face size a second gets 1 + 8 = 9 Hz.
# Chosen on moving-face sequences made from validation faces (tools/track_bench.py --tracker-only, 8 faces of
# val_merl_aflw.h5): of the settings tried (min_cutoff, beta) = (1, 4), (1, 8), (1, 15), (1, 40), (0.5, 15),
# (0.5, 25), (0.3, 20), the most accurate on moving faces among those that cut a still face's frame-to-frame
# jitter at least 3 times (docs/benchmarks.md, "Tracking")
SMOOTH_MIN_CUTOFF = 1.0
SMOOTH_BETA = 8.0
SMOOTH_D_CUTOFF = 1.0


def _alpha(cutoff, dt):
    """The smoothing factor of a first-order low-pass filter with this cutoff (Hz) for a step of dt seconds."""
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """The One Euro filter (Casiez, Roussel and Vogel, CHI 2012) on the points of one face: a first-order
    low-pass filter whose cutoff rises with the points' speed, so that a still face keeps little jitter and a
    moving one little lag. Per point, with its speed v (its own change per second, low-passed at d_cutoff):

        cutoff = min_cutoff + beta * |v|        (Hz)
        alpha  = 1 / (1 + tau / dt),  tau = 1 / (2 pi cutoff)
        x_hat  = alpha * x + (1 - alpha) * x_hat_before

    Values are in whatever unit the caller gives (the Tracker gives face sizes, so that the parameters do not
    depend on how large the face is in the image); times in seconds."""

    def __init__(self, min_cutoff: float = SMOOTH_MIN_CUTOFF, beta: float = SMOOTH_BETA,
                 d_cutoff: float = SMOOTH_D_CUTOFF):
        for name, v in (("min_cutoff", min_cutoff), ("beta", beta), ("d_cutoff", d_cutoff)):
            if not (math.isfinite(v) and v >= 0) or (name != "beta" and v == 0):
                raise InputError(f"{name} must be a finite number {'>= 0' if name == 'beta' else '> 0'}, got {v!r}")
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self._x = self._v = self._t = None

    def __call__(self, x, t: float) -> np.ndarray:
        """The filtered value of points x (N, 2) at time t (seconds, increasing)."""
        x = np.asarray(x, np.float64)
        if self._x is None:
            self._x, self._v, self._t = x.copy(), np.zeros(len(x)), float(t)
            return x.copy()
        dt = float(t) - self._t
        if not dt > 0:
            raise InputError(f"frame times must increase: {t} after {self._t}")
        speed = np.linalg.norm(x - self._x, axis=-1) / dt                    # (N,) per point
        a_d = _alpha(self.d_cutoff, dt)
        self._v = a_d * speed + (1 - a_d) * self._v
        cutoff = self.min_cutoff + self.beta * self._v
        a = np.array([_alpha(c, dt) for c in cutoff])[:, None]
        self._x = a * x + (1 - a) * self._x
        self._t = float(t)
        return self._x.copy()


def box_iou(a, b) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


class _Track:
    def __init__(self, track_id, landmarks, smoother):
        self.id, self.raw, self.smoother = track_id, landmarks, smoother
        # the unit of the smoother: the face's size when the track starts, fixed (a size taken again every
        # frame would carry its own jitter into every point, in proportion to the point's distance from 0)
        self.unit = float(np.sqrt(np.prod(np.ptp(landmarks, axis=0)))) or 1.0

    def box(self):
        return geometry.tight_box(self.raw)


class Tracker:
    """Faces tracked from frame to frame (module docstring). `update(frame)` returns one Result per tracked
    face, each with its `track_id` (stable while the face is tracked) and `box` (the box it ran on).

    ts, tf: as in predict (tf None: the model's stored threshold); a face whose estimate says failed is dropped
        and the detector looks again in the same frame.
    smoothing: One Euro filter on each face's landmarks (min_cutoff, beta, d_cutoff: OneEuroFilter, in face
        sizes and seconds); the next box always comes from the unsmoothed landmarks.
    detect_every: the detector runs on every detect_every-th frame (and whenever no face is tracked) to pick
        up new faces; 0: only when no face is tracked.
    detector: None for dlib's (the `detect` extra) or a callable image -> boxes (musica_ref.detect).
    refine: the refine of a newly detected face (as predict_image); tracked faces run once.
    fps: the frame rate that gives the frames' times when update() is not given t.
    """

    def __init__(self, model, ts: float = 0.0, tf: float | None = None, smoothing: bool = True,
                 detect_every: int = 10, detector=None, refine: int | None = None, fps: float = 30.0,
                 min_cutoff: float = SMOOTH_MIN_CUTOFF, beta: float = SMOOTH_BETA,
                 d_cutoff: float = SMOOTH_D_CUTOFF, new_iou: float = 0.3, merge_iou: float = 0.5):
        from .model import DETECTED_REFINE
        if isinstance(detect_every, bool) or not isinstance(detect_every, (int, np.integer)) or detect_every < 0:
            raise InputError(f"detect_every must be an integer >= 0, got {detect_every!r}")
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise InputError(f"fps must be a number > 0, got {fps!r}")
        OneEuroFilter(min_cutoff, beta, d_cutoff)                  # checks the parameters now
        self.model, self.ts, self.tf = model, ts, tf
        self.smoothing, self.detect_every, self.detector = bool(smoothing), int(detect_every), detector
        self.refine = DETECTED_REFINE if refine is None else refine
        self.fps, self.new_iou, self.merge_iou = float(fps), float(new_iou), float(merge_iou)
        self._smooth = (min_cutoff, beta, d_cutoff)
        self.reset()

    def reset(self):
        """Forget every track (a new video)."""
        self.tracks: list[_Track] = []
        self.frame_index = 0
        self.tracks_started = 0                 # every track's id is the count before it: ids are never reused
        self.detections = 0                     # how many frames the detector ran on, for the record

    def update(self, frame, t: float | None = None) -> list:
        """Track the faces into `frame` ((H, W, 3) array or a path); t its time in seconds (default: the frame
        index / fps). Returns one Result per tracked face, by track id."""
        rgb = as_rgb(image_or_path(frame))
        t = self.frame_index / self.fps if t is None else float(t)
        results = {}
        if self.tracks:                          # every tracked face from the box of its last landmarks
            runs = self.model.predict_batch(rgb, [tr.box() for tr in self.tracks], ts=self.ts, tf=self.tf)
            for tr, r in zip(self.tracks, runs):
                if not r.failed:
                    results[tr.id] = r
            self.tracks = [tr for tr in self.tracks if tr.id in results]
            for tr in self.tracks:
                tr.raw = results[tr.id].landmarks
        if not self.tracks or (self.detect_every and self.frame_index % self.detect_every == 0):
            self._add_detected(rgb, results)
        self._merge(results)
        out = []
        for tr in self.tracks:
            r = results[tr.id]
            r.track_id = tr.id
            if self.smoothing:
                r.landmarks = tr.smoother(r.landmarks / tr.unit, t) * tr.unit
            out.append(r)
        self.frame_index += 1
        return out

    def _add_detected(self, rgb, results):
        from .detect import detect_faces
        self.detections += 1
        faces = detect_faces(rgb, detector=self.detector)
        known = [tr.box() for tr in self.tracks]
        new = [f for f in faces if all(box_iou(f.box, b) <= self.new_iou for b in known)]
        if not new:
            return
        runs = self.model.predict_batch(rgb, [f.box for f in new], ts=self.ts, tf=self.tf, refine=self.refine)
        for f, r in zip(new, runs):
            if r.failed:
                continue
            r.score = f.score
            tr = _Track(self.tracks_started, r.landmarks, OneEuroFilter(*self._smooth))
            self.tracks_started += 1
            known.append(tr.box())
            self.tracks.append(tr)
            results[tr.id] = r

    def _merge(self, results):
        """Two tracks on one face (their landmark boxes overlap more than merge_iou): the older one stays."""
        keep = []
        for tr in sorted(self.tracks, key=lambda tr: tr.id):
            if all(box_iou(tr.box(), k.box()) <= self.merge_iou for k in keep):
                keep.append(tr)
            else:
                results.pop(tr.id, None)
        self.tracks = keep
