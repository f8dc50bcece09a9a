"""Numba kernels: the fast, explicit-loop versions of `kernels_ref.py` (their readable twins).

Rules for every kernel here:
- no `fastmath` (results must not depend on reassociation, and NaN/inf keep their meaning);
- `cache=True`, so a second process loads the compiled code from disk instead of compiling again;
- float32 activations in and out; the accumulator type is stated in each docstring;
- the summation order of every output element is fixed by the loop nest and does not depend on the batch
  size or on how `prange` splits the work between threads, so results are bit-identical whether a face is
  run alone or in a batch, on one thread or many.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# The fully connected kernel sums its K inputs in fixed chunks of FC_KCHUNK, and each work item reuses a
# weight row for FC_ROWS inputs of the batch.
FC_ROWS = 8
FC_KCHUNK = 256


# --- image resampling ---------------------------------------------------------------------------------------

@njit(cache=True)
def _tri_cdf(s):
    """Integral of the tent max(0, 1 - |u|) from -inf to s."""
    if s <= -1.0:
        return 0.0
    if s >= 1.0:
        return 1.0
    if s <= 0.0:
        return 0.5 * (1.0 + s) * (1.0 + s)
    return 1.0 - 0.5 * (1.0 - s) * (1.0 - s)


@njit(cache=True)
def _kernel_1d(t, b):
    """kernels_ref.kernel_1d at one offset t: the tent, averaged over a box of width b (tent if b = 0)."""
    if b == 0.0:
        return max(0.0, 1.0 - abs(t))
    return (_tri_cdf(t + 0.5 * b) - _tri_cdf(t - 0.5 * b)) / b


@njit(cache=True)
def _axis_taps(origin, step, n_out, size):
    """Taps along one axis (see kernels_ref.resample_weights): for output j, taps first[j] + t, t < T,
    with weights w[j, t] (float64, normalised; taps outside [0, size) get weight 0)."""
    b = max(0.0, step - 1.0)
    radius = 1.0 + 0.5 * b
    T = int(math.ceil(2.0 * radius)) + 2
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


@njit(parallel=True, cache=True)
def resample(image, origin_x, origin_y, step, out_h, out_w):
    """Axis-aligned affine resampling, bilinear, antialiased when it shrinks (kernels_ref.kernel_1d), zeros
    outside the image.

    image (H, W, C) uint8 or float32; output pixel (r, c) is centred at source
    (origin_x + step * c, origin_y + step * r); returns (out_h, out_w, C) float32.
    Separable: a horizontal pass over the source rows that matter, then a vertical pass.
    Accumulator: float64.
    """
    H, W, C = image.shape
    if not step > 0.0 or out_h < 1 or out_w < 1:
        raise ValueError("resample: step must be > 0 and the output at least 1x1")
    fx, wx = _axis_taps(origin_x, step, out_w, W)
    fy, wy = _axis_taps(origin_y, step, out_h, H)
    Tx, Ty = wx.shape[1], wy.shape[1]
    out = np.zeros((out_h, out_w, C), np.float32)
    r_lo = max(0, fy[0])
    r_hi = min(H - 1, fy[out_h - 1] + Ty - 1)
    if r_hi < r_lo:
        return out
    n_rows = r_hi - r_lo + 1
    tmp = np.zeros((n_rows, out_w, C), np.float64)
    for rr in prange(n_rows):
        r = r_lo + rr
        for c in range(out_w):
            for t in range(Tx):
                wt = wx[c, t]
                if wt != 0.0:
                    k = fx[c] + t
                    for ch in range(C):
                        tmp[rr, c, ch] += wt * image[r, k, ch]
    for r in prange(out_h):
        for c in range(out_w):
            for ch in range(C):
                acc = 0.0
                for t in range(Ty):
                    wt = wy[r, t]
                    if wt != 0.0:
                        acc += wt * tmp[fy[r] + t - r_lo, c, ch]
                out[r, c, ch] = acc
    return out


@njit(cache=True)
def normalise_levels(levels_flat, mean, std):
    """(x - mean) / std in float32 over a flat float32 buffer, returned as a new array."""
    out = np.empty_like(levels_flat)
    for i in range(levels_flat.size):
        out[i] = np.float32((levels_flat[i] - mean) / std)
    return out


# --- patches --------------------------------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def extract_patches(level, corners, size):
    """Nearest-pixel patches, zeros outside the image.

    level (H, W, C) float32; corners (P, 2) int64 top-left (col, row) -> (P, size, size, C) float32.
    """
    H, W, C = level.shape
    P = corners.shape[0]
    if corners.shape[1] != 2:
        raise ValueError("extract_patches: corners must be (P, 2)")
    out = np.zeros((P, size, size, C), np.float32)
    for p in prange(P):
        c0, r0 = corners[p, 0], corners[p, 1]
        for i in range(size):
            r = r0 + i
            if r < 0 or r >= H:
                continue
            for j in range(size):
                c = c0 + j
                if 0 <= c < W:
                    for ch in range(C):
                        out[p, i, j, ch] = level[r, c, ch]
    return out


# --- the network's layers ------------------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def conv3x3(x, weight, bias, relu):
    """Valid 3x3 cross-correlation + bias (+ ReLU if relu), stride 1, over many patches at once.

    x (B, H, W, Cin) float32; weight (3, 3, Cin, Cout); bias (Cout,) -> (B, H-2, W-2, Cout) float32.
    Accumulator: float32, starting at the bias, summed over (di, dj, c) in that order.
    """
    B, H, W, Cin = x.shape
    Cout = weight.shape[3]
    if weight.shape[0] != 3 or weight.shape[1] != 3 or weight.shape[2] != Cin or bias.shape[0] != Cout:
        raise ValueError("conv3x3: weight must be (3, 3, Cin, Cout) and bias (Cout,) for x (B, H, W, Cin)")
    if H < 3 or W < 3:
        raise ValueError("conv3x3: x must be at least 3x3")
    OH, OW = H - 2, W - 2
    out = np.empty((B, OH, OW, Cout), np.float32)
    for b in prange(B):
        acc = np.empty(Cout, np.float32)
        for i in range(OH):
            for j in range(OW):
                for o in range(Cout):
                    acc[o] = bias[o]
                for di in range(3):
                    for dj in range(3):
                        for c in range(Cin):
                            xv = x[b, i + di, j + dj, c]
                            for o in range(Cout):
                                acc[o] += xv * weight[di, dj, c, o]
                for o in range(Cout):
                    v = acc[o]
                    out[b, i, j, o] = v if (not relu or v > 0) else np.float32(0.0)
    return out


@njit(parallel=True, cache=True)
def maxpool2x2(x):
    """2x2 max-pool, stride 2. x (B, H, W, C) float32 -> (B, H//2, W//2, C) float32."""
    B, H, W, C = x.shape
    OH, OW = H // 2, W // 2
    out = np.empty((B, OH, OW, C), np.float32)
    for b in prange(B):
        for i in range(OH):
            for j in range(OW):
                for c in range(C):
                    m = x[b, 2 * i, 2 * j, c]
                    m = max(m, x[b, 2 * i, 2 * j + 1, c])
                    m = max(m, x[b, 2 * i + 1, 2 * j, c])
                    m = max(m, x[b, 2 * i + 1, 2 * j + 1, c])
                    out[b, i, j, c] = m
    return out


@njit(parallel=True, cache=True)
def crop_concat(conv2, pool2):
    """Channels [centre 2x2 of conv2, pool2], flattened (row, col, channel), channel-fastest.

    conv2 (B, 4, 4, C); pool2 (B, 2, 2, C) -> (B, 8C) float32.
    """
    B, _, _, C = conv2.shape
    if conv2.shape[1] != 4 or conv2.shape[2] != 4 or pool2.shape[0] != B or pool2.shape[1] != 2 \
            or pool2.shape[2] != 2 or pool2.shape[3] != C:
        raise ValueError("crop_concat: conv2 must be (B, 4, 4, C) and pool2 (B, 2, 2, C)")
    out = np.empty((B, 2 * 2 * 2 * C), np.float32)
    for b in prange(B):
        for r in range(2):
            for c in range(2):
                base = (r * 2 + c) * 2 * C
                for ch in range(C):
                    out[b, base + ch] = conv2[b, r + 1, c + 1, ch]
                    out[b, base + C + ch] = pool2[b, r, c, ch]
    return out


@njit(parallel=True, cache=True)
def fully_connected(x, weight, bias):
    """out = x @ weight + bias, batched. x (B, K) float32; weight (K, M); bias (M,) -> (B, M) float32.

    Accumulator: float32. The K inputs are cut into fixed chunks of FC_KCHUNK; each chunk's partial sum
    runs over its k in order, and out = bias + partial_0 + partial_1 + ... in chunk order. The chunks and
    the order depend on K only, never on the batch size or the thread count, so results are bit-identical
    however the work is split. Work items are (FC_ROWS inputs) x (one chunk): each streams its weight rows
    once, contiguously, and reuses every row for its FC_ROWS inputs (vectorised along the M outputs).
    """
    B, K = x.shape
    M = weight.shape[1]
    if weight.shape[0] != K or bias.shape[0] != M:
        raise ValueError("fully_connected: x (B, K), weight (K, M) and bias (M,) do not fit")
    n_rb = (B + FC_ROWS - 1) // FC_ROWS
    n_kc = (K + FC_KCHUNK - 1) // FC_KCHUNK
    part = np.empty((n_kc, B, M), np.float32)              # partial sums, one per chunk
    for t in prange(n_rb * n_kc):
        c = t % n_kc
        r0 = (t // n_kc) * FC_ROWS
        nr = min(B, r0 + FC_ROWS) - r0
        acc = part[c, r0:r0 + nr]
        acc[:] = 0
        for k in range(c * FC_KCHUNK, min(K, (c + 1) * FC_KCHUNK)):
            wrow = weight[k]
            for r in range(nr):
                xv = x[r0 + r, k]
                arow = acc[r]
                for j in range(M):
                    arow[j] += xv * wrow[j]
    out = np.empty((B, M), np.float32)
    for b in prange(B):
        orow = out[b]
        orow[:] = bias
        for c in range(n_kc):
            prow = part[c, b]
            for j in range(M):
                orow[j] += prow[j]
    return out


@njit(cache=True)
def relu(x):
    """max(x, 0), elementwise over a 1-D float32 array -> new array."""
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = x[i] if x[i] > 0 else np.float32(0.0)
    return out


@njit(cache=True)
def sigmoid(x):
    """1 / (1 + exp(-x)), elementwise over a 1-D float32 array -> new array. Saturates to 0 or 1."""
    out = np.empty_like(x)
    one = np.float32(1.0)
    for i in range(x.size):
        out[i] = one / (one + np.exp(-x[i]))
    return out


@njit(cache=True)
def tanh(x):
    """tanh(x), elementwise over a 1-D float32 array -> new array."""
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = np.tanh(x[i])
    return out


@njit(cache=True)
def gate(features, attention):
    """features * attention, elementwise. Both (B, F) float32 -> (B, F) float32."""
    if features.shape != attention.shape:
        raise ValueError("gate: features and attention must have the same shape")
    out = np.empty_like(features)
    B, F = features.shape
    for b in range(B):
        for f in range(F):
            out[b, f] = features[b, f] * attention[b, f]
    return out
