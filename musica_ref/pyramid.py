"""The image pyramid of one face (spec 4): 3 levels, each ONE antialiased resampling of the source image,
normalised by the mean and standard deviation of level 0."""
from __future__ import annotations

import numpy as np

from . import kernels
from .geometry import N_LEVELS, FaceFrame, sampling_grid


def normalisation(level0) -> tuple[float, float]:
    """Global mean and population std over all pixels and channels of level 0 (float64).

    A constant level (std 0) gets std 1, so it normalises to all zeros instead of NaN.
    """
    mean, std = kernels.mean_std(np.ascontiguousarray(level0).reshape(-1))
    return float(mean), (float(std) if std > 0.0 else 1.0)


def build_pyramid(image, frame: FaceFrame) -> list[np.ndarray]:
    """image (H, W, 3) uint8 or float32 -> [level 0, 1, 2], each (H_L, W_L, 3) float32, normalised."""
    raw = []
    for L in range(N_LEVELS):
        (ox, oy), step, (h, w) = sampling_grid(frame, L)
        raw.append(kernels.resample(image, ox, oy, step, h, w))
    mean, std = normalisation(raw[0])
    return [kernels.normalise_levels(r.reshape(-1), mean, std).reshape(r.shape) for r in raw]
