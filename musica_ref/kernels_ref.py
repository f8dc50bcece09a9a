"""NumPy twins of the Numba kernels: the readable specification of every operation.

Each function here has a namesake in `kernels.py` that computes the same thing with explicit loops in Numba.
These twins are written for clarity, not speed, work in whatever float dtype they are given (the reference
cascade runs them in float64), and are checked against scipy in the tests so that a twin and its kernel
cannot share a mistake.

Shapes use: B = patches (or rows) in a batch, H, W = height and width, C = channels, K = inputs, M = outputs.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


# --- image resampling (builds each pyramid level) ----------------------------------------------------------

def tent_weights(positions, step: float, size: int) -> np.ndarray:
    """Antialiased bilinear (tent) weights along one axis.

    positions (n,) float: where each output sample sits, in source pixel coordinates (pixel centres are
    integers). step: source pixels per output pixel. size: source pixels along the axis.
    Returns (n, size) float64: out[j] = sum_i weights[j, i] * src[i].

    The tent has radius R = max(1, step): for step <= 1 it is plain bilinear interpolation, for step > 1 it is
    widened so that every source pixel contributes (antialiasing). Each row is normalised by the sum of the
    tent over ALL integer positions, inside the image or not, so pixels outside the image count as zeros:
    a constant image stays constant in its interior and fades to 0 across its border, as bilinear does.
    """
    x = np.asarray(positions, dtype=np.float64)[:, None]             # (n, 1)
    R = max(1.0, float(step))
    taps = np.floor(x - R) + np.arange(int(np.ceil(2 * R)) + 2)      # (n, T) every integer in reach
    norm = np.maximum(0.0, 1.0 - np.abs(x - taps) / R).sum(axis=1, keepdims=True)
    w = np.maximum(0.0, 1.0 - np.abs(x - np.arange(size)) / R)        # (n, size)
    return w / norm


def resample(image, origin, step: float, out_shape) -> np.ndarray:
    """One axis-aligned affine resampling with antialiasing and zeros outside the image.

    image (H, W, C) any real dtype; origin (x, y): source position of output pixel (0, 0)'s centre;
    step: source pixels per output pixel; out_shape (h, w). Output pixel (r, c) is centred at source
    (origin_x + step * c, origin_y + step * r). Returns (h, w, C) float64.
    """
    h, w = out_shape
    H, W, C = image.shape
    wy = tent_weights(origin[1] + step * np.arange(h), step, H)      # (h, H)
    wx = tent_weights(origin[0] + step * np.arange(w), step, W)      # (w, W)
    img = np.asarray(image, dtype=np.float64)
    return np.einsum("rh,hwc,qw->rqc", wy, img, wx)


# --- patches ------------------------------------------------------------------------------------------------

def extract_patches(level, corners, size: int) -> np.ndarray:
    """Nearest-pixel patches with zeros outside the image.

    level (H, W, C); corners (P, 2) int: top-left (col, row) of each patch. Returns (P, size, size, C) of the
    level's dtype: out[p, i, j] = level[row_p + i, col_p + j] where that pixel exists, else 0.
    """
    H, W, C = level.shape
    P = len(corners)
    pad = size  # a patch that starts more than `size` outside reads only zeros anyway
    padded = np.zeros((H + 2 * pad, W + 2 * pad, C), dtype=level.dtype)
    padded[pad:pad + H, pad:pad + W] = level
    out = np.zeros((P, size, size, C), dtype=level.dtype)
    for p, (c0, r0) in enumerate(np.asarray(corners)):
        r, c = int(np.clip(r0 + pad, 0, H + pad)), int(np.clip(c0 + pad, 0, W + pad))
        out[p] = padded[r:r + size, c:c + size]
    return out


# --- the network's layers -------------------------------------------------------------------------------------

def conv3x3(x, weight, bias, relu: bool = True) -> np.ndarray:
    """Valid 3x3 cross-correlation with bias (and ReLU), stride 1.

    x (B, H, W, Cin); weight (3, 3, Cin, Cout); bias (Cout,) -> (B, H-2, W-2, Cout).
    out[b, i, j, o] = bias[o] + sum_{di, dj, c} x[b, i+di, j+dj, c] * weight[di, dj, c, o]
    """
    win = sliding_window_view(x, (3, 3), axis=(1, 2))                # (B, H-2, W-2, Cin, 3, 3)
    out = np.einsum("bijcuv,uvco->bijo", win, weight) + bias
    return np.maximum(out, 0) if relu else out


def maxpool2x2(x) -> np.ndarray:
    """2x2 max-pool, stride 2 (an odd last row/column is dropped). x (B, H, W, C) -> (B, H//2, W//2, C)."""
    B, H, W, C = x.shape
    x = x[:, :H // 2 * 2, :W // 2 * 2]
    return x.reshape(B, H // 2, 2, W // 2, 2, C).max(axis=(2, 4))


def crop_concat(conv2, pool2) -> np.ndarray:
    """Patch features: channels [centre 2x2 crop of conv2, pool2], flattened (row, col, channel).

    conv2 (B, 4, 4, C) after ReLU; pool2 (B, 2, 2, C) -> (B, 2*2*2C); channel-fastest.
    """
    crop = conv2[:, 1:3, 1:3, :]                                      # (B, 2, 2, C)
    return np.concatenate([crop, pool2], axis=3).reshape(len(conv2), -1)


def fully_connected(x, weight, bias) -> np.ndarray:
    """out = x @ weight + bias. x (B, K); weight (K, M); bias (M,) -> (B, M)."""
    return x @ weight + bias


def relu(x) -> np.ndarray:
    """max(x, 0), elementwise."""
    return np.maximum(x, 0)


def sigmoid(x) -> np.ndarray:
    """1 / (1 + exp(-x)), elementwise; saturates to exactly 0 or 1 for large |x| (no overflow warning)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def tanh(x) -> np.ndarray:
    """tanh(x), elementwise."""
    return np.tanh(x)


def gate(features, attention) -> np.ndarray:
    """features * attention, elementwise. Both (B, F) -> (B, F)."""
    return features * attention
