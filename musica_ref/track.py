"""Tracking faces through the frames of a video: the landmarks of one frame give the next frame's face box
(the tight box of the landmarks, the box the models are most accurate from), so the face detector runs only
to start, to recover a face whose estimate says it failed, and every `detect_every` frames to pick up new
faces; two One Euro filters smooth each face's landmarks over time, one its pose, one its shape.

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

# The smoother's defaults (FaceSmoother): One Euro filters on the face's pose and on its shape, in face sizes
# (sqrt(w h) of the face's box) and seconds. A still face's pose is smoothed with a 0.3 Hz cutoff; moving at
# one face size a second, 0.3 + 15 = 15.3 Hz (at any steady speed it trails by less than 1 / (2 pi beta),
# 1% of its size). The shape (the landmarks in the face's own frame): 0.5 Hz still, 8.5 Hz when its points
# move at a face size a second (a change of expression).
# Chosen on moving-face sequences made from validation faces (tools/track_bench.py --tracker-only, 8 faces of
# val_merl_aflw.h5, musica19) by a rule fixed first: the largest cut of a still face's frame-to-frame jitter
# among the settings that cost at most 2% of NME on moving faces and lag at most half a frame, with the
# shape's min_cutoff >= 0.5 Hz and beta >= 8 (so that an expression is not held back by more than a frame).
# Tried, the box from the smoothed landmarks (Tracker): pose (min_cutoff, beta) = (0.2, 15), (0.3, 10),
# (0.3, 15), (0.3, 20), (0.5, 8), (0.5, 15), (1, 8), shape (0.5, 8); chosen (0.3, 15): jitter 5.5 times less
# at +0.75% NME, lag 0.32 frames. (Earlier, with the box from the unsmoothed landmarks: pose (1, 8), (1, 15),
# (2, 15), (1, 20), (0.5, 15), (0.5, 20), (1, 30), (0.5, 30), and shape (0.5, 8), (0.3, 4), (0.2, 2), (1, 8),
# (0.5, 12); the best there, (0.5, 15), cut the jitter 3.7 times at +1.3%; the box from the smoothed
# landmarks alone took it to 4.8 times, NME 5.228% against 5.267%.)
SMOOTH_MIN_CUTOFF = 0.3
SMOOTH_BETA = 15.0
SMOOTH_D_CUTOFF = 1.0
SHAPE_MIN_CUTOFF = 0.5
SHAPE_BETA = 8.0


def _finite(name, v) -> float:
    """A parameter as a finite float, or InputError naming it (a string, a bool, None, NaN, infinity or an
    integer too large for a float)."""
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        f = math.nan
    if isinstance(v, (str, bytes, bool)) or not math.isfinite(f):
        raise InputError(f"{name} must be a finite number, got {v!r:.40}")
    return f


def _alpha(cutoff, dt):
    """The smoothing factor of a first-order low-pass filter with this cutoff (Hz, a number or an array) for
    a step of dt seconds."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, np.float64))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """The One Euro filter (Casiez, Roussel and Vogel, CHI 2012) on the points of one face: a first-order
    low-pass filter whose cutoff rises with the points' speed, so that a still face keeps little jitter and a
    moving one little lag. Per point, with its speed v (its own change per second, low-passed at d_cutoff):

        cutoff = min_cutoff + beta * |v|        (Hz)
        alpha  = 1 / (1 + tau / dt),  tau = 1 / (2 pi cutoff)
        x_hat  = alpha * x + (1 - alpha) * x_hat_before

    Values are in whatever unit the caller gives (FaceSmoother gives face sizes, so that the parameters do
    not depend on how large the face is in the image); times in seconds. x may be (N, D): the speed of a
    row is the norm of its change."""

    def __init__(self, min_cutoff: float = SMOOTH_MIN_CUTOFF, beta: float = SMOOTH_BETA,
                 d_cutoff: float = SMOOTH_D_CUTOFF, *, names=("min_cutoff", "beta", "d_cutoff")):
        # names: what the error messages call the three parameters (FaceSmoother's shape filter has its own)
        for k, (name, v) in enumerate(zip(names, (min_cutoff, beta, d_cutoff))):
            f = _finite(name, v)
            if f < 0 or (k != 1 and f == 0):                     # beta may be 0, the cutoffs may not
                raise InputError(f"{name} must be a finite number {'>= 0' if k == 1 else '> 0'}, got {v!r}")
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self._x = self._v = self._t = None

    def __call__(self, x, t: float) -> np.ndarray:
        """The filtered value of points x (N, D) at time t (seconds, increasing)."""
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
        a = _alpha(cutoff, dt)[:, None]
        self._x = a * x + (1 - a) * self._x
        self._t = float(t)
        return self._x.copy()


def similarity_fit(ref, x):
    """The similarity x ~ s R(theta) ref + t of points x (N, 2) from ref (N, 2, centred on 0), least squares:
    (t (2,), s, theta)."""
    t = x.mean(0)
    xc = x - t
    norm = float(np.sum(ref * ref)) or 1.0
    a = float(np.sum(ref * xc)) / norm
    b = float(np.sum(ref[:, 0] * xc[:, 1] - ref[:, 1] * xc[:, 0])) / norm
    return t, math.hypot(a, b) or 1e-12, math.atan2(b, a)


def _rotate(p, theta):
    c, s = math.cos(theta), math.sin(theta)
    return p @ np.array([[c, s], [-s, c]])


class FaceSmoother:
    """Temporal smoothing of one face's landmarks in two parts, each a One Euro filter: the face's pose (the
    similarity transform, least squares, from its first landmarks: translation, scale, in-plane rotation)
    and its shape in the face's own frame (the landmarks with the pose undone).

    Why two: a face mostly moves as a whole. Fitted to 68 points, the pose carries far less noise than any
    one point, so its filter sees the true speed and follows motion with little lag; with the pose taken out,
    a moving face's shape stands still and can be smoothed hard, which is where a still face's jitter goes.
    A change of expression moves the shape, whose own speed then opens its filter (shape_beta).

    Units: translation in face sizes (sqrt(w h) of the first landmarks' box); scale as log(s) and rotation
    in radians, both times 0.5 (roughly how far they move a point, in face sizes); shape in face sizes."""

    def __init__(self, min_cutoff: float = SMOOTH_MIN_CUTOFF, beta: float = SMOOTH_BETA,
                 d_cutoff: float = SMOOTH_D_CUTOFF, shape_min_cutoff: float = SHAPE_MIN_CUTOFF,
                 shape_beta: float = SHAPE_BETA):
        self.pose = OneEuroFilter(min_cutoff, beta, d_cutoff)
        self.shape = OneEuroFilter(shape_min_cutoff, shape_beta, d_cutoff,
                                   names=("shape_min_cutoff", "shape_beta", "d_cutoff"))
        self.ref = None          # the first landmarks, centred, in face sizes (set by the first call)
        self.unit = 1.0          # the face size of the first landmarks (px)
        self.theta = 0.0         # the last smoothed angle, against which a new one is unwrapped

    def __call__(self, x, t: float) -> np.ndarray:
        """The smoothed landmarks (N, 2) of landmarks x (N, 2) at time t (seconds, increasing)."""
        x = np.asarray(x, np.float64)
        if self.ref is None:
            self.unit = float(np.sqrt(np.prod(np.ptp(x, axis=0)))) or 1.0
            self.ref = (x - x.mean(0)) / self.unit
        tr, s, theta = similarity_fit(self.ref, x)
        theta = self.theta + (theta - self.theta + math.pi) % (2 * math.pi) - math.pi     # no jump at +-pi
        shape = _rotate(x - tr, -theta) / s - self.ref
        p = self.pose(np.array([[tr[0] / self.unit, tr[1] / self.unit, 0.5 * math.log(s), 0.5 * theta]]), t)[0]
        shape = self.shape(shape, t)
        self.theta = 2 * p[3]
        return _rotate(self.ref + shape, self.theta) * math.exp(2 * p[2]) + p[:2] * self.unit


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
        self.id, self.landmarks, self.smoother = track_id, landmarks, smoother

    def box(self):
        return geometry.tight_box(self.landmarks)


class Tracker:
    """Faces tracked from frame to frame (module docstring). `update(frame)` returns one Result per tracked
    face, each with its `track_id` (stable while the face is tracked) and `box` (the box it ran on).

    ts, tf: as in predict (tf None: the model's stored threshold); a face whose estimate says failed is dropped
        and the detector looks again in the same frame.
    smoothing: each face's landmarks smoothed over time (FaceSmoother: min_cutoff, beta and d_cutoff of its
        pose, shape_min_cutoff and shape_beta of its shape; in face sizes and seconds). The next frame's box
        comes from the landmarks returned, smoothed when smoothing is on: a steadier box gives steadier
        landmarks (tools/track_bench.py measures both).
    detect_every: the detector runs on every detect_every-th frame (and whenever no face is tracked) to pick
        up new faces; 0: only when no face is tracked.
    detector: None for dlib's (the `detect` extra) or a callable image -> boxes (musica_ref.detect).
    refine: the refine of a newly detected face (as predict_image); tracked faces run once.
    fps: the frame rate that gives the frames' times when update() is not given t.
    """

    def __init__(self, model, ts: float = 0.0, tf: float | None = None, smoothing: bool = True,
                 detect_every: int = 10, detector=None, refine: int | None = None, fps: float = 30.0,
                 min_cutoff: float = SMOOTH_MIN_CUTOFF, beta: float = SMOOTH_BETA,
                 d_cutoff: float = SMOOTH_D_CUTOFF, shape_min_cutoff: float = SHAPE_MIN_CUTOFF,
                 shape_beta: float = SHAPE_BETA, new_iou: float = 0.3, merge_iou: float = 0.5):
        from .model import DETECTED_REFINE, _check_thresholds
        if isinstance(detect_every, bool) or not isinstance(detect_every, (int, np.integer)) or detect_every < 0:
            raise InputError(f"detect_every must be an integer >= 0, got {detect_every!r:.40}")
        if not _finite("fps", fps) > 0:
            raise InputError(f"fps must be a number > 0, got {fps!r}")
        for name, v in (("new_iou", new_iou), ("merge_iou", merge_iou)):
            if not 0 <= _finite(name, v) <= 1:
                raise InputError(f"{name} must be an intersection over union, from 0 to 1, got {v!r}")
        # ts, tf and refine as predict checks them, now rather than at the first frame
        _check_thresholds(ts, getattr(model, "default_tf", math.inf) if tf is None else tf,
                          DETECTED_REFINE if refine is None else refine)
        FaceSmoother(min_cutoff, beta, d_cutoff, shape_min_cutoff, shape_beta)      # checks the parameters now
        self.model, self.ts, self.tf = model, ts, tf
        self.smoothing, self.detect_every, self.detector = bool(smoothing), int(detect_every), detector
        self.refine = DETECTED_REFINE if refine is None else refine
        self.fps, self.new_iou, self.merge_iou = float(fps), float(new_iou), float(merge_iou)
        self._smooth = (min_cutoff, beta, d_cutoff, shape_min_cutoff, shape_beta)
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
        t = self.frame_index / self.fps if t is None else _finite("t", t)
        results = {}
        if self.tracks:                          # every tracked face from the box of its last landmarks
            runs = self.model.predict_batch(rgb, [tr.box() for tr in self.tracks], ts=self.ts, tf=self.tf)
            for tr, r in zip(self.tracks, runs):
                if not r.failed:
                    results[tr.id] = r
            self.tracks = [tr for tr in self.tracks if tr.id in results]
            for tr in self.tracks:
                tr.landmarks = results[tr.id].landmarks
        if not self.tracks or (self.detect_every and self.frame_index % self.detect_every == 0):
            self._add_detected(rgb, results)
        self._merge(results)
        out = []
        for tr in self.tracks:
            r = results[tr.id]
            r.track_id = tr.id
            if self.smoothing:
                r.landmarks = tr.smoother(r.landmarks, t)
                tr.landmarks = r.landmarks          # the next box from the smoothed landmarks: steadier
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
            tr = _Track(self.tracks_started, r.landmarks, FaceSmoother(*self._smooth))
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
