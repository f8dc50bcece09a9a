"""The image pyramid of one face (spec 4): 3 levels, each ONE antialiased resampling of the source image,
normalised by the mean and standard deviation of level 0."""
from __future__ import annotations

import numpy as np
from numba.typed import List

from . import kernels
from .geometry import N_LEVELS, FaceFrame, sampling_grid


def build_pyramid(image, frame: FaceFrame) -> list[np.ndarray]:
    """image (H, W, 3) uint8 or float32 -> [level 0, 1, 2], each (H_L, W_L, 3) float32, normalised by the
    global mean and population standard deviation of level 0 (float64; a constant level 0 has deviation 0
    and gets 1, so it normalises to zeros instead of NaN: kernels.normalise_pyramid). One face: each
    resampling splits its rows between the threads."""
    levels = []
    for L in range(N_LEVELS):
        (ox, oy), step, (h, w) = sampling_grid(frame, L)
        levels.append(kernels.resample(image, ox, oy, step, h, w))
    kernels.normalise_pyramid(*(lv.reshape(-1) for lv in levels))                    # in place
    return levels


def build_pyramids(image, frames) -> list[list[np.ndarray]]:
    """build_pyramid(image, frame) for every frame, bit for bit, the faces' resamplings and normalisations
    shared out between the threads (one face's level per thread at a time). image (H, W, 3) uint8 or
    float32 -> one [level 0, 1, 2] list per frame."""
    grids = [sampling_grid(fr, L) for fr in frames for L in range(N_LEVELS)]    # ((ox, oy), step, (h, w))
    if not grids:
        return []
    outs = [np.zeros((h, w, image.shape[2]), np.float32) for _, _, (h, w) in grids]
    kernels.resample_many(image, np.array([o[0] for o, _, _ in grids], np.float64),
                          np.array([o[1] for o, _, _ in grids], np.float64),
                          np.array([step for _, step, _ in grids], np.float64), List(outs))
    kernels.normalise_pyramids(List([o.reshape(-1) for o in outs]), N_LEVELS)      # in place
    return [outs[k:k + N_LEVELS] for k in range(0, len(outs), N_LEVELS)]
