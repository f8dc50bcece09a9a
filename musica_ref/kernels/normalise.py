"""Normalisation of a face's pyramid by the mean and population deviation of its level 0 (docs/model.md
§4.4; twins: kernels_ref.mean_std, kernels_ref.normalise_pyramid)."""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .contract import MEAN_STD_LANES, _take, inline
from .parallel import run_parallel


@njit(cache=True)
def mean_std(x):
    """Mean and population standard deviation of a flat array, in float64, two passes. Each pass sums in
    MEAN_STD_LANES interleaved partial sums (value i goes to sum i % MEAN_STD_LANES; they vectorise), added
    up in lane order at the end: a fixed order, whatever the machine."""
    n = x.size
    V = MEAN_STD_LANES
    m = n - n % V
    part = np.zeros(V, np.float64)
    for i in range(0, m, V):
        for v in range(V):
            part[v] += x[i + v]
    for i in range(m, n):
        part[i - m] += x[i]
    total = 0.0
    for v in range(V):
        total += part[v]
    mean = total / n
    part[:] = 0.0
    for i in range(0, m, V):
        for v in range(V):
            d = x[i + v] - mean
            part[v] += d * d
    for i in range(m, n):
        d = x[i] - mean
        part[i - m] += d * d
    ss = 0.0
    for v in range(V):
        ss += part[v]
    return mean, math.sqrt(ss / n)


@inline
def _level0_stats(level0):
    """mean_std of a flat level 0, a deviation of 0 (a constant level) replaced by 1, so the levels normalise
    to zeros instead of NaN."""
    mean, std = mean_std(level0)
    return mean, (std if std > 0.0 else 1.0)


@inline
def _normalise(x, mean, std):
    """x = float32((x - mean) / std) in place, computed in float64."""
    for i in range(x.size):
        x[i] = np.float32((x[i] - mean) / std)


@njit(cache=True)
def normalise_pyramid(level0, level1, level2):
    """Normalise one face's three flat float32 levels in place by the mean and deviation of level 0
    (_level0_stats)."""
    mean, std = _level0_stats(level0)
    _normalise(level0, mean, std)
    _normalise(level1, mean, std)
    _normalise(level2, mean, std)


def normalise_pyramids(data, offsets, sizes):
    """normalise_pyramid for many faces in place, one face per thread at a time: face f's level L is the
    sizes[f, L] values at data[offsets[f, L]:], level 0 first. offsets, sizes (F, n_levels) int64."""
    if not (isinstance(offsets, np.ndarray) and offsets.ndim == 2 and isinstance(sizes, np.ndarray)
            and sizes.shape == offsets.shape and offsets.shape[1] >= 1):
        raise ValueError("normalise_pyramids: one offset and size per face and level")
    n = data.shape[0]
    if any(o < 0 or s < 1 or o + s > n for o, s in zip(offsets.ravel().tolist(), sizes.ravel().tolist())):
        raise ValueError("normalise_pyramids: a level lies outside the buffer")
    F = offsets.shape[0]
    run_parallel(_normalise_faces, F, F, data, offsets, sizes)


@njit(nogil=True, cache=True)
def _normalise_faces(counter, F, data, offsets, sizes):
    """normalise_pyramids' worker (parallel.run_parallel): the faces taken in turn."""
    f = _take(counter)
    while f < F:
        o0 = offsets[f, 0]
        mean, std = _level0_stats(data[o0:o0 + sizes[f, 0]])
        for L in range(offsets.shape[1]):
            o = offsets[f, L]
            _normalise(data[o:o + sizes[f, L]], mean, std)
        f = _take(counter)
