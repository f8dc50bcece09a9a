"""The image pyramid of one face (docs/model.md §4): 3 levels, each ONE antialiased resampling of the source image,
normalised by the mean and standard deviation of level 0.

The pyramids of a batch of faces live in one flat float32 buffer (Pyramids): the batch kernels take the
buffer with each level's offset and shape, which is what a port in C would pass too."""
from __future__ import annotations

import itertools

import numpy as np

from . import kernels
from .geometry import N_LEVELS, FaceFrame, sampling_grid
from .io import is_rgb, rgb_region


class Pyramids:
    """The pyramids of F faces in one buffer. Face f's level L is the float32 array of shape shapes[f, L]
    (H, W, 3) that starts at data[offsets[f, L]]; level(f, L) is a view of it. The levels are undefined
    until fill() computes them from their image (every value is written).

    buffer: an optional flat, contiguous float32 array whose first values hold the levels, so that a caller
    running batch after batch reuses one buffer (fresh memory costs page faults, docs/engine.md
    "Threads"). Without one, or if it is too small, the levels get
    a new array."""

    def __init__(self, frames, channels: int = 3, buffer: np.ndarray | None = None):
        self.frames = list(frames)
        self.grids = [[sampling_grid(fr, L) for L in range(N_LEVELS)] for fr in self.frames]
        F = len(self.frames)
        shapes = [(h, w, channels) for g in self.grids for _, _, (h, w) in g]     # face by face, level by level
        sizes = [h * w * c for h, w, c in shapes]
        self.shapes = np.array(shapes, np.int64).reshape(F, N_LEVELS, 3)
        self.sizes = np.array(sizes, np.int64).reshape(F, N_LEVELS)            # values per level
        n = sum(sizes)
        self.offsets = np.array([0, *itertools.accumulate(sizes)][:-1], np.int64).reshape(F, N_LEVELS)
        if (buffer is not None and buffer.dtype == np.float32 and buffer.ndim == 1 and buffer.shape[0] >= n
                and buffer.flags.c_contiguous):
            self.data = buffer[:n]
        else:
            self.data = np.empty(n, np.float32)

    def __len__(self):
        return len(self.frames)

    def level(self, f: int, L: int) -> np.ndarray:
        o, (h, w, c) = self.offsets[f, L], self.shapes[f, L]
        return self.data[o:o + h * w * c].reshape(h, w, c)

    def levels(self, f: int) -> list[np.ndarray]:
        return [self.level(f, L) for L in range(N_LEVELS)]

    def fill(self, image, faces) -> None:
        """Compute the pyramids of `faces` (indices, all in `image`), bit for bit the same however they are
        grouped: the resamplings (3 per face) are taken in turn by the threads, then the faces' normalisations
        (one face: on this thread).

        image: (H, W, 3) uint8 or float32, C-contiguous, read as it is; or any io.image_view (grayscale,
        another dtype, a strided view), of which only the region the faces' levels take pixels from is
        converted (io.rgb_region): a face in a large image costs a copy of the face, not of the image."""
        faces = np.asarray(list(faces), np.int64)
        if len(faces) == 0:
            return
        grids = [self.grids[f][L] for f in faces for L in range(N_LEVELS)]
        H, W = image.shape[:2]
        if is_rgb(image):
            region, top, left = image, 0, 0
        else:
            rows = [kernels.resample_span(o[1], step, n[0], H) for o, step, n in grids]
            cols = [kernels.resample_span(o[0], step, n[1], W) for o, step, n in grids]
            top, bottom = min(r[0] for r in rows), max(r[1] for r in rows) + 1
            left, right = min(c[0] for c in cols), max(c[1] for c in cols) + 1
            top, left = min(top, H - 1), min(left, W - 1)                     # at least one pixel
            region = rgb_region(image, (top, max(bottom, top + 1)), (left, max(right, left + 1)))
        kernels.resample_many(region, np.array([top, left, H, W], np.int64),
                              np.array([o[0] for o, _, _ in grids], np.float64),
                              np.array([o[1] for o, _, _ in grids], np.float64),
                              np.array([step for _, step, _ in grids], np.float64),
                              self.data, self.offsets[faces].reshape(-1), self.shapes[faces, :, :2].reshape(-1, 2))
        if len(faces) == 1:                 # on this thread: waking another costs more than it saves here
            f = int(faces[0])
            kernels.normalise_pyramid(*(self.data[self.offsets[f, L]:self.offsets[f, L] + self.sizes[f, L]]
                                        for L in range(N_LEVELS)))                 # in place
        else:
            kernels.normalise_pyramids(self.data, self.offsets[faces], self.sizes[faces])    # in place


def build_pyramid(image, frame: FaceFrame) -> list[np.ndarray]:
    """image (H, W, 3) uint8 or float32 -> [level 0, 1, 2], each (H_L, W_L, 3) float32, normalised by the
    global mean and population standard deviation of level 0 (float64; a constant level 0 has deviation 0
    and gets 1, so it normalises to zeros instead of NaN: kernels.normalise_pyramid). The three resamplings
    are shared out between the threads. The levels are views of one buffer."""
    p = Pyramids([frame], image.shape[2])
    p.fill(image, [0])
    return p.levels(0)


def build_pyramids(image, frames) -> list[list[np.ndarray]]:
    """build_pyramid(image, frame) for every frame, bit for bit, the faces' resamplings and normalisations
    shared out between the threads (one face's level per thread at a time). image (H, W, 3) uint8 or
    float32 -> one [level 0, 1, 2] list per frame."""
    p = Pyramids(frames, image.shape[2])
    p.fill(image, range(len(p)))
    return [p.levels(f) for f in range(len(p))]
