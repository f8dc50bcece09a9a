"""One iteration's network (docs/model.md §6), run with the Numba kernels.

    patches (B*P, 14, 14, 3)
      conv1   3x3x32, bias, ReLU     -> (B*P, 12, 12, 32)
      pool1   max 2x2                -> (B*P, 6, 6, 32)
      conv2   3x3x32, bias, ReLU     -> (B*P, 4, 4, 32)
      pool2   max 2x2                -> (B*P, 2, 2, 32)
      features = [crop2x2(conv2), pool2] flattened (row, col, channel)      -> (B*P, 256)
      attention = sigmoid(features @ W_att + b_att)                         -> (B*P, 256)
      gated = features * attention                                          -> (B*P, 256)
      hidden = tanh([gated of all P patches, h_prev] @ W_rnn + b_rnn)       -> (B, 512)
      out = hidden @ W_out + b_out = (dx_0, dy_0, ..., dx_{N-1}, dy_{N-1}, E) -> (B, 2N+1)

B faces, P patches per face. Weights are separate per iteration and shared by all patches.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from . import kernels
from .geometry import PATCH_SIZE

IN_CHANNELS = 3
CONV_FILTERS = 32
FEATURES = 2 * 2 * 2 * CONV_FILTERS   # 256 per patch: 2x2 positions x [crop, pool2] channels
HIDDEN = 512

# The named intermediates one iteration can return; the trainer and the golden test vectors use the same names.
INTERMEDIATES = ("conv1", "pool1", "conv2", "pool2", "features", "attention", "gated", "hidden", "out")

# Tensor names of one iteration in the weights file, in order.
TENSORS = ("conv1/weight", "conv1/bias", "conv2/weight", "conv2/bias", "attention/weight", "attention/bias",
           "recurrent/weight", "recurrent/bias", "output/weight", "output/bias")


def tensor_shapes(n_landmarks: int, n_patches: int) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor of one iteration for N landmarks and P patches. Weights are (in, out)."""
    return {
        "conv1/weight": (3, 3, IN_CHANNELS, CONV_FILTERS), "conv1/bias": (CONV_FILTERS,),
        "conv2/weight": (3, 3, CONV_FILTERS, CONV_FILTERS), "conv2/bias": (CONV_FILTERS,),
        "attention/weight": (FEATURES, FEATURES), "attention/bias": (FEATURES,),
        "recurrent/weight": (n_patches * FEATURES + HIDDEN, HIDDEN), "recurrent/bias": (HIDDEN,),
        "output/weight": (HIDDEN, 2 * n_landmarks + 1), "output/bias": (2 * n_landmarks + 1,),
    }


def _elementwise(kernel, x):
    """Apply a 1-D elementwise kernel to an array of any shape."""
    return kernel(np.ascontiguousarray(x).reshape(-1)).reshape(x.shape)


def feature_weights(w):
    """The feature extractor's weights of one iteration (dict w) in the layouts the fused kernels read
    (kernels.feature_weights); MuSiCa computes them once per model."""
    return kernels.feature_weights(w["conv1/weight"], w["conv1/bias"], w["conv2/weight"], w["conv2/bias"],
                                   w["attention/weight"], w["attention/bias"])


def iteration_forward(patches, h_prev, w, counter: Counter | None = None, keep: bool = False):
    """Run one iteration's network on B faces.

    patches (B*P, 14, 14, 3) float32, face-major then patch-order; h_prev (B, 512) float32;
    w: dict tensor name -> float32 array (see TENSORS; with "recurrent/scale" the recurrent weight is int8,
    see quantize.py). counter, if given, gets the network's multiply-adds
    for these shapes added per layer ("conv1", "conv2", "attention", "gate", "recurrent", "output").
    keep=False runs the fused feature kernel (kernels.patch_features); keep=True runs the layers one by one
    and returns every intermediate. Both give bit-identical outputs.
    Returns (out (B, 2N+1), hidden (B, 512), intermediates dict or None).
    """
    B = h_prev.shape[0]
    if patches.shape[1:] != (PATCH_SIZE, PATCH_SIZE, IN_CHANNELS) or B == 0 or patches.shape[0] % B != 0:
        raise ValueError(f"iteration_forward: patches {patches.shape} are not (B * P, {PATCH_SIZE}, "
                         f"{PATCH_SIZE}, {IN_CHANNELS}) for B = {B} faces")
    inter = None
    if keep:    # layer by layer, every intermediate kept
        conv1 = kernels.conv3x3(patches, w["conv1/weight"], w["conv1/bias"], True)    # (BP, 12, 12, 32)
        pool1 = kernels.maxpool2x2(conv1)                                              # (BP, 6, 6, 32)
        conv2 = kernels.conv3x3(pool1, w["conv2/weight"], w["conv2/bias"], True)       # (BP, 4, 4, 32)
        pool2 = kernels.maxpool2x2(conv2)                                              # (BP, 2, 2, 32)
        features = kernels.crop_concat(conv2, pool2)                                   # (BP, 256)
        attention = _elementwise(kernels.sigmoid, kernels.fully_connected(
            features, w["attention/weight"], w["attention/bias"]))                     # (BP, 256)
        gated = kernels.gate(features, attention)                                      # (BP, 256)
        inter = dict(conv1=conv1, pool1=pool1, conv2=conv2, pool2=pool2, features=features,
                     attention=attention, gated=gated)
    else:       # the same arithmetic fused per patch: bit-identical gated features, nothing else stored
        gated = kernels.patch_features(patches, *feature_weights(w))
    rnn_in = np.concatenate([gated.reshape(B, -1), h_prev], axis=1)                # (B, P*256 + 512)
    out, hidden = _recurrent_head(rnn_in, w, counter)
    if keep:
        inter.update(hidden=hidden, out=out)
    return out, hidden, inter


def iteration_forward_levels(data, offsets, shapes, corners, h_prev, w, counter: Counter | None = None,
                             features=None):
    """iteration_forward(patches, h_prev, w, counter) for the patches at `corners` of B pyramid levels,
    without extracting them, bit for bit: face b's level is the (H_b, W_b, 3) float32 array of shape
    shapes[b] that starts at data[offsets[b]] (data a flat float32 buffer, pyramid.Pyramids), corners
    (B, P, 2) int64 (top-left (col, row) of each patch, geometry.patch_corners); features: feature_weights(w)
    if already computed. The kernels compute conv1
    once per level position for the overlapping patches of a face; one face splits its work between the
    threads, several faces go one per thread. Returns (out (B, 2N+1), hidden (B, 512))."""
    B, P = corners.shape[:2]
    rnn_in = np.empty((B, P * FEATURES + HIDDEN), np.float32)       # [gated features of the P patches, h_prev]
    rnn_in[:, P * FEATURES:] = h_prev
    if features is None:
        features = feature_weights(w)
    if B == 1:      # the kernel writes the features in place
        (h, wd, c), o = shapes[0], offsets[0]
        kernels.level_patch_features(data[o:o + h * wd * c].reshape(h, wd, c), corners[0], *features,
                                     rnn_in[0, :P * FEATURES].reshape(P, FEATURES))
    else:
        gated = np.empty((B * P, FEATURES), np.float32)
        kernels.levels_patch_features(data, offsets, shapes, corners, *features, gated)
        rnn_in[:, :P * FEATURES] = gated.reshape(B, -1)
    return _recurrent_head(rnn_in, w, counter)


def warm_head(w, n_faces: int) -> None:
    """Run the recurrent and output layers of weights w once on zeros for n_faces faces: their kernels are
    compiled (or loaded from the cache) for these weights' storage now, not when the first features are
    ready (a first run compiles them while a helper process compiles the feature extractor,
    kernels.precompile)."""
    _recurrent_head(np.zeros((n_faces, w["recurrent/weight"].shape[0]), np.float32), w, None)


def _recurrent_head(rnn_in, w, counter):
    """The recurrent and output layers of B faces on rnn_in (B, P*256 + 512), each face's gated features
    (P patches of 256, patch by patch) then its previous hidden state; counts the iteration's multiply-adds
    into counter. Returns (out (B, 2N+1), hidden (B, 512))."""
    B = rnn_in.shape[0]
    BP = B * ((rnn_in.shape[1] - HIDDEN) // FEATURES)
    if "recurrent/scale" in w:      # int8 storage (quantize.py)
        pre = kernels.fully_connected_scaled(rnn_in, w["recurrent/weight"], w["recurrent/scale"],
                                             w["recurrent/bias"])
    else:
        pre = kernels.fully_connected(rnn_in, w["recurrent/weight"], w["recurrent/bias"])
    hidden = _elementwise(kernels.tanh, pre)                                       # (B, 512)
    out = kernels.fully_connected(hidden, w["output/weight"], w["output/bias"])   # (B, 2N+1)

    if counter is not None:
        # multiply-adds of this iteration's layers for these shapes (the dense count, per patch: the kernels
        # skip products with an input of exactly 0 and share conv1 between overlapping patches, which
        # changes no result and is not subtracted here)
        s1 = PATCH_SIZE - 2                                 # conv1 output side
        s2 = s1 // 2 - 2                                    # conv2 output side
        counter["conv1"] += BP * s1 * s1 * CONV_FILTERS * 3 * 3 * IN_CHANNELS
        counter["conv2"] += BP * s2 * s2 * CONV_FILTERS * 3 * 3 * CONV_FILTERS
        counter["attention"] += BP * FEATURES * FEATURES
        counter["gate"] += BP * FEATURES
        counter["recurrent"] += rnn_in.shape[0] * rnn_in.shape[1] * hidden.shape[1]
        counter["output"] += hidden.shape[0] * hidden.shape[1] * out.shape[1]
    return out, hidden
