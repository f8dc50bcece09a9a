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

def antialias_width(step: float) -> float:
    """Width b of the box that widens the bilinear kernel when the resampling shrinks: max(0, step - 1)."""
    return max(0.0, float(step) - 1.0)


def kernel_1d(t, b: float) -> np.ndarray:
    """The resampling kernel at offsets t (source pixels): the bilinear tent tri(t) = max(0, 1 - |t|),
    averaged over a box of width b:  k(t) = (1/b) * integral of tri over [t - b/2, t + b/2]  (tri for b = 0).

    Both the tent and the box average reproduce constants and linear ramps exactly whatever the sub-pixel
    offset, so every level samples the image where geometry says it does; for b = step - 1 the kernel's
    support (radius 1 + b/2) grows with the shrink, which is the antialiasing.
    """
    t = np.asarray(t, dtype=np.float64)
    if b == 0.0:
        return np.maximum(0.0, 1.0 - np.abs(t))

    def tri_cdf(s):                     # integral of tri from -inf to s
        s = np.clip(s, -1.0, 1.0)
        return np.where(s <= 0, 0.5 * (1 + s) ** 2, 1 - 0.5 * (1 - s) ** 2)
    return (tri_cdf(t + b / 2) - tri_cdf(t - b / 2)) / b


def resample_weights(positions, step: float, size: int) -> np.ndarray:
    """Resampling weights along one axis.

    positions (n,) float: where each output sample sits, in source pixel coordinates (pixel centres are
    integers). step: source pixels per output pixel. size: source pixels along the axis.
    Returns (n, size) float64: out[j] = sum_i weights[j, i] * src[i].

    For step <= 1 this is plain bilinear interpolation; for step > 1 the kernel is widened (kernel_1d).
    Each row is normalised by the kernel's sum over ALL integer positions, inside the image or not (1 up to
    rounding), so pixels outside the image count as zeros: a constant image stays constant in its interior
    and fades to 0 across its border, as bilinear interpolation with zero padding does.
    """
    x = np.asarray(positions, dtype=np.float64)[:, None]             # (n, 1)
    b = antialias_width(step)
    radius = 1.0 + b / 2
    taps = np.floor(x - radius) + np.arange(int(np.ceil(2 * radius)) + 2)   # (n, T) every integer in reach
    norm = kernel_1d(x - taps, b).sum(axis=1, keepdims=True)
    return kernel_1d(x - np.arange(size), b) / norm


def resample(image, origin, step: float, out_shape) -> np.ndarray:
    """One axis-aligned affine resampling, bilinear, antialiased when it shrinks, zeros outside the image.

    image (H, W, C) any real dtype; origin (x, y): source position of output pixel (0, 0)'s centre;
    step: source pixels per output pixel; out_shape (h, w). Output pixel (r, c) is centred at source
    (origin_x + step * c, origin_y + step * r). Returns (h, w, C) float64.
    """
    h, w = out_shape
    H, W, C = image.shape
    wy = resample_weights(origin[1] + step * np.arange(h), step, H)      # (h, H)
    wx = resample_weights(origin[0] + step * np.arange(w), step, W)      # (w, W)
    img = np.asarray(image, dtype=np.float64)
    rows = np.tensordot(wy, img, axes=(1, 0))                        # (h, W, C): resample the rows
    return np.tensordot(rows, wx, axes=(1, 1)).transpose(0, 2, 1)    # (h, w, C): then the columns


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


def fully_connected_scaled(x, qweight, scale, bias) -> np.ndarray:
    """out = bias + scale * (x @ qweight): weights stored as integers with one scale per output.
    x (B, K); qweight (K, M); scale, bias (M,) -> (B, M)."""
    return bias + scale * (x @ qweight)


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
