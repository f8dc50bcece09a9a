"""Geometry: image + face box -> level-0 face frame -> 3 pyramid levels, and back (docs/model.md §4, §5).

This module owns every geometric constant of the model. Nothing else in the package hard-codes 142, 0.3,
7 or a pixel-centre offset.

Coordinates (docs/model.md §3): points are (x, y), 0-based, in pixels of the image they refer to; the centre of pixel
(row r, col c) is (x=c, y=r). Boxes are (x0, y0, x1, y1), w = x1 - x0, h = y1 - y0.

The face frame is the box grown by MARGIN of its width (height) on each side. Pyramid level L is ONE
affine resampling of the source image with scale s / 2**L, where s = BB_SIZE / max(w, h):

    level_L(x, y) = ((x - fx0) * s / 2**L, (y - fy0) * s / 2**L)        (fx0, fy0) = frame top-left

so that level coordinates relate exactly by powers of two (x_L = x_0 / 2**L), as Eq. 1 of the paper
assumes. The centre of pixel (0, 0) of every level is the frame's top-left corner in the image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError

# --- constants of the model (stored in every weights file and checked on load) ---------------------------
BB_SIZE = 142.0           # the longer side of the face box, in level-0 pixels
MARGIN = 0.3              # the frame is the box grown by MARGIN * w (resp. h) on each side
N_LEVELS = 3              # pyramid levels 0 (finest) .. 2 (coarsest)
ITERATION_LEVELS = (2, 1, 0)   # iteration i runs on level ITERATION_LEVELS[i] (coarse to fine)
PATCH_SIZE = 14           # patches are PATCH_SIZE x PATCH_SIZE pixels
PATCH_BEFORE = PATCH_SIZE // 2   # a patch at x covers columns floor(x) - 7 .. floor(x) + 6
# outer eye corners (0-based) used to normalise the error estimate, by landmark count
EYE_CORNERS = {68: (36, 45), 98: (60, 72)}
# a box this many times larger than its image is refused (it would only resample zero padding)
MAX_BOX_TO_IMAGE = 20
# a box whose longer side is under this (in pixels) is refused: its scale 142 / side would overflow
MIN_BOX_SIDE = 1e-9
# slack when turning a real extent into a pixel count, so that 227.99999999 and 228.0 give the same size
_SIZE_EPS = 1e-6


@dataclass(frozen=True)
class FaceFrame:
    """Where the pyramid of one face sits in its source image.

    origin: (fx0, fy0), image coordinates of the centre of pixel (0, 0) of every level.
    scale:  s, level-0 pixels per image pixel (level L has s / 2**L).
    box_offset: (bx, by), level-0 coordinates of the box's top-left corner (= MARGIN * (w, h) * s).
    level_shapes: ((H0, W0), (H1, W1), (H2, W2)) in pixels.
    """
    origin: tuple[float, float]
    scale: float
    box_offset: tuple[float, float]
    level_shapes: tuple[tuple[int, int], ...]

    def level_scale(self, level: int) -> float:
        """Level-L pixels per image pixel."""
        return self.scale / 2.0 ** level


def check_box(box, image_shape=None) -> np.ndarray:
    """Validate a face box (x0, y0, x1, y1); return it as a float64 array of shape (4,).

    Raises InputError when it is not 4 finite numbers, has zero or negative size, or (given the image's
    (H, W)) does not overlap the image at all or is over MAX_BOX_TO_IMAGE times the image's size.
    """
    try:
        b = np.asarray(box, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"box must be 4 numbers (x0, y0, x1, y1), got {box!r:.200}") from exc
    except OverflowError as exc:                    # a Python integer beyond float64
        raise InputError(f"box has a coordinate too large for a float64: {box!r:.200}") from exc
    if b.shape != (4,):
        raise InputError(f"box must be 4 numbers (x0, y0, x1, y1), got shape {b.shape}")
    x0, y0, x1, y1 = b.tolist()                 # Python floats: cheaper to compare than NumPy scalars
    if not (math.isfinite(x0) and math.isfinite(y0) and math.isfinite(x1) and math.isfinite(y1)):
        raise InputError(f"box has a non-finite coordinate: {b.tolist()}")
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"box has zero or negative size: (x0, y0, x1, y1) = {b.tolist()} "
                         f"gives w = {x1 - x0:g}, h = {y1 - y0:g}; both must be > 0")
    if max(x1 - x0, y1 - y0) < MIN_BOX_SIDE:
        raise InputError(f"box {b.tolist()} is smaller than {MIN_BOX_SIDE:g} px on its longer side")
    if image_shape is not None:
        H, W = image_shape[:2]
        # pixel centres span [0, W-1] x [0, H-1]; a pixel covers +-0.5 around its centre
        if x1 < -0.5 or y1 < -0.5 or x0 > W - 0.5 or y0 > H - 0.5:
            raise InputError(f"box {b.tolist()} lies entirely outside the {W}x{H} image")
        if max(x1 - x0, y1 - y0) > MAX_BOX_TO_IMAGE * max(H, W):
            raise InputError(f"box {b.tolist()} is more than {MAX_BOX_TO_IMAGE} times larger than the "
                             f"{W}x{H} image; it cannot be a face box of this image")
    return b


def face_frame(box) -> FaceFrame:
    """The face frame of a box (x0, y0, x1, y1): origin, scale s = BB_SIZE / max(w, h), level shapes."""
    x0, y0, x1, y1 = check_box(box)
    w, h = x1 - x0, y1 - y0
    s = BB_SIZE / max(w, h)
    origin = (x0 - MARGIN * w, y0 - MARGIN * h)
    # level-0 extent of the frame; level L holds every pixel centre in [0, extent / 2**L]
    ext_x, ext_y = (1 + 2 * MARGIN) * w * s, (1 + 2 * MARGIN) * h * s
    shapes = tuple((int(math.floor(ext_y / 2 ** L + _SIZE_EPS)) + 1,
                    int(math.floor(ext_x / 2 ** L + _SIZE_EPS)) + 1) for L in range(N_LEVELS))
    return FaceFrame(origin=origin, scale=s, box_offset=(MARGIN * w * s, MARGIN * h * s),
                     level_shapes=shapes)


def stacked_frames(frames) -> FaceFrame:
    """F frames as one FaceFrame whose fields are arrays over the faces, shaped to broadcast against points
    (F, N, 2): origin and box_offset (F, 1, 2), scale (F, 1, 1); level_shapes keeps one tuple per frame.
    initial_shape and level_to_image take it as they take one frame and give, face by face, the same
    numbers (the same float64 operations, elementwise)."""
    return FaceFrame(origin=np.array([fr.origin for fr in frames], np.float64).reshape(-1, 1, 2),
                     scale=np.array([fr.scale for fr in frames], np.float64).reshape(-1, 1, 1),
                     box_offset=np.array([fr.box_offset for fr in frames], np.float64).reshape(-1, 1, 2),
                     level_shapes=tuple(fr.level_shapes for fr in frames))


def max_level_shape(level: int) -> tuple[int, int]:
    """The largest (H_L, W_L) any face's level L can have (a square box): a canvas every level fits in."""
    n = int(math.floor((1 + 2 * MARGIN) * BB_SIZE / 2 ** level + _SIZE_EPS)) + 1
    return n, n


def image_to_level(points, frame: FaceFrame, level: int) -> np.ndarray:
    """Image (x, y) -> level-L (x, y). points (..., 2) -> (..., 2) float64."""
    p = np.asarray(points, dtype=np.float64)
    return (p - np.asarray(frame.origin)) * frame.level_scale(level)


def level_to_image(points, frame: FaceFrame, level: int) -> np.ndarray:
    """Level-L (x, y) -> image (x, y); the exact inverse of image_to_level. (..., 2) -> (..., 2); with
    stacked_frames, (F, N, 2) -> (F, N, 2)."""
    p = np.asarray(points, dtype=np.float64)
    return p / frame.level_scale(level) + np.asarray(frame.origin)


def sampling_grid(frame: FaceFrame, level: int):
    """Where level L samples the source image: (origin_xy, step, (H_L, W_L)).

    Output pixel (r, c) of level L has its centre at image point origin + step * (c, r).
    """
    return frame.origin, 1.0 / frame.level_scale(level), frame.level_shapes[level]


def initial_shape(mean_shape, frame: FaceFrame) -> np.ndarray:
    """The mean shape (N, 2), given in the box frame (box top-left at 0, longer side BB_SIZE), placed in
    the box: level-0 coordinates (N, 2) float64; with stacked_frames, (F, N, 2)."""
    return np.asarray(mean_shape, dtype=np.float64) + np.asarray(frame.box_offset)


def box_frame_shape(points, box) -> np.ndarray:
    """Points (N, 2) in image coordinates -> the box frame (box top-left at 0, longer side BB_SIZE).

    The inverse of placing a mean shape in a box; the trainer uses it to compute the mean shape.
    """
    x0, y0, x1, y1 = check_box(box)
    s = BB_SIZE / max(x1 - x0, y1 - y0)
    return (np.asarray(points, dtype=np.float64) - (x0, y0)) * s


def patch_corners(centres) -> np.ndarray:
    """Top-left pixel (col, row) of the PATCH_SIZE x PATCH_SIZE patch around each centre (x, y).

    centres (..., 2) float, e.g. (P, 2) -> the same shape, int64, C-contiguous (the kernels are compiled for
    that layout): (floor(x) - 7, floor(y) - 7) (docs/model.md §5).
    """
    return np.floor(np.asarray(centres, dtype=np.float64)).astype(np.int64, order="C") - PATCH_BEFORE


def eye_corners(n_landmarks: int):
    """The two outer-eye-corner indices for a landmark scheme, or None if the scheme is unknown."""
    return EYE_CORNERS.get(n_landmarks)


def tight_box(points) -> np.ndarray:
    """The tight box (x0, y0, x1, y1) of points (N, 2) -> (4,) float64."""
    p = np.asarray(points, dtype=np.float64)
    return np.concatenate([p.min(axis=0), p.max(axis=0)])
