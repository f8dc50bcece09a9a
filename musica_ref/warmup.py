"""Compiling the Numba kernels ahead of use.

The kernels are compiled for the CPU they run on the first time each is called, and cached on disk
(`cache=True`), so only a new environment pays: `musica-ref warmup` (e.g. in a container build) runs every
path the model has, so that no later call compiles.
"""
from __future__ import annotations

import os
import time

import numpy as np


def _dispatchers():
    from numba.core.registry import CPUDispatcher

    from . import kernels
    return [f for mod in kernels.MODULES for f in vars(mod).values() if isinstance(f, CPUDispatcher)]


def cache_is_cold() -> bool:
    """Whether no kernel is in Numba's disk cache yet: a new environment, whose first prediction compiles
    them all. (A later first use of another path, e.g. int8, compiles a few more, quickly.)"""
    for f in _dispatchers():
        cache = getattr(f, "_cache", None)
        index = getattr(getattr(cache, "_cache_file", None), "_index_path", None)
        if index is not None and os.path.exists(index):
            return False
    return True


def compile_all(progress=print) -> float:
    """Run every path of the model once on a small synthetic face (each recurrent storage, one face and a
    batch, early exit): every kernel compiled or loaded from the cache. Returns the seconds it took."""
    from .model import MuSiCa
    from .variants import get_variant
    from .weights import random_weights
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    boxes = [(20, 20, 70, 76), (10, 14, 80, 84)]
    weights = random_weights(get_variant("musica19"))
    f16 = weights.__class__(weights.variant, weights.mean_shape,
                            [{k: (v.astype(np.float16) if k == "recurrent/weight" else v) for k, v in it.items()}
                             for it in weights.iterations], weights.provenance)
    for name, model in (("float32", MuSiCa(weights, "float32")), ("float16", MuSiCa(f16, "stored")),
                        ("int8", MuSiCa(weights, "int8"))):
        progress(f"compiling: recurrent layers {name}")
        model.predict(image, boxes[0])
        model.predict_batch(image, boxes, ts=0.05)
        model.predict_batch([image, image.astype(np.float32)], boxes)
    model.trace(image, boxes[0])                           # the layer-by-layer path (porting, golden files)
    return time.perf_counter() - t0
