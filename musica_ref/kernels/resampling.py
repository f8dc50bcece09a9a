"""Resampling: each pyramid level is one axis-aligned affine resampling of the source image, bilinear,
antialiased when it shrinks, zeros outside the image (docs/model.md §4.3; twin: kernels_ref.resample)."""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .contract import SLOT_OUTSIDE, _slot_fits, _take, disjoint, inline
from .parallel import run_parallel


@inline
def _tri_cdf(s):
    """Integral of the tent max(0, 1 - |u|) from -inf to s."""
    if s <= -1.0:
        return 0.0
    if s >= 1.0:
        return 1.0
    if s <= 0.0:
        return 0.5 * (1.0 + s) * (1.0 + s)
    return 1.0 - 0.5 * (1.0 - s) * (1.0 - s)


@inline
def _kernel_1d(t, b):
    """kernels_ref.kernel_1d at one offset t: the tent, averaged over a box of width b (tent if b = 0)."""
    if b == 0.0:
        return max(0.0, 1.0 - abs(t))
    return (_tri_cdf(t + 0.5 * b) - _tri_cdf(t - 0.5 * b)) / b


@inline
def _tap_shape(step):
    """(b, radius, T) of a resampling with this step: the box width b averaged over, the kernel's radius
    and the number of taps T per output."""
    b = max(0.0, step - 1.0)
    radius = 1.0 + 0.5 * b
    return b, radius, int(math.ceil(2.0 * radius)) + 2


@njit(cache=True)
def _axis_taps(origin, step, n_out, size):
    """Taps along one axis (see kernels_ref.resample_weights): for output j, taps first[j] + t, t < T,
    with weights w[j, t] (float64, normalised; taps outside [0, size) get weight 0)."""
    b, radius, T = _tap_shape(step)
    first = np.empty(n_out, np.int64)
    w = np.zeros((n_out, T), np.float64)
    for j in range(n_out):
        x = origin + step * j
        k0 = int(math.floor(x - radius))
        first[j] = k0
        norm = 0.0
        for t in range(T):
            wt = _kernel_1d(x - (k0 + t), b)
            norm += wt
            w[j, t] = wt
        for t in range(T):
            k = k0 + t
            w[j, t] = w[j, t] / norm if (0 <= k < size) else 0.0
    return first, w


# output rows per work item of resample (speed only)
RESAMPLE_ROWS = 16


@inline
def resample_span(origin, step, n_out, size):
    """(first, last): the source pixels of one axis, inclusive and within [0, size), that outputs
    0 .. n_out - 1 of a resampling take taps from (first > last if none): the part of an image a caller must
    hold (resample_many's window). The same arithmetic as _axis_taps, so the same pixels."""
    _, radius, T = _tap_shape(step)
    first = int(math.floor(origin - radius))
    last = int(math.floor(origin + step * (n_out - 1) - radius)) + T - 1
    return max(0, first), min(size - 1, last)


@inline
def _resample_setup(H, W, C, origin_x, origin_y, step, out_h, out_w):
    """The taps of both axes of an H x W x C image and the source columns that any output uses: (fx, wx,
    fy, wy, c_lo, n), n the number of source values (columns x channels) of one row from column c_lo; n = 0
    if none."""
    if not step > 0.0 or out_h < 1 or out_w < 1:
        raise ValueError("resample: step must be > 0 and the output at least 1x1")
    fx, wx = _axis_taps(origin_x, step, out_w, W)
    fy, wy = _axis_taps(origin_y, step, out_h, H)
    c_lo = max(0, fx[0])
    c_hi = min(W - 1, fx[out_w - 1] + wx.shape[1] - 1)
    return fx, wx, fy, wy, c_lo, max(0, (c_hi - c_lo + 1) * C)


@disjoint
def _resample_tile(rows, top, left, C, fx, wx, fy, wy, c_lo, n, flat, tile):
    """Output rows tile * RESAMPLE_ROWS .. of one resampling (see resample) into flat (out_h, out_w * C).
    rows: the image's rows from row top, columns from column left, as (rows, cols * C)."""
    out_h, out_w = flat.shape[0], fx.shape[0]
    Tx, Ty = wx.shape[1], wy.shape[1]
    RB = RESAMPLE_ROWS
    r0 = tile * RB
    nr = min(out_h, r0 + RB) - r0
    blend = np.zeros((RB, n), np.float64)           # vertical pass: blend[r, k] for output row r0 + r
    for r in range(nr):
        for t in range(Ty):
            wt = wy[r0 + r, t]
            if wt != 0.0:                            # taps outside the image have weight 0
                src = rows[fy[r0 + r] + t - top, (c_lo - left) * C:(c_lo - left) * C + n]
                for k in range(n):
                    blend[r, k] += wt * src[k]
    blend_t = np.empty((n, RB), np.float64)          # the tile transposed: column-channel k, then row
    for k in range(n):
        for r in range(RB):
            blend_t[k, r] = blend[r, k]
    acc = np.empty(RB, np.float64)
    for c in range(out_w):                           # horizontal pass, all rows of the tile at once
        for ch in range(C):
            for r in range(RB):
                acc[r] = 0.0
            for t in range(Tx):
                wt = wx[c, t]
                if wt != 0.0:
                    k = (fx[c] + t - c_lo) * C + ch
                    for r in range(RB):
                        acc[r] += wt * blend_t[k, r]
            for r in range(nr):
                flat[r0 + r, c * C + ch] = acc[r]


@njit(cache=True)
def resample(image, origin_x, origin_y, step, out_h, out_w):
    """Axis-aligned affine resampling, bilinear, antialiased when it shrinks (kernels_ref.kernel_1d), zeros
    outside the image.

    image (H, W, C) uint8 or float32; output pixel (r, c) is centred at source
    (origin_x + step * c, origin_y + step * r); returns (out_h, out_w, C) float32.
    Separable, vertical pass first, on tiles of RESAMPLE_ROWS output rows: the
    vertical pass blends the source rows under each output row (contiguous multiply-adds along the source
    columns that matter, which vectorise); the tile is transposed in cache, so the horizontal pass runs
    along the tile's rows (a short contiguous vector per tap) instead of one scalar at a time. Each output is
    the same sum in the same order either way: vertical taps in order, then horizontal taps in order, taps
    of weight 0 skipped. Accumulator: float64.
    """
    if out_h < 1 or out_w < 1:
        raise ValueError("resample: step must be > 0 and the output at least 1x1")
    out = np.empty((out_h, out_w, image.shape[2]), np.float32)
    resample_into(image, origin_x, origin_y, step, out)
    return out


@njit(cache=True)
def resample_into(image, origin_x, origin_y, step, out):
    """resample(image, origin_x, origin_y, step, H, W) written into out (H, W, C) float32 (every output is
    written: its previous contents do not matter; it must not overlap the image). On the calling thread
    (resample_many shares many resamplings between the threads)."""
    H, W, C = image.shape
    out_h, out_w = out.shape[0], out.shape[1]
    if out.shape[2] != C:
        raise ValueError("resample: the output needs the image's channels")
    fx, wx, fy, wy, c_lo, n = _resample_setup(H, W, C, origin_x, origin_y, step, out_h, out_w)
    flat = out.reshape(out_h, out_w * C)
    rows = np.ascontiguousarray(image).reshape(H, W * C)
    if rows.ctypes.data < flat.ctypes.data + flat.nbytes and flat.ctypes.data < rows.ctypes.data + rows.nbytes:
        raise ValueError("resample: the output must not overlap the image")    # _resample_tile is @disjoint
    if n == 0:                                       # no source column under the output: all zeros
        flat[:, :] = 0.0
        return
    for tile in range((out_h + RESAMPLE_ROWS - 1) // RESAMPLE_ROWS):
        _resample_tile(rows, 0, 0, C, fx, wx, fy, wy, c_lo, n, flat, tile)


def resample_many(image, window, origins_x, origins_y, steps, data, offsets, shapes):
    """Many resamplings of one image at once, one per thread at a time, into slots of one flat float32 buffer
    data (every value of a slot is written): data[offsets[i]:] holds output i as (shapes[i, 0],
    shapes[i, 1], C) = resample(full image, origins_x[i], origins_y[i], steps[i], shapes[i, 0],
    shapes[i, 1]), bit for bit (the same tiles in the same order). offsets (J,) and shapes (J, 2) int64.

    window (top, left, H, W) int64: `image` (h, w, C) holds rows top .. top + h - 1 and columns left ..
    left + w - 1 of the full H x W image (all of it: (0, 0, h, w)), which must include every pixel an
    output takes (resample_span gives them; ValueError otherwise). So a caller can convert only a face's
    region of a large image, with the same result bit for bit. data must not overlap the image."""
    _check_many(image, window, origins_x, origins_y, steps, data, offsets, shapes)
    J = offsets.shape[0]
    run_parallel(_resample_outputs, J, J, np.ascontiguousarray(image), window, origins_x, origins_y, steps, data,
                 offsets, shapes)


def _check_many(image, window, origins_x, origins_y, steps, data, offsets, shapes):
    """resample_many's arguments, checked (in Python, on Python numbers: nothing to compile, a few
    microseconds for a face's three levels): ValueError unless every output fits its slot and takes only
    pixels that the image window holds."""
    h, w, C = image.shape
    if np.may_share_memory(image, data):                                 # _resample_tile is @disjoint
        raise ValueError("resample_many: data must not overlap the image")
    top, left, H, W = (int(v) for v in window)
    if top < 0 or left < 0 or top + h > H or left + w > W:
        raise ValueError("resample_many: the window (top, left, H, W) does not fit its image")
    J = offsets.shape[0]
    if not (offsets.ndim == 1 and shapes.shape == (J, 2) and origins_x.shape == origins_y.shape == steps.shape == (J,)):
        raise ValueError("resample_many: one origin, step, offset and (h, w) per output")
    whole = (top, left, h, w) == (0, 0, H, W)        # the whole image: every span lies in it
    size = data.shape[0]
    for o, (oh, ow), x0, y0, step in zip(offsets.tolist(), shapes.tolist(), origins_x.tolist(), origins_y.tolist(),
                                         steps.tolist()):
        if not _slot_fits.py_func(size, o, oh, ow, C):
            raise ValueError(SLOT_OUTSIDE)
        if not (step > 0.0 and math.isfinite(step)) or oh < 1 or ow < 1:
            raise ValueError("resample: step must be > 0 and the output at least 1x1")
        if not (math.isfinite(x0) and math.isfinite(y0)):
            raise ValueError("resample_many: the origins must be finite")
        if not whole:
            r_lo, r_hi = resample_span(y0, step, oh, H)
            c_lo, c_hi = resample_span(x0, step, ow, W)
            if r_lo <= r_hi and c_lo <= c_hi and (r_lo < top or r_hi >= top + h or c_lo < left or c_hi >= left + w):
                raise ValueError("resample_many: the image window does not hold every pixel an output takes")


@njit(nogil=True, cache=True)
def _resample_outputs(counter, J, image, window, origins_x, origins_y, steps, data, offsets, shapes):
    """resample_many's worker (parallel.run_parallel): the resamplings taken in turn."""
    h, w, C = image.shape
    top, left, H, W = window[0], window[1], window[2], window[3]
    rows = image.reshape(h, w * C)
    i = _take(counter)
    while i < J:
        out_h, out_w = shapes[i, 0], shapes[i, 1]
        fx, wx, fy, wy, c_lo, n = _resample_setup(H, W, C, origins_x[i], origins_y[i], steps[i], out_h, out_w)
        flat = data[offsets[i]:offsets[i] + out_h * out_w * C].reshape((out_h, out_w * C))
        if n == 0:                               # no source column under the output: all zeros
            flat[:, :] = 0.0
        else:
            for tile in range((out_h + RESAMPLE_ROWS - 1) // RESAMPLE_ROWS):
                _resample_tile(rows, top, left, C, fx, wx, fy, wy, c_lo, n, flat, tile)
        i = _take(counter)
