"""Normalisation of a face's pyramid by the mean and population deviation of its level 0 (docs/model.md
§4.4; twins: kernels_ref.mean_std, kernels_ref.normalise_pyramid)."""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .contract import MEAN_STD_LANES, _take


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


@njit(cache=True)
def _level0_stats(level0):
    """mean_std of a flat level 0, a deviation of 0 (a constant level) replaced by 1, so the levels normalise
    to zeros instead of NaN."""
    mean, std = mean_std(level0)
    return mean, (std if std > 0.0 else 1.0)


@njit(cache=True)
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


@njit(parallel=True, cache=True)
def normalise_pyramids(data, offsets, sizes):
    """normalise_pyramid for many faces in place, one face per thread at a time: face f's level L is the
    sizes[f, L] values at data[offsets[f, L]:], level 0 first. offsets, sizes (F, n_levels) int64."""
    F, n_levels = offsets.shape
    if sizes.shape[0] != F or sizes.shape[1] != n_levels or n_levels < 1:
        raise ValueError("normalise_pyramids: one offset and size per face and level")
    for f in range(F):
        for L in range(n_levels):
            if offsets[f, L] < 0 or sizes[f, L] < 1 or offsets[f, L] + sizes[f, L] > data.shape[0]:
                raise ValueError("normalise_pyramids: a level lies outside the buffer")
    nxt = np.zeros(1, np.int64)
    for _ in prange(F):                                  # the faces taken in turn (_take)
        f = _take(nxt)
        while f < F:
            o0 = offsets[f, 0]
            mean, std = _level0_stats(data[o0:o0 + sizes[f, 0]])
            for L in range(n_levels):
                o = offsets[f, L]
                _normalise(data[o:o + sizes[f, L]], mean, std)
            f = _take(nxt)
