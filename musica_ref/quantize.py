"""Optional reduced-precision storage of the recurrent layers (beyond the paper).

The three recurrent layers hold 98% of musica68's parameters, and at batch 1 the engine's time is mostly
spent streaming them from memory. Stored as int8 with one float32 scale per output unit they take a quarter
of the bytes; the arithmetic stays float32 (kernels.fully_connected_scaled):

    scale[j]     = max_k |W[k, j]| / 127          (1 where the column is all zeros)
    q[k, j]      = round(W[k, j] / scale[j])      in [-127, 127]
    hidden_pre   = bias + scale * (x @ q)

The float32 weights stay the exact reference; `tools/bench.py --int8` and `tools/evaluate.py --int8` measure
what int8 saves and costs.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .errors import InputError

PRECISIONS = ("float32", "int8")
QUANTIZED = ("recurrent/weight",)        # the tensors that `int8` stores as integers


def quantize_int8(weight) -> tuple[np.ndarray, np.ndarray]:
    """weight (K, M) float -> (q (K, M) int8, scale (M,) float32) with weight ~ q * scale, per column."""
    w = np.asarray(weight)
    peak = np.abs(w).max(axis=0).astype(np.float64)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.empty(w.shape, np.int8)
    for k in range(0, w.shape[0], 1024):             # in row blocks: no full-size float64 temporary
        block = w[k:k + 1024].astype(np.float64) / scale.astype(np.float64)
        q[k:k + 1024] = np.clip(np.rint(block), -127, 127)
    return q, scale


def with_precision(weights, precision: str):
    """A copy of `weights` whose recurrent layers use `precision` ("float32": unchanged; "int8": the
    iteration dicts get "recurrent/weight" as int8 and "recurrent/scale" float32). The input is not changed."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "float32":
        return weights
    iterations = []
    for it in weights.iterations:
        it = dict(it)
        for name in QUANTIZED:
            q, scale = quantize_int8(it[name])
            it[name] = q
            it[name.replace("/weight", "/scale")] = scale
        iterations.append(it)
    provenance = dict(weights.provenance, recurrent_precision=precision)
    return dataclasses.replace(weights, iterations=iterations, provenance=provenance)
