"""How the recurrent layers are held in memory (beyond the paper).

The three recurrent layers hold 98% of musica68's parameters, and at batch 1 the engine's time is mostly
spent streaming them from memory. Whatever their storage, the arithmetic is float32 (kernels.widen turns
each stored weight into float32 exactly):

- "stored" (the default): as the weights file has them. A float16 file keeps them as 16-bit values (half
  the bytes of float32), widened exactly in the kernel, so the results are bit for bit those of "float32".
- "float32": widened to float32 at load (the reference; twice the memory of a float16 file's).
- "float16": rounded to float16 (exact for a float16 file; for a float32 file a rounding of every weight).
- "int8": one float32 scale per output unit, a quarter of float32's bytes (kernels.fully_connected_scaled):

    scale[j]     = max_k |W[k, j]| / 127          (1 where the column is all zeros)
    q[k, j]      = round(W[k, j] / scale[j])      in [-127, 127]
    hidden_pre   = bias + scale * (x @ q)

float16 values travel as uint16 arrays holding their bit patterns, since Numba has no float16 on the CPU.
`tools/bench.py` and `tools/evaluate.py --int8` measure what int8 saves and costs.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .errors import InputError
from .weights import FLOAT16_MAX

PRECISIONS = ("stored", "float32", "float16", "int8")
QUANTIZED = ("recurrent/weight",)        # the tensors whose storage `precision` chooses


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


def float16_bits(weight) -> np.ndarray:
    """weight (float16, or float32 rounded to nearest) -> uint16 array of its binary16 bit patterns."""
    w = np.asarray(weight)
    if w.dtype != np.float16:
        if np.any(np.abs(w) > FLOAT16_MAX):
            raise InputError("a recurrent weight does not fit float16 (|value| > 65504); use float32 or int8")
        w = w.astype(np.float16)
    return np.ascontiguousarray(w).view(np.uint16)


def stored_precision(weights) -> str:
    """"float16" if every recurrent weight of `weights` is float16 (a float16 array from
    load_weights(keep_float16=...), or the uint16 bits of a MuSiCa's weights), else "float32"."""
    half = all(it[n].dtype in (np.float16, np.uint16) for it in weights.iterations for n in QUANTIZED)
    return "float16" if half else "float32"


def with_precision(weights, precision: str = "stored"):
    """A copy of `weights` whose recurrent layers use `precision` (see the module docstring): "float32"
    gives float32 arrays, "float16" uint16 arrays of float16 bit patterns, "int8" int8 arrays plus
    "recurrent/scale" (float32, one per output); "stored" is "float16" for float16 arrays and "float32"
    otherwise. The input is not changed. Returns (weights, the precision used)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "stored":
        precision = stored_precision(weights)
    iterations = []
    for it in weights.iterations:
        it = dict(it)
        for name in QUANTIZED:
            if it[name].dtype == np.uint16:            # the weights of a MuSiCa already held as float16
                it[name] = it[name].view(np.float16)
            elif it[name].dtype == np.int8:
                raise InputError("these weights are already int8 (a model's weights with recurrent='int8'); "
                                 "start from the file or the float weights")
            if precision == "float32":
                it[name] = np.ascontiguousarray(it[name], dtype=np.float32)
            elif precision == "float16":
                it[name] = float16_bits(it[name])
            else:
                q, scale = quantize_int8(it[name])
                it[name] = q
                it[name.replace("/weight", "/scale")] = scale
        iterations.append(it)
    provenance = dict(weights.provenance, recurrent_precision=precision)
    return dataclasses.replace(weights, iterations=iterations, provenance=provenance), precision
