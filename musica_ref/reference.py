"""The whole forward pass of one face in plain NumPy, float64: the readable reference of `model.py`.

It uses the NumPy twins (`kernels_ref`) and only the geometry module of the engine, so the Numba engine is
checked against an independent computation of the same maths. Slow; for tests, porting and reading.
"""
from __future__ import annotations

import math

import numpy as np

from . import geometry
from . import kernels_ref as ops
from .io import as_rgb
from .network import HIDDEN
from .weights import Weights


def pyramid(image, frame) -> list[np.ndarray]:
    """image (H, W, 3) -> 3 normalised levels (H_L, W_L, 3) float64."""
    raw = []
    for L in range(geometry.N_LEVELS):
        origin, step, shape = geometry.sampling_grid(frame, L)
        raw.append(ops.resample(image, origin, step, shape))
    mean, std = raw[0].mean(), raw[0].std()
    std = std if std > 0 else 1.0
    return [(r - mean) / std for r in raw]


def stored_as_float64(w) -> dict:
    """The tensors of one iteration as float64 values, whatever their storage in a MuSiCa (quantize.py):
    uint16 arrays are float16 bit patterns; int8 recurrent weights come with "recurrent/scale" (q * scale)."""
    t = {}
    for k, v in w.items():
        v = np.asarray(v)
        t[k] = v.view(np.float16).astype(np.float64) if v.dtype == np.uint16 else v.astype(np.float64)
    if "recurrent/scale" in t:
        t["recurrent/weight"] = t["recurrent/weight"] * t.pop("recurrent/scale")
    return t


def network(patches, h_prev, w) -> dict:
    """One iteration on one face. patches (P, 14, 14, 3), h_prev (HIDDEN = 512,), w: tensor name -> array.
    Returns every named intermediate (float64)."""
    t = stored_as_float64(w)
    r = {}
    r["conv1"] = ops.conv3x3(patches, t["conv1/weight"], t["conv1/bias"])            # (P, 12, 12, 32)
    r["pool1"] = ops.maxpool2x2(r["conv1"])                                          # (P, 6, 6, 32)
    r["conv2"] = ops.conv3x3(r["pool1"], t["conv2/weight"], t["conv2/bias"])         # (P, 4, 4, 32)
    r["pool2"] = ops.maxpool2x2(r["conv2"])                                          # (P, 2, 2, 32)
    r["features"] = ops.crop_concat(r["conv2"], r["pool2"])                          # (P, 256)
    r["attention"] = ops.sigmoid(ops.fully_connected(r["features"], t["attention/weight"],
                                                     t["attention/bias"]))           # (P, 256)
    r["gated"] = ops.gate(r["features"], r["attention"])                             # (P, 256)
    x = np.concatenate([r["gated"].reshape(-1), h_prev])[None]                       # (1, P*256 + 512)
    r["hidden"] = ops.tanh(ops.fully_connected(x, t["recurrent/weight"], t["recurrent/bias"]))  # (1, 512)
    r["out"] = ops.fully_connected(r["hidden"], t["output/weight"], t["output/bias"])  # (1, 2N+1)
    return r


def cascade(weights: Weights, image, box, ts: float = 0.0, tf: float = math.inf):
    """Landmarks of one face, step by step as in the paper. Returns a dict with landmarks (N, 2),
    errors (per iteration run), iterations, failed, history (it, N, 2) and trace (per-iteration dict of
    centres, patches and intermediates)."""
    image = as_rgb(image)
    frame = geometry.face_frame(geometry.check_box(box, image.shape))
    levels = pyramid(image, frame)
    N, idx = weights.n_landmarks, weights.patch_indices
    S0 = geometry.initial_shape(weights.mean_shape, frame)     # mean shape in the box, level 0
    d = np.zeros((N, 2))                                       # displacement in current level pixels
    h = np.zeros(HIDDEN)
    errors, history, trace = [], [], []
    for i, L in enumerate(geometry.ITERATION_LEVELS):
        centres = S0[idx] / 2 ** L + d[idx]                    # (P, 2) level-L pixels
        patches = ops.extract_patches(levels[L], geometry.patch_corners(centres), geometry.PATCH_SIZE)
        r = network(patches, h, weights.iterations[i])
        h = r["hidden"][0]
        d = d + r["out"][0, :2 * N].reshape(N, 2)
        e = float(r["out"][0, 2 * N])
        errors.append(e)
        history.append(geometry.level_to_image(S0 / 2 ** L + d, frame, L))
        trace.append({"level": L, "centres": centres, "patches": patches, **r})
        if ts > 0 and e < ts:
            break
        d = 2 * d                                              # Eq. 1
    return {"landmarks": history[-1], "errors": np.asarray(errors), "iterations": len(errors),
            "failed": errors[-1] > tf, "history": np.stack(history), "trace": trace}
