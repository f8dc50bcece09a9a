"""The MuSiCa cascade (paper section 3, docs/model.md §4-§7): image + box -> pyramid -> 3 iterations of
patches -> network -> update, with early exit -> landmarks in image coordinates.

    frame   = geometry.face_frame(box)                     level-0 frame: margin 0.3, longer box side 142
    levels  = pyramid.build_pyramid(image, frame)          3 resamplings, exact powers of two apart
                                                           (a batch's pyramids: one buffer, pyramid.Pyramids)
    S       = mean shape placed in the box (level 0)
    for i, L in enumerate([2, 1, 0]):
        patches = 14x14 around S[patch_indices] / 2**L on level L
        out, h  = network(patches, h)                      out = (dx, dy) per landmark, then E(i)
        S_L     = S / 2**L + d + out ;  E(i) = out[-1]     Eq. 1: S(i+1) = 2 S(i) + dx
        if ts > 0 and E(i) < ts: stop
    failed  = E(last run) > tf
    landmarks = geometry.level_to_image(S_L)

Many faces run together: their patches go through every kernel in one batch, and faces that exit early
leave the batch. Every face's arithmetic is the same whatever the batch, so batch == one at a time.
"""
from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from . import geometry, kernels
from .errors import InputError
from .io import as_rgb, image_or_path, image_view
from .network import HIDDEN, feature_weights, iteration_forward, iteration_forward_levels, warm_head
from .pyramid import Pyramids
from .models import DEFAULT_MODEL, resolve_model
from .quantize import QUANTIZED, with_precision
from .weights import Weights, load_weights

# predict_batch runs at most this many faces at once (their pyramids are about 0.8 MB each)
BATCH_CHUNK = 128
# refine = k runs the model k more times, each on the tight box of the previous run's landmarks
MAX_REFINE = 3
# predict_image's refine: chosen on the validation set's detector-style boxes (docs/accuracy.md)
DETECTED_REFINE = 1


def _box_list(boxes) -> list:
    """`boxes` as a list, refusing one bare box (4 numbers) where a list of boxes belongs."""
    if isinstance(boxes, np.ndarray) and boxes.ndim == 1 or (
            isinstance(boxes, (tuple, list)) and len(boxes) == 4
            and all(isinstance(v, (int, float, np.number)) for v in boxes)):
        raise InputError("boxes must be a list of boxes; got one box (x0, y0, x1, y1): use predict(image, box) "
                         "or predict_batch(image, [box])")
    try:
        return list(boxes)
    except TypeError:
        raise InputError(f"boxes must be a list of boxes (x0, y0, x1, y1), got {type(boxes).__name__}") from None


def _refined_box(result, box):
    """The tight box of a result's landmarks, the box for the next run of refine; `box` where the
    landmarks span less than a pixel in either direction (a box no run could use)."""
    tb = geometry.tight_box(result.landmarks)
    return tb if np.all(np.isfinite(tb)) and min(tb[2] - tb[0], tb[3] - tb[1]) >= 1.0 else box


@dataclass
class Result:
    """What the model says about one face.

    landmarks: (N, 2) float64, (x, y) in image pixels, 0-based: the estimate of the last iteration run.
    errors: (iterations,) float64, the error estimate E(i) of every iteration run (a fraction of the
        outer-eye-corner distance: 0.024 = 2.4%).
    iterations: how many iterations ran (1 .. 3).
    failed: E of the last iteration run > tf.
    multiply_adds: multiply-adds performed for this face (the "full" convention of opcount).
    history: (iterations, N, 2) the landmarks after every iteration run, in image pixels.
    macs_by_layer: multiply-adds per layer name (gate multiplies included here, not in multiply_adds).
    box: the face box (x0, y0, x1, y1) the face was given (by the caller or the detector).
    score: the face detector's confidence, when a detector found the face (predict_image); else None.
    track_id: the face's track, when a Tracker followed it through video frames (musica_ref.track); else None.

    With refine = k > 0 the landmarks, errors, iterations and history are those of the last of the k + 1
    runs; multiply_adds and macs_by_layer count all of them.
    """
    landmarks: np.ndarray
    errors: np.ndarray
    iterations: int
    failed: bool
    multiply_adds: int
    history: np.ndarray
    macs_by_layer: dict = field(default_factory=dict)
    box: tuple | None = None
    score: float | None = None
    track_id: int | None = None


def _check_thresholds(ts, tf, refine=0):
    if isinstance(refine, bool) or not isinstance(refine, (int, np.integer)) or not 0 <= refine <= MAX_REFINE:
        raise InputError(f"refine must be an integer from 0 to {MAX_REFINE}, got {refine!r:.40}")
    for name, v in (("ts", ts), ("tf", tf)):
        try:
            fv = float(v)
        except (TypeError, ValueError):
            raise InputError(f"{name} must be a number, got {v!r:.40}") from None
        except OverflowError:                           # a Python integer beyond float64
            raise InputError(f"{name} is too large for a float: {v!r:.40}") from None
        if math.isnan(fv):
            raise InputError(f"{name} must not be NaN")
    if float(ts) < 0:
        raise InputError(f"ts must be >= 0 (0 runs every iteration), got {ts}")
    return float(ts), float(tf)


class MuSiCa:
    """A loaded MuSiCa model. `MuSiCa.load(name or path)` reads a weights file; `predict` runs one face,
    `predict_batch` many, and `predict_image` finds the faces of an image itself (musica_ref.detect)."""

    def __init__(self, weights: Weights, recurrent: str = "stored"):
        """recurrent: how the recurrent layers are held (quantize.py): "stored" (default: as `weights` has
        them, float16 arrays as 16-bit values, anything else as float32), "float32" (the reference),
        "float16" (rounded to float16 if they are not already) or "int8" (a scale per output unit, a quarter
        of float32's bytes). "stored" and "float32" give the same results bit for bit. `self.recurrent` says
        which storage is in use."""
        self.weights, self.recurrent = with_precision(weights, recurrent)
        # each iteration's feature extractor weights in the layouts its kernels read, made once here
        self._features = [feature_weights(w) for w in self.weights.iterations]
        self.n_landmarks = weights.n_landmarks
        self.patch_indices = weights.patch_indices
        self.mean_shape = weights.mean_shape
        # the failure threshold used when the caller gives none: the file's (chosen on validation faces)
        self.default_tf = math.inf if weights.default_tf is None else float(weights.default_tf)
        self._spare = None                      # the pyramid buffer kept for the next call (predict_batch)
        self._spare_lock = threading.Lock()

    @classmethod
    def load(cls, model=DEFAULT_MODEL, recurrent: str = "stored") -> "MuSiCa":
        """Load a model by name ("musica19", "musica34", "musica68": the weights installed with the
        package, see musica_ref.models) or from a weights file path (weights.load_weights). With the
        default recurrent="stored" a float16 file's recurrent layers stay 16-bit in memory (exact: see
        __init__)."""
        keep = QUANTIZED if recurrent in ("stored", "float16", "int8") else ()
        return cls(load_weights(resolve_model(model), keep_float16=keep), recurrent=recurrent)

    def predict(self, image, box, ts: float = 0.0, tf: float | None = None, refine: int = 0,
                channels: str = "rgb") -> Result:
        """Landmarks of the face in `box` (x0, y0, x1, y1) of `image` ((H, W, 3) array, or a file path).

        ts: stop after iteration i if E(i) < ts (ts = 0 runs every iteration).
        tf: the result is a failure if E of the last iteration run > tf; None: the model's default_tf.
        refine: run again this many times, each on the tight box of the previous landmarks (0 to MAX_REFINE).
        channels: "rgb", or "bgr" for arrays in OpenCV's channel order.
        """
        if not isinstance(box, (tuple, list, np.ndarray)):
            raise InputError(f"box must be 4 numbers (x0, y0, x1, y1), got {type(box).__name__}")
        return self.predict_batch([image], [box], ts=ts, tf=tf, refine=refine, channels=channels)[0]

    def predict_image(self, image, ts: float = 0.0, tf: float | None = None, refine: int = DETECTED_REFINE,
                      detector=None, channels: str = "rgb") -> list[Result]:
        """Find the faces of `image` (array or file path) and return one Result per face, most confident
        first, each with its detected `box` and detector `score`. detector: None for dlib's HOG detector
        (the `detect` extra), or any callable image -> boxes (musica_ref.detect.detect_faces says how).

        refine defaults to DETECTED_REFINE = 1: a detector's box sits differently on the face than the box
        of its landmarks, and a second run on the box of the first run's landmarks brings the error close to
        what the landmarks' own box gives (docs/accuracy.md), for twice the multiply-adds."""
        from .detect import detect_faces
        rgb = as_rgb(image_or_path(image), channels)
        faces = detect_faces(rgb, detector=detector)
        results = self.predict_batch(rgb, [f.box for f in faces], ts=ts, tf=tf, refine=refine)
        for r, f in zip(results, faces):
            r.score = f.score
        return results

    def predict_batch(self, images, boxes, ts: float = 0.0, tf: float | None = None,
                      refine: int = 0, channels: str = "rgb") -> list[Result]:
        """Many faces in one call: `images` is one image (then every box is in it) or a list (or tuple) of
        images, one per box. Returns one Result per box, identical to calling `predict` on each. Every box
        is checked before any face runs; an error names the box's index.

        The faces run BATCH_CHUNK at a time. Their pyramids (about 0.8 MB a face) live in one buffer that
        the model keeps for its next call (fresh memory costs page faults, docs/engine.md "Threads"); calls
        from several threads at once each get their own."""
        ts, tf = _check_thresholds(ts, self.default_tf if tf is None else tf, refine)
        boxes = _box_list(boxes)
        if not isinstance(images, (list, tuple)):          # one image (array, array-like or path) for every box
            images = [image_or_path(images)] * len(boxes)
        images = [image_or_path(im) for im in images]
        if len(images) != len(boxes):
            raise InputError(f"got {len(images)} images for {len(boxes)} boxes; give one image, or one per box")
        done = {}                                           # checked once per distinct image; the pyramids
        images = [done[id(im)] if id(im) in done else done.setdefault(id(im), image_view(im, channels))
                  for im in images]                         # convert only the faces' regions (Pyramids.fill)
        given = []
        for i, (im, b) in enumerate(zip(images, boxes)):
            try:
                given.append(tuple(geometry.check_box(
                    b, im.shape if isinstance(im, np.ndarray) and im.ndim >= 2 else None).tolist()))
            except InputError as exc:
                raise InputError(f"box {i} of {len(boxes)}: {exc}" if len(boxes) > 1 else str(exc)) from None
        results = self._run(images, boxes, ts, tf)
        for _ in range(refine):                             # again, on the box of the landmarks just found
            again = self._run(images, [_refined_box(r, b) for r, b in zip(results, boxes)], ts, tf)
            for r, a in zip(results, again):
                a.multiply_adds += r.multiply_adds
                a.macs_by_layer = dict(Counter(a.macs_by_layer) + Counter(r.macs_by_layer))
            results = again
        for r, b in zip(results, given):
            r.box = b
        return results

    def _run(self, images, boxes, ts, tf) -> list[Result]:
        """One pass of the cascade over faces (images[i], boxes[i]), BATCH_CHUNK at a time."""
        # a first run: while a helper process compiles the feature extractor, the layers after it compile here
        if kernels.precompile.start(one_face=len(boxes) == 1):
            warm_head(self.weights.iterations[0], min(len(boxes), BATCH_CHUNK))
        results = []
        with self._spare_lock:                              # this call's buffer; another call at the same
            buffer, self._spare = self._spare, None         # time finds none and makes its own
        try:
            for k in range(0, len(boxes), BATCH_CHUNK):      # bounded memory: pyramids of one chunk at a time
                prepared = {}                               # id(image) -> (image, [face index in the chunk])
                frames = []
                for i, (img, box) in enumerate(zip(images[k:k + BATCH_CHUNK], boxes[k:k + BATCH_CHUNK])):
                    if id(img) not in prepared:              # one fill per distinct image
                        prepared[id(img)] = (img, [])
                    members = prepared[id(img)][1]
                    members.append(i)
                    frames.append(geometry.face_frame(geometry.check_box(box, img.shape)))
                pyramids = Pyramids(frames, buffer=buffer)  # all faces of the chunk in one buffer
                if buffer is None or pyramids.data.base is not buffer:
                    buffer = pyramids.data                  # a new, larger one
                for img, members in prepared.values():      # one image's faces together
                    pyramids.fill(img, members)
                results += self._cascade(pyramids, ts, tf)
        finally:
            with self._spare_lock:                          # keep the larger of the two for the next call
                if buffer is not None and (self._spare is None or self._spare.size < buffer.size):
                    self._spare = buffer
        return results

    def _cascade(self, pyramids: Pyramids, ts, tf, keep: bool = False):
        """Run the cascade on the faces of filled pyramids. With keep=True also return, per iteration,
        the patch centres, the patches and the named intermediates of the faces still running."""
        F, N, idx = len(pyramids), self.n_landmarks, self.patch_indices
        frames = geometry.stacked_frames(pyramids.frames)
        init0 = geometry.initial_shape(self.mean_shape, frames)                                 # (F, N, 2)
        d = np.zeros((F, N, 2))                  # displacement, in the current level's pixels
        h = np.zeros((F, HIDDEN), np.float32)    # recurrent state
        active = np.arange(F)                    # faces still running
        rows = slice(None)                       # their rows: a view while every face runs, else active
        init_p = init0[:, idx]                   # (F, P, 2) the patches' landmarks
        n_levels = len(geometry.ITERATION_LEVELS)
        errors = np.empty((F, n_levels))
        history = np.empty((F, n_levels, N, 2))  # landmarks after each iteration, image pixels
        runs = np.zeros(F, np.int64)             # iterations run per face
        steps = []                               # per iteration: (faces running, their multiply-adds)
        trace = []
        for i, L in enumerate(geometry.ITERATION_LEVELS):
            centres = init_p[rows] / 2 ** L + d[rows][:, idx]                               # (Fa, P, 2)
            corners = geometry.patch_corners(centres)                                       # (Fa, P, 2)
            step = Counter()
            if keep:        # extract the patches and keep every intermediate
                patches = np.concatenate([
                    kernels.extract_patches(pyramids.level(f, L), c, geometry.PATCH_SIZE)
                    for f, c in zip(active, corners)])                                      # (Fa*P, 14, 14, 3)
                out, h_new, inter = iteration_forward(patches, h[rows], self.weights.iterations[i], step, True)
                trace.append({"faces": active.copy(), "level": L, "centres": centres, "patches": patches,
                              **inter})
            else:           # the same result, the patches read from the levels in place
                out, h_new = iteration_forward_levels(pyramids.data, pyramids.offsets[active, L],
                                                      pyramids.shapes[active, L], corners, h[rows],
                                                      self.weights.iterations[i], step, self._features[i])
            h[rows] = h_new
            d[rows] += out[:, :2 * N].reshape(-1, N, 2)
            e = out[:, 2 * N].astype(np.float64)
            errors[rows, i] = e
            history[rows, i] = geometry.level_to_image(init0 / 2 ** L + d, frames, L)[rows]
            runs[rows] += 1
            steps.append((len(active), step))   # every face did the same work (v is a multiple of the faces)
            if ts > 0:
                active = active[~(e < ts)]          # stop where E < ts
                if len(active) == 0:
                    break
                rows = slice(None) if len(active) == F else active
            d[rows] *= 2                            # Eq. 1: move to the next, twice finer level
        results = []
        for f in range(F):
            k = runs[f]
            macs = Counter()
            for n_faces, step in steps[:k]:
                for name, v in step.items():
                    macs[name] += v // n_faces
            e = errors[f, :k].copy()
            results.append(Result(
                landmarks=history[f, k - 1].copy(), errors=e, iterations=int(k), failed=bool(e[-1] > tf),
                multiply_adds=sum(v for name, v in macs.items() if name != "gate"),
                history=history[f, :k].copy(), macs_by_layer=dict(macs)))
        return (results, trace) if keep else results

    def trace(self, image, box):
        """Run one face with every iteration and return (Result, per-iteration records): the level,
        the patch centres (level pixels), the patches and the named intermediates of network.INTERMEDIATES,
        plus the pyramid levels. For debugging, porting and test vectors."""
        rgb = as_rgb(image)
        frame = geometry.face_frame(geometry.check_box(box, rgb.shape))
        pyramids = Pyramids([frame])
        pyramids.fill(rgb, [0])
        results, trace = self._cascade(pyramids, 0.0, math.inf, keep=True)
        for rec in trace:
            rec["level_image"] = pyramids.level(0, rec["level"])
        return results[0], trace
