"""NumPy twins of the Numba kernels: the readable specification of every operation.

Each public kernel of the `kernels` package has its twin here (TWINS, at the end, names them; a test walks it),
computing the same thing plainly.
These twins are written for clarity, not speed, work in whatever float dtype they are given (the reference
cascade runs them in float64), and are checked against scipy in the tests so that a twin and its kernel
cannot share a mistake.

Shapes use: B = patches (or rows) in a batch, H, W = height and width, C = channels, K = inputs, M = outputs.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .geometry import PATCH_SIZE


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


def resample_span(origin, step: float, n_out: int, size: int):
    """(first, last): the source pixels, inclusive and within [0, size), that outputs 0 .. n_out - 1 of one
    axis take taps from (first > last if none), read off resample_weights's taps."""
    b = antialias_width(step)
    radius = 1.0 + b / 2
    x = origin + step * np.arange(n_out)
    first = int(np.floor(x[0] - radius))
    last = int(np.floor(x[-1] - radius)) + int(np.ceil(2 * radius)) + 2 - 1
    return max(0, first), min(size - 1, last)


# --- normalisation (docs/model.md §4.4) -----------------------------------------------------------------------

def mean_std(x):
    """The mean and population standard deviation (divisor n) of all values of x, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()), float(x.std())


def normalise_pyramid(level0, level1, level2):
    """The three levels normalised by level 0's mean and population deviation (a deviation of 0 becomes 1):
    (x - mean) / deviation, as new arrays."""
    mean, std = mean_std(level0)
    std = std if std > 0 else 1.0
    return tuple((np.asarray(lv, dtype=np.float64) - mean) / std for lv in (level0, level1, level2))


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


# --- the feature extractor of one patch, and the arithmetic's primitives ----------------------------------------

def patch_features(patches, w1, b1, w2, b2, wa, ba) -> np.ndarray:
    """The feature extractor and its gate on patches (B, 14, 14, C) with the weights as the file stores them
    -> (B, 8 C2): conv1 + ReLU, pool, conv2 + ReLU, pool, crop and concat, attention, gate."""
    conv1 = conv3x3(patches, w1, b1, relu=True)
    conv2 = conv3x3(maxpool2x2(conv1), w2, b2, relu=True)
    features = crop_concat(conv2, maxpool2x2(conv2))
    return gate(features, sigmoid(fully_connected(features, wa, ba)))


def level_patch_features(level, corners, w1, b1, w2, b2, wa, ba) -> np.ndarray:
    """patch_features of the PATCH_SIZE x PATCH_SIZE patches at corners (P, 2) (col, row) of one level (H, W, C)
    -> (P, 8 C2)."""
    return patch_features(extract_patches(level, corners, PATCH_SIZE), w1, b1, w2, b2, wa, ba)


def madd(acc, x, w) -> np.float32:
    """acc + x * w rounded once to float32 (IEEE 754 fusedMultiplyAdd), from the exact rational result; ties
    to even. acc, x, w float32."""
    from fractions import Fraction
    exact = Fraction(float(acc)) + Fraction(float(x)) * Fraction(float(w))
    near = np.float32(float(exact))                      # within one float32 step of the exact value
    candidates = [np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))]
    finite = [c for c in candidates if np.isfinite(c)]
    best = min(finite, key=lambda c: (abs(Fraction(float(c)) - exact), int(np.array(c).view(np.uint32)) & 1))
    return np.float32(best)


def widen(bits) -> np.ndarray:
    """IEEE 754 binary16 values given by their bit patterns (uint16) -> float32, exactly."""
    return np.asarray(bits, dtype=np.uint16).view(np.float16).astype(np.float32)


# every public kernel (kernels.__all__) -> its twin here; several kernels share one (resample_into and
# resample_many compute resample; normalise_pyramids and levels_patch_features do many faces of one twin)
TWINS = {
    "madd": madd, "widen": widen,
    "resample": resample, "resample_into": resample, "resample_many": resample, "resample_span": resample_span,
    "mean_std": mean_std, "normalise_pyramid": normalise_pyramid, "normalise_pyramids": normalise_pyramid,
    "extract_patches": extract_patches, "conv3x3": conv3x3, "maxpool2x2": maxpool2x2, "crop_concat": crop_concat,
    "relu": relu, "sigmoid": sigmoid, "tanh": tanh, "gate": gate,
    "fully_connected": fully_connected, "fully_connected_scaled": fully_connected_scaled,
    "patch_features": patch_features, "level_patch_features": level_patch_features,
    "levels_patch_features": level_patch_features,
}
