"""The network's layers one at a time, one-to-one with their NumPy twins in kernels_ref (docs/model.md §5,
§6): patch extraction, conv3x3, maxpool2x2, crop_concat, relu, sigmoid, tanh, gate. MuSiCa.trace runs them to
keep every intermediate; predict runs the fused feature extractor (features.py), bit for bit the same."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .contract import madd


@njit(cache=True)
def extract_patches(level, corners, size):
    """Nearest-pixel patches, zeros outside the image.

    level (H, W, C) float32; corners (P, 2) int64 top-left (col, row) -> (P, size, size, C) float32.
    """
    H, W, C = level.shape
    P = corners.shape[0]
    if corners.shape[1] != 2:
        raise ValueError("extract_patches: corners must be (P, 2)")
    out = np.zeros((P, size, size, C), np.float32)
    for p in range(P):                     # serial: a face's patches are too little work to share out
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



@njit(parallel=True, cache=True)
def conv3x3(x, weight, bias, relu):
    """Valid 3x3 cross-correlation + bias (+ ReLU if relu), stride 1, over many patches at once.

    x (B, H, W, Cin) float32; weight (3, 3, Cin, Cout); bias (Cout,) -> (B, H-2, W-2, Cout) float32.
    Accumulator: float32, starting at the bias, summed over (c, di, dj) in that order, each term a fused
    multiply-add.
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
                for c in range(Cin):
                    for di in range(3):
                        for dj in range(3):
                            xv = x[b, i + di, j + dj, c]
                            for o in range(Cout):
                                acc[o] = madd(acc[o], xv, weight[di, dj, c, o])
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
